"""Multicallables and call objects of :class:`~grpc_balancer.channel.BalancedChannel`.

A unary call is driven by the coroutine that awaits it (no extra task on the fast
path): pick a subchannel, send the attempt on that endpoint's grpc.aio channel, record
the outcome on the subchannel, and try another endpoint when the attempt never reached
a server. Streaming calls pick once, at their start, and stay on that backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Generator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from grpc.aio import Metadata

from grpc_balancer.picker import PickInfo

if TYPE_CHECKING:
    from grpc_balancer.channel import BalancedChannel
    from grpc_balancer.subchannel import Subchannel

Serializer = Callable[[Any], bytes] | None
Deserializer = Callable[[bytes], Any] | None

#: How many times an attempt that never reached a server is re-sent elsewhere.
MAX_TRANSPARENT_RETRIES = 5

_NOT_SENT_MARKERS = (
    "failed to connect to all addresses",
    "Connection refused",
    "channel is in state TRANSIENT_FAILURE",
    "Channel closed",
)


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """An error raised by the balancer itself (no attempt reached a server)."""
    return grpc.aio.AioRpcError(code, Metadata(), Metadata(), details, None)


def never_reached_server(err: grpc.aio.AioRpcError) -> bool:
    """UNAVAILABLE because the connection could not be made: the request was not sent,
    so re-sending it elsewhere is safe even for non-idempotent methods."""
    if err.code() is not grpc.StatusCode.UNAVAILABLE:
        return False
    details = err.details() or ""
    return any(marker in details for marker in _NOT_SENT_MARKERS)


class _MultiCallableBase:
    _kind = ""

    def __init__(
        self,
        channel: BalancedChannel,
        method: str,
        request_serializer: Serializer,
        response_deserializer: Deserializer,
    ) -> None:
        self._channel = channel
        self._method = method
        self._request_serializer = request_serializer
        self._response_deserializer = response_deserializer
        self._key = (self._kind, method, request_serializer, response_deserializer)

    def inner(self, sc: Subchannel) -> Any:
        """This method's grpc.aio multicallable on ``sc``'s channel (cached per subchannel)."""
        mc = sc.callables.get(self._key)
        if mc is None:
            factory = getattr(sc.channel, self._kind)
            mc = factory(
                self._method,
                request_serializer=self._request_serializer,
                response_deserializer=self._response_deserializer,
                _registered_method=True,
            )
            sc.callables[self._key] = mc
        return mc


class _CallBase:
    """State shared by every balanced call kind."""

    def __init__(
        self,
        mc: _MultiCallableBase,
        timeout: float | None,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> None:
        self._mc = mc
        self._channel = mc._channel
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._metadata = metadata
        self._credentials = credentials
        self._wait_for_ready = bool(wait_for_ready)
        self._compression = compression
        self._attempt: Any = None
        self._subchannel: Subchannel | None = None
        self._error: grpc.aio.AioRpcError | None = None
        self._cancelled = False
        self._done = False
        self._done_callbacks: list[Callable[[Any], None]] = []
        self._finished: asyncio.Future[None] | None = None
        self._started = False
        self._info = PickInfo(mc._method, metadata)

    # -- shared API -------------------------------------------------------------------
    @property
    def subchannel(self) -> Subchannel | None:
        """The backend the (last) attempt went to."""
        return self._subchannel

    @property
    def peer_address(self) -> str | None:
        """``host:port`` of the backend that served (or is serving) this call."""
        return None if self._subchannel is None else self._subchannel.address

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.0)

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._done

    def cancel(self) -> bool:
        if self._done:
            return False
        self._cancelled = True
        if self._attempt is not None:
            self._attempt.cancel()
        if self._finished is not None and not self._started:
            self._finish(rpc_error(grpc.StatusCode.CANCELLED, "Locally cancelled by application!"))
        return True

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._done:
            callback(self)
        else:
            self._done_callbacks.append(callback)

    async def wait_for_connection(self) -> None:
        await self._ensure_attempt()
        if self._attempt is not None:
            await self._attempt.wait_for_connection()

    async def initial_metadata(self) -> Metadata:
        await self._ensure_attempt()
        if self._attempt is None:
            return Metadata()
        try:
            return await self._attempt.initial_metadata()  # type: ignore[no-any-return]
        except grpc.aio.AioRpcError as err:
            return Metadata(*(err.initial_metadata() or ()))

    async def trailing_metadata(self) -> Metadata:
        await self._settled()
        if self._error is not None:
            return Metadata(*(self._error.trailing_metadata() or ()))  # type: ignore[arg-type]
        if self._attempt is None:
            return Metadata()
        return await self._attempt.trailing_metadata()  # type: ignore[no-any-return]

    async def code(self) -> grpc.StatusCode:
        await self._settled()
        if self._error is not None:
            return self._error.code()
        return await self._attempt.code()  # type: ignore[no-any-return]

    async def details(self) -> str:
        await self._settled()
        if self._error is not None:
            return self._error.details() or ""
        return await self._attempt.details()  # type: ignore[no-any-return]

    # -- machinery -------------------------------------------------------------------
    async def _ensure_attempt(self) -> None:
        raise NotImplementedError

    async def _settled(self) -> None:
        raise NotImplementedError

    def _finish(self, error: grpc.aio.AioRpcError | None) -> None:
        if self._done:
            return
        self._error = error
        self._done = True
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)
        callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            callback(self)

    async def _pick(self) -> Subchannel:
        if self._cancelled:
            raise rpc_error(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
        sc = self._channel.pick_now(self._info, self._wait_for_ready)
        if sc is not None:
            return sc
        return await self._channel.pick(self._info, self._deadline, self._wait_for_ready)

    def _remaining(self) -> float | None:
        if self._deadline is None:
            return None
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        return remaining


# ---------------------------------------------------------------------------------------------
# unary → unary
# ---------------------------------------------------------------------------------------------
class BalancedUnaryUnaryMultiCallable(
    _MultiCallableBase, grpc.aio.UnaryUnaryMultiCallable[Any, Any]
):
    _kind = "unary_unary"

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> BalancedUnaryUnaryCall:
        return BalancedUnaryUnaryCall(
            self, request, timeout, metadata, credentials, wait_for_ready, compression
        )


class BalancedUnaryUnaryCall(_CallBase, grpc.aio.UnaryUnaryCall[Any, Any]):
    """Awaiting it runs the call: pick, send, record, re-send if it never left."""

    def __init__(
        self,
        mc: BalancedUnaryUnaryMultiCallable,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> None:
        super().__init__(mc, timeout, metadata, credentials, wait_for_ready, compression)
        self._request = request
        self._response: Any = None
        self._task: asyncio.Task[Any] | None = None

    def __await__(self) -> Generator[Any, None, Any]:
        if self._started:
            return self._wait_result().__await__()
        return self._run().__await__()

    async def _run(self) -> Any:
        self._started = True
        try:
            self._response = await self._drive()
        except grpc.aio.AioRpcError as err:
            self._finish(err)
            raise
        except asyncio.CancelledError:
            self._cancelled = True
            self._finish(rpc_error(grpc.StatusCode.CANCELLED, "Locally cancelled by application!"))
            raise
        self._finish(None)
        return self._response

    async def _wait_result(self) -> Any:
        await self._settled()
        if self._error is not None:
            if self._error.code() is grpc.StatusCode.CANCELLED and self._cancelled:
                raise asyncio.CancelledError()
            raise self._error
        return self._response

    async def _settled(self) -> None:
        if self._done:
            return
        if not self._started:
            self._task = asyncio.get_running_loop().create_task(self._run_quietly())
        if self._finished is None:
            self._finished = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._finished)

    async def _run_quietly(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            await self._run()

    async def _ensure_attempt(self) -> None:
        if not self._started:
            self._task = asyncio.get_running_loop().create_task(self._run_quietly())
        while self._attempt is None and not self._done:
            if self._finished is None:
                self._finished = asyncio.get_running_loop().create_future()
            await asyncio.sleep(0)

    async def _drive(self) -> Any:
        mc: BalancedUnaryUnaryMultiCallable = self._mc  # type: ignore[assignment]
        transparent = 0
        while True:
            picker = self._channel.picker
            sc = await self._pick()
            self._subchannel = sc
            attempt = mc.inner(sc)(
                self._request,
                timeout=self._remaining(),
                metadata=self._metadata,
                credentials=self._credentials,
                wait_for_ready=False,
                compression=self._compression,
            )
            self._attempt = attempt
            started = sc.call_started()
            try:
                response = await attempt
            except grpc.aio.AioRpcError as err:
                code = err.code()
                sc.call_finished(started, code)
                if code is grpc.StatusCode.UNAVAILABLE:
                    sc.record_failure_detail(err.details() or "")
                if (
                    transparent < MAX_TRANSPARENT_RETRIES
                    and not self._cancelled
                    and never_reached_server(err)
                ):
                    transparent += 1
                    self._info.exclude = self._info.exclude | {sc}
                    # The picker has not seen the failure yet: give the subchannel's
                    # state change a moment to land rather than re-sending blindly.
                    await self._channel.wait_for_picker_change(picker, self._deadline, 1.0)
                    continue
                raise
            except asyncio.CancelledError:
                sc.call_finished(started, grpc.StatusCode.CANCELLED)
                raise
            sc.call_finished(started, grpc.StatusCode.OK)
            return response


# ---------------------------------------------------------------------------------------------
# streaming kinds: pick once at the start, then delegate to the attempt
# ---------------------------------------------------------------------------------------------
class _StreamingCall(_CallBase):
    def __init__(
        self,
        mc: _MultiCallableBase,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> None:
        super().__init__(mc, timeout, metadata, credentials, wait_for_ready, compression)
        self._request = request
        self._starting: asyncio.Future[None] | None = None

    async def _ensure_attempt(self) -> None:
        if self._attempt is not None or self._done:
            return
        if self._starting is not None:
            await asyncio.shield(self._starting)
            return
        loop = asyncio.get_running_loop()
        self._starting = loop.create_future()
        self._started = True
        try:
            sc = await self._pick()
            self._subchannel = sc
            kwargs: dict[str, Any] = {
                "timeout": self._remaining(),
                "metadata": self._metadata,
                "credentials": self._credentials,
                "wait_for_ready": False,
                "compression": self._compression,
            }
            inner = self._mc.inner(sc)
            attempt = (
                inner(self._request, **kwargs) if self._request is not None else inner(**kwargs)
            )
            self._attempt = attempt
            started = sc.call_started()
            attempt.add_done_callback(
                lambda c: loop.create_task(self._attempt_done(sc, started, c))
            )
        except grpc.aio.AioRpcError as err:
            self._finish(err)
            raise
        finally:
            self._starting.set_result(None)

    async def _attempt_done(self, sc: Subchannel, started: float, attempt: Any) -> None:
        code = await attempt.code()
        sc.call_finished(started, code)
        if code is grpc.StatusCode.UNAVAILABLE:
            sc.record_failure_detail(await attempt.details() or "")
        self._finish(None)

    async def _settled(self) -> None:
        try:
            await self._ensure_attempt()
        except grpc.aio.AioRpcError:
            return
        if self._attempt is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._attempt.code()

    def cancel(self) -> bool:
        was_done = self._done
        result = super().cancel()
        if not was_done and self._attempt is None:
            self._finish(rpc_error(grpc.StatusCode.CANCELLED, "Locally cancelled by application!"))
        return result

    # response side
    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        await self._ensure_attempt()
        async for response in self._attempt:
            yield response

    async def read(self) -> Any:
        await self._ensure_attempt()
        return await self._attempt.read()

    # request side
    async def write(self, request: Any) -> None:
        await self._ensure_attempt()
        await self._attempt.write(request)

    async def done_writing(self) -> None:
        await self._ensure_attempt()
        await self._attempt.done_writing()

    def __await__(self) -> Generator[Any, None, Any]:
        return self._await_response().__await__()

    async def _await_response(self) -> Any:
        await self._ensure_attempt()
        return await self._attempt


class BalancedUnaryStreamCall(_StreamingCall, grpc.aio.UnaryStreamCall[Any, Any]):
    pass


class BalancedStreamUnaryCall(_StreamingCall, grpc.aio.StreamUnaryCall[Any, Any]):
    pass


class BalancedStreamStreamCall(_StreamingCall, grpc.aio.StreamStreamCall[Any, Any]):
    pass


class BalancedUnaryStreamMultiCallable(
    _MultiCallableBase, grpc.aio.UnaryStreamMultiCallable[Any, Any]
):
    _kind = "unary_stream"

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> BalancedUnaryStreamCall:
        return BalancedUnaryStreamCall(
            self, request, timeout, metadata, credentials, wait_for_ready, compression
        )


class BalancedStreamUnaryMultiCallable(
    _MultiCallableBase, grpc.aio.StreamUnaryMultiCallable[Any, Any]
):
    _kind = "stream_unary"

    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> BalancedStreamUnaryCall:
        return BalancedStreamUnaryCall(
            self, request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )


class BalancedStreamStreamMultiCallable(
    _MultiCallableBase, grpc.aio.StreamStreamMultiCallable[Any, Any]
):
    _kind = "stream_stream"

    def __call__(
        self,
        request_iterator: Any = None,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> BalancedStreamStreamCall:
        return BalancedStreamStreamCall(
            self, request_iterator, timeout, metadata, credentials, wait_for_ready, compression
        )
