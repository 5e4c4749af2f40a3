"""Multicallables of :class:`~grpc_balancer.sync_channel.SyncBalancedChannel`.

A call runs in the caller's thread: pick on the current picker, send on that
endpoint's sync grpcio channel, count it on the subchannel, and re-send elsewhere when
the attempt never reached a server (the same rule as the async calls). Streaming calls
pick once and return grpcio's own call object, so iteration, ``cancel()`` and
metadata behave exactly as with a plain grpcio channel.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import grpc
import grpc.aio

from grpc_balancer.calls import MAX_TRANSPARENT_RETRIES, never_reached_server, rpc_error
from grpc_balancer.picker import PickInfo

if TYPE_CHECKING:
    from grpc_balancer.sync_channel import SyncBalancedChannel
    from grpc_balancer.sync_subchannel import SyncSubchannel

if TYPE_CHECKING:  # grpc-stubs makes these generic; grpcio's runtime classes are not

    class _CallFuture(grpc.CallFuture[Any]): ...

    class _UnaryUnaryBase(grpc.UnaryUnaryMultiCallable[Any, Any]): ...

    class _UnaryStreamBase(grpc.UnaryStreamMultiCallable[Any, Any]): ...

    class _StreamUnaryBase(grpc.StreamUnaryMultiCallable[Any, Any]): ...

    class _StreamStreamBase(grpc.StreamStreamMultiCallable[Any, Any]): ...

else:

    class _CallFuture(grpc.Call, grpc.Future): ...

    _UnaryUnaryBase = grpc.UnaryUnaryMultiCallable
    _UnaryStreamBase = grpc.UnaryStreamMultiCallable
    _StreamUnaryBase = grpc.StreamUnaryMultiCallable
    _StreamStreamBase = grpc.StreamStreamMultiCallable

_OK = grpc.StatusCode.OK
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_CANCELLED = grpc.StatusCode.CANCELLED


class _Retry(Exception):
    """Internal: the attempt never left; pick again (after excluding the subchannel)."""


def _code(err: grpc.RpcError) -> grpc.StatusCode:
    return cast(grpc.Call, err).code()


def _not_sent(err: grpc.RpcError) -> bool:
    return never_reached_server(cast(grpc.aio.AioRpcError, err))


class _SyncMultiCallable:
    _kind = ""

    def __init__(
        self,
        channel: SyncBalancedChannel,
        method: str,
        request_serializer: Any,
        response_deserializer: Any,
    ) -> None:
        self._channel = channel
        self._method = method
        self._ser = request_serializer
        self._deser = response_deserializer
        self._key = (self._kind, method, request_serializer, response_deserializer)

    def _inner(self, sc: SyncSubchannel) -> Any:
        """This method on ``sc``'s sync channel, or ``None`` if ``sc`` is closing."""
        mc = sc.sync_callables.get(self._key)
        if mc is None:
            mc = sc.new_sync_callable(self._key, self._kind, self._method, self._ser, self._deser)
        return mc

    def _start(
        self, info: PickInfo, deadline: float | None, wait_for_ready: bool
    ) -> tuple[SyncSubchannel, Any, float, float | None]:
        """Pick and count one attempt: (subchannel, inner multicallable, start time,
        timeout left). Skips subchannels that are closing under us."""
        channel = self._channel
        for _ in range(MAX_TRANSPARENT_RETRIES + 1):
            picker = channel.picker
            sc = channel.pick(info, deadline, wait_for_ready)
            inner = self._inner(sc)
            started = sc.try_call_started() if inner is not None else None
            if started is not None:
                if deadline is None:
                    return sc, inner, started, None
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    return sc, inner, started, remaining
                sc.call_finished(started, grpc.StatusCode.DEADLINE_EXCEEDED)
                raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            info.exclude = info.exclude | {sc}
            channel.wait_for_picker_change(picker, deadline, 1.0)
        channel.check_usable()
        raise rpc_error(_UNAVAILABLE, f"no backend of {channel.target!r} accepted the call")

    def _closed_under_us(self, sc: SyncSubchannel, started: float) -> None:
        """grpcio raised ValueError: the endpoint channel was closed between pick and send."""
        sc.call_finished(started, _CANCELLED)
        if self._channel._unusable is not None:
            raise rpc_error(_CANCELLED, "channel closed while the call was starting") from None


