"""Pick cost of every policy's picker with 3, 100 and 10,000 READY endpoints."""

from __future__ import annotations

import json
import random
import timeit
from pathlib import Path
from typing import Any

from bench.ring_spread import fake_subchannels
from grpc_balancer._core.load import LatencyEstimate
from grpc_balancer.picker import Picker, PickInfo
from grpc_balancer.policies._stride import StridePicker, scale_weights
from grpc_balancer.policies.least_request import LeastRequestPicker
from grpc_balancer.policies.peak_ewma import PeakEwmaPicker
from grpc_balancer.policies.ring_hash import RingHashPicker, build_ring
from grpc_balancer.policies.round_robin import RoundRobinPicker

SIZES = (3, 100, 10_000, 20_000)
PICKS = 50_000


def _pickers(n: int) -> dict[str, Picker]:
    rng = random.Random(n)
    subs = fake_subchannels(n)
    for sc in subs:
        sc.in_flight = rng.randrange(5)
    estimates = []
    for _ in subs:
        est = LatencyEstimate(10.0, 1.0)
        est.observe(rng.uniform(0.002, 0.02), 1e9)
        est.observe(rng.uniform(0.002, 0.02), 1e9)
        estimates.append(est)
    scaled = scale_weights([rng.uniform(1, 10) for _ in subs])
    assert scaled is not None
    hashes, owners = build_ring(subs, 1024, 4096)
    return {
        "round_robin": RoundRobinPicker(subs, rng),
        "least_request": LeastRequestPicker(subs, 2, rng),
        "peak_ewma": PeakEwmaPicker(subs, estimates, 2, rng, clock=lambda: 1e9 + 1),
        "weighted_round_robin": StridePicker(subs, scaled, rng),
        "ring_hash": RingHashPicker(hashes, owners, frozenset(subs), None, rng),
    }


def run(results: Path) -> dict[str, Any]:
    info = PickInfo("/greeter.Greeter/SayHello")
    table: dict[str, dict[str, float]] = {}
    for n in SIZES:
        for name, picker in _pickers(n).items():
            best = min(timeit.repeat(lambda p=picker: p.pick(info), number=PICKS, repeat=3))
            table.setdefault(name, {})[str(n)] = round(best / PICKS * 1e6, 3)
    worst = max(v for row in table.values() for v in row.values())
    payload = {"us_per_pick": table, "worst_us": worst, "target_met": worst <= 5.0}
    results.mkdir(exist_ok=True)
    (results / "policies_pick_cost.json").write_text(json.dumps(payload, indent=2) + "\n")
    _plot(results, table)
    return payload


def _plot(results: Path, table: dict[str, dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.2
    names = list(table)
    for j, n in enumerate(SIZES):
        ax.bar(
            [i + (j - 1.5) * width for i in range(len(names))],
            [table[name][str(n)] for name in names],
            width,
            label=f"{n} endpoints",
        )
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("µs per pick")
    ax.axhline(5.0, color="red", linestyle="--", linewidth=1, label="target 5 µs")
    ax.legend(fontsize=8)
    ax.set_title("pick cost per policy", fontsize=10)
    fig.tight_layout()
    fig.savefig(results / "policies_pick_cost.png", dpi=110)
    plt.close(fig)
