"""Scenario 6: ring_hash key movement and spread, computed on the ring itself."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, cast

import grpc
import grpc.aio

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.picker import PickInfo
from grpc_balancer.policies.ring_hash import RingHashPicker, build_ring, key_hash
from grpc_balancer.subchannel import Subchannel


class _Listener:
    def on_subchannel_state(self, subchannel: Subchannel) -> None:
        pass


def fake_subchannels(n: int) -> list[Subchannel]:
    """READY subchannels that are never dialed (for pickers only)."""
    subs = []
    for i in range(n):
        sc = Subchannel(
            Endpoint(f"10.1.{i // 250}.{i % 250 + 1}:443"),
            cast(grpc.aio.Channel, None),
            _Listener(),
        )
        sc.connectivity = grpc.ChannelConnectivity.READY
        sc._usable = True
        subs.append(sc)
    return subs


def _picker(subs: list[Subchannel]) -> RingHashPicker:
    hashes, owners = build_ring(subs, 1024, 4096)
    return RingHashPicker(hashes, owners, frozenset(subs), None)


def run(results: Path, n: int = 10, keys: int = 10_000) -> dict[str, Any]:
    subs = fake_subchannels(n)
    hashes = [key_hash(f"user-{i}") for i in range(keys)]
    before = _picker(subs)
    owners_before = [before.pick(PickInfo("/m", hash_key=h)) for h in hashes]
    moved_fractions = []
    for removed in range(n):  # remove each endpoint in turn
        after = _picker(subs[:removed] + subs[removed + 1 :])
        moved = sum(
            before_owner is not after.pick(PickInfo("/m", hash_key=h))
            for h, before_owner in zip(hashes, owners_before, strict=True)
        )
        moved_fractions.append(moved / keys)
    load = Counter(owners_before)
    spread = max(load.values()) / (keys / n)
    payload = {
        "endpoints": n,
        "keys": keys,
        "moved_fraction_min": round(min(moved_fractions), 4),
        "moved_fraction_max": round(max(moved_fractions), 4),
        "moved_over_1_n_max": round(max(moved_fractions) * n, 3),
        "spread_max_over_mean": round(spread, 3),
        "target_met": max(moved_fractions) * n <= 1.2 and spread <= 1.25,
    }
    results.mkdir(exist_ok=True)
    (results / "policies_s6_ring_hash.json").write_text(json.dumps(payload, indent=2) + "\n")
    return payload
