"""The sync drivers: multicallables of :class:`~grpc_balancer._sync.channel.SyncBalancedChannel`.

Every decision is the call's :class:`~grpc_balancer._attempts.plan.AttemptPlan`; the
drivers only do I/O on the endpoint's grpcio channel:

* blocking unary calls run in the caller's thread: the common case is one blocking
  grpcio call and nothing else (no thread hop, no future);
* ``.future()``, hedged calls and streams are driven by grpcio's done-callbacks, loop
  timers and picker changes (:class:`_Driven`), with no thread of ours per call.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import grpc

from grpc_balancer._attempts.attempt import Attempt
from grpc_balancer._attempts.errors import FinishedCall, SyncRpcError, with_extra
from grpc_balancer._attempts.plan import (
    Action,
    AttemptPlan,
    CallSpec,
    Cancel,
    Commit,
    Finish,
    Kind,
    Send,
)
from grpc_balancer._attempts.replay import SyncRequests
from grpc_balancer._observe.capture import CURRENT as _CAPTURE
from grpc_balancer._sync.direct import blocking_unary, direct_ok

if TYPE_CHECKING:
    from grpc_balancer._sync.channel import SyncBalancedChannel

    class _UnaryUnaryBase(grpc.UnaryUnaryMultiCallable[Any, Any]): ...

    class _UnaryStreamBase(grpc.UnaryStreamMultiCallable[Any, Any]): ...

    class _StreamUnaryBase(grpc.StreamUnaryMultiCallable[Any, Any]): ...

    class _StreamStreamBase(grpc.StreamStreamMultiCallable[Any, Any]): ...

    class _CallFuture(grpc.CallFuture[Any]): ...

else:  # grpc-stubs makes these generic; grpcio's runtime classes are not
    _UnaryUnaryBase = grpc.UnaryUnaryMultiCallable
    _UnaryStreamBase = grpc.UnaryStreamMultiCallable
    _StreamUnaryBase = grpc.StreamUnaryMultiCallable
    _StreamStreamBase = grpc.StreamStreamMultiCallable

    class _CallFuture(grpc.Call, grpc.Future): ...


_OK = grpc.StatusCode.OK
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_CANCELLED = grpc.StatusCode.CANCELLED
_CLOSED_CALL = "channel closed"
_CLOSED = "Channel closed: the endpoint's channel closed before the attempt was sent"


class CallRecord:
    """What metrics sinks and :func:`grpc_balancer.capture_backend` see of a blocking
    call (the other call kinds hand them the call object itself)."""

    def __init__(self, mc: _SyncMultiCallable) -> None:
        self.method = mc._method
        self.subchannel: Any = None

    @property
    def peer_address(self) -> str | None:
        return None if self.subchannel is None else self.subchannel.address


class _SyncMultiCallable:
    _kind = Kind.UNARY_UNARY

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
        self._key = (self._kind.value, method, request_serializer, response_deserializer)
        self._core = channel.core
        self._direct = self._kind is Kind.UNARY_UNARY
        self.load_method_config()

    def load_method_config(self) -> None:
        """methodConfig, looked up once per config (see the asyncio multicallable)."""
        self._generation = self._core.config_generation
        self._spec = CallSpec.for_method(self._kind, self._method, self._core)

    def plan(
        self, timeout: float | None, metadata: Any, wait_for_ready: bool | None
    ) -> AttemptPlan:
        if self._generation != self._core.config_generation:
            self.load_method_config()
        return self._spec.plan(timeout, metadata, wait_for_ready)

    def inner(self, sc: Any) -> Any:
        """This method on ``sc``'s grpcio channel, or None if ``sc`` is closing."""
        mc = sc.sync_callables.get(self._key)
        if mc is None:
            mc = sc.new_sync_callable(
                self._key, self._kind.value, self._method, self._ser, self._deser
            )
        return mc

    def record(self, call: Any) -> None:
        capture = _CAPTURE.get()
        if capture is not None:
            capture.add(call)
        instrument = self._channel.core.instrument
        if instrument is not None:
            self._channel.on_loop(instrument.call_started, call)

    def finished(self, call: Any, code: grpc.StatusCode) -> None:
        instrument = self._channel.core.instrument
        if instrument is not None:
            self._channel.on_loop(instrument.call_finished, call, code)


