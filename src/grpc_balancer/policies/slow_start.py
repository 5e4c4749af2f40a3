"""Slow start (Envoy's formula): a backend that just became READY gets a fraction of its
weight that grows over ``slowStartWindow``, so a cold or restarted server warms up
instead of taking a full share at once.

``factor = max(minWeightPercent / 100, (max(age_s, 1) / window_s) ** (1 / aggression))``

As in Envoy, the endpoints of the first list skip slow start when they first connect
(there is nobody warm to shift load to); a later endpoint, or any endpoint that comes
back READY after a failure, ramps up.

Used by round_robin, least_request and weighted_round_robin through the
``slowStartConfig`` object (``slowStartWindow``, ``aggression``, ``minWeightPercent``).
While any backend is inside its window the policy rebuilds its picker every
:attr:`SlowStart.refresh_s`, so the ramp is smooth.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.policies import _config
from grpc_balancer.policies.base import check_config_fields
from grpc_balancer.subchannel import Subchannel

FIELD = "slowStartConfig"
_FIELDS = {"slowStartWindow", "aggression", "minWeightPercent"}


@dataclass(frozen=True, slots=True)
class SlowStartConfig:
    window_s: float
    aggression: float = 1.0
    min_weight: float = 0.1

    def factor(self, age_s: float) -> float:
        """The weight multiplier for a backend READY for ``age_s`` seconds (1.0 = warm)."""
        if age_s >= self.window_s:
            return 1.0
        time_factor = max(age_s, 1.0) / self.window_s
        ramp: float = time_factor ** (1.0 / self.aggression)
        return max(self.min_weight, min(1.0, ramp))


def parse_slow_start(policy: str, config: Mapping[str, Any]) -> SlowStartConfig | None:
    """``config["slowStartConfig"]`` → a config, or None when absent or the window is 0."""
    raw = config.get(FIELD)
    if raw is None:
        return None
    where = f"{policy}: {FIELD}"
    if not isinstance(raw, Mapping):
        raise ServiceConfigError(f"{where} must be an object, got {raw!r}")
    check_config_fields(where, raw, _FIELDS)
    window = _config.duration(where, raw, "slowStartWindow", 0.0)
    aggression = _config.number(where, raw, "aggression", 1.0, minimum=0.0, strict_minimum=True)
    percent = _config.number(where, raw, "minWeightPercent", 10.0, minimum=0.0, maximum=100.0)
    if window <= 0:
        return None
    return SlowStartConfig(window, aggression, percent / 100.0)


class SlowStart:
    """Per-policy slow-start state: factors for the usable subchannels and the refresh
    timer that keeps the picker current while someone is warming up."""

    def __init__(
        self,
        config: SlowStartConfig,
        on_refresh: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.refresh_s = min(1.0, max(config.window_s / 20.0, 0.05))
        self._on_refresh = on_refresh
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self._seen_list = False
        #: initial endpoints → the ready_since of their first READY (None: not yet)
        self._exempt: dict[Subchannel, float | None] = {}

    def endpoints_updated(self, ordered: Sequence[Subchannel]) -> None:
        """Call with every new list: the first one's members are exempt."""
        if not self._seen_list:
            self._seen_list = True
            self._exempt = dict.fromkeys(ordered)
        else:
            present = set(ordered)
            self._exempt = {sc: t for sc, t in self._exempt.items() if sc in present}

    def _age(self, sc: Subchannel, now: float) -> float | None:
        ready_since = sc.ready_since
        if ready_since is None:
            return None
        if sc in self._exempt:
            first = self._exempt[sc]
            if first is None:
                self._exempt[sc] = first = ready_since
            if first == ready_since:
                return None
        return now - ready_since

    def factors(self, usable: Sequence[Subchannel]) -> list[float] | None:
        """One multiplier per subchannel, or None if nobody is warming up (no timer then)."""
        now = self._clock()
        ages = [self._age(sc, now) for sc in usable]
        factors = [1.0 if age is None else self.config.factor(age) for age in ages]
        if all(f >= 1.0 for f in factors):
            return None
        self._schedule()
        return factors

    def _schedule(self) -> None:
        if self._timer is not None:
            return
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.refresh_s, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self._on_refresh()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
