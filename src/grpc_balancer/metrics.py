"""Per-backend Prometheus metrics for balanced channels.

Opt-in: call :func:`enable` (or :func:`serve`, which also starts an HTTP endpoint)
*before* creating channels. Channels created while metrics are off carry no
instrument and pay nothing.

The hot path does no ``labels()`` lookups and takes no lock: each backend's counts
live in a small :class:`BackendSeries` found through the subchannel
(``subchannel.attrs``) and updated in place on the event loop; a custom collector
turns them into Prometheus families when scraped. Names follow gRPC's OpenTelemetry
metrics (gRFC A66) as Prometheus exports them (``grpc.client.attempt.duration`` →
``grpc_client_attempt_duration_seconds``), with balancer-specific ones under
``grpc_lb_``. Every series carries ``grpc_target`` and, where it concerns one
backend, ``grpc_lb_backend`` (``host:port``).

Several channels to the same target share (sum into) the same series; a series
disappears when the last channel holding that backend drops it or closes.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from grpc_balancer._observe import instrument
from grpc_balancer._observe.events import Event

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from grpc_balancer.endpoint import Endpoint
    from grpc_balancer.subchannel import Subchannel

log = logging.getLogger("grpc_balancer.metrics")

__all__ = [
    "LATENCY_BUCKETS",
    "BackendSeries",
    "disable",
    "enable",
    "enabled",
    "record_hedge",
    "record_retry",
    "serve",
    "snapshot",
]

#: gRFC A66's latency buckets (seconds).
LATENCY_BUCKETS: tuple[float, ...] = (
    0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004,
    0.005, 0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08,
    0.1, 0.13, 0.16, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1, 2, 5, 10, 20, 50, 100,
)  # fmt: skip
LATENCY_BUCKETS = tuple(float(b) for b in LATENCY_BUCKETS)  # float compares are faster
_LE = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]  # type: ignore[no-untyped-call]

TARGET = "grpc_target"
BACKEND = "grpc_lb_backend"
METHOD = "grpc_method"
STATUS = "grpc_status"

_ATTR = "grpc_balancer.metrics"
_NAME = "prometheus"
_CONNECTIVITY = ("IDLE", "CONNECTING", "READY", "TRANSIENT_FAILURE", "SHUTDOWN")
_HEALTH = ("UNCHECKED", "UNKNOWN", "SERVING", "NOT_SERVING")


class Histogram:
    """Counts per latency bucket plus the sum: an ``observe`` is a bisect and two adds."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def merge(self, other: Histogram) -> None:
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.sum += other.sum

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for le, n in zip(_LE, list(self.counts), strict=True):
            total += n
            out.append((le, float(total)))
        return out


class BackendSeries:
    """Everything counted for one backend of one target, shared by all channels."""

    __slots__ = (
        "attempts",
        "backend",
        "calls",
        "draining",
        "ejections",
        "hedges",
        "live",
        "retired_started",
        "retries",
        "target",
        "transparent_retries",
    )

    def __init__(self, target: str, backend: str) -> None:
        self.target = target
        self.backend = backend
        #: Finished attempts by status code.
        self.attempts: dict[grpc.StatusCode, Histogram] = {}
        #: Finished calls whose last attempt went here, by (method, status code).
        self.calls: dict[tuple[str, grpc.StatusCode], Histogram] = {}
        self.retries = 0
        self.transparent_retries = 0
        self.hedges = 0
        self.ejections = 0
        self.live: set[Subchannel] = set()
        self.draining: set[Subchannel] = set()
        #: Attempts started on subchannels that have left this series.
        self.retired_started = 0

    def on_attempt(self, sc: Subchannel, latency_s: float, code: grpc.StatusCode) -> None:
        """``Subchannel.call_observers`` hook: one finished attempt."""
        hist = self.attempts.get(code)
        if hist is None:
            hist = self.attempts[code] = Histogram()
        hist.observe(latency_s)

    def on_call(self, method: str, code: grpc.StatusCode, duration_s: float) -> None:
        key = (method, code)
        hist = self.calls.get(key)
        if hist is None:
            hist = self.calls[key] = Histogram()
        hist.observe(duration_s)

    def subchannels(self) -> list[Subchannel]:
        return [*self.live, *self.draining]

    def attempts_started(self) -> int:
        """Read from the subchannels' own counters (monotonic, so a scrape racing an
        attempt's end never sees the counter go back)."""
        return self.retired_started + sum(sc.calls_started for sc in self.subchannels())

    def retire(self, sc: Subchannel) -> None:
        """``sc`` leaves the series (under the state lock); keep its started count."""
        if sc in self.live or sc in self.draining:
            self.live.discard(sc)
            self.draining.discard(sc)
            self.retired_started += sc.calls_started


