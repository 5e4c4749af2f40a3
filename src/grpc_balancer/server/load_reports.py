"""Server side of ORCA: tell balancing clients how loaded this server is.

:class:`LoadReporter` measures what gRFC A58 needs — QPS, errors per second, CPU
utilization and, when the server knows its capacity, application utilization (the
time-average of calls in progress over ``capacity``) — and publishes it two ways:

* per call: :meth:`LoadReporter.interceptor` adds the ``endpoint-load-metrics-bin``
  trailer (``xds.data.orca.v3.OrcaLoadReport``) to every unary response, and the same
  bytes as ``x-endpoint-load-metrics-bin`` (grpcio hides the standard key from Python);
* out of band: :meth:`LoadReporter.add_oob_service` serves
  ``xds.service.orca.v3.OpenRcaService/StreamCoreMetrics``.

Both grpcio's own ``weighted_round_robin`` and ours balance by these reports::

    reporter = LoadReporter(capacity=8)
    server = grpc.aio.server(interceptors=[reporter.interceptor()])
    reporter.add_oob_service(server)
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio

from grpc_balancer._orca import (
    MIRROR_TRAILER_KEY,
    OOB_SERVICE,
    TRAILER_KEY,
    OrcaLoadReport,
    OrcaLoadReportRequest,
)

#: Calls that are not application load (health checks, reflection, ORCA itself).
_IGNORED_PREFIXES = ("/grpc.health.", "/grpc.reflection.", f"/{OOB_SERVICE}/")
_MIN_OOB_INTERVAL_S = 1.0
_CPU_SAMPLE_S = 0.5


class _Decaying:
    """An exponentially decaying sum: ``rate()`` is events per second over ~``tau_s``."""

    __slots__ = ("_stamp", "_tau", "_value")

    def __init__(self, tau_s: float, now: float) -> None:
        self._tau = tau_s
        self._value = 0.0
        self._stamp = now

    def add(self, amount: float, now: float) -> None:
        self._value = self._value * math.exp(-(now - self._stamp) / self._tau) + amount
        self._stamp = now

    def rate(self, now: float) -> float:
        return self._value * math.exp(-(now - self._stamp) / self._tau) / self._tau


class LoadReporter:
    """Counts this server's calls and builds ORCA reports from them.

    ``capacity``: how many calls the server runs at once at full load (0: unknown, then
    only CPU utilization is reported). ``application_utilization``: your own measure
    (0..1+) instead of the in-progress average. ``window_s``: the averaging time.
    """

    def __init__(
        self,
        *,
        capacity: int = 0,
        window_s: float = 2.0,
        application_utilization: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.capacity = capacity
        self._app_utilization = application_utilization
        self._clock = clock
        now = clock()
        self._calls = _Decaying(window_s, now)
        self._errors = _Decaying(window_s, now)
        self._busy = _Decaying(window_s, now)  # integral of calls in progress
        self.in_progress = 0
        self._changed_at = now
        self._cpu_wall = time.monotonic()
        self._cpu_time = time.process_time()
        self._cpu_utilization = 0.0
        self._cpus = os.cpu_count() or 1

    # -- counting --------------------------------------------------------------------------
    def _account(self, now: float) -> None:
        self._busy.add(self.in_progress * (now - self._changed_at), now)
        self._changed_at = now

    def call_started(self) -> None:
        self._account(self._clock())
        self.in_progress += 1

    def call_finished(self, ok: bool) -> None:
        now = self._clock()
        self._account(now)
        self.in_progress -= 1
        self._calls.add(1.0, now)
        if not ok:
            self._errors.add(1.0, now)

    # -- reports -----------------------------------------------------------------------------
    def cpu_utilization(self) -> float:
        """This process's CPU use over the last ~0.5 s, as a fraction of all cores."""
        wall = time.monotonic()
        if wall - self._cpu_wall >= _CPU_SAMPLE_S:
            cpu = time.process_time()
            self._cpu_utilization = (cpu - self._cpu_time) / (wall - self._cpu_wall) / self._cpus
            self._cpu_wall, self._cpu_time = wall, cpu
        return self._cpu_utilization

    def report(self) -> OrcaLoadReport:
        now = self._clock()
        self._account(now)
        report = OrcaLoadReport(
            cpu_utilization=self.cpu_utilization(),
            rps_fractional=self._calls.rate(now),
            eps=self._errors.rate(now),
        )
        if self._app_utilization is not None:
            report.application_utilization = max(self._app_utilization(), 0.0)
        elif self.capacity:
            report.application_utilization = self._busy.rate(now) / self.capacity
        return report

    # -- per-call trailer --------------------------------------------------------------------
    def interceptor(self) -> grpc.aio.ServerInterceptor:  # type: ignore[type-arg]
        """A grpc.aio server interceptor that counts unary calls and attaches the report."""
        return _TrailerInterceptor(self)

    # -- out of band -------------------------------------------------------------------------
    def add_oob_service(self, server: grpc.aio.Server) -> None:
        """Serve ``OpenRcaService/StreamCoreMetrics`` on ``server`` (before it starts)."""
        handler = grpc.unary_stream_rpc_method_handler(
            self._stream_core_metrics,
            request_deserializer=OrcaLoadReportRequest.FromString,
            response_serializer=OrcaLoadReport.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(OOB_SERVICE, {"StreamCoreMetrics": handler}),)
        )

    async def _stream_core_metrics(
        self,
        request: OrcaLoadReportRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[OrcaLoadReport]:
        interval = request.report_interval.seconds + request.report_interval.nanos / 1e9
        interval = max(interval, _MIN_OOB_INTERVAL_S)
        while True:
            yield self.report()
            await asyncio.sleep(interval)


class _TrailerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, reporter: LoadReporter) -> None:
        self._reporter = reporter

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method: str = getattr(handler_call_details, "method", "") or ""
        if handler is None or handler.unary_unary is None or method.startswith(_IGNORED_PREFIXES):
            return handler
        behavior = handler.unary_unary
        reporter = self._reporter

        async def reporting(request: Any, context: grpc.aio.ServicerContext) -> Any:  # type: ignore[type-arg]
            reporter.call_started()
            ok = False
            try:
                response = await behavior(request, context)
                ok = True
                return response
            finally:
                reporter.call_finished(ok)
                if ok:
                    trailers = tuple(context.trailing_metadata() or ())
                    data = reporter.report().SerializeToString()
                    context.set_trailing_metadata(
                        (*trailers, (TRAILER_KEY, data), (MIRROR_TRAILER_KEY, data))
                    )

        return grpc.unary_unary_rpc_method_handler(
            reporting,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
