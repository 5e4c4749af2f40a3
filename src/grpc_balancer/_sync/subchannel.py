"""The sync channel's subchannel: one ``grpc.Channel`` per endpoint, for everything.

Calls go out on it from caller threads; connectivity, the failure probe, health
``Watch`` and the ORCA out-of-band stream use the same channel (so the same TCP
connection, as grpcio has one per endpoint), through the transport seam of
:class:`~grpc_balancer.subchannel.Subchannel`:

* connectivity: ``grpc.Channel.subscribe(callback, try_to_connect=True)``; grpcio calls
  back on its own threads, the callback only hands the state to the loop thread;
* the probe, and side unary calls (load probes): a sync ``.future()`` call whose done
  callback resolves a loop future;
* a server stream: a sync response iterator can only be read by blocking, so each
  stream has one small daemon thread that posts every message to the loop; cancelling
  the call ends the thread, and closing the subchannel joins it.

Decisions (state, health, picking) stay on the loop thread. The per-call counters are
bumped from many caller threads, so they are guarded by one small lock per
subchannel; anything that touches policy state (call observers, closing the channel)
is handed back to the loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.subchannel import (
    PROBE_METHOD,
    ServerStream,
    StreamError,
    Subchannel,
    SubchannelListener,
)

log = logging.getLogger("grpc_balancer._sync.subchannel")

Connectivity = grpc.ChannelConnectivity

#: How often close(grace) looks whether the calls in flight have finished.
_GRACE_POLL_S = 0.01

#: How long closing waits for a stream's reader thread after cancelling its call.
_JOIN_S = 5.0


def _no_op(state: Connectivity) -> None:
    return None


class SyncSubchannel(Subchannel):
    """Counters are lock-guarded; state changes still happen only on the loop thread."""

    channel: grpc.Channel

    def __init__(
        self,
        endpoint: Endpoint,
        channel: grpc.Channel,
        listener: SubchannelListener,
        *,
        call_soon: Callable[..., None],
    ) -> None:
        super().__init__(endpoint, channel, listener)
        self._call_soon = call_soon
        self._lock = threading.Lock()
        self._channel_closed = False
        self._subscribed = False
        self._closer: asyncio.Task[None] | None = None
        #: Open server streams (each with its reader thread), guarded by ``_lock``.
        self._streams: set[_ThreadStream] = set()
        #: sync multicallables on this endpoint's channel, by (kind, method, ser, deser).
        self.sync_callables: dict[tuple[Any, ...], Any] = {}

    # -- the calls (caller threads) ------------------------------------------------------
    def new_sync_callable(
        self, key: tuple[Any, ...], kind: str, method: str, ser: Any, deser: Any
    ) -> Any:
        """The multicallable for ``key`` on this endpoint's channel; ``None`` once the
        subchannel is closing (the caller picks again)."""
        with self._lock:
            if self._closing:
                return None
            mc = self.sync_callables.get(key)
            if mc is None:
                factory = getattr(self.channel, kind)
                mc = factory(
                    method,
                    request_serializer=ser,
                    response_deserializer=deser,
                    _registered_method=True,
                )
                self.sync_callables[key] = mc
            return mc

    # -- connectivity (subscribe callbacks on grpcio threads, the rest on the loop) --------
    # (The seam's methods, and _close_channel, run on the loop thread only.)
    def watch_connectivity(self) -> None:
        if not self._channel_closed:
            self._subscribed = True
            self.channel.subscribe(self._on_connectivity, try_to_connect=True)

    def _on_connectivity(self, state: Connectivity) -> None:
        self._call_soon(self._connectivity_changed, state)

    def _connectivity_changed(self, state: Connectivity) -> None:
        if self._closing or self._channel_closed:
            return
        self._set_connectivity(state)
        if state is Connectivity.IDLE:
            self._reconnect()

    def _reconnect(self) -> None:
        """A dropped connection leaves the channel IDLE; ask it to dial again, as the
        aio subchannel does with ``get_state(try_to_connect=True)``. The sync
        ``grpc.Channel`` has that call only on its core channel; a subscribe with
        ``try_to_connect`` would do too, but leaves a flag that grpcio's poller thread
        acts on after a close (raising "Channel closed!" there), so it is the fallback."""
        core = getattr(self.channel, "_channel", None)
        check = getattr(core, "check_connectivity_state", None)
        if check is not None:
            with contextlib.suppress(ValueError):  # closed meanwhile
                check(True)
            return
        self.channel.subscribe(_no_op, try_to_connect=True)  # pragma: no cover
        self.channel.unsubscribe(_no_op)  # pragma: no cover

    def stop_watching(self) -> None:
        subscribed, self._subscribed = self._subscribed, False
        if subscribed:
            with contextlib.suppress(Exception):
                self.channel.unsubscribe(self._on_connectivity)

    # -- the failure probe ----------------------------------------------------------------
    async def probe(self) -> tuple[grpc.StatusCode, str]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[grpc.StatusCode, str]] = loop.create_future()

        def resolve(result: tuple[grpc.StatusCode, str]) -> None:
            if not done.done():
                done.set_result(result)

        def on_done(future: Any) -> None:  # a grpcio thread, or this one if already done
            self._call_soon(resolve, (future.code(), future.details() or ""))

        if self._channel_closed:
            return grpc.StatusCode.CANCELLED, "subchannel closed"
        call: Any = self.channel.unary_unary(PROBE_METHOD, None, None).future(
            b"", timeout=1.0, wait_for_ready=False
        )
        call.add_done_callback(on_done)
        try:
            return await done
        finally:
            call.cancel()

    # -- side unary calls (load probes) -----------------------------------------------------
    async def unary_call(
        self,
        method: str,
        request: Any,
        *,
        request_serializer: Callable[[Any], bytes],
        response_deserializer: Callable[[bytes], Any],
        timeout: float,
    ) -> Any:
        if self._channel_closed:
            raise StreamError(grpc.StatusCode.CANCELLED, "subchannel closed")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Any] = loop.create_future()

        def resolve(future: Any) -> None:  # on the loop thread
            if done.done():
                return
            code = future.code()
            if code is grpc.StatusCode.OK:
                done.set_result(future.result())
            else:
                done.set_exception(StreamError(code, future.details() or ""))

        call: Any = self.channel.unary_unary(
            method,
            request_serializer=request_serializer,
            response_deserializer=response_deserializer,
        ).future(request, timeout=timeout, wait_for_ready=False)
        call.add_done_callback(lambda future: self._call_soon(resolve, future))
        try:
            return await done
        finally:
            call.cancel()

    # -- server streams ---------------------------------------------------------------------
    def open_server_stream(
        self,
        method: str,
        request: Any,
        *,
        request_serializer: Callable[[Any], bytes],
        response_deserializer: Callable[[bytes], Any],
        wait_for_ready: bool,
    ) -> ServerStream:
        if self._channel_closed:
            return _ClosedStream()
        call = self.channel.unary_stream(
            method,
            request_serializer=request_serializer,
            response_deserializer=response_deserializer,
        )(request, wait_for_ready=wait_for_ready)
        stream = _ThreadStream(call, self._call_soon, self._stream_ended, self.address)
        with self._lock:
            self._streams.add(stream)
        stream.start()
        return stream

    def _stream_ended(self, stream: _ThreadStream) -> None:  # the stream's own thread
        with self._lock:
            self._streams.discard(stream)

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

    def close_transport(self) -> None:
        self.stop_watching()
        try:
            self._closer = asyncio.get_running_loop().create_task(self._close_when_unwatched())
        except RuntimeError:  # pragma: no cover - no loop: close at once
            self._close_channel()

    async def aclose_transport(self, grace: float | None = None) -> None:
        with self._lock:
            self._closing = True
        if grace:  # calls in flight on the channel may run that long
            loop = asyncio.get_running_loop()
            end = loop.time() + grace
            while self.in_flight and loop.time() < end:
                await asyncio.sleep(min(_GRACE_POLL_S, max(end - loop.time(), 0.0)))
        self.stop_watching()
        await self._close_when_unwatched()

    async def _close_when_unwatched(self) -> None:
        """Close the channel once grpcio's connectivity poller for it has stopped: a
        close while it runs (right after ``subscribe``, or between two of its checks)
        makes it raise "Channel closed!" in its thread. Unsubscribed, it stops at its
        next turn (every 0.2 s); the wait is bounded all the same."""
        try:
            for _ in range(200):
                if not self._poller_running():
                    break
                await asyncio.sleep(0.005)
        finally:
            self._close_channel()

    def _poller_running(self) -> bool:
        # grpcio's own state (grpc._channel.Channel); read defensively.
        state = getattr(self.channel, "_connectivity_state", None)
        return bool(getattr(state, "polling", False))

    def _close_channel(self) -> None:
        """Unsubscribe, close the channel (which cancels its calls and streams), then
        join the streams' reader threads, which end as their calls do."""
        self.stop_watching()
        if self._channel_closed:
            return
        self._channel_closed = True
        with self._lock:
            streams, self._streams = list(self._streams), set()
            self.sync_callables = {}
        for stream in streams:
            stream.cancel()
        with contextlib.suppress(Exception):
            self.channel.close()
        for stream in streams:
            stream.join(_JOIN_S)


