"""A subchannel whose calls go out on a synchronous grpcio channel, from caller threads.

Connectivity, health and the failure probe stay on the inherited grpc.aio channel,
driven by the sync channel's event-loop thread (one implementation for both channel
kinds). Calls use a second, sync channel to the same endpoint, made on first use. The
per-call counters are bumped from many caller threads, so they are guarded by one
small lock per subchannel; anything that touches policy state (call observers,
closing the channel) is handed back to the loop thread.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import grpc
import grpc.aio

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.subchannel import Subchannel, SubchannelListener

Connectivity = grpc.ChannelConnectivity


class SyncSubchannel(Subchannel):
    """Counters are lock-guarded; state changes still happen only on the loop thread."""

    def __init__(
        self,
        endpoint: Endpoint,
        channel: grpc.aio.Channel,
        listener: SubchannelListener,
        *,
        make_sync_channel: Callable[[str], grpc.Channel],
        call_soon: Callable[..., None],
    ) -> None:
        super().__init__(endpoint, channel, listener)
        self._make_sync_channel = make_sync_channel
        self._call_soon = call_soon
        self._lock = threading.Lock()
        self._sync_channel: grpc.Channel | None = None
        #: sync multicallables on this endpoint's channel, by (kind, method, ser, deser).
        self.sync_callables: dict[tuple[Any, ...], Any] = {}

    # -- the sync channel ----------------------------------------------------------------
    def new_sync_callable(
        self, key: tuple[Any, ...], kind: str, method: str, ser: Any, deser: Any
    ) -> Any:
        """The multicallable for ``key``, dialing the sync channel on first use;
        ``None`` once the subchannel is closing (the caller picks again)."""
        with self._lock:
            if self._closing:
                return None
            mc = self.sync_callables.get(key)
            if mc is None:
                if self._sync_channel is None:
                    self._sync_channel = self._make_sync_channel(self.address)
                factory = getattr(self._sync_channel, kind)
                mc = factory(
                    method,
                    request_serializer=ser,
                    response_deserializer=deser,
                    _registered_method=True,
                )
                self.sync_callables[key] = mc
            return mc

    def _drop_sync_channel(self) -> None:
        """Close the sync channel; the next call (if any) makes a fresh one."""
        with self._lock:
            old, self._sync_channel = self._sync_channel, None
            self.sync_callables = {}
        if old is not None:
            with contextlib.suppress(Exception):
                old.close()

    def _set_connectivity(self, state: Connectivity) -> None:
        # Back from a failure: the sync channel may still sit in its own reconnect
        # backoff and fail calls fast for seconds; a fresh one dials at once.
        recovered = state is Connectivity.READY and self.failed_since_ready
        super()._set_connectivity(state)
        if recovered and not self._closing:
            self._drop_sync_channel()

    # -- call accounting (caller threads) ------------------------------------------------
    def try_call_started(self) -> float | None:
        """Count a call about to be sent; ``None`` if the subchannel is closing."""
        with self._lock:
            if self._closing:
                return None
            self.in_flight += 1
            self.calls_started += 1
        return self._clock()

    def call_started(self) -> float:
        with self._lock:
            self.in_flight += 1
            self.calls_started += 1
        return self._clock()

    def call_finished(self, started_at: float, code: grpc.StatusCode) -> None:
        now = self._clock()
        latency = now - started_at
        with self._lock:
            self.in_flight -= 1
            if code is not grpc.StatusCode.OK:
                self.calls_failed += 1
            self.latency.on_call(latency, code, now)
            close = self._closing and self.in_flight == 0
        if self.call_observers:
            self._call_soon(self._run_observers, latency, code)
        if close:
            self._call_soon(self._close_now)

    def trailers_received(self, trailers: Any) -> None:
        # ORCA observers update policy state: on the loop thread, like call observers.
        self._call_soon(super().trailers_received, trailers)

    def _run_observers(self, latency: float, code: grpc.StatusCode) -> None:
        for observer in self.call_observers:
            observer(self, latency, code)

    # -- shutdown (loop thread) ------------------------------------------------------------
    def shutdown(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._usable = False
            idle = self.in_flight == 0
        if idle:
            self._close_now()

    def _close_now(self) -> None:
        super()._close_now()
        self._drop_sync_channel()

    async def aclose(self) -> None:
        with self._lock:
            self._closing = True
        self._drop_sync_channel()
        await super().aclose()