class _TargetSeries:
    def __init__(self, target: str) -> None:
        self.target = target
        self.channels = 0
        self.backends: dict[str, BackendSeries] = {}
        #: Calls that never got a backend (no endpoint reachable, deadline while queued).
        self.unpicked = BackendSeries(target, "")
        self.calls_started: dict[str, int] = {}
        self.resolver_updates = 0
        self.resolver_errors = 0
        self.throttled = 0


class _State:
    """Module-wide state: the series of every instrumented target."""

    def __init__(self, attr: str = _ATTR) -> None:
        #: The ``subchannel.attrs`` key of this state's series (one per sink).
        self.attr = attr
        self.lock = threading.Lock()
        self.targets: dict[str, _TargetSeries] = {}
        self.registries: list[CollectorRegistry] = []
        self.collector = _Collector(self)


# -- per-channel instrument -------------------------------------------------------------------
class _ChannelMetrics:
    """The :class:`~grpc_balancer._observe.instrument.ChannelInstrument` of one channel."""

    def __init__(self, channel: Any, state: _State | None = None) -> None:
        self._st = _state if state is None else state
        self._attr = self._st.attr
        self._target_name: str = channel.target
        self._subchannels: set[Subchannel] = set()
        self._ejected: dict[Subchannel, bool] = {}
        with self._st.lock:
            series = self._st.targets.get(self._target_name)
            if series is None:
                series = self._st.targets[self._target_name] = _TargetSeries(self._target_name)
            series.channels += 1
        self._target = series
        self._closed = False
        observers = getattr(channel, "observers", None)  # resilience events, when present
        if isinstance(observers, list):
            observers.append(self.event)

    # hot path ---------------------------------------------------------------------------
    def call_started(self, call: Any) -> None:
        call._metrics_t0 = time.perf_counter()
        started = self._target.calls_started
        method: str = call.method
        started[method] = started.get(method, 0) + 1

    def call_finished(self, call: Any, code: grpc.StatusCode) -> None:
        duration = time.perf_counter() - call._metrics_t0
        sc = call.subchannel
        series = self._target.unpicked if sc is None else sc.attrs.get(self._attr)
        if series is None:
            series = self._target.unpicked
        series.on_call(call.method, code, duration)

    # state changes ------------------------------------------------------------------------
    def subchannel_added(self, subchannel: Subchannel) -> None:
        if self._closed:
            return
        with self._st.lock:
            target = self._target
            series = target.backends.get(subchannel.address)
            if series is None:
                series = target.backends[subchannel.address] = BackendSeries(
                    target.target, subchannel.address
                )
            series.live.add(subchannel)
        self._subchannels.add(subchannel)
        subchannel.attrs[self._attr] = series
        subchannel.call_observers.append(series.on_attempt)

    def subchannel_removed(self, subchannel: Subchannel) -> None:
        series: BackendSeries | None = subchannel.attrs.get(self._attr)
        self._subchannels.discard(subchannel)
        self._ejected.pop(subchannel, None)
        if series is None:
            return
        with self._st.lock:
            if subchannel.in_flight and subchannel in series.live:
                series.live.discard(subchannel)
                series.draining.add(subchannel)  # its attempts still finish here
            else:
                series.retire(subchannel)
            _drop_if_unused(self._target, series)

    def subchannel_state(self, subchannel: Subchannel) -> None:
        was = self._ejected.get(subchannel, False)
        if subchannel.ejected != was:
            self._ejected[subchannel] = subchannel.ejected
            series = subchannel.attrs.get(self._attr)
            if subchannel.ejected and series is not None:
                series.ejections += 1

    def resolver_update(self, endpoints: Sequence[Endpoint]) -> None:
        self._target.resolver_updates += 1

    def resolver_error(self, error: str) -> None:
        self._target.resolver_errors += 1

    def event(
        self, event: Event, subchannel: Subchannel | None, code: grpc.StatusCode | None
    ) -> None:
        series = None if subchannel is None else subchannel.attrs.get(self._attr)
        if event is Event.THROTTLED:
            self._target.throttled += 1
        elif series is None:
            return
        elif event is Event.RETRY:
            series.retries += 1
        elif event is Event.TRANSPARENT_RETRY:
            series.transparent_retries += 1
        elif event is Event.HEDGE:
            series.hedges += 1

    def closed(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._st.lock:
            target = self._target
            for sc in self._subchannels:
                series = sc.attrs.get(self._attr)
                if series is not None:
                    series.retire(sc)
                    _drop_if_unused(target, series)
            target.channels -= 1
            if target.channels <= 0 and self._st.targets.get(target.target) is target:
                del self._st.targets[target.target]
        self._subchannels.clear()


def _prune_drained(state: _State) -> None:
    """Under the lock, at collection: forget backends whose last attempts have ended."""
    for t in list(state.targets.values()):
        for b in list(t.backends.values()):
            if b.draining:
                _drop_if_unused(t, b)


def _drop_if_unused(target: _TargetSeries, series: BackendSeries) -> None:
    """Called under the lock: forget a backend no channel holds any more."""
    for sc in [sc for sc in series.draining if not sc.in_flight]:
        series.retire(sc)
    if not series.live and not series.draining and target.backends.get(series.backend) is series:
        del target.backends[series.backend]


# -- public API -------------------------------------------------------------------------------
def enable(registry: CollectorRegistry | None = None) -> None:
    """Instrument every channel created from now on and expose the series through
    ``registry`` (default: prometheus-client's default registry). Idempotent."""
    registry = REGISTRY if registry is None else registry
    with _state.lock:
        if not any(r is registry for r in _state.registries):
            registry.register(_state.collector)
            _state.registries.append(registry)
    instrument.register(_NAME, _ChannelMetrics)


def enabled() -> bool:
    return bool(_state.registries)


def disable() -> None:
    """Stop instrumenting new channels and unregister the collector (mainly for tests)."""
    instrument.unregister(_NAME)
    with _state.lock:
        for registry in _state.registries:
            registry.unregister(_state.collector)
        _state.registries.clear()


def serve(
    port: int, addr: str = "0.0.0.0", registry: CollectorRegistry | None = None
) -> WSGIServer:
    """:func:`enable`, then serve ``/metrics`` over HTTP on ``addr:port`` in a daemon
    thread (port 0 picks a free one: read ``server.server_port``). Stop it with
    ``server.shutdown(); server.server_close()``."""
    if not 0 <= port <= 65535:
        raise ValueError(f"metrics port must be 0..65535, got {port}")
    registry = REGISTRY if registry is None else registry
    enable(registry)
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    log.info("serving metrics on http://%s:%d/metrics", addr, server.server_port)
    return server


def record_retry(channel: Any, subchannel: Subchannel | None = None) -> None:
    """Count a retry of an attempt that failed on ``subchannel`` (for attempt loops that
    do not emit ``retry`` events themselves)."""
    _record(channel, Event.RETRY, subchannel)


def record_hedge(channel: Any, subchannel: Subchannel | None = None) -> None:
    """Count an extra hedged attempt sent to ``subchannel``."""
    _record(channel, Event.HEDGE, subchannel)


def _record(channel: Any, event: Event, subchannel: Subchannel | None) -> None:
    inst = getattr(channel, "instrument", None)
    if inst is not None:
        inst.event(event, subchannel, None)


def snapshot(target: str) -> dict[str, BackendSeries]:
    """The live series of ``target`` by backend address (for views and tests)."""
    with _state.lock:
        series = _state.targets.get(target)
        return {} if series is None else dict(series.backends)


# -- exposition -------------------------------------------------------------------------------
class _Collector(Collector):
    def __init__(self, state: _State) -> None:
        self._state = state

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        with self._state.lock:
            _prune_drained(self._state)
            targets = [
                (t, list(t.backends.values()), dict(t.calls_started))
                for t in self._state.targets.values()
            ]
        yield from _families(targets)


def _families(
    targets: list[tuple[_TargetSeries, list[BackendSeries], dict[str, int]]],
) -> Iterator[Metric]:
    tb, tbs = [TARGET, BACKEND], [TARGET, BACKEND, STATUS]
    tm, tbms = [TARGET, METHOD], [TARGET, BACKEND, METHOD, STATUS]
    attempt_started = CounterMetricFamily(
        "grpc_client_attempt_started", "Attempts started, per backend (gRFC A66).", labels=tb
    )
    attempt_duration = HistogramMetricFamily(
        "grpc_client_attempt_duration_seconds",
        "Attempt latency per backend and status; _count is attempts finished (gRFC A66).",
        labels=tbs,
    )
    call_started = CounterMetricFamily(
        "grpc_client_call_started", "Calls started by the application, per method.", labels=tm
    )
    call_duration = HistogramMetricFamily(
        "grpc_client_call_duration_seconds",
        "Call latency as the application saw it, by method and status, labelled with "
        "the backend of the last attempt (empty: no backend was reached) (gRFC A66).",
        labels=tbms,
    )
    in_flight = GaugeMetricFamily("grpc_lb_in_flight", "Attempts in flight per backend.", labels=tb)
    state = GaugeMetricFamily(
        "grpc_lb_subchannel_state",
        "Subchannels to the backend in each connectivity state.",
        labels=[*tb, "state"],
    )
    health = GaugeMetricFamily(
        "grpc_lb_subchannel_health",
        "Subchannels to the backend in each health-check state.",
        labels=[*tb, "health"],
    )
    ejected = GaugeMetricFamily(
        "grpc_lb_subchannel_ejected", "Subchannels ejected by outlier detection.", labels=tb
    )
    ejections = CounterMetricFamily(
        "grpc_lb_ejections", "Times outlier detection ejected the backend.", labels=tb
    )
    latency = GaugeMetricFamily(
        "grpc_lb_latency_estimate_seconds",
        "Peak-EWMA latency estimate the latency-aware policies read (max over channels).",
        labels=tb,
    )
    retries = CounterMetricFamily(
        "grpc_lb_retries", "Attempts on the backend that failed and were retried.", labels=tb
    )
    transparent = CounterMetricFamily(
        "grpc_lb_transparent_retries",
        "Attempts that never reached the backend and were re-sent elsewhere.",
        labels=tb,
    )
    hedges = CounterMetricFamily(
        "grpc_lb_hedges", "Extra hedged attempts sent to the backend.", labels=tb
    )
    throttled = CounterMetricFamily(
        "grpc_lb_retries_throttled",
        "Retries or hedges refused by retryThrottling.",
        labels=[TARGET],
    )
    updates = CounterMetricFamily(
        "grpc_lb_resolver_updates", "Endpoint lists received from the resolver.", labels=[TARGET]
    )
    errors = CounterMetricFamily("grpc_lb_resolver_errors", "Resolver errors.", labels=[TARGET])
    endpoints = GaugeMetricFamily(
        "grpc_lb_endpoints", "Backends currently resolved.", labels=[TARGET]
    )
    channels = GaugeMetricFamily(
        "grpc_lb_channels", "Open instrumented channels to the target.", labels=[TARGET]
    )
    for target, backends, started in targets:
        name = target.target
        updates.add_metric([name], target.resolver_updates)
        errors.add_metric([name], target.resolver_errors)
        throttled.add_metric([name], target.throttled)
        channels.add_metric([name], target.channels)
        endpoints.add_metric([name], sum(1 for b in backends if b.live))
        for method, n in started.items():
            call_started.add_metric([name, method.lstrip("/")], n)
        for b in [*backends, target.unpicked]:
            for (method, code), hist in b.calls.copy().items():
                call_duration.add_metric(
                    [name, b.backend, method.lstrip("/"), code.name],
                    hist.cumulative(),
                    hist.sum,
                )
        for b in backends:
            labels = [name, b.backend]
            subs = b.subchannels()
            attempt_started.add_metric(labels, b.attempts_started())
            for code, hist in b.attempts.copy().items():
                attempt_duration.add_metric([*labels, code.name], hist.cumulative(), hist.sum)
            in_flight.add_metric(labels, sum(sc.in_flight for sc in subs))
            live = list(b.live)
            for value in _CONNECTIVITY:
                n = sum(1 for sc in live if sc.connectivity.name == value)
                state.add_metric([*labels, value], n)
            seen = {*_HEALTH, *(sc.health for sc in live)}
            for value in sorted(seen):
                health.add_metric([*labels, value], sum(1 for sc in live if sc.health == value))
            ejected.add_metric(labels, sum(1 for sc in live if sc.ejected))
            ejections.add_metric(labels, b.ejections)
            latency.add_metric(labels, max((sc.latency.value_s for sc in live), default=0.0))
            retries.add_metric(labels, b.retries)
            transparent.add_metric(labels, b.transparent_retries)
            hedges.add_metric(labels, b.hedges)
    yield from (
        attempt_started,
        attempt_duration,
        call_started,
        call_duration,
        in_flight,
        state,
        health,
        ejected,
        ejections,
        latency,
        retries,
        transparent,
        hedges,
        throttled,
        updates,
        errors,
        endpoints,
        channels,
    )


_state = _State()
