"""Call objects of the sync channel that are not grpcio's own.

* :class:`BalancedFuture` is what ``.future()`` returns: non-blocking, it waits for a
  backend on the channel's loop, re-sends never-sent attempts and applies
  ``retryPolicy`` from grpcio's completion callbacks — no thread per call.
* :class:`FailedCall` is a streaming call that could not start; like grpcio's call
  object it raises its error when read.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import grpc

from grpc_balancer._aio.calls import MAX_TRANSPARENT_RETRIES, never_reached_server, rpc_error
from grpc_balancer.picker import PickInfo

if TYPE_CHECKING:
    from grpc_balancer._sync.calls import _UnaryResponse
    from grpc_balancer._sync.subchannel import SyncSubchannel

    class _CallFuture(grpc.CallFuture[Any]): ...

else:  # grpc-stubs makes it generic; grpcio has no such runtime class

    class _CallFuture(grpc.Call, grpc.Future): ...


_OK = grpc.StatusCode.OK
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_CANCELLED = grpc.StatusCode.CANCELLED


class BalancedFuture(_CallFuture):
    """A ``grpc.Future`` and ``grpc.Call``, like what grpcio's ``.future()`` returns."""

    def __init__(
        self,
        mc: _UnaryResponse,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> None:
        mc._channel.check_usable()
        self._mc = mc
        self._channel = mc._channel
        self._request = request
        self._deadline = mc.deadline_of(timeout)
        self._metadata = metadata
        self._credentials = credentials
        self._wait_for_ready = mc.wait_for_ready_of(wait_for_ready)
        self._compression = compression
        self._info = PickInfo(mc._method, metadata)
        self._cond = threading.Condition()
        self._attempt: Any = None
        self._response: Any = None
        self._error: Any = None
        self._done = False
        self._cancelled = False
        self._transparent = 0
        self._attempts = 0  # attempts that reached a server (for retryPolicy)
        self._callbacks: list[Callable[[BalancedFuture], None]] = []
        self._no_arg_callbacks: list[Callable[[], None]] = []
        self._record = mc.record()
        self._replay: Any = None
        self._resendable = mc.resendable
        if not mc.resendable and mc._retry is not None:
            from grpc_balancer._sync.streams import RequestReplay

            self._replay = RequestReplay(request)  # a request stream, kept for retries
            self._resendable = True
        if mc._hedging is not None and mc.resendable:
            self._hedge_in_thread()
        else:
            self._begin()

    # -- the attempt loop ------------------------------------------------------------------
    def _hedge_in_thread(self) -> None:
        """Hedging waits on several attempts at once: run the blocking loop in the
        channel loop's executor (closed with the channel)."""
        mc = self._mc

        def run() -> None:
            try:
                response = mc._attempts(
                    self._request,
                    self._deadline,
                    self._metadata,
                    self._credentials,
                    self._wait_for_ready,
                    self._compression,
                    False,
                    self._record,
                )
            except grpc.RpcError as err:
                self._finish(None, err)
            else:
                self._finish(response, None)

        loop = self._channel._thread.loop
        self._channel.on_loop(lambda: loop.run_in_executor(None, run))

    def _begin(self) -> None:
        core = self._channel.core
        try:
            sc = core.pick_now(self._info, self._wait_for_ready)
            if sc is not None:
                sc = self._mc.adjust_pick(self._info, cast("SyncSubchannel", sc))
        except grpc.RpcError as err:
            self._finish(None, err)
            return
        if sc is None:
            self._pick_on_loop(None, 0.0)
        else:
            self._send(sc)

    def _pick_on_loop(self, after: Any, delay: float) -> None:
        core = self._channel.core

        async def pick() -> Any:
            if delay > 0:
                await asyncio.sleep(delay)
            if after is not None:
                await core.wait_for_picker_change(after, self._deadline, 1.0)
            if self._cancelled:
                raise rpc_error(_CANCELLED, "Locally cancelled by application!")
            sc = await core.pick(self._info, self._deadline, self._wait_for_ready)
            return self._mc.adjust_pick(self._info, cast("SyncSubchannel", sc))

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
        from grpc_balancer._sync.calls import metadata_for

        picker = self._channel.picker
        inner = self._mc.inner(sc)
        started = sc.try_call_started() if inner is not None else None
        if started is None:
            self._again(sc, picker)
            return
        if self._record is not None:
            self._record._subchannel = sc
        remaining = None if self._deadline is None else self._deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            sc.call_finished(started, grpc.StatusCode.DEADLINE_EXCEEDED)
            self._finish(None, rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))
            return
        try:
            attempt = inner.future(
                self._request if self._replay is None else self._replay.replay(),
                remaining,
                metadata_for(self._metadata, self._attempts),
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
        from grpc_balancer._sync.calls import _no_time_left, with_attempts

        code = attempt.code()
        sc.call_finished(started, code)
        mc = self._mc
        if code is _OK:
            if mc._retry is not None:
                mc.succeeded()
            self._finish(attempt.result(), None)
            return
        if code is _UNAVAILABLE:
            sc.record_failure_detail(attempt.details() or "")
            if self._resendable and not self._cancelled and never_reached_server(attempt):
                self._channel.core.emit("transparent_retry", sc, code)
                self._again(sc, picker)
                return
        retry = mc._retry if self._resendable else None
        if retry is None or self._cancelled:
            self._finish(None, attempt)
            return
        self._attempts += 1
        delay = mc.retry_delay(retry, sc, attempt, self._attempts, self._info)
        if delay is None:
            self._finish(None, with_attempts(attempt, self._attempts - 1))
        elif self._deadline is not None and time.monotonic() + delay >= self._deadline:
            self._finish(None, _no_time_left(attempt, self._attempts))
        else:
            self._pick_on_loop(None, delay)

    def _again(self, sc: SyncSubchannel, picker: Any) -> None:
        """The attempt never left: pick again elsewhere once the picker has moved on."""
        self._transparent += 1
        if self._transparent > MAX_TRANSPARENT_RETRIES or self._channel._unusable is not None:
            self._finish(None, rpc_error(_UNAVAILABLE, f"call could not be sent to {sc.address}"))
            return
        self._info.exclude = self._info.exclude | {sc}
        self._pick_on_loop(picker, 0.0)

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
        self._mc.finish_record(
            self._record, _OK if error is None else cast(grpc.Call, error).code()
        )
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
        if call is None:
            return ()
        if call is self._attempt and self._attempts:
            return CallWithAttempts(call, self._attempts).trailing_metadata()
        return call.trailing_metadata()

    def code(self) -> grpc.StatusCode:
        call = self._settled_call()
        return _OK if call is None else call.code()

    def details(self) -> str:
        call = self._settled_call()
        return "" if call is None else (call.details() or "")

    def __repr__(self) -> str:
        state = "done" if self._done else "running"
        return f"<BalancedFuture {self._mc._method} {state}>"


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


class CallWithAttempts(grpc.Call):
    """grpcio's call object for the attempt that answered, whose trailing metadata also
    carries ``grpc-previous-rpc-attempts`` (as the async calls report it)."""

    def __init__(self, call: Any, previous: int) -> None:
        self._call = call
        self._previous = previous

    def trailing_metadata(self) -> Any:
        from grpc_balancer._sync.calls import metadata_for

        return metadata_for(self._call.trailing_metadata(), self._previous)

    def initial_metadata(self) -> Any:
        return self._call.initial_metadata()

    def code(self) -> grpc.StatusCode:
        return cast(grpc.StatusCode, self._call.code())

    def details(self) -> str:
        return cast(str, self._call.details())

    def is_active(self) -> bool:
        return cast(bool, self._call.is_active())

    def time_remaining(self) -> float | None:  # type: ignore[override]
        return cast("float | None", self._call.time_remaining())

    def cancel(self) -> bool:
        return cast(bool, self._call.cancel())

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return cast(bool, self._call.add_callback(callback))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)
