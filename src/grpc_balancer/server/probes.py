"""Server side of the prequal policy: answer load probes with this server's requests in
flight (RIF) and the latency its recent calls had at about that RIF.

:class:`LoadProbes` counts every application call with a grpc.aio server interceptor
and keeps, for each RIF bin, the last few latencies of calls that *arrived* at that
RIF; :meth:`LoadProbes.add_service` serves ``grpc_balancer.probe.v1.LoadProbe/Probe``,
answered from those counters (no application work, no lock: one event loop)::

    probes = LoadProbes()
    server = grpc.aio.server(interceptors=[probes.interceptor()])
    probes.add_service(server)

Unary-response calls (unary-unary and stream-unary) are counted; health checks,
reflection, ORCA and the probes themselves are not. ``grpc-balancer serve --probes``
runs the demo greeter with both.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from grpc_balancer._probe import METHOD, SERVICE, ProbeRequest, ProbeResponse

__all__ = ["LoadProbes"]

#: Calls that are not application load.
_IGNORED_PREFIXES = (
    "/grpc.health.",
    "/grpc.reflection.",
    "/xds.service.orca.",
    f"/{SERVICE}/",
)
#: RIF values below this get a bin each; above it, two bins per doubling.
_EXACT_BINS = 16
_MAX_BINS = 64


def rif_bin(rif: int) -> int:
    """The latency bin of a call that arrived at ``rif`` (this call included): exact
    up to 15, then two bins per doubling (16-23, 24-31, 32-47, ...)."""
    if rif < _EXACT_BINS:
        return max(rif, 0)
    bits = rif.bit_length()
    return min(_EXACT_BINS + (bits - 5) * 2 + ((rif >> (bits - 2)) & 1), _MAX_BINS - 1)


def _bin_floor(index: int) -> int:
    """The lowest RIF that falls in bin ``index``."""
    if index < _EXACT_BINS:
        return index
    half, upper = divmod(index - _EXACT_BINS, 2)
    base = 1 << (half + 4)
    return base + upper * (base >> 1)


class _Bin:
    """The last ``size`` latencies of calls that arrived at one RIF bin, with when
    each finished."""

    __slots__ = ("latencies", "next", "stamps")

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.stamps: list[float] = []
        self.next = 0

    def add(self, latency_s: float, now: float, size: int) -> None:
        if len(self.latencies) < size:
            self.latencies.append(latency_s)
            self.stamps.append(now)
            return
        i = self.next
        self.latencies[i] = latency_s
        self.stamps[i] = now
        self.next = (i + 1) % size

    def median(self, since: float) -> float | None:
        fresh = sorted(
            lat for lat, t in zip(self.latencies, self.stamps, strict=True) if t >= since
        )
        if not fresh:
            return None
        return fresh[len(fresh) // 2]


class LoadProbes:
    """RIF and latency-by-RIF of one server, and the probe service that reports them.

    ``samples_per_bin``: how many recent latencies each RIF bin keeps (the median of
    them is reported); ``window_s``: samples older than this are forgotten (a server
    whose load changed does not answer with last minute's latency).
    """

    def __init__(
        self,
        *,
        samples_per_bin: int = 16,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if samples_per_bin < 1:
            raise ValueError(f"samples_per_bin must be >= 1, got {samples_per_bin}")
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.samples_per_bin = samples_per_bin
        self.window_s = window_s
        self._clock = clock
        #: Application calls in progress now.
        self.requests_in_flight = 0
        self.probes_answered = 0
        self._bins = [_Bin() for _ in range(_MAX_BINS)]

    # -- counting (the interceptor calls these) ---------------------------------------------
    def call_started(self) -> tuple[int, float]:
        """Count a call in; returns (its RIF on arrival, itself included; its start)."""
        self.requests_in_flight += 1
        return self.requests_in_flight, self._clock()

    def call_finished(self, rif: int, started: float) -> None:
        now = self._clock()
        self.requests_in_flight -= 1
        self._bins[rif_bin(rif)].add(now - started, now, self.samples_per_bin)

    # -- answers -------------------------------------------------------------------------------
    def latency_at(self, rif: int) -> float:
        """The median recent latency of calls that arrived at about ``rif``. With no
        fresh sample in that bin, the nearest bin's: a lower bin's scaled up by the RIF
        ratio (Little's law: a busier server answers proportionally later, and a queue
        must not look as fast as an idle server), a higher bin's as it is. 0.0 if
        nothing is known."""
        since = self._clock() - self.window_s
        home = rif_bin(rif)
        bins = self._bins
        for distance in range(_MAX_BINS):
            lower, higher = home - distance, home + distance
            if lower >= 0:
                value = bins[lower].median(since)
                if value is not None:
                    return value * max(rif, 1) / max(_bin_floor(lower), 1) if distance else value
            if distance and higher < _MAX_BINS:
                value = bins[higher].median(since)
                if value is not None:
                    return value
        return 0.0

    def answer(self) -> ProbeResponse:
        """What a probe gets now. A call arriving now would see RIF + 1, so that bin's
        latency is the one reported."""
        self.probes_answered += 1
        rif = self.requests_in_flight
        return ProbeResponse(requests_in_flight=rif, latency_seconds=self.latency_at(rif + 1))

    # -- gRPC ---------------------------------------------------------------------------------
    def interceptor(self) -> grpc.aio.ServerInterceptor:  # type: ignore[type-arg]
        """A grpc.aio server interceptor counting unary-response calls."""
        return _RifInterceptor(self)

    def add_service(self, server: grpc.aio.Server) -> None:
        """Serve ``grpc_balancer.probe.v1.LoadProbe/Probe`` on ``server`` (before it starts)."""
        handler = grpc.unary_unary_rpc_method_handler(
            self._probe,
            request_deserializer=ProbeRequest.FromString,
            response_serializer=ProbeResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {METHOD.rsplit("/", 1)[1]: handler}),)
        )

    async def _probe(self, request: ProbeRequest, context: Any) -> ProbeResponse:
        return self.answer()

    def __repr__(self) -> str:
        return f"<LoadProbes rif={self.requests_in_flight} answered={self.probes_answered}>"


class _RifInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, probes: LoadProbes) -> None:
        self._probes = probes

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = getattr(handler_call_details, "method", "") or ""
        if method.startswith(_IGNORED_PREFIXES):
            return handler
        probes = self._probes
        if handler.unary_unary is not None:
            behavior = handler.unary_unary
            wrap = grpc.unary_unary_rpc_method_handler
        elif handler.stream_unary is not None:
            behavior = handler.stream_unary
            wrap = grpc.stream_unary_rpc_method_handler
        else:
            return handler  # streaming responses are not requests in flight

        async def counted(request: Any, context: Any) -> Any:
            rif, started = probes.call_started()
            try:
                return await behavior(request, context)
            finally:
                probes.call_finished(rif, started)

        return wrap(
            counted,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
