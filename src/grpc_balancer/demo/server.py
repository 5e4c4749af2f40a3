"""A runnable greeter server with the standard health service and reflection, and a
graceful stop: health goes NOT_SERVING first (so balancing clients stop sending new
calls), then in-flight calls get a grace period.

The greeter's descriptors live in a private pool (``greeter_pb2.POOL``, see ``make
generate``), so reflection answers from a pool of its own holding the greeter, health
and reflection files: ``grpcurl -plaintext :50051 describe greeter.Greeter`` works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Awaitable, Callable

import grpc
import grpc.aio
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.demo.servicer import SERVICE_NAME, Faults, GreeterServicer
from grpc_balancer.server.load_reports import LoadReporter
from grpc_balancer.server.probes import LoadProbes

log = logging.getLogger("grpc_balancer.server")

#: A drain ends once no call arrived for this many ticks of this length.
_DRAIN_TICK_S = 0.05
_DRAIN_QUIET_TICKS = 4

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GreeterServer:
    """One greeter server. ``port=0`` binds an ephemeral port (see :attr:`port`)."""

    def __init__(
        self,
        port: int = 0,
        host: str = "127.0.0.1",
        *,
        faults: Faults | None = None,
        grace_s: float = 5.0,
        drain_delay_s: float = 0.0,
        load_reporter: LoadReporter | None = None,
        probes: LoadProbes | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.port = port
        self.faults = faults or Faults()
        self.grace_s = grace_s
        self.drain_delay_s = drain_delay_s
        #: ORCA load reports (trailer + out-of-band service) when set; see load_reports.py
        self.load_reporter = load_reporter
        #: Load probes for the prequal policy when set; see server/probes.py
        self.probes = probes
        self.health = HealthServicer()
        self.servicer: GreeterServicer | None = None
        self._server: grpc.aio.Server | None = None
        self.serving = False

    @property
    def started(self) -> bool:
        return self._server is not None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def start(self) -> int:
        reporter, probes = self.load_reporter, self.probes
        interceptors: list[grpc.aio.ServerInterceptor] = []  # type: ignore[type-arg]
        if probes is not None:
            interceptors.append(probes.interceptor())
        if reporter is not None:
            interceptors.append(reporter.interceptor())
        server = grpc.aio.server(
            interceptors=interceptors or None, options=[("grpc.so_reuseport", 0)]
        )
        if reporter is not None:
            reporter.add_oob_service(server)
        if probes is not None:
            probes.add_service(server)
        bind = f"{self.address.rsplit(':', 1)[0]}:{self.requested_port}"
        why = _bind_failure(self.host, self.requested_port) if self.requested_port else None
        if why is None:
            try:
                port = server.add_insecure_port(bind)
            except RuntimeError:  # grpcio >= 1.85 raises "Failed to bind to address ..."
                port = 0
            why = "address unavailable" if port == 0 else None
        if why is not None:
            raise OSError(f"cannot listen on {bind}: {why}")
        self.port = port
        self.servicer = GreeterServicer(port, self.faults)
        greeter_pb2_grpc.add_GreeterServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        enable_reflection(server)
        await server.start()
        self._server = server
        await self.set_serving(True)
        return port

    async def set_serving(self, serving: bool) -> None:
        """Flip the overall ("") and greeter.Greeter health statuses."""
        status = SERVING if serving else NOT_SERVING
        self.serving = serving
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def stop(self, grace: float | None = None) -> None:
        """Graceful: NOT_SERVING, then a drain (until calls stop arriving, at most
        ``drain_delay_s``), then stop with a grace period for the calls in flight.

        The drain matters: grpcio's server cancels (CANCELLED, not the retryable
        REFUSED_STREAM) every call that arrives once its stop() has begun, and clients
        keep sending until they see NOT_SERVING (health checking) or the GOAWAY."""
        server = self._server
        if server is None:
            return
        with contextlib.suppress(Exception):
            await self.set_serving(False)
        if self.drain_delay_s:
            await self._drain(self.drain_delay_s)
        await server.stop(self.grace_s if grace is None else grace)
        self._server = None

    async def stop_now(self) -> None:
        """Cancel the calls still in flight and stop (a second Ctrl-C)."""
        if self._server is not None:
            await self._server.stop(0)

    @property
    def in_flight(self) -> int:
        return 0 if self.servicer is None else self.servicer.in_flight

    async def _drain(self, limit_s: float) -> None:
        """Wait until no new call has arrived for a few ticks, at most ``limit_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        quiet = 0
        seen = -1
        while quiet < _DRAIN_QUIET_TICKS and loop.time() < deadline:
            calls = 0 if self.servicer is None else self.servicer.calls
            quiet = quiet + 1 if calls == seen else 0
            seen = calls
            await asyncio.sleep(min(_DRAIN_TICK_S, max(0.0, deadline - loop.time())))

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


