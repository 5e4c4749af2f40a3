"""Per-backend concurrency limit (Envoy's ``max_requests`` circuit breaker).

Configured with the top-level service config field ``circuitBreakers``::

    {"circuitBreakers": {"maxRequests": 100}}

A backend with ``maxRequests`` attempts in flight from this channel is skipped by
picks; when every usable backend is saturated the call fails at once with
RESOURCE_EXHAUSTED (it is never queued), and the message names the limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from grpc_balancer.errors import ServiceConfigError

FIELD = "circuitBreakers"


def parse_circuit_breakers(raw: Mapping[str, Any] | None) -> int:
    """``maxRequests`` (0 = no limit)."""
    if raw is None:
        return 0
    if not isinstance(raw, Mapping):
        raise ServiceConfigError(f"{FIELD} must be an object, got {raw!r}")
    unknown = sorted(set(raw) - {"maxRequests"})
    if unknown:
        raise ServiceConfigError(
            f"{FIELD}: unknown field(s) {', '.join(map(repr, unknown))} (allowed: maxRequests)"
        )
    value = raw.get("maxRequests")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ServiceConfigError(f"{FIELD}.maxRequests must be an integer >= 1, got {value!r}")
    return value


def saturated_message(target: str, limit: int, saturated: Iterable[str]) -> str:
    names = ", ".join(sorted(saturated))
    return (
        f"all backends of {target!r} are saturated: each has {limit} calls in flight, "
        f"the per-backend limit {FIELD}.maxRequests={limit} ({names})"
    )


SATURATED_CODE = grpc.StatusCode.RESOURCE_EXHAUSTED
