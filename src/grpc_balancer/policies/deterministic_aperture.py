"""deterministic_aperture (Finagle's default balancer): clients take overlapping,
evenly spaced slices of the fleet, so connections per server are balanced exactly.

Servers (sorted by address, so every client sees the same ring) share a unit ring
in equal slices; client ``i`` of ``n`` starts its window at ``i / n`` and makes it
``max(subsetSize / servers, 1 / n)`` wide, so the windows of all clients cover the
ring evenly and each client sees at least ``subsetSize`` servers. Its subset is every
server whose slice the window touches (``subsetSize``, or one more when the window's
ends cut two slices), handed to ``childPolicy`` (round_robin by default).

The client's place comes from ``clientIndex`` / ``clientCount`` in the config or the
``GRPC_BALANCER_CLIENT_INDEX`` / ``GRPC_BALANCER_CLIENT_COUNT`` environment variables
(e.g. a StatefulSet ordinal and its replica count, or a registration order in etcd).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.policies._subset import SubsetPolicy
from grpc_balancer.policies.base import ChannelControl, register_builtin_policy

NAME = "deterministic_aperture"
INDEX_ENV = "GRPC_BALANCER_CLIENT_INDEX"
COUNT_ENV = "GRPC_BALANCER_CLIENT_COUNT"


def aperture_indices(servers: int, size: int, index: int, count: int) -> list[int]:
    """Positions (in address order) of the servers client ``index`` of ``count`` uses."""
    if servers <= size:
        return list(range(servers))
    start = Fraction(index * servers, count)  # the window, in units of one server slice
    end = start + max(Fraction(size), Fraction(servers, count))
    first, last = math.floor(start), math.ceil(end) - 1
    if last - first + 1 >= servers:
        return list(range(servers))
    return sorted(j % servers for j in range(first, last + 1))


def aperture_subset(
    endpoints: Sequence[Endpoint], size: int, index: int, count: int
) -> list[Endpoint]:
    """The endpoints of client ``index`` of ``count``, in the list's order."""
    ring = sorted(e.address for e in endpoints)
    chosen = {ring[j] for j in aperture_indices(len(ring), size, index, count)}
    return [e for e in endpoints if e.address in chosen]


def _from_env(name: str, env: Mapping[str, str]) -> int | None:
    text = env.get(name)
    if text is None:
        return None
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise ServiceConfigError(
            f"{NAME}: environment variable {name} must be a whole number, got {text[:40]!r}"
        ) from None


def _whole(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ServiceConfigError(f"{NAME}: {name} must be a whole number, got {value!r}")
    return value


def client_position(config: Mapping[str, Any], env: Mapping[str, str]) -> tuple[int, int]:
    """``(index, count)`` from the config, else the environment; a clear error if
    neither gives both, or if they do not fit ``0 <= index < count``."""
    if "clientIndex" in config or "clientCount" in config:
        if "clientIndex" not in config or "clientCount" not in config:
            raise ServiceConfigError(f"{NAME}: give both clientIndex and clientCount, or neither")
        index, count = (
            _whole("clientIndex", config["clientIndex"]),
            _whole("clientCount", config["clientCount"]),
        )
        where = "clientIndex / clientCount"
    else:
        env_index, env_count = _from_env(INDEX_ENV, env), _from_env(COUNT_ENV, env)
        if env_index is None or env_count is None:
            raise ServiceConfigError(
                f"{NAME}: each client needs its place in the fleet: set clientIndex and "
                f"clientCount in the config, or {INDEX_ENV} and {COUNT_ENV}"
            )
        index, count, where = env_index, env_count, f"{INDEX_ENV} / {COUNT_ENV}"
    if count < 1:
        raise ServiceConfigError(f"{NAME}: the client count must be >= 1, got {count} ({where})")
    if not 0 <= index < count:
        raise ServiceConfigError(
            f"{NAME}: the client index must be in 0..{count - 1} for {count} clients, "
            f"got {index} ({where})"
        )
    return index, count


class DeterministicAperturePolicy(SubsetPolicy):
    NAME = NAME
    CONFIG_FIELDS = {"subsetSize", "childPolicy", "clientIndex", "clientCount"}

    def __init__(
        self,
        control: ChannelControl,
        config: Mapping[str, Any],
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(control, config)
        self.client_index, self.client_count = client_position(
            config, os.environ if env is None else env
        )

    def subset(self, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        return aperture_subset(endpoints, self.subset_size, self.client_index, self.client_count)


register_builtin_policy(NAME, DeterministicAperturePolicy)
