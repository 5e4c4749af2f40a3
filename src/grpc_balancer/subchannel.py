"""A subchannel: one connection to one endpoint, plus everything the policies read
about it (connectivity, health, ejection, in-flight calls, latency estimate).

Every decision lives here, on the event loop; what differs between the asyncio and
the sync channel is a small *transport seam* — how connectivity is watched, how the
failure reason is probed, how a server stream (health ``Watch``, ORCA out-of-band) is
opened, how the connection is closed. :class:`grpc_balancer._aio.subchannel.AioSubchannel`
implements it on a ``grpc.aio.Channel``, :class:`grpc_balancer._sync.subchannel.SyncSubchannel`
on the very ``grpc.Channel`` its calls use (one connection per endpoint, as grpcio).

Every connectivity change is reported to the listener (the channel), which hands it
to the policy, which publishes a new picker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import grpc
import grpc.aio

from grpc_balancer._core.load import LatencyEstimate
from grpc_balancer.endpoint import Endpoint

log = logging.getLogger("grpc_balancer.subchannel")

Connectivity = grpc.ChannelConnectivity
_OK = grpc.StatusCode.OK

#: Health values: UNCHECKED = health checking off; UNKNOWN = waiting for the first answer.
HEALTH_UNCHECKED = "UNCHECKED"
HEALTH_UNKNOWN = "UNKNOWN"
HEALTH_SERVING = "SERVING"

#: The method of the failure probe: no server has it; only the status matters.
PROBE_METHOD = "/grpc_balancer.internal.Probe/LastError"

ChannelOptions = Sequence[tuple[str, Any]]


class SubchannelListener(Protocol):
    def on_subchannel_state(self, subchannel: Subchannel) -> None: ...


class StreamError(Exception):
    """A server stream opened with :meth:`Subchannel.open_server_stream` ended with a
    status other than OK (either transport's error, as one type)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class ServerStream(Protocol):
    """The responses of one server-streaming call, read on the event loop: iteration
    ends at an OK status and raises :class:`StreamError` at any other."""

    def __aiter__(self) -> AsyncIterator[Any]: ...

    def cancel(self) -> None:
        """Stop the call (idempotent; safe after it ended)."""


class Subchannel:
    """State and counters for one endpoint. Mutated only on the event loop."""

    #: The connection: a ``grpc.aio.Channel`` (asyncio channel) or a ``grpc.Channel``
    #: (sync channel); only the transport methods below use it.
    channel: grpc.aio.Channel | grpc.Channel

    def __init__(
        self,
        endpoint: Endpoint,
        channel: grpc.aio.Channel | grpc.Channel,
        listener: SubchannelListener,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.address = endpoint.address
        self.channel = channel
        self._listener = listener
        self._clock = clock
        self.connectivity: Connectivity = Connectivity.IDLE
        self.failed_since_ready = False
        self.wants_connection = False
        self.health: str = HEALTH_UNCHECKED
        self.ejected = False
        self.last_error = ""
        self.in_flight = 0
        self.calls_started = 0
        self.calls_failed = 0
        #: The one latency estimate of this backend (peak_ewma, status, metrics).
        self.latency = LatencyEstimate()
        self.created_at = clock()
        self.ready_since: float | None = None
        #: Extra per-policy or per-feature state (ORCA weights, outlier counters...).
        self.attrs: dict[str, Any] = {}
        #: Called as ``observer(subchannel, latency_s, code)`` when a call finishes.
        self.call_observers: list[Callable[[Subchannel, float, grpc.StatusCode], None]] = []
        #: Called as ``observer(subchannel, trailing_metadata)`` when a call on this
        #: subchannel ends (ORCA load reports); the calls skip the lookup when empty.
        self.trailer_observers: list[Callable[[Subchannel, Any], None]] = []
        self.callables: dict[tuple[Any, ...], Any] = {}
        self._watching = False
        self._closing = False
        self._usable = False
        self._probe_pending = False

    # -- state -----------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        """READY, healthy (or unchecked) and not ejected: policies may pick it."""
        return self._usable

    @property
    def healthy(self) -> bool:
        return self.health in (HEALTH_UNCHECKED, HEALTH_SERVING)

    @property
    def still_trying(self) -> bool:
        """Not usable yet but may become so soon (counts as CONNECTING, not failure)."""
        if self.connectivity is Connectivity.READY:
            return self.health == HEALTH_UNKNOWN and not self.ejected
        if self._probe_pending:
            return True  # failed, but not reported until we know why
        return (
            self.connectivity in (Connectivity.IDLE, Connectivity.CONNECTING)
            and not self.failed_since_ready
        )

    def describe_problem(self) -> str:
        if self.ejected:
            return "ejected by outlier detection"
        if self.connectivity is Connectivity.READY and not self.healthy:
            return f"health check reports {self.health}"
        if self.failed_since_ready:
            return f"TRANSIENT_FAILURE ({self.last_error or 'failed to connect'})"
        return self.connectivity.name.replace("ChannelConnectivity.", "")

    def set_health(self, health: str) -> None:
        if health != self.health:
            log.info("%s: health %s -> %s", self.address, self.health, health)
            self.health = health
            self._changed()

    def set_ejected(self, ejected: bool) -> None:
        if ejected != self.ejected:
            self.ejected = ejected
            self._changed()

    def notify(self) -> None:
        """Something a policy reads (e.g. an ORCA weight) changed: rebuild pickers."""
        self._changed()

    def _changed(self) -> None:
        self._usable = self.connectivity is Connectivity.READY and self.healthy and not self.ejected
        if not self._closing:
            self._listener.on_subchannel_state(self)

    # -- connectivity -------------------------------------------------------------------
    def connect(self) -> None:
        """Start dialing (idempotent) and keep the connection up from now on."""
        self.wants_connection = True
        if not self._watching and not self._closing:
            self._watching = True
            self.watch_connectivity()

    def _set_connectivity(self, state: Connectivity) -> None:
        if state is self.connectivity or self._closing:
            return
        previous, self.connectivity = self.connectivity, state
        if state is Connectivity.READY:
            self.failed_since_ready = False
            self.last_error = ""
            self.ready_since = self._clock()
            log.info("%s: %s -> READY", self.address, previous.name)
        elif state is Connectivity.TRANSIENT_FAILURE:
            self.failed_since_ready = True
            self.ready_since = None
            log.info("%s: %s -> TRANSIENT_FAILURE", self.address, previous.name)
            # Publish only once we know why, so the first failing call can say it.
            if not self._probe_pending:
                self._probe_pending = True
                asyncio.get_running_loop().create_task(self._probe_then_publish())
            return
        else:
            if previous is Connectivity.READY:
                self.ready_since = None
                log.info("%s: READY -> %s", self.address, state.name)
            if self._probe_pending:
                return  # still failed (sticky); the probe publishes when it knows why
        self._changed()

    async def _probe_then_publish(self) -> None:
        """gRPC's connectivity API does not say *why* a connection failed; a call that
        fails fast on the failed channel does ("Connection refused", DNS errors...)."""
        try:
            code, details = await self.probe()
            if code is grpc.StatusCode.UNAVAILABLE and self.failed_since_ready:
                self.last_error = _short_error(details)
        except Exception:  # pragma: no cover - a closed channel during shutdown
            pass
        self._probe_pending = False
        self._changed()

    def record_failure_detail(self, details: str) -> None:
        """A call on this subchannel failed with UNAVAILABLE: remember why."""
        self.last_error = _short_error(details)

    # -- call accounting (hot path) -------------------------------------------------------
    def call_started(self) -> float:
        self.in_flight += 1
        self.calls_started += 1
        return self._clock()

    def call_finished(self, started_at: float, code: grpc.StatusCode) -> None:
        self.in_flight -= 1
        now = self._clock()
        latency = now - started_at
        if code is not _OK:
            self.calls_failed += 1
        self.latency.on_call(latency, code, now)
        for observer in self.call_observers:
            observer(self, latency, code)
        if self._closing and self.in_flight == 0:
            self._close_now()

    def trailers_received(self, trailers: Any) -> None:
        """A call here ended with ``trailers``; only called when there are observers."""
        for observer in self.trailer_observers:
            observer(self, trailers)

    # -- shutdown ----------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop picking it; close the channel once in-flight calls are done."""
        if self._closing:
            return
        self._closing = True
        self._usable = False
        if self.in_flight == 0:
            self._close_now()

    def _close_now(self) -> None:
        self.stop_watching()
        self.close_transport()

    async def aclose(self, grace: float | None = None) -> None:
        """Close now (channel shutdown): calls in flight get at most ``grace`` s, then
        end with CANCELLED; returns once the connection is closed."""
        self._closing = True
        self._usable = False
        await self.aclose_transport(grace)

    # -- the transport seam: what an aio and a sync subchannel do differently -------------
    # All of it is called on the event loop; whatever the transport does elsewhere
    # (grpcio threads) comes back to the loop before it touches any state.
    def watch_connectivity(self) -> None:
        """Follow the connection's state, asking it to connect (and to reconnect when
        it goes IDLE), and report each state with :meth:`_set_connectivity`."""
        raise NotImplementedError

    def stop_watching(self) -> None:
        """Stop what :meth:`watch_connectivity` started (idempotent)."""

    async def probe(self) -> tuple[grpc.StatusCode, str]:
        """The status of one call sent without waiting for a connection (the reason a
        failed connection gives)."""
        raise NotImplementedError

    def open_server_stream(
        self,
        method: str,
        request: Any,
        *,
        request_serializer: Callable[[Any], bytes],
        response_deserializer: Callable[[bytes], Any],
        wait_for_ready: bool,
    ) -> ServerStream:
        """Start a unary-stream call on this connection (health ``Watch``, ORCA)."""
        raise NotImplementedError

    async def unary_call(
        self,
        method: str,
        request: Any,
        *,
        request_serializer: Callable[[Any], bytes],
        response_deserializer: Callable[[bytes], Any],
        timeout: float,
    ) -> Any:
        """One unary call on this connection outside the balanced call path (prequal's
        load probes): the response, or :class:`StreamError` with its status."""
        raise NotImplementedError

    def close_transport(self) -> None:
        """Close the connection soon, without waiting."""

    async def aclose_transport(self, grace: float | None = None) -> None:
        """Close the connection now (channel shutdown), its calls given ``grace`` s."""
        self.stop_watching()

    def __repr__(self) -> str:
        flags = [self.connectivity.name]
        if self.health not in (HEALTH_UNCHECKED, HEALTH_SERVING):
            flags.append(self.health)
        if self.ejected:
            flags.append("EJECTED")
        return f"<Subchannel {self.address} {' '.join(flags)} in_flight={self.in_flight}>"


def _short_error(details: str) -> str:
    # "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1:
    #  Failed to connect to remote host: Connection refused" → the useful tail.
    marker = "last error: "
    if marker in details:
        details = details.split(marker, 1)[1]
    return details.strip()
