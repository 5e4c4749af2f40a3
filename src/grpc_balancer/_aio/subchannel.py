"""The asyncio channel's subchannel: the transport seam on one ``grpc.aio.Channel``.

Connectivity is followed with ``get_state`` / ``wait_for_state_change`` in one small
task; the probe and the server streams are ordinary grpc.aio calls on the same channel.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import grpc.aio

from grpc_balancer.subchannel import PROBE_METHOD, ServerStream, StreamError, Subchannel

#: How long a closing subchannel waits for its watcher to see SHUTDOWN.
_WATCH_EXIT_S = 0.2


class AioSubchannel(Subchannel):
    """A :class:`Subchannel` on a ``grpc.aio.Channel`` (the calls use it too)."""

    channel: grpc.aio.Channel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._watch_task: asyncio.Task[None] | None = None

    def watch_connectivity(self) -> None:
        self._watch_task = asyncio.get_running_loop().create_task(
            self._watch(), name=f"grpc_balancer.subchannel[{self.address}]"
        )

    async def _watch(self) -> None:
        state = self.channel.get_state(try_to_connect=True)
        self._set_connectivity(state)
        while not self._closing:
            try:
                await self.channel.wait_for_state_change(state)
                state = self.channel.get_state(try_to_connect=True)
            except Exception:
                if self._closing:  # the channel closed under the wait: done
                    return
                raise
            self._set_connectivity(state)

    def stop_watching(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()

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
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(self._close_channel())

    async def _close_channel(self) -> None:
        with contextlib.suppress(Exception):
            await self.channel.close(None)

    async def aclose_transport(self, grace: float | None = None) -> None:
        """grpcio gives the channel's calls ``grace`` s, then cancels them. Then the
        watcher sees SHUTDOWN, so its grpc operation completes while this loop runs
        (not after it, as "Event loop is closed" noise); grpc.aio reports SHUTDOWN only
        once every call object made on the channel is freed, so the wait is short."""
        with contextlib.suppress(Exception):
            await self.channel.close(grace)
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
