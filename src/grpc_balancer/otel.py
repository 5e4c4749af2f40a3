"""The same per-backend instruments as :mod:`grpc_balancer.metrics`, recorded with
OpenTelemetry meters (the optional ``otel`` extra: ``pip install 'grpc-balancer[otel]'``).

Call :func:`enable` with your ``MeterProvider`` (default: the global one) *before*
creating channels. Instrument names are gRFC A66's (``grpc.client.attempt.duration``,
``grpc.client.call.duration``...) plus ``grpc.lb.*`` for the balancer's own state;
attributes are ``grpc.target``, ``grpc.lb.backend``, ``grpc.method``, ``grpc.status``.

Latency histograms are synchronous instruments (recorded per attempt and per call with
cached attribute sets); everything else is observed at collection time from the same
in-place counters the Prometheus collector reads, so the hot path stays small.
Unlike the Prometheus series, the histograms of a closed channel stay in the SDK's
cumulative state (that is how OpenTelemetry's synchronous instruments work).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from grpc_balancer import __version__
from grpc_balancer._observe import instrument
from grpc_balancer.metrics import (
    LATENCY_BUCKETS,
    BackendSeries,
    _ChannelMetrics,
    _prune_drained,
    _State,
)

try:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry.metrics import CallbackOptions, Histogram, Meter, MeterProvider, Observation
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "grpc_balancer.otel needs OpenTelemetry: pip install 'grpc-balancer[otel]'"
    ) from exc

if TYPE_CHECKING:
    from grpc_balancer.subchannel import Subchannel

__all__ = ["disable", "enable"]

_NAME = "otel"
_state = _State(attr="grpc_balancer.otel")
_CONNECTIVITY = ("IDLE", "CONNECTING", "READY", "TRANSIENT_FAILURE", "SHUTDOWN")

TARGET = "grpc.target"
BACKEND = "grpc.lb.backend"
METHOD = "grpc.method"
STATUS = "grpc.status"


class _Instruments:
    def __init__(self, meter: Meter) -> None:
        buckets = list(LATENCY_BUCKETS)
        self.attempt_duration = _histogram(
            meter, "grpc.client.attempt.duration", "Attempt latency per backend.", buckets
        )
        self.call_duration = _histogram(
            meter,
            "grpc.client.call.duration",
            "Call latency as the application saw it (backend: its last attempt's).",
            buckets,
        )
        observable = (
            ("grpc.client.attempt.started", "{attempt}", "Attempts started.", _attempts_started),
            ("grpc.client.call.started", "{call}", "Calls started.", _calls_started),
            ("grpc.lb.ejections", "{ejection}", "Outlier ejections.", _backend_int("ejections")),
            ("grpc.lb.retries", "{attempt}", "Failed attempts retried.", _backend_int("retries")),
            (
                "grpc.lb.transparent_retries",
                "{attempt}",
                "Attempts re-sent because they never reached the backend.",
                _backend_int("transparent_retries"),
            ),
            ("grpc.lb.hedges", "{attempt}", "Hedged attempts.", _backend_int("hedges")),
            ("grpc.lb.retries_throttled", "{attempt}", "Throttled.", _target_int("throttled")),
            (
                "grpc.lb.resolver.updates",
                "{update}",
                "Resolver endpoint lists.",
                _target_int("resolver_updates"),
            ),
            (
                "grpc.lb.resolver.errors",
                "{error}",
                "Resolver errors.",
                _target_int("resolver_errors"),
            ),
        )
        for name, unit, doc, callback in observable:
            meter.create_observable_counter(name, [callback], unit=unit, description=doc)
        gauges = (
            ("grpc.lb.in_flight", "{attempt}", "Attempts in flight.", _in_flight),
            ("grpc.lb.subchannel.state", "{subchannel}", "Subchannels per state.", _states),
            ("grpc.lb.subchannel.ejected", "{subchannel}", "Ejected subchannels.", _ejected),
            ("grpc.lb.endpoints", "{endpoint}", "Backends resolved.", _endpoints),
            ("grpc.lb.latency_estimate", "s", "Peak-EWMA latency estimate.", _latency),
        )
        for name, unit, doc, callback in gauges:
            meter.create_observable_gauge(name, [callback], unit=unit, description=doc)


def _histogram(meter: Meter, name: str, doc: str, buckets: list[float]) -> Histogram:
    try:
        return meter.create_histogram(
            name, unit="s", description=doc, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # opentelemetry-api < 1.23: no bucket advice
        return meter.create_histogram(name, unit="s", description=doc)


_instruments: _Instruments | None = None


class _OtelChannel(_ChannelMetrics):
    """The shared bookkeeping of :mod:`grpc_balancer.metrics`, plus OTel histograms."""

    def __init__(self, channel: Any, instruments: _Instruments) -> None:
        super().__init__(channel, _state)
        self._inst = instruments
        self._call_attrs: dict[tuple[str, str, grpc.StatusCode], dict[str, str]] = {}
        self._attempt_attrs: dict[tuple[str, grpc.StatusCode], dict[str, str]] = {}

    def call_started(self, call: Any) -> None:
        super().call_started(call)
        call._otel_t0 = time.perf_counter()

    def call_finished(self, call: Any, code: grpc.StatusCode) -> None:
        duration = time.perf_counter() - call._otel_t0
        super().call_finished(call, code)
        sc = call.subchannel
        key = ("" if sc is None else sc.address, call.method, code)
        attrs = self._call_attrs.get(key)
        if attrs is None:
            attrs = self._call_attrs[key] = {
                TARGET: self._target_name,
                BACKEND: key[0],
                METHOD: key[1].lstrip("/"),
                STATUS: code.name,
            }
        self._inst.call_duration.record(duration, attrs)

    def subchannel_added(self, subchannel: Subchannel) -> None:
        super().subchannel_added(subchannel)
        subchannel.call_observers.append(self._on_attempt)

    def _on_attempt(self, sc: Subchannel, latency_s: float, code: grpc.StatusCode) -> None:
        key = (sc.address, code)
        attrs = self._attempt_attrs.get(key)
        if attrs is None:
            attrs = self._attempt_attrs[key] = {
                TARGET: self._target_name,
                BACKEND: sc.address,
                STATUS: code.name,
            }
        self._inst.attempt_duration.record(latency_s, attrs)


def enable(meter_provider: MeterProvider | None = None) -> None:
    """Record grpc-balancer's instruments with ``meter_provider`` (default: the global
    provider) for every channel created from now on."""
    global _instruments
    provider = meter_provider or otel_metrics.get_meter_provider()
    instruments = _Instruments(provider.get_meter("grpc_balancer", __version__))
    _instruments = instruments
    instrument.register(_NAME, lambda channel: _OtelChannel(channel, instruments))


def disable() -> None:
    """Stop instrumenting new channels."""
    instrument.unregister(_NAME)


# -- collection-time callbacks ------------------------------------------------------------------
def _backends() -> list[tuple[str, BackendSeries]]:
    with _state.lock:
        _prune_drained(_state)
        return [(t.target, b) for t in _state.targets.values() for b in t.backends.values()]


def _b(target: str, b: BackendSeries) -> dict[str, str]:
    return {TARGET: target, BACKEND: b.backend}


def _attempts_started(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(b.attempts_started(), _b(t, b)) for t, b in _backends()]


def _calls_started(options: CallbackOptions) -> Iterable[Observation]:
    with _state.lock:
        started = [(t.target, dict(t.calls_started)) for t in _state.targets.values()]
    return [
        Observation(n, {TARGET: target, METHOD: method.lstrip("/")})
        for target, methods in started
        for method, n in methods.items()
    ]


def _backend_int(field: str) -> Any:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(getattr(b, field), _b(t, b)) for t, b in _backends()]

    return callback


def _target_int(field: str) -> Any:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        with _state.lock:
            targets = list(_state.targets.values())
        return [Observation(getattr(t, field), {TARGET: t.target}) for t in targets]

    return callback


def _in_flight(options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(sum(sc.in_flight for sc in b.subchannels()), _b(t, b)) for t, b in _backends()
    ]


def _states(options: CallbackOptions) -> Iterator[Observation]:
    for t, b in _backends():
        live = list(b.live)
        for state in _CONNECTIVITY:
            n = sum(1 for sc in live if sc.connectivity.name == state)
            yield Observation(n, {**_b(t, b), "grpc.lb.state": state})


def _ejected(options: CallbackOptions) -> Iterable[Observation]:
    return [Observation(sum(1 for sc in b.live if sc.ejected), _b(t, b)) for t, b in _backends()]


def _endpoints(options: CallbackOptions) -> Iterable[Observation]:
    with _state.lock:
        targets = [
            (t.target, sum(1 for b in t.backends.values() if b.live))
            for t in _state.targets.values()
        ]
    return [Observation(n, {TARGET: target}) for target, n in targets]


def _latency(options: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(max((sc.latency.value_s for sc in b.live), default=0.0), _b(t, b))
        for t, b in _backends()
    ]