def _final_error(finish: Finish, error: Any) -> Any:
    """The error the application gets: grpcio's own when nothing is to be added."""
    if error is not None and not finish.trailers:
        return error
    if error is not None:
        err = cast(grpc.Call, error)
        return SyncRpcError(
            err.code(),
            err.details() or "",
            tuple(err.initial_metadata() or ()),
            with_extra(tuple(err.trailing_metadata() or ()), finish.trailers),
            getattr(err, "debug_error_string", lambda: None)(),
        )
    return SyncRpcError(finish.code, finish.details, (), finish.trailers)


class CallWithAttempts(grpc.Call):
    """grpcio's call object for the attempt that answered, whose trailing metadata also
    carries ``grpc-previous-rpc-attempts``."""

    def __init__(self, call: Any, extra: Any) -> None:
        self._call = call
        self._extra = extra

    def trailing_metadata(self) -> Any:
        return with_extra(tuple(self._call.trailing_metadata() or ()), self._extra)

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


# ---------------------------------------------------------------------------------------
# blocking unary: the caller's thread drives the plan
# ---------------------------------------------------------------------------------------
class _UnaryResponse(_SyncMultiCallable):
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
        self._channel.check_usable()
        return BalancedFuture(
            self, request, self.plan(timeout, metadata, wait_for_ready), credentials, compression
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
        plan = self.plan(timeout, metadata, wait_for_ready)
        if plan._hedging is not None or self._kind is Kind.STREAM_UNARY:
            # several attempts at once, or a request stream read by grpcio's thread:
            # the callback driver, waited on here
            future = BalancedFuture(self, request, plan, credentials, compression)
            answer = future.result()
            return (answer, future.answering_call()) if with_call else answer
        record = None
        if _CAPTURE.get() is not None or self._core.instrument is not None:
            record = CallRecord(self)
            self.record(record)
        actions = plan.start()
        response: Any = None
        call: Any = None
        error: Any = None
        while True:
            for action in actions:
                if type(action) is Send:
                    attempt = action.attempt
                    if record is not None:
                        record.subchannel = attempt.subchannel
                    response, call, error, actions = self._send(
                        plan, attempt, request, credentials, compression, with_call
                    )
                    break
                if type(action) is Finish:
                    if record is not None:
                        self.finished(record, action.code)
                    if action.code is _OK:
                        if not with_call:
                            return response
                        return response, (
                            CallWithAttempts(call, action.trailers) if action.trailers else call
                        )
                    raise _final_error(action, error if action.attempt is not None else None)
            else:
                actions = self._wait(plan)

    def _send(
        self,
        plan: AttemptPlan,
        attempt: Attempt,
        request: Any,
        credentials: grpc.CallCredentials | None,
        compression: grpc.Compression | None,
        with_call: bool,
    ) -> tuple[Any, Any, Any, list[Action]]:
        """One attempt: (response, its call object, its error, the plan's next actions)."""
        sc: Any = attempt.subchannel  # a SyncSubchannel
        inner = sc.sync_callables.get(self._key) or self.inner(sc)
        if inner is None:
            return None, None, None, plan.on_end(attempt, _UNAVAILABLE, _CLOSED)
        if self._direct and credentials is None and compression is None and direct_ok(inner):
            return self._send_direct(plan, attempt, inner, request, with_call)
        trailers = with_call or bool(sc.trailer_observers)
        # wait_for_ready None: fail fast, as False, without grpcio making a flags object
        # per call (an endpoint channel has no service config that the flag would override)
        try:
            if trailers:
                response, call = inner.with_call(
                    request, attempt.timeout, attempt.metadata, credentials, None, compression
                )
            else:
                response, call = (
                    inner(
                        request, attempt.timeout, attempt.metadata, credentials, None, compression
                    ),
                    None,
                )
        except grpc.RpcError as err:
            failed = cast(grpc.Call, err)
            return (
                None,
                None,
                err,
                plan.on_end(attempt, failed.code(), failed.details(), failed.trailing_metadata()),
            )
        except ValueError:  # the endpoint channel closed between pick and send
            return None, None, None, plan.on_end(attempt, _UNAVAILABLE, _CLOSED)
        ends = plan.on_end(attempt, _OK, "", call.trailing_metadata() if trailers else None)
        return response, call, None, ends

    def _send_direct(
        self, plan: AttemptPlan, attempt: Attempt, inner: Any, request: Any, with_call: bool
    ) -> tuple[Any, Any, Any, list[Action]]:
        """The attempt on grpcio's Cython channel (see :mod:`grpc_balancer._sync.direct`)."""
        timeout = attempt.timeout
        try:
            code, response, details, initial, trailing, debug = blocking_unary(
                inner,
                request,
                None if timeout is None else time.time() + timeout,
                attempt.metadata,  # a tuple (CallSpec.plan)
            )
        except ValueError:  # the endpoint channel closed between pick and send
            return None, None, None, plan.on_end(attempt, _UNAVAILABLE, _CLOSED)
        if code is _OK:
            sc: Any = attempt.subchannel
            ends = plan.on_end(
                attempt, _OK, "", trailing if (with_call or sc.trailer_observers) else None
            )
            if not with_call:
                return response, None, None, ends
            return (
                response,
                FinishedCall(code, details, initial, trailing, None, response),
                None,
                ends,
            )
        error = SyncRpcError(code, details, initial, trailing, debug)
        return None, None, error, plan.on_end(attempt, code, details, trailing)

    def _wait(self, plan: AttemptPlan) -> list[Action]:
        """Nothing to send now: wait for a better picker or the plan's timer (the
        channel closing ends either wait)."""
        channel = self._channel
        waiting = plan.waiting_on
        timeout = None if plan.wake_at is None else max(plan.wake_at - time.monotonic(), 0.0)
        if channel._unusable is not None:
            return plan.cancel(_CLOSED_CALL)
        if waiting is not None:
            fired = channel.wait_for(waiting.changed, timeout)
            if channel._unusable is not None:
                return plan.cancel(_CLOSED_CALL)
            return plan.on_picker() if fired else plan.on_timer()
        if plan.wake_at is None:  # pragma: no cover - a plan always waits for something
            raise RuntimeError(f"attempt plan stalled: {plan!r}")
        channel.sleep(timeout or 0.0)
        if channel._unusable is not None:
            return plan.cancel(_CLOSED_CALL)
        return plan.on_timer()


# ---------------------------------------------------------------------------------------
# driven by callbacks: .future(), hedged and client-streaming calls, response streams
# ---------------------------------------------------------------------------------------
class _Driven:
    """Feeds the plan from grpcio's callback threads, loop timers and picker changes.

    Inputs are queued and handled one at a time by whichever thread brought one
    (no thread of ours); actions run outside the lock."""

    _mc: _SyncMultiCallable

    def _setup(
        self,
        mc: _SyncMultiCallable,
        plan: AttemptPlan,
        request: Any,
        credentials: Any,
        compression: Any,
    ) -> None:
        self._mc = mc
        self._plan = plan
        self._cond = threading.Condition()
        self._inbox: collections.deque[Callable[[], list[Action]]] = collections.deque()
        self._driving = False
        self._credentials = credentials
        self._compression = compression
        self._request = request
        self._requests: SyncRequests | None = None
        if mc._kind in (Kind.STREAM_UNARY, Kind.STREAM_STREAM):
            self._requests = SyncRequests(
                request, lambda n: self._feed(lambda: plan.on_buffered(n))
            )
        self._timer_at: float | None = None
        self._waiting_on: Any = None
        self._errors: dict[Attempt, Any] = {}
        self._callbacks: list[Callable[[Any], None]] = []
        self._no_arg_callbacks: list[Callable[[], None]] = []
        self._last: Attempt | None = None
        mc._channel.live_calls.add(self)
        mc.record(self)
        self._feed(plan.start)

    def _feed(self, step: Callable[[], list[Action]]) -> None:
        with self._cond:
            self._inbox.append(step)
            if self._driving:
                return
            self._driving = True
        while True:
            with self._cond:
                if not self._inbox:
                    self._driving = False
                    self._cond.notify_all()
                    return
                step = self._inbox.popleft()
                try:
                    actions = step()
                except BaseException:
                    # a bug (PlanError): never leave the call driven by nobody
                    self._driving = False
                    self._inbox.clear()
                    self._cond.notify_all()
                    raise
                rearm = self._plan.wake_at if self._plan.wake_at != self._timer_at else None
                self._timer_at = self._plan.wake_at
                waiting = self._plan.waiting_on
                if waiting is self._waiting_on:
                    waiting = None
                else:
                    self._waiting_on = waiting
            for action in actions:
                self._act(action)
            channel = self._mc._channel
            if rearm is not None:
                channel.call_later(max(rearm - time.monotonic(), 0.0), self._timer)
            if waiting is not None:
                waiting.changed.add_callback(self._picker)
            with self._cond:
                self._cond.notify_all()

    def _timer(self) -> None:
        with self._cond:
            self._timer_at = None  # a timer that fired early is re-armed after the step
        self._feed(self._plan.on_timer)

    def _picker(self) -> None:
        self._mc._channel.on_loop(self._feed, self._on_picker)

    def _on_picker(self) -> list[Action]:
        self._waiting_on = None
        return self._plan.on_picker()

    def _act(self, action: Action) -> None:
        if type(action) is Send:
            self._send(action.attempt)
        elif type(action) is Cancel:
            if action.attempt.call is not None:
                action.attempt.call.cancel()
        elif type(action) is Commit:
            if self._requests is not None:
                self._requests.commit()
        elif type(action) is Finish:
            self._finished(action)

    def _send(self, attempt: Attempt) -> None:
        self._last = attempt
        inner = self._mc.inner(attempt.subchannel)
        if inner is None:
            self._feed(lambda: self._plan.on_end(attempt, _UNAVAILABLE, _CLOSED))
            return
        request = self._request if self._requests is None else self._requests.replay()
        args = (
            request,
            attempt.timeout,
            attempt.metadata,
            self._credentials,
            False,
            self._compression,
        )
        try:
            call = inner.future(*args) if self._mc._kind.unary_response else inner(*args)
        except ValueError:
            self._feed(lambda: self._plan.on_end(attempt, _UNAVAILABLE, _CLOSED))
            return
        attempt.call = call
        call.add_done_callback(lambda c: self._attempt_done(attempt, c))

    def _attempt_done(self, attempt: Attempt, call: Any) -> None:
        if self._reader_reports_end(attempt):
            return
        self._report_end(attempt, call)

    def _reader_reports_end(self, attempt: Attempt) -> bool:
        return False

    def _report_end(self, attempt: Attempt, call: Any) -> None:
        code = call.code()
        if code is not _OK:
            self._errors[attempt] = call
        trailers = call.trailing_metadata() if (attempt.wants_trailers or code is not _OK) else None
        self._feed(lambda: self._plan.on_end(attempt, code, call.details(), trailers))

    def _finished(self, finish: Finish) -> None:
        self._mc._channel.live_calls.discard(self)
        self._mc.finished(self, finish.code)
        with self._cond:
            callbacks, self._callbacks = self._callbacks, []
            no_arg, self._no_arg_callbacks = self._no_arg_callbacks, []
        for callback in callbacks:
            callback(self)
        for plain in no_arg:
            plain()

    def close_from_channel(self) -> None:
        """The channel closed: end at once with CANCELLED (timers will not fire)."""
        self._feed(lambda: self._plan.cancel(_CLOSED_CALL))

    def _wait_until(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        with self._cond:
            return self._cond.wait_for(ready, timeout)

    # -- what both call objects report -------------------------------------------------------
    def _outcome(self) -> Finish:
        self._wait_until(lambda: self._plan.done, None)
        finish = self._plan.outcome
        assert finish is not None
        return finish

    def answering_call(self) -> Any:
        finish = self._outcome()
        call = None if finish.attempt is None else finish.attempt.call
        if call is None or finish.code is not _OK:
            return _final_error(
                finish, None if finish.attempt is None else self._errors.get(finish.attempt)
            )
        return CallWithAttempts(call, finish.trailers) if finish.trailers else call

    def _error(self) -> Any:
        finish = self._outcome()
        return _final_error(
            finish, None if finish.attempt is None else self._errors.get(finish.attempt)
        )

    # -- grpc.Future and grpc.Call, the same for a future and a stream ------------------------
    _cancelled = False

    def cancel(self) -> bool:
        if self._plan.done:
            return False
        self._cancelled = True
        self._feed(self._plan.cancel)
        return True

    def cancelled(self) -> bool:
        return self._cancelled

    def running(self) -> bool:
        return not self.done()

    def done(self) -> bool:
        return self._plan.done or self._cancelled

    def exception(self, timeout: float | None = None) -> Any:
        if not self._wait_until(lambda: self._plan.done, timeout):
            raise grpc.FutureTimeoutError()
        if self._cancelled:
            raise grpc.FutureCancelledError()
        return None if self._outcome().code is _OK else self._error()

    def traceback(self, timeout: float | None = None) -> Any:
        error = self.exception(timeout)
        return None if error is None else error.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        with self._cond:
            if not self._plan.done:
                self._callbacks.append(fn)
                return
        fn(self)

    def is_active(self) -> bool:
        return not self._plan.done

    def time_remaining(self) -> float | None:
        deadline = self._plan.deadline
        return None if deadline is None else max(deadline - time.monotonic(), 0.0)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        with self._cond:
            if self._plan.done:
                return False
            self._no_arg_callbacks.append(callback)
            return True

    @property
    def method(self) -> str:
        return self._mc._method

    @property
    def subchannel(self) -> Any:
        plan = self._plan
        attempt = plan.outcome.attempt if plan.outcome is not None else None
        attempt = attempt or plan.committed or self._last
        return None if attempt is None else attempt.subchannel

    @property
    def peer_address(self) -> str | None:
        sc = self.subchannel
        return None if sc is None else sc.address


# (grpc-stubs type time_remaining() as float; grpcio's gives None without a deadline)
class BalancedFuture(_Driven, _CallFuture):  # type: ignore[misc]
    """What ``.future()`` returns: a ``grpc.Future`` and ``grpc.Call``, like grpcio's."""

    def __init__(
        self,
        mc: _UnaryResponse,
        request: Any,
        plan: AttemptPlan,
        credentials: Any,
        compression: Any,
    ) -> None:
        self._setup(mc, plan, request, credentials, compression)

    def result(self, timeout: float | None = None) -> Any:
        if not self._wait_until(lambda: self._plan.done, timeout):
            raise grpc.FutureTimeoutError()
        finish = self._outcome()
        if finish.code is _OK and finish.attempt is not None:
            return finish.attempt.call.result()
        if self._cancelled:
            raise grpc.FutureCancelledError()
        raise self._error()

    def initial_metadata(self) -> Any:
        return self.answering_call().initial_metadata()

    def trailing_metadata(self) -> Any:
        return self.answering_call().trailing_metadata()

    def code(self) -> grpc.StatusCode:
        return cast(grpc.StatusCode, self.answering_call().code())

    def details(self) -> str:
        return cast(str, self.answering_call().details() or "")

    def __repr__(self) -> str:
        return f"<BalancedFuture {self._mc._method} {self._plan.state.name}>"


class BalancedStream(_Driven, _CallFuture):  # type: ignore[misc]
    """A response stream: an iterator, ``grpc.Call`` and ``grpc.Future`` like grpcio's.
    Reading follows the attempt the plan is trying or committed to."""

    def __init__(
        self,
        mc: _StreamResponse,
        request: Any,
        plan: AttemptPlan,
        credentials: Any,
        compression: Any,
    ) -> None:
        #: With retries or hedges, the reader reports an attempt's end until its first
        #: message (only the reader knows whether one came).
        self._until_first = mc._spec.retry is not None or mc._spec.hedging is not None
        self._responded: set[Attempt] = set()
        self._held: list[Any] = []  # a first message read by code() / metadata
        self._setup(mc, plan, request, credentials, compression)

    def _reader_reports_end(self, attempt: Attempt) -> bool:
        return self._until_first and attempt not in self._responded

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._held:
            return self._held.pop()
        plan = self._plan
        while True:
            attempt = self._reading_attempt()
            if attempt is None:
                if plan.done:
                    return self._end_of_stream()
                self._wait_until(lambda: plan.done or self._reading_attempt() is not None, None)
                continue
            try:
                message = next(attempt.call)
            except StopIteration:
                message = None
                self._reader_saw_end(attempt)
                self._wait_until(lambda a=attempt: a.ended or plan.done, None)  # type: ignore[misc]
                if plan.done:
                    return self._end_of_stream()
                continue
            except grpc.RpcError:
                self._reader_saw_end(attempt)
                self._wait_until(lambda a=attempt: a.ended or plan.done, None)  # type: ignore[misc]
                if plan.done and (plan.outcome is None or plan.outcome.attempt in (attempt, None)):
                    return self._end_of_stream()
                continue
            if attempt not in self._responded:
                self._responded.add(attempt)
                self._feed(lambda a=attempt: plan.on_response(a))  # type: ignore[misc]
                if attempt.call.done() and self._until_first:
                    self._report_end(attempt, attempt.call)
            return message

    def _reader_saw_end(self, attempt: Attempt) -> None:
        if self._reader_reports_end(attempt):
            self._responded.add(attempt)
            self._report_end(attempt, attempt.call)

    def _reading_attempt(self) -> Attempt | None:
        plan = self._plan
        if plan.outcome is not None:
            attempt = plan.outcome.attempt
            return attempt if attempt is not None and attempt.call is not None else None
        if plan.committed is not None:
            return plan.committed
        running = [a for a in plan.running if a.call is not None]
        return running[-1] if running else None

    def _end_of_stream(self) -> Any:
        finish = self._outcome()
        if finish.code is _OK:
            raise StopIteration
        raise self._error()

    def _settle(self) -> None:
        """code(), metadata...: wait for the call to end (reading its first message
        if only the reader can tell the plan how it ended)."""
        if self._until_first and not self._plan.done and self._plan.committed is None:
            attempt = self._reading_attempt()
            if attempt is not None and attempt not in self._responded:
                try:
                    first = next(self)
                except (StopIteration, grpc.RpcError):
                    return
                self._held.append(first)

    def result(self, timeout: float | None = None) -> Any:
        """As grpcio's stream call: block until the call ends; None, or its error."""
        self._settle()
        if not self._wait_until(lambda: self._plan.done, timeout):
            raise grpc.FutureTimeoutError()
        if self._outcome().code is _OK:
            return None
        if self._cancelled:
            raise grpc.FutureCancelledError()
        raise self._error()

    def initial_metadata(self) -> Any:
        self._wait_until(lambda: self._plan.committed is not None or self._plan.done, None)
        attempt = self._reading_attempt() or self._plan.committed
        if attempt is None or attempt.call is None:
            return ()
        return attempt.call.initial_metadata()

    def trailing_metadata(self) -> Any:
        self._settle()
        return self.answering_call().trailing_metadata()

    def code(self) -> grpc.StatusCode:
        self._settle()
        return cast(grpc.StatusCode, self.answering_call().code())

    def details(self) -> str:
        self._settle()
        return cast(str, self.answering_call().details() or "")

    def __repr__(self) -> str:
        return f"<BalancedStream {self._mc._method} {self._plan.state.name}>"


class SyncUnaryUnaryMultiCallable(_UnaryResponse, _UnaryUnaryBase):
    _kind = Kind.UNARY_UNARY


class SyncStreamUnaryMultiCallable(_UnaryResponse, _StreamUnaryBase):
    _kind = Kind.STREAM_UNARY


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
        self._channel.check_usable()
        return BalancedStream(
            self, request, self.plan(timeout, metadata, wait_for_ready), credentials, compression
        )


class SyncUnaryStreamMultiCallable(_StreamResponse, _UnaryStreamBase):
    _kind = Kind.UNARY_STREAM


class SyncStreamStreamMultiCallable(_StreamResponse, _StreamStreamBase):
    _kind = Kind.STREAM_STREAM