# ---------------------------------------------------------------------------------------------
# unary request: unary → unary and stream → unary share the blocking / future paths
# ---------------------------------------------------------------------------------------------
class _UnaryResponse(_SyncMultiCallable):
    _retry_transparently = True

    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        return self._blocking(
            request, timeout, metadata, credentials, wait_for_ready, compression, False
        )

    def with_call(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> tuple[Any, grpc.Call]:
        return self._blocking(  # type: ignore[no-any-return]
            request, timeout, metadata, credentials, wait_for_ready, compression, True
        )

    def future(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> BalancedFuture:
        return BalancedFuture(
            self, request, timeout, metadata, credentials, bool(wait_for_ready), compression
        )

    def _blocking(
        self,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
        with_call: bool,
    ) -> Any:
        channel = self._channel
        if channel._unusable is not None:
            channel.check_usable()
        deadline = None if timeout is None else time.monotonic() + timeout
        info = PickInfo(self._method, metadata)
        wfr = bool(wait_for_ready)
        transparent = 0
        while True:
            picker = channel.picker
            sc, inner, started, remaining = self._start(info, deadline, wfr)
            try:
                if with_call:
                    result = inner.with_call(
                        request, remaining, metadata, credentials, False, compression
                    )
                else:
                    result = inner(request, remaining, metadata, credentials, False, compression)
            except grpc.RpcError as err:
                code = _code(err)
                sc.call_finished(started, code)
                if code is _UNAVAILABLE:
                    sc.record_failure_detail(cast(grpc.Call, err).details() or "")
                    if (
                        self._retry_transparently
                        and transparent < MAX_TRANSPARENT_RETRIES
                        and _not_sent(err)
                    ):
                        transparent += 1
                        info.exclude = info.exclude | {sc}
                        channel.wait_for_picker_change(picker, deadline, 1.0)
                        continue
                raise
            except ValueError:
                self._closed_under_us(sc, started)
                transparent += 1
                if transparent > MAX_TRANSPARENT_RETRIES:
                    raise
                info.exclude = info.exclude | {sc}
                continue
            sc.call_finished(started, _OK)
            return result


class SyncUnaryUnaryMultiCallable(_UnaryResponse, _UnaryUnaryBase):
    _kind = "unary_unary"


class SyncStreamUnaryMultiCallable(_UnaryResponse, _StreamUnaryBase):
    """The request iterator can be read only once, so no transparent re-send."""

    _kind = "stream_unary"
    _retry_transparently = False


# ---------------------------------------------------------------------------------------------
# streaming response: pick once, return grpcio's call object
# ---------------------------------------------------------------------------------------------
class _StreamResponse(_SyncMultiCallable):
    def __call__(
        self,
        request: Any,
        timeout: float | None = None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> Any:
        channel = self._channel
        channel.check_usable()
        deadline = None if timeout is None else time.monotonic() + timeout
        info = PickInfo(self._method, metadata)
        try:
            sc, inner, started, remaining = self._start(info, deadline, bool(wait_for_ready))
        except grpc.RpcError as err:
            return FailedCall(err)  # raised when read, as grpcio does
        try:
            call = inner(request, remaining, metadata, credentials, False, compression)
        except ValueError:
            self._closed_under_us(sc, started)
            raise
        if not call.add_callback(lambda: _stream_done(sc, started, call)):
            _stream_done(sc, started, call)
        return call


def _stream_done(sc: SyncSubchannel, started: float, call: Any) -> None:
    code = call.code()
    sc.call_finished(started, code)
    if code is _UNAVAILABLE:
        sc.record_failure_detail(call.details() or "")


class SyncUnaryStreamMultiCallable(_StreamResponse, _UnaryStreamBase):
    _kind = "unary_stream"


class SyncStreamStreamMultiCallable(_StreamResponse, _StreamStreamBase):
    _kind = "stream_stream"


class FailedCall(grpc.RpcError, _CallFuture):
    """A streaming call that could not start (no backend, deadline, closed channel):
    iterating raises the error, like grpcio's own call object."""

    def __init__(self, err: grpc.RpcError) -> None:
        super().__init__()
        self._err = cast(grpc.Call, err)

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        raise cast(Exception, self._err)

    def code(self) -> grpc.StatusCode:
        return self._err.code()

    def details(self) -> str:
        return self._err.details() or ""

    def initial_metadata(self) -> Any:
        return ()

    def trailing_metadata(self) -> Any:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:  # type: ignore[override]
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        raise cast(Exception, self._err)

    def exception(self, timeout: float | None = None) -> Any:
        return self._err

    def traceback(self, timeout: float | None = None) -> Any:
        return None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def __str__(self) -> str:
        return f"<FailedCall {self.code()}: {self.details()}>"


# ---------------------------------------------------------------------------------------------
# .future(): non-blocking; waits for a backend on the loop, re-sends never-sent attempts
# ---------------------------------------------------------------------------------------------
class BalancedFuture(_CallFuture):
    """What ``.future()`` returns: a ``grpc.Future`` and ``grpc.Call``, like grpcio's."""

    def __init__(
        self,
        mc: _UnaryResponse,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool,
        compression: grpc.Compression | None,
    ) -> None:
        mc._channel.check_usable()
        self._mc = mc
        self._channel = mc._channel
        self._request = request
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._metadata = metadata
        self._credentials = credentials
        self._wait_for_ready = wait_for_ready
        self._compression = compression
        self._info = PickInfo(mc._method, metadata)
        self._cond = threading.Condition()
        self._attempt: Any = None
        self._response: Any = None
        self._error: Any = None
        self._done = False
        self._cancelled = False
        self._transparent = 0
        self._callbacks: list[Callable[[BalancedFuture], None]] = []
        self._no_arg_callbacks: list[Callable[[], None]] = []
        self._begin()

    # -- the attempt loop ------------------------------------------------------------------
    def _begin(self) -> None:
        try:
            sc = self._channel.core.pick_now(self._info, self._wait_for_ready)
        except grpc.RpcError as err:
            self._finish(None, err)
            return
        if sc is None:
            self._pick_on_loop(None)
        else:
            self._send(cast("SyncSubchannel", sc))

    def _pick_on_loop(self, after: Any) -> None:
        core = self._channel.core

        async def pick() -> Any:
            if after is not None:
                await core.wait_for_picker_change(after, self._deadline, 1.0)
            return await core.pick(self._info, self._deadline, self._wait_for_ready)

        try:
            future = self._channel._thread.submit(pick())
        except RuntimeError:
            self._finish(None, rpc_error(_CANCELLED, "channel closed"))
            return
        future.add_done_callback(self._picked)

    def _picked(self, future: Any) -> None:
        try:
            sc = future.result()
        except grpc.RpcError as err:
            self._finish(None, err)
            return
        except BaseException as exc:
            self._finish(None, rpc_error(_CANCELLED, f"channel closed ({exc!r})"))
            return
        self._send(sc)

    def _send(self, sc: SyncSubchannel) -> None:
        picker = self._channel.picker
        inner = self._mc._inner(sc)
        started = sc.try_call_started() if inner is not None else None
        if started is None:
            self._again(sc, picker)
            return
        remaining = None if self._deadline is None else self._deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            sc.call_finished(started, grpc.StatusCode.DEADLINE_EXCEEDED)
            self._finish(None, rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
            return
        try:
            attempt = inner.future(
                self._request,
                remaining,
                self._metadata,
                self._credentials,
                False,
                self._compression,
            )
        except ValueError:
            sc.call_finished(started, _CANCELLED)
            self._again(sc, picker)
            return
        with self._cond:
            self._attempt = attempt
            cancelled = self._cancelled
        if cancelled:
            attempt.cancel()
        attempt.add_done_callback(lambda a: self._attempt_done(sc, started, picker, a))

    def _attempt_done(self, sc: SyncSubchannel, started: float, picker: Any, attempt: Any) -> None:
        code = attempt.code()
        sc.call_finished(started, code)
        if code is _OK:
            self._finish(attempt.result(), None)
            return
        if code is _UNAVAILABLE:
            sc.record_failure_detail(attempt.details() or "")
            if self._mc._retry_transparently and not self._cancelled and _not_sent(attempt):
                self._again(sc, picker)
                return
        self._finish(None, attempt)

    def _again(self, sc: SyncSubchannel, picker: Any) -> None:
        self._transparent += 1
        if self._transparent > MAX_TRANSPARENT_RETRIES or self._channel._unusable is not None:
            self._finish(None, rpc_error(_UNAVAILABLE, f"call could not be sent to {sc.address}"))
            return
        self._info.exclude = self._info.exclude | {sc}
        self._pick_on_loop(picker)

    def _finish(self, response: Any, error: Any) -> None:
        with self._cond:
            if self._done:
                return
            self._response = response
            self._error = error
            self._done = True
            self._cond.notify_all()
            callbacks, self._callbacks = self._callbacks, []
            no_arg, self._no_arg_callbacks = self._no_arg_callbacks, []
        for callback in callbacks:
            callback(self)
        for plain in no_arg:
            plain()

    def _wait(self, timeout: float | None) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._done, timeout):
                raise grpc.FutureTimeoutError()

    # -- grpc.Future ------------------------------------------------------------------------
    def cancel(self) -> bool:
        with self._cond:
            if self._done:
                return False
            self._cancelled = True
            attempt = self._attempt
        if attempt is not None:
            attempt.cancel()
        else:
            self._finish(None, rpc_error(_CANCELLED, "Locally cancelled by application!"))
        return True

    def cancelled(self) -> bool:
        return self._cancelled

    def running(self) -> bool:
        return not self._done

    def done(self) -> bool:
        return self._done

    def result(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        if self._error is not None:
            if self._cancelled:
                raise grpc.FutureCancelledError()
            raise self._error
        return self._response

    def exception(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        if self._cancelled:
            raise grpc.FutureCancelledError()
        return self._error

    def traceback(self, timeout: float | None = None) -> Any:
        error = self.exception(timeout)
        return None if error is None else error.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        with self._cond:
            if not self._done:
                self._callbacks.append(fn)
                return
        fn(self)

    # -- grpc.Call / RpcContext ------------------------------------------------------------------
    def is_active(self) -> bool:
        return not self._done

    def time_remaining(self) -> float | None:  # type: ignore[override]
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.0)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._cond:
            if self._done:
                return False
            self._no_arg_callbacks.append(callback)
            return True

    def _settled_call(self) -> Any:
        self._wait(None)
        return self._error if self._error is not None else self._attempt

    def initial_metadata(self) -> Any:
        call = self._settled_call()
        return call.initial_metadata() if call is not None else ()

    def trailing_metadata(self) -> Any:
        call = self._settled_call()
        return call.trailing_metadata() if call is not None else ()

    def code(self) -> grpc.StatusCode:
        call = self._settled_call()
        return _OK if call is None else call.code()

    def details(self) -> str:
        call = self._settled_call()
        return "" if call is None else (call.details() or "")

    def __repr__(self) -> str:
        state = "done" if self._done else "running"
        return f"<BalancedFuture {self._mc._method} {state}>"
