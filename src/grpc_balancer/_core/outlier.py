"""Outlier detection: passive ejection of backends that fail calls (gRFC A50), plus
Envoy's/Finagle's consecutive-failures mode. Works under any policy: an ejected
subchannel is simply not usable, so every picker skips it.

Configured with the top-level ``outlierDetection`` object::

    {"outlierDetection": {
        "interval": "10s", "baseEjectionTime": "30s", "maxEjectionTime": "300s",
        "maxEjectionPercent": 10,
        "successRateEjection": {"stdevFactor": 1900, "enforcementPercentage": 100,
                                "minimumHosts": 5, "requestVolume": 100},
        "failurePercentageEjection": {"threshold": 85, "enforcementPercentage": 100,
                                      "minimumHosts": 5, "requestVolume": 50},
        "consecutiveFailures": {"threshold": 5, "enforcementPercentage": 100}}}

Each algorithm runs only if its object is present. Success-rate and failure-percentage
look at the calls of the last ``interval``; consecutive failures eject at once. An
ejected backend comes back after ``baseEjectionTime * (times ejected)``, capped at
``max(baseEjectionTime, maxEjectionTime)``; the multiplier decays by one per interval
spent healthy. Ejection stops once ``maxEjectionPercent`` of the backends are out
(checked before each ejection, so with 10% of 3 backends one may go). Every status other than OK counts as a failure, except CANCELLED
(the client gave up, e.g. a losing hedge): it says nothing about the backend.
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from grpc_balancer._config.method_config import parse_duration
from grpc_balancer._observe.events import Event
from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.subchannel import Subchannel

log = logging.getLogger("grpc_balancer._core.outlier")

FIELD = "outlierDetection"


@dataclass(frozen=True, slots=True)
class SuccessRate:
    stdev_factor: int = 1900
    enforcement_percentage: int = 100
    minimum_hosts: int = 5
    request_volume: int = 100


@dataclass(frozen=True, slots=True)
class FailurePercentage:
    threshold: int = 85
    enforcement_percentage: int = 100
    minimum_hosts: int = 5
    request_volume: int = 50


@dataclass(frozen=True, slots=True)
class ConsecutiveFailures:
    threshold: int = 5
    enforcement_percentage: int = 100


@dataclass(frozen=True, slots=True)
class OutlierConfig:
    interval_s: float = 10.0
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    max_ejection_percent: int = 10
    success_rate: SuccessRate | None = None
    failure_percentage: FailurePercentage | None = None
    consecutive_failures: ConsecutiveFailures | None = None


# -- config -----------------------------------------------------------------------------------
_SECTIONS: dict[str, tuple[type[Any], dict[str, tuple[str, int]]]] = {
    # JSON name: (class, {json field: (attribute, minimum)})
    "successRateEjection": (
        SuccessRate,
        {
            "stdevFactor": ("stdev_factor", 0),
            "enforcementPercentage": ("enforcement_percentage", 0),
            "minimumHosts": ("minimum_hosts", 1),
            "requestVolume": ("request_volume", 1),
        },
    ),
    "failurePercentageEjection": (
        FailurePercentage,
        {
            "threshold": ("threshold", 0),
            "enforcementPercentage": ("enforcement_percentage", 0),
            "minimumHosts": ("minimum_hosts", 1),
            "requestVolume": ("request_volume", 1),
        },
    ),
    "consecutiveFailures": (
        ConsecutiveFailures,
        {"threshold": ("threshold", 1), "enforcementPercentage": ("enforcement_percentage", 0)},
    ),
}
_PERCENTS = {
    ("successRateEjection", "enforcementPercentage"),
    ("failurePercentageEjection", "enforcementPercentage"),
    ("failurePercentageEjection", "threshold"),
    ("consecutiveFailures", "enforcementPercentage"),
}
_DURATIONS = {
    "interval": "interval_s",
    "baseEjectionTime": "base_ejection_s",
    "maxEjectionTime": "max_ejection_s",
}


def parse_outlier_detection(raw: Mapping[str, Any] | None) -> OutlierConfig | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ServiceConfigError(f"{FIELD} must be an object, got {raw!r}")
    allowed = {*_DURATIONS, "maxEjectionPercent", *_SECTIONS}
    _no_unknown(FIELD, raw, allowed)
    values: dict[str, Any] = {}
    for key, attr in _DURATIONS.items():
        if key in raw:
            values[attr] = parse_duration(f"{FIELD}.{key}", raw[key])
            if values[attr] <= 0:
                raise ServiceConfigError(f"{FIELD}.{key} must be > 0s, got {raw[key]!r}")
    if "maxEjectionPercent" in raw:
        values["max_ejection_percent"] = _int(
            f"{FIELD}.maxEjectionPercent", raw["maxEjectionPercent"], 0, percent=True
        )
    attrs = {
        "successRateEjection": "success_rate",
        "failurePercentageEjection": "failure_percentage",
        "consecutiveFailures": "consecutive_failures",
    }
    for section, (cls, fields) in _SECTIONS.items():
        if section not in raw:
            continue
        where = f"{FIELD}.{section}"
        body = raw[section]
        if not isinstance(body, Mapping):
            raise ServiceConfigError(f"{where} must be an object, got {body!r}")
        _no_unknown(where, body, set(fields))
        kwargs = {
            attr: _int(f"{where}.{key}", body[key], minimum, percent=(section, key) in _PERCENTS)
            for key, (attr, minimum) in fields.items()
            if key in body
        }
        values[attrs[section]] = cls(**kwargs)
    return OutlierConfig(**values)


def _no_unknown(where: str, raw: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ServiceConfigError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}"
            f" (allowed: {', '.join(sorted(allowed))})"
        )


def _int(where: str, value: Any, minimum: int, percent: bool = False) -> int:
    maximum = 100 if percent else None
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bound = f"in {minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise ServiceConfigError(f"{where} must be an integer {bound}, got {value!r}")
    return value


# -- the detector ---------------------------------------------------------------------------------
class _Stats:
    __slots__ = ("consecutive", "ejected_at", "failures", "multiplier", "successes")

    def __init__(self) -> None:
        self.successes = 0
        self.failures = 0
        self.consecutive = 0
        self.multiplier = 0
        self.ejected_at: float | None = None


class OutlierDetector:
    """Counts each subchannel's call outcomes (via ``call_observers``) and ejects outliers
    with ``subchannel.set_ejected``. ``run_interval()`` is the periodic sweep; the
    channel schedules it every ``interval``, tests may call it directly."""

    def __init__(
        self,
        config: OutlierConfig,
        on_event: Callable[[Event, Subchannel], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._on_event = on_event
        self._clock = clock
        self._rng = rng or random.Random()
        self._stats: dict[Subchannel, _Stats] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    # -- membership (called by the channel) ---------------------------------------------------
    def add(self, sc: Subchannel) -> None:
        self._stats[sc] = _Stats()
        sc.call_observers.append(self._observe)
        if self._timer is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.config.interval_s, self._tick)

    def remove(self, sc: Subchannel) -> None:
        self._stats.pop(sc, None)
        if self._observe in sc.call_observers:
            sc.call_observers.remove(self._observe)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- inputs --------------------------------------------------------------------------------
    def _observe(self, sc: Subchannel, latency_s: float, code: grpc.StatusCode) -> None:
        stats = self._stats.get(sc)
        if stats is None or code is grpc.StatusCode.CANCELLED:
            return
        if code is grpc.StatusCode.OK:
            stats.successes += 1
            stats.consecutive = 0
            return
        stats.failures += 1
        stats.consecutive += 1
        cf = self.config.consecutive_failures
        if (
            cf is not None
            and stats.consecutive >= cf.threshold
            and stats.ejected_at is None
            and self._enforced(cf.enforcement_percentage)
        ):
            self._eject(sc, stats, f"{stats.consecutive} consecutive failures (last {code.name})")

    def _tick(self) -> None:
        self._timer = None
        if self._closed:
            return
        self.run_interval()
        self._timer = asyncio.get_running_loop().call_later(self.config.interval_s, self._tick)

    # -- the sweep -----------------------------------------------------------------------------
    def run_interval(self) -> None:
        """A50's timer: judge the last interval's counts, then un-eject whoever served
        their time, and start a fresh interval."""
        counts = {sc: (s.successes, s.failures) for sc, s in self._stats.items()}
        for stats in self._stats.values():
            stats.successes = stats.failures = 0
        if self.config.success_rate is not None:
            self._success_rate(self.config.success_rate, counts)
        if self.config.failure_percentage is not None:
            self._failure_percentage(self.config.failure_percentage, counts)
        now = self._clock()
        cap = max(self.config.base_ejection_s, self.config.max_ejection_s)
        for sc, stats in self._stats.items():
            if stats.ejected_at is None:
                if stats.multiplier > 0:
                    stats.multiplier -= 1
            elif now >= stats.ejected_at + min(self.config.base_ejection_s * stats.multiplier, cap):
                stats.ejected_at = None
                stats.consecutive = 0
                log.info("%s: back from outlier ejection", sc.address)
                sc.set_ejected(False)
                if self._on_event is not None:
                    self._on_event(Event.UNEJECTED, sc)

    def _success_rate(self, cfg: SuccessRate, counts: Mapping[Subchannel, tuple[int, int]]) -> None:
        rates = {
            sc: ok / (ok + bad)
            for sc, (ok, bad) in counts.items()
            if ok + bad >= cfg.request_volume
        }
        if len(rates) < cfg.minimum_hosts:
            return
        mean = statistics.fmean(rates.values())
        stdev = statistics.pstdev(rates.values())
        threshold = mean - stdev * (cfg.stdev_factor / 1000)
        for sc, rate in rates.items():
            if rate < threshold and self._enforced(cfg.enforcement_percentage):
                self._eject(sc, self._stats[sc], f"success rate {rate:.1%} < {threshold:.1%}")

    def _failure_percentage(
        self, cfg: FailurePercentage, counts: Mapping[Subchannel, tuple[int, int]]
    ) -> None:
        volume = {sc: c for sc, c in counts.items() if sum(c) >= cfg.request_volume}
        if len(volume) < cfg.minimum_hosts:
            return
        for sc, (ok, bad) in volume.items():
            percent = 100 * bad / (ok + bad)
            if percent > cfg.threshold and self._enforced(cfg.enforcement_percentage):
                self._eject(sc, self._stats[sc], f"{percent:.0f}% of calls failed")

    def _enforced(self, percentage: int) -> bool:
        return percentage >= 100 or self._rng.randrange(100) < percentage

    def _eject(self, sc: Subchannel, stats: _Stats, why: str) -> None:
        if stats.ejected_at is not None:
            return
        ejected = sum(1 for s in self._stats.values() if s.ejected_at is not None)
        if ejected * 100 >= self.config.max_ejection_percent * len(self._stats):
            return  # A50: stop once maxEjectionPercent of the backends are out
        stats.ejected_at = self._clock()
        stats.multiplier += 1
        log.warning("%s: ejected by outlier detection: %s", sc.address, why)
        sc.set_ejected(True)
        if self._on_event is not None:
            self._on_event(Event.EJECTED, sc)

    def ejected(self) -> list[Subchannel]:
        return [sc for sc, s in self._stats.items() if s.ejected_at is not None]

    def __repr__(self) -> str:
        return f"<OutlierDetector ejected={[sc.address for sc in self.ejected()]}>"
