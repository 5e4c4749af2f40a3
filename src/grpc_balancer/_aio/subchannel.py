"""The asyncio channel's subchannel: the transport seam on one ``grpc.aio.Channel``.

Connectivity is followed with ``get_state`` / ``wait_for_state_change`` in one small
task; the probe and the server streams are ordinary grpc.aio calls on the same channel.
The ``grpc.aio.Channel`` is created when the subchannel is first dialed (through the
channel's :class:`~grpc_balancer._core.dialing.Dialer`, a slice per loop turn), so an
endpoint a policy never connects (pick_first's spares, ring_hash's unused ones) costs
no grpc channel at all, and a list of 10,000 endpoints is taken in without blocking.
"""

from __future__ import annotations

import asyncio
import contextlib
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

#: How long a closing subchannel waits for its watcher to see SHUTDOWN.
_WATCH_EXIT_S = 0.2
#: How long a closing subchannel that cancelled calls lets their last completions arrive.
_CANCEL_DRAIN_S = 0.005
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
        self._watch_task: asyncio.Task[None] | None = None
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
        state = self.channel.get_state(try_to_connect=True)  # starts the connection now
        context = None if self._dialer is None else self._dialer.context
        self._in_window = self._dialer is not None
        self._watch_task = asyncio.get_running_loop().create_task(
            self._watch(state), name=f"grpc_balancer.subchannel[{self.address}]", context=context
        )
        return True

    async def _watch(self, state: grpc.ChannelConnectivity) -> None:
        channel = self.channel
        try:
            while True:
                if self._in_window and state in _SETTLED:
                    self._leave_window()
                self._set_connectivity(state)
                if self._closing:
                    return
                try:
                    await channel.wait_for_state_change(state)
                    state = channel.get_state(try_to_connect=True)
                except Exception:
                    if self._closing:  # the channel closed under the wait: done
                        return
                    raise
        finally:
            self._leave_window()

    def _leave_window(self) -> None:
        """The first connection attempt is over: the dialer may start another."""
        if self._in_window:
            self._in_window = False
            cast("Dialer", self._dialer).settled()

    def stop_watching(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
        self._leave_window()  # a task cancelled before it ran has no finally

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
        task, self._watch_task = self._watch_task, None
        if task is not None and not task.done():
            _, pending = await asyncio.wait([task], timeout=_WATCH_EXIT_S)
            if pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


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