class _End:
    """What a reader thread posts last: the call's final status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details


class _ThreadStream:
    """A sync unary-stream call read by one daemon thread; messages reach the loop
    through ``call_soon``, in order, then the final status."""

    def __init__(
        self,
        call: Any,
        call_soon: Callable[..., None],
        on_end: Callable[[_ThreadStream], None],
        address: str,
    ) -> None:
        self._call = call
        self._call_soon = call_soon
        self._on_end = on_end
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._thread = threading.Thread(
            target=self._read, name=f"grpc_balancer.stream[{address}]", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self._call:
                self._call_soon(self._queue.put_nowait, message)
        except grpc.RpcError:
            pass  # the call's status says why
        except Exception as err:  # pragma: no cover - a deserializer failure
            log.debug("server stream reader: %r", err)
        try:
            end = _End(self._call.code(), self._call.details() or "")
        except Exception:  # pragma: no cover - no status after an unexpected error
            end = _End(grpc.StatusCode.UNKNOWN, "the stream ended without a status")
        self._call_soon(self._queue.put_nowait, end)
        self._on_end(self)

    async def __aiter__(self) -> AsyncIterator[Any]:
        while True:
            item = await self._queue.get()
            if isinstance(item, _End):
                if item.code is grpc.StatusCode.OK:
                    return
                raise StreamError(item.code, item.details)
            yield item

    def cancel(self) -> None:
        self._call.cancel()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():  # pragma: no cover - grpcio did not end the call
                log.warning("%s still running %.1fs after its call was cancelled", self, timeout)


class _ClosedStream:
    """The stream opened on a subchannel whose channel is already closed."""

    async def __aiter__(self) -> AsyncIterator[Any]:
        raise StreamError(grpc.StatusCode.CANCELLED, "subchannel closed")
        yield  # pragma: no cover - makes this an async generator

    def cancel(self) -> None:
        return None