def enable_reflection(server: grpc.aio.Server) -> bool:
    """Serve reflection when the optional grpcio-reflection is installed (the
    ``reflection`` extra); without it the demo serves everything else. It is an extra
    because grpcio imports an installed ``grpc_reflection`` on every ``import grpc``."""
    try:
        from grpc_reflection.v1alpha import reflection, reflection_pb2
    except ImportError:
        return False
    names = (
        greeter_pb2.DESCRIPTOR.services_by_name["Greeter"].full_name,
        health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        reflection.SERVICE_NAME,
    )
    # The files reflection describes: the greeter (from its private pool), health and
    # reflection itself (from the default pool). None of them imports another file.
    pool = descriptor_pool.DescriptorPool()
    for file in (greeter_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR):
        pool.AddSerializedFile(file.serialized_pb)
    reflection.enable_server_reflection(names, server, pool=pool)
    return True


def _bind_failure(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound, in the OS's words ("address already in use",
    "cannot assign requested address"), or None if it can. Checked before grpcio tries,
    whose own error says neither (and logs a line of its own on stderr)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return f"cannot resolve {host!r}: {exc.strerror or exc}"
    for family, kind, proto, _name, sockaddr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpcio does
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                return (exc.strerror or str(exc)).lower()
    return None


async def serve_forever(
    server: GreeterServer,
    *,
    on_started: Callable[[GreeterServer], Awaitable[None] | None] | None = None,
    on_stopping: Callable[[GreeterServer], Awaitable[None]] | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Run ``server`` until SIGINT/SIGTERM, then stop it gracefully (SIGUSR1 toggles health).

    A signal during ``on_started`` (e.g. registration retries) stops at once. While
    draining, ``announce`` is told what is happening; a second SIGINT/SIGTERM cancels the
    calls still in flight and stops now."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if not server.started:
        await server.start()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    background: set[asyncio.Task[None]] = set()

    def toggle_health() -> None:
        task = loop.create_task(server.set_serving(not server.serving))
        background.add(task)
        task.add_done_callback(background.discard)

    loop.add_signal_handler(signal.SIGUSR1, toggle_health)
    try:
        if on_started is not None:
            maybe = on_started(server)
            if maybe is not None:
                await _unless_stopped(maybe, stop)
        await stop.wait()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        now = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, now.set)
        try:
            log.info("stopping %s gracefully", server.address)
            if announce is not None and stop.is_set():  # not when on_started failed
                announce(
                    f"draining {server.in_flight} in-flight calls for up to {server.grace_s:g} s; "
                    "Ctrl-C again to stop now"
                )
            await _unless_stopped(_graceful_stop(server, on_stopping), now)
            if now.is_set():
                await server.stop_now()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


async def _graceful_stop(
    server: GreeterServer, on_stopping: Callable[[GreeterServer], Awaitable[None]] | None
) -> None:
    if on_stopping is not None:
        await on_stopping(server)
    await server.stop()


async def _unless_stopped(work: Awaitable[None], stop: asyncio.Event) -> None:
    """Await ``work``, or cancel it as soon as ``stop`` is set."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if not task.cancelled():
        task.result()  # its error, if any
