"""The asyncio channel's subchannel: the transport seam on one ``grpc.aio.Channel``.

Connectivity is followed with grpcio's own watch on the channel, stepped from
callbacks (no task per endpoint); the probe and the server streams are ordinary
grpc.aio calls on the same channel.
The ``grpc.aio.Channel`` is created when the subchannel is first dialed (through the
channel's :class:`~grpc_balancer._core.dialing.Dialer`, a slice per loop turn), so an
endpoint a policy never connects (pick_first's spares, ring_hash's unused ones) costs
no grpc channel at all, and a list of 10,000 endpoints is taken in without blocking.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import grpc
import grpc.aio

from grpc_balancer._core.dialing import Dialer
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.subchannel import (
    PROBE_METHOD,
    ServerStream,
    StreamError,
    Subchannel,
    SubchannelListener,
)

log = logging.getLogger("grpc_balancer._aio.subchannel")

#: How long a closing subchannel waits for its watcher to see SHUTDOWN.
_WATCH_EXIT_S = 0.2
#: How long a closing subchannel that cancelled calls lets their last completions arrive.
_CANCEL_DRAIN_S = 0.005
_SHUTDOWN = grpc.ChannelConnectivity.SHUTDOWN
#: grpcio's Cython connectivity states (ints) as grpc.ChannelConnectivity.
_STATE_OF = {state.value[0]: state for state in grpc.ChannelConnectivity}
#: States that end a first connection attempt (it leaves the dialer's window).
_SETTLED = frozenset(
    {
        grpc.ChannelConnectivity.READY,
        grpc.ChannelConnectivity.TRANSIENT_FAILURE,
        grpc.ChannelConnectivity.SHUTDOWN,
    }
)


class AioSubchannel(Subchannel):
    """A :class:`Subchannel` on a ``grpc.aio.Channel`` (the calls use it too), made by
    ``open_channel(address)`` when first needed (one callable shared by a channel's
    subchannels: no closure per endpoint)."""

    def __init__(
        self,
        endpoint: Endpoint,
        open_channel: Callable[[str], grpc.aio.Channel],
        listener: SubchannelListener,
        dialer: Dialer | None = None,
    ) -> None:
        self._open_channel = open_channel
        self._transport: grpc.aio.Channel | None = None
        self._dialer = dialer
        #: The connectivity watch (see _watch_step): live, its grpcio coroutine and the
        #: future that coroutine awaits, and who waits for it to end (the close).
        self._watch_live = False
        self._watch_coro: Any = None
        self._watch_future: asyncio.Future[Any] | None = None
        self._watch_ended: asyncio.Future[None] | None = None
        #: Counted in the dialer's window until the first connection attempt settles.
        self._in_window = False
        #: Unary attempts driven on grpcio's Cython call (not grpc.aio call objects, so
        #: the grpc.aio channel does not track them): the close ends them.
        self.direct_calls: set[Any] = set()
        super().__init__(endpoint, None, listener)  # type: ignore[arg-type]

    @property
    def channel(self) -> grpc.aio.Channel:
        """The endpoint's grpc.aio channel, created on first use."""
        if self._transport is None:
            self._transport = self._open_channel(self.address)
        return self._transport

    @channel.setter
    def channel(self, value: grpc.aio.Channel | grpc.Channel) -> None:
        # None from Subchannel.__init__: made on first use.
        self._transport = cast("grpc.aio.Channel | None", value)

    @property
    def has_transport(self) -> bool:
        """Whether the grpc.aio channel exists yet (it is made when first dialed)."""
        return self._transport is not None

    def watch_connectivity(self) -> None:
        if self._dialer is None:
            self._start_watching()
        else:
            self._dialer.submit(self._start_watching)

    def _start_watching(self) -> bool:
        """Start connecting and follow the connectivity; False if closed meanwhile."""
        if self._closing:
            return False
        # grpcio's Cython channel, watched directly (see _watch_step)
        self._core: Any = self.channel._channel  # type: ignore[attr-defined]
        self._core.check_connectivity_state(True)  # starts the connection now
        self._in_window = self._dialer is not None
        self._watch_live = True
        self._watch_context = None if self._dialer is None else self._dialer.context
        # the first report on the next loop turn, as a task's first step would run
        asyncio.get_running_loop().call_soon(self._watch_step, None, context=self._watch_context)
        return True

    def _watch_step(self, future: asyncio.Future[Any] | None) -> None:
        """Follow the connectivity without a task of our own: grpcio's Cython watch
        coroutine is stepped from the done-callback of the future it awaits. (A task
        per endpoint cost about 2 KiB and a third of a 10,000-endpoint connect storm's
        CPU: ``bench/fleet_cost.py``.) Report the state, arm the next watch, repeat."""
        if future is not self._watch_future or not self._watch_live:
            return  # a watch that was stopped (or replaced) completing late
        self._watch_future = None
        core = self._core
        try:
            while True:
                coro = self._watch_coro
                if coro is not None:
                    try:
                        pending = coro.send(None)
                    except StopIteration:
                        self._watch_coro = None  # the state changed (or the watch ended)
                    else:
                        self._watch_future = pending
                        pending.add_done_callback(self._watch_step, context=self._watch_context)
                        return
                state = _STATE_OF[core.check_connectivity_state(True)]
                if self._in_window and state in _SETTLED:
                    self._leave_window()
                self._set_connectivity(state)
                if self._closing or state is _SHUTDOWN:
                    break
                self._watch_coro = core.watch_connectivity_state(state.value[0], None)
        except Exception:
            if not self._closing:  # the channel closed under the watch: done
                log.exception("%s: connectivity watch failed", self.address)
        self._end_watch()

    def _end_watch(self) -> None:
        self._watch_live = False
        coro, self._watch_coro = self._watch_coro, None
        if coro is not None:
            coro.close()  # grpcio's operation completes with the channel; no one waits
        self._watch_future = None
        self._leave_window()
        ended = self._watch_ended
        if ended is not None and not ended.done():
            ended.set_result(None)

    def _leave_window(self) -> None:
        """The first connection attempt is over: the dialer may start another."""
        if self._in_window:
            self._in_window = False
            cast("Dialer", self._dialer).settled()

    def stop_watching(self) -> None:
        if self._watch_live:
            self._end_watch()
        self._leave_window()  # a dial stopped before its first step

    async def probe(self) -> tuple[grpc.StatusCode, str]:
        probe = self.channel.unary_unary(PROBE_METHOD, None, None)
        try:
            await probe(b"", timeout=1.0, wait_for_ready=False)
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details() or ""
        return grpc.StatusCode.OK, ""

    def open_server_stream(
        self,
        method: str,
        request: Any,
        *,
        request_serializer: Callable[[Any], bytes],
        response_deserializer: Callable[[bytes], Any],
        wait_for_ready: bool,
    ) -> ServerStream:
        stream = self.channel.unary_stream(
            method,
            request_serializer=request_serializer,
            response_deserializer=response_deserializer,
        )
        return _AioServerStream(stream(request, wait_for_ready=wait_for_ready))

    async def unary_call(
        self,
        method: str,
        request: Any,
        *,
        request_serializer: Callable[[Any], bytes],
        response_deserializer: Callable[[bytes], Any],
        timeout: float,
    ) -> Any:
        call = self.channel.unary_unary(
            method,
            request_serializer=request_serializer,
            response_deserializer=response_deserializer,
        )
        try:
            return await call(request, timeout=timeout, wait_for_ready=False)
        except grpc.aio.AioRpcError as err:
            raise StreamError(err.code(), err.details() or "") from None

    def close_transport(self) -> None:
        if self._transport is None:
            return  # never dialed: nothing to close
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(self._close_channel(self._transport))

    async def _close_channel(self, channel: grpc.aio.Channel) -> None:
        with contextlib.suppress(Exception):
            await channel.close(None)

    async def aclose_transport(self, grace: float | None = None) -> None:
        """grpcio gives the channel's calls ``grace`` s, then cancels them. Then the
        watcher sees SHUTDOWN, so its grpc operation completes while this loop runs
        (not after it, as "Event loop is closed" noise); grpc.aio reports SHUTDOWN only
        once every core call made on the channel is freed, which is why the unary
        attempts cancelled here let go of theirs (:meth:`_UnaryAttempt.detach`) even
        when the application keeps their call objects."""
        if self._transport is not None:
            loop = asyncio.get_running_loop()
            cancelling = self.in_flight > 0
            until = None if grace is None else loop.time() + grace
            direct = [call for call in self.direct_calls if not call.done()]
            if grace and direct:  # as grpc.aio does for its own calls: grace, then cancel
                await asyncio.wait([call._task for call in direct], timeout=grace)
            for call in direct:
                call.cancel()
            left = None if until is None else max(until - loop.time(), 0.0)
            with contextlib.suppress(Exception):
                await self._transport.close(left)
            if direct:  # cancelled: their tasks end at once; then drop grpcio's calls
                await asyncio.wait([call._task for call in direct], timeout=_WATCH_EXIT_S)
                for call in direct:
                    call.detach()
            if cancelling:
                # A cancelled grpcio call returns before the core has completed its
                # batch; that completion follows in a moment, through grpc's poller,
                # addressed to this loop. Let it land here, not after the loop is
                # closed (as "Event loop is closed" noise in the next one).
                await asyncio.sleep(_CANCEL_DRAIN_S)
        if self._watch_live:  # the watch sees SHUTDOWN (its grpcio operation completes)
            self._watch_ended = asyncio.get_running_loop().create_future()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._watch_ended), _WATCH_EXIT_S)
            if self._watch_live:
                self._end_watch()


class _AioServerStream:
    """A grpc.aio unary-stream call read as a :class:`ServerStream`."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._messages: AsyncIterator[Any] = call.__aiter__()

    def __aiter__(self) -> _AioServerStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._messages.__anext__()
        except grpc.aio.AioRpcError as err:
            raise StreamError(err.code(), err.details() or "") from None

    def cancel(self) -> None:
        self._call.cancel()
