"""The asyncio driver: multicallables and the four ``grpc.aio`` call objects.

A call only does I/O; every decision is its :class:`~grpc_balancer._attempts.plan.AttemptPlan`'s.
The plan starts when the call object is created (as grpcio's calls do) and is fed
from grpcio's done-callbacks, loop timers and picker changes, so no task of ours
runs per call; awaiting, iterating or reading a call only waits for what the plan
decided. Unary and streaming calls share one driver (a unary call is a stream with
one response, as in grpc-go).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator
from functools import partial
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from grpc._cython import cygrpc  # type: ignore[attr-defined]
from grpc.aio import Metadata

from grpc_balancer._attempts.attempt import Attempt
from grpc_balancer._attempts.errors import CODE_OF_INT, aio_error, with_extra
from grpc_balancer._attempts.plan import (
    CANCELLED_DETAILS,
    Action,
    AttemptPlan,
    CallSpec,
    Cancel,
    Commit,
    Finish,
    Kind,
    Send,
)
from grpc_balancer._attempts.replay import AsyncRequests
from grpc_balancer._observe.capture import CURRENT as _CAPTURE

if TYPE_CHECKING:
    from grpc_balancer._aio.channel import BalancedChannel
    from grpc_balancer._core.picking import PickerGeneration

Serializer = Callable[[Any], bytes] | None
Deserializer = Callable[[bytes], Any] | None

_OK = grpc.StatusCode.OK
_OK_INT = grpc.StatusCode.OK.value[0]  # cygrpc's status code of OK
_CANCELLED = grpc.StatusCode.CANCELLED
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]
_CODES = CODE_OF_INT
_LOGGER = logging.getLogger("grpc._common")  # grpcio logs (de)serializer failures there
_census_context = cygrpc.build_census_context


def _status_of(call: Any) -> tuple[grpc.StatusCode, str, tuple[Any, ...], str | None]:
    """A finished grpc.aio call's status, read synchronously in its done-callback.

    grpcio offers it only through coroutines; the status object it has already
    received is on the Cython call (grpcio 1.5x to 1.8x), read here in one place."""
    status = call._cython_call._status
    if status is None:  # pragma: no cover - grpcio calls done-callbacks after the status
        return _CANCELLED, CANCELLED_DETAILS, (), None
    return (
        CODE_OF_INT.get(status.code(), grpc.StatusCode.UNKNOWN),
        status.details() or "",
        tuple(status.trailing_metadata() or ()),
        status.debug_error_string(),
    )


def _being_cancelled() -> bool:
    """Whether the task awaiting a call is itself being cancelled (not the attempt)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _UnaryAttempt:
    """One unary-unary attempt on grpcio's Cython call, without grpc.aio's Python call
    object around it (what grpcio's ``UnaryUnaryCall`` does, minus what the balanced
    call already does: its own call object, deadline, metadata and done handling).

    It offers the part of a grpc.aio call the driver and the channel's close use. The
    status is read from the Cython call as for grpc.aio calls (``_status_of``)."""

    __slots__ = ("_cython_call", "_task")

    def __init__(self, cython_call: Any, task: asyncio.Task[Any]) -> None:
        self._cython_call = cython_call
        self._task = task

    def cancel(self) -> bool:
        if self._cython_call.done():
            return False
        self._cython_call.cancel(CANCELLED_DETAILS)
        return True

    def done(self) -> bool:
        return bool(self._cython_call.done())

    def __await__(self) -> Generator[Any, None, Any]:
        response = yield from self._task
        if response is _EOF:
            code, details, trailers, debug = _status_of(self)
            raise aio_error(code, details, (), trailers, debug)
        return response

    async def code(self) -> grpc.StatusCode:
        await asyncio.shield(self._task)
        return _status_of(self)[0]

    async def wait_for_connection(self) -> None:
        await asyncio.shield(self._task)

    async def initial_metadata(self) -> Metadata:
        return Metadata.from_tuple(await self._cython_call.initial_metadata())

    async def trailing_metadata(self) -> Metadata:
        await asyncio.shield(self._task)
        return Metadata.from_tuple(_status_of(self)[2])

    def detach(self) -> None:
        """Keep what the ended call received, not grpcio's call: a call object the
        application still holds would keep the core call, and with it the closed
        channel and its connectivity watch, alive (the watch would then end after the
        event loop has, as "Event loop is closed" noise in the next one)."""
        if self._task.done() and type(self._cython_call) is not _EndedCall:
            self._cython_call = _EndedCall(self._cython_call)


class _EndedCall:
    """What an ended Cython call has received, for the readers of :class:`_UnaryAttempt`."""

    __slots__ = ("_initial_metadata", "_ok", "_status")

    def __init__(self, cython_call: Any) -> None:
        self._status = cython_call._status
        self._initial_metadata = cython_call._initial_metadata or ()
        self._ok = bool(cython_call.is_ok())

    def done(self) -> bool:
        return True

    def is_ok(self) -> bool:
        return self._ok

    def cancel(self, details: str) -> None:
        pass

    async def initial_metadata(self) -> Any:
        return self._initial_metadata


class _MultiCallable:
    _kind = Kind.UNARY_UNARY

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
        self.load_method_config()

    def load_method_config(self) -> None:
        """methodConfig, looked up once per config (not per call), so calls without a
        policy pay nothing; a new config from the resolver bumps the generation."""
        self._generation = self._channel.config_generation
        self._spec = CallSpec.for_method(self._kind, self._method, self._channel)

    def inner(self, sc: Any) -> Any:
        """This method's grpc.aio multicallable on ``sc``'s channel (cached per subchannel)."""
        mc = sc.callables.get(self._key)
        if mc is None:
            mc = getattr(sc.channel, self._kind.value)(
                self._method,
                request_serializer=self._request_serializer,
                response_deserializer=self._response_deserializer,
                _registered_method=True,
            )
            sc.callables[self._key] = mc
        return mc


class _Call:
    """The driver of one call, whatever its kind."""

    _kind = Kind.UNARY_UNARY
    _unary_response = True
    # Class defaults for what most calls never touch (the hottest are also set on the
    # instance in __init__, which is faster to read than through the class hierarchy).
    _requests: AsyncRequests | None = None
    _progress: asyncio.Future[None] | None = None
    _timer: asyncio.TimerHandle | None = None
    #: In the channel's ``waiting_calls`` (from its first wait until it finishes).
    _listed = False
    _timer_at: float | None = None
    _waiting_on: PickerGeneration | None = None
    _done_callbacks: list[Callable[[Any], None]] | None = None
    _prefetch = False
    _cancelled = False
    #: unary-unary without compression: attempts on grpcio's Cython call (_UnaryAttempt)
    _direct = False
    _last: Attempt | None = None

    def __init__(
        self,
        mc: _MultiCallable,
        request: Any,
        timeout: float | None,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool | None,
        compression: grpc.Compression | None,
    ) -> None:
        channel = mc._channel
        loop = channel._loop
        if loop is None or channel._closed or asyncio.get_running_loop() is not loop:
            loop = channel.loop_for_call()  # starts the channel, or says why it cannot
        self._loop = loop
        self._mc = mc
        self._channel = channel
        if mc._generation != channel.config_generation:
            mc.load_method_config()
        self._credentials = credentials
        self._compression = compression
        self._request = request
        # read on every call's path: instance attributes (a class default would be
        # looked up through grpc.aio's deep class hierarchy each time)
        self._timer_at = None
        self._progress = None
        self._done_callbacks = None
        self._waiting_on = None
        self._requests = None
        self._plan = plan = mc._spec.plan(timeout, metadata, wait_for_ready)
        if self._kind is Kind.UNARY_UNARY:  # the commonest kind: one test
            self._direct = compression is None
        else:
            self._setup_streams(request, plan)
        capture = _CAPTURE.get()
        if capture is not None:
            capture.add(self)
        if channel.instrument is not None:
            channel.instrument.call_started(self)
        actions = plan.start()
        if len(actions) == 1 and type(actions[0]) is Send and plan.wake_at is None:
            self._send(actions[0].attempt)  # the common first step
        else:
            self._run(actions)

    def _setup_streams(self, request: Any, plan: AttemptPlan) -> None:
        if self._kind is Kind.STREAM_UNARY or self._kind is Kind.STREAM_STREAM:
            self._requests = AsyncRequests(request, self._buffered)
        if not self._unary_response and (plan._retry is not None or plan._hedging is not None):
            # Stream responses that may retry: read the first message before the
            # application does, to know when the call commits.
            self._prefetch = True
            self._prefetched: dict[Attempt, Any] = {}
            self._responded: set[Attempt] = set()
            self._readers: set[asyncio.Task[None]] = set()

    # -- executing the plan's actions ---------------------------------------------------------
    def _run(self, actions: list[Action]) -> None:
        plan = self._plan
        for action in actions:
            if type(action) is Send:
                self._send(action.attempt)
            elif type(action) is Cancel:
                call = action.attempt.call
                if call is not None:
                    call.cancel()
            elif type(action) is Commit:
                if self._requests is not None:
                    self._requests.commit()
            elif type(action) is Finish:
                self._finished(action)
        if plan.wake_at is None and plan.waiting_on is None and self._timer_at is None:
            progress = self._progress  # the common case: nothing to wait for
            if progress is not None:
                self._progress = None
                if not progress.done():
                    progress.set_result(None)
            return
        if not plan.done and not self._listed:
            self._channel.waiting_calls.add(self)
            self._listed = True
        if plan.wake_at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._timer_at = plan.wake_at
            if plan.wake_at is not None:
                delay = max(plan.wake_at - time.monotonic(), 0.0)
                self._timer = self._loop.call_later(delay, self._on_timer)
        waiting = plan.waiting_on
        if waiting is not None and waiting is not self._waiting_on:
            self._waiting_on = waiting
            waiting.changed.add_callback(self._picker_changed)
        progress = self._progress
        if progress is not None:
            self._progress = None
            if not progress.done():
                progress.set_result(None)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self._run(self._plan.on_timer())

    def _picker_changed(self) -> None:
        # Fired inside the policy's publish: step the plan on the next loop turn.
        self._loop.call_soon(self._on_picker)

    def _on_picker(self) -> None:
        self._waiting_on = None
        self._run(self._plan.on_picker())

    def _send(self, attempt: Attempt) -> None:
        self._last = attempt
        sc: Any = attempt.subchannel  # an AioSubchannel (direct_calls)
        inner = sc.callables.get(self._mc._key) or self._mc.inner(sc)
        if self._direct and not inner._interceptors:
            # unary-unary: grpcio's Cython call driven from here (see _UnaryAttempt)
            timeout = attempt.timeout
            try:
                cython_call = inner._channel.call(
                    inner._method,
                    None if timeout is None else time.time() + timeout,
                    self._credentials,
                    False,
                    inner._registered_call_handle,
                )
            except Exception as exc:  # the endpoint channel closed between pick and send
                self._loop.call_soon(
                    self._end, attempt, grpc.StatusCode.UNAVAILABLE, f"Channel closed: {exc}", None
                )
                return
            direct = _UnaryAttempt(
                cython_call, self._loop.create_task(self._invoke(attempt, cython_call))
            )
            attempt.call = direct
            sc.direct_calls.add(direct)
            return
        try:
            call = inner(
                self._request if self._requests is None else self._requests.replay(),
                timeout=attempt.timeout,
                metadata=attempt.metadata,
                credentials=self._credentials,
                wait_for_ready=False,
                compression=self._compression,
            )
        except Exception as exc:  # the endpoint channel closed between pick and send
            self._loop.call_soon(
                self._end, attempt, grpc.StatusCode.UNAVAILABLE, f"Channel closed: {exc}", None
            )
            return
        attempt.call = call
        # grpc.aio's add_done_callback wraps the callback once more; register on the
        # Cython call it wraps (as _status_of reads it), one frame less per call
        call._cython_call.add_done_callback(partial(self._attempt_done, attempt, call))
        if self._prefetch:
            task = self._loop.create_task(self._read_first(attempt))
            self._readers.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(self._readers.discard)

    async def _invoke(self, attempt: Attempt, cython_call: Any) -> Any:
        """A direct unary attempt, start to end: what grpc.aio's ``_invoke`` does, and the
        plan told at once (no done-callback). Gives the response, or EOF when not OK."""
        request = self._request
        serializer = self._mc._request_serializer
        if serializer is not None:
            try:
                request = serializer(request)
            except Exception:  # as grpcio: logged, and the call fails in the core
                _LOGGER.exception("Exception serializing message!")
                request = None
        try:
            response = await cython_call.unary_unary(
                request,
                attempt.metadata,  # a tuple (CallSpec.plan)
                _census_context(),
            )
        except asyncio.CancelledError:
            # The task awaiting the call was cancelled (asyncio cancels this one with
            # it): end the RPC, and stay cancelled, so the cancellation reaches that
            # task as CancelledError (returning would turn it into an RPC error).
            if not cython_call.done():
                cython_call.cancel(CANCELLED_DETAILS)
            raise
        finally:
            sc: Any = attempt.subchannel  # an AioSubchannel
            sc.direct_calls.discard(attempt.call)
            status = cython_call._status  # see _status_of
            if status is not None and status.code() == _OK_INT and not sc.trailer_observers:
                self._ended_ok(attempt)
            else:
                self._attempt_done(attempt, attempt.call)
        if not cython_call.is_ok():
            return _EOF
        deserializer = self._mc._response_deserializer
        if deserializer is None:
            return response
        try:
            return deserializer(response)
        except Exception:
            _LOGGER.exception("Exception deserializing message!")
            return None

    def _attempt_done(self, attempt: Attempt, call: Any) -> None:
        if self._prefetch and attempt not in self._responded:
            return  # _read_first reports the end once it knows no message came
        status = call._cython_call._status  # see _status_of
        code = (
            _CODES.get(status.code(), grpc.StatusCode.UNKNOWN) if status is not None else _CANCELLED
        )
        if code is _OK and not attempt.subchannel.trailer_observers:
            self._ended_ok(attempt)
            return
        code, details, trailers, _ = _status_of(call)
        self._end(attempt, code, details, trailers)

    def _ended_ok(self, attempt: Attempt) -> None:
        """The fast path of an attempt's end: OK, and no policy reads its trailers."""
        actions = self._plan.on_end(attempt, _OK, "", None)
        if self._timer_at is None and self._progress is None and len(actions) == 1:
            action = actions[0]
            if type(action) is Finish:
                if (
                    self._done_callbacks is not None
                    or self._channel.instrument is not None
                    or self._listed
                ):
                    self._finished(action)
                return
        self._run(actions)

    def _end(self, attempt: Attempt, code: grpc.StatusCode, details: str, trailers: Any) -> None:
        if attempt.ended:
            return
        self._run(self._plan.on_end(attempt, code, details, trailers))

    async def _read_first(self, attempt: Attempt) -> None:
        """Streams that may retry: the first message decides (commit) or the end does."""
        call = attempt.call
        try:
            message = await call.read()
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            message = _EOF
        if message is _EOF:
            self._responded.add(attempt)
            if call.done():
                code, details, trailers, _ = _status_of(call)
            else:
                code, details, trailers = (
                    await call.code(),
                    await call.details(),
                    tuple(await call.trailing_metadata()),
                )
            self._end(attempt, code, details, trailers)
            return
        self._prefetched[attempt] = message
        self._responded.add(attempt)
        self._run(self._plan.on_response(attempt))
        if call.done():
            self._attempt_done(attempt, call)

    def _buffered(self, nbytes: int) -> None:
        self._run(self._plan.on_buffered(nbytes))

    def close_from_channel(self) -> None:
        """The channel closed: end now with CANCELLED (a backoff would outlive it)."""
        if not self._plan.done:
            self._run(self._plan.cancel("channel closed"))

    def _finished(self, finish: Finish) -> None:
        if self._requests is not None:
            self._requests.release()  # no attempt will replay them: drop them and the cycle
        if self._listed:  # (the wait may be over: its timer and picker are not a sign)
            waiting = self._channel.waiting_calls
            waiting.discard(self)
            self._listed = False
            if not waiting:
                self._channel.calls_answered()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        instrument = self._channel.instrument
        if instrument is not None:
            instrument.call_finished(self, finish.code)
        callbacks = self._done_callbacks
        if callbacks:
            self._done_callbacks = None
            for callback in callbacks:
                callback(self)

    # -- waiting for the plan -------------------------------------------------------------------
    def _next_progress(self) -> asyncio.Future[None]:
        if self._progress is None:
            self._progress = self._loop.create_future()
        return self._progress

    async def _until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            await asyncio.shield(self._next_progress())

    def _error(self) -> grpc.aio.AioRpcError:
        """The call's failure, as grpc.aio raises it (plan must be done, not OK)."""
        finish = self._plan.outcome
        assert finish is not None
        attempt = finish.attempt
        if attempt is None or attempt.call is None:
            return aio_error(finish.code, finish.details, (), finish.trailers)
        code, details, trailers, debug = _status_of(attempt.call)
        return aio_error(code, details, (), with_extra(trailers, finish.trailers), debug)

    def _committed(self) -> bool:
        plan = self._plan
        return plan.committed is not None or plan.done

    # -- grpc.aio.Call --------------------------------------------------------------------------
    @property
    def method(self) -> str:
        """The full method name (``/package.Service/Method``)."""
        return self._mc._method

    @property
    def subchannel(self) -> Any:
        """The backend the (last) attempt went to."""
        attempt = self._answering()
        return None if attempt is None else attempt.subchannel

    @property
    def peer_address(self) -> str | None:
        """``host:port`` of the backend that served (or is serving) this call."""
        sc = self.subchannel
        return None if sc is None else sc.address

    def _answering(self) -> Attempt | None:
        plan = self._plan
        if plan.outcome is not None and plan.outcome.attempt is not None:
            return plan.outcome.attempt
        return plan.committed or self._last

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._plan.done

    def cancel(self) -> bool:
        if self._plan.done:
            return False
        self._cancelled = True
        self._run(self._plan.cancel())
        return True

    def time_remaining(self) -> float | None:
        deadline = self._plan.deadline
        if deadline is None:
            return None
        return max(deadline - time.monotonic(), 0.0)

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._plan.done:
            callback(self)
        elif self._done_callbacks is None:
            self._done_callbacks = [callback]
        else:
            self._done_callbacks.append(callback)

    async def wait_for_connection(self) -> None:
        await self._until(self._committed)
        attempt = self._answering()
        if attempt is not None and attempt.call is not None and not self._plan.done:
            await attempt.call.wait_for_connection()
        elif (
            self._plan.outcome is not None
            and self._plan.outcome.code is not _OK
            and self._plan.outcome.attempt is None
        ):
            raise self._error()

    async def initial_metadata(self) -> Metadata:
        await self._until(self._committed)
        attempt = self._answering()
        if attempt is None or attempt.call is None:
            return Metadata()
        try:
            return await attempt.call.initial_metadata()  # type: ignore[no-any-return]
        except grpc.aio.AioRpcError as err:
            return Metadata(*(err.initial_metadata() or ()))

    async def trailing_metadata(self) -> Metadata:
        await self._until(lambda: self._plan.done)
        finish = self._plan.outcome
        assert finish is not None
        attempt = finish.attempt
        if attempt is None or attempt.call is None:
            return Metadata(*finish.trailers)
        trailers = await attempt.call.trailing_metadata()
        return Metadata(*with_extra(tuple(trailers), finish.trailers))

    async def code(self) -> grpc.StatusCode:
        await self._until(lambda: self._plan.done)
        finish = self._plan.outcome
        assert finish is not None
        if finish.attempt is not None and finish.attempt.call is not None:
            return _status_of(finish.attempt.call)[0]
        return finish.code

    async def details(self) -> str:
        await self._until(lambda: self._plan.done)
        finish = self._plan.outcome
        assert finish is not None
        if finish.attempt is not None and finish.attempt.call is not None:
            return _status_of(finish.attempt.call)[1]
        return finish.details

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._mc._method} {self._plan.state.name}>"


class _UnaryResponse(_Call):
    def __await__(self) -> Generator[Any, None, Any]:
        """Wait for the plan; the answer is the winning attempt's."""
        plan = self._plan
        try:
            while plan.outcome is None:
                attempt = self._last
                if attempt is not None and not attempt.ended and plan._hedging is None:
                    call = attempt.call
                    if type(call) is _UnaryAttempt:
                        response = yield from call._task
                        outcome = plan.outcome
                        if (
                            response is not _EOF
                            and outcome is not None
                            and outcome.attempt is attempt
                        ):
                            return response
                        continue  # a failure: the plan has been told, as below
                    try:
                        response = yield from call.__await__()
                    except grpc.aio.AioRpcError:
                        continue  # the done-callback told the plan already
                    except asyncio.CancelledError:
                        if _being_cancelled():
                            raise
                        continue  # the attempt was cancelled under us (close, plan)
                    if plan.outcome is not None and plan.outcome.attempt is attempt:
                        return response
                    continue
                yield from asyncio.shield(self._next_progress()).__await__()
        except asyncio.CancelledError:
            if not plan.done:
                self.cancel()
            elif plan.outcome is not None and plan.outcome.code is _CANCELLED:
                self._cancelled = True  # the awaiting task's cancel ended the attempt
            raise
        finish = plan.outcome
        if finish.code is _OK and finish.attempt is not None:
            return (yield from finish.attempt.call.__await__())
        if self._cancelled and finish.code is _CANCELLED:
            raise asyncio.CancelledError()
        raise self._error()


class _Responses:
    """``async for`` over a response stream with no retry or hedging policy.

    The first message comes through :meth:`_StreamResponse._iterate`, which tells the
    plan (the call commits to that attempt). From then on nothing but the attempt's end
    can happen, and its done-callback tells the plan, so the messages come straight
    from grpc.aio's own iterator: no generator of ours per message. Its end reads as
    ours would (grpc.aio raises the attempt's status; the first attempt adds no
    trailers)."""

    __slots__ = ("_call", "_next", "_through_plan")

    def __init__(self, call: _StreamResponse) -> None:
        self._call = call
        self._through_plan: AsyncGenerator[Any, None] = call._iterate()
        # (not a bound method of self until then: a cycle would keep the call and its
        # connection alive until the garbage collector ran)
        self._next: Callable[[], Awaitable[Any]] | None = None

    def __aiter__(self) -> _Responses:
        return self

    def __anext__(self) -> Awaitable[Any]:
        direct = self._next
        return self._until_committed() if direct is None else direct()

    async def _until_committed(self) -> Any:
        message = await self._through_plan.__anext__()
        attempt = self._call._plan.committed
        if attempt is not None and attempt.number == 0 and attempt.call is not None:
            self._next = attempt.call.__aiter__().__anext__
            await self._through_plan.aclose()  # suspended after the message: done with it
        return message


class _StreamResponse(_Call):
    def __aiter__(self) -> AsyncIterator[Any]:
        if self._prefetch:
            return self._iterate()
        return _Responses(self)

    async def _iterate(self) -> AsyncGenerator[Any, None]:
        if self._prefetch:  # the first message was read with read(): keep reading so
            while True:
                response = await self.read()
                if response is _EOF:
                    return
                yield response
        plan = self._plan
        while True:
            attempt = self._reading_attempt()
            if attempt is None:
                if plan.done:
                    self._end_of_stream()  # raises the call's error, if any
                    return
                await asyncio.shield(self._next_progress())
                continue
            first = True
            try:
                async for response in attempt.call:  # grpc.aio's own iteration: one layer
                    if first:
                        first = False
                        if plan.committed is None and not plan.done:
                            self._run(plan.on_response(attempt))
                    yield response
            except grpc.aio.AioRpcError:
                pass
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
            if not attempt.ended:
                code, details, trailers, _ = _status_of(attempt.call)
                self._end(attempt, code, details, trailers)
            if plan.done and (plan.outcome is None or plan.outcome.attempt in (attempt, None)):
                self._end_of_stream()
                return
            # the plan moved on (a transparent retry): read the next attempt

    async def read(self) -> Any:
        """The next response: from the attempt the plan committed to (or is trying)."""
        plan = self._plan
        while True:
            attempt = self._reading_attempt()
            if attempt is None:
                if plan.done:
                    return self._end_of_stream()
                await asyncio.shield(self._next_progress())
                continue
            if self._prefetch:
                if attempt in self._prefetched:
                    return self._prefetched.pop(attempt)
                if attempt not in self._responded:
                    await asyncio.shield(self._next_progress())
                    continue
            try:
                message = await attempt.call.read()
            except grpc.aio.AioRpcError:
                message = _EOF
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise
                # Cancelled under us (a hedge that lost, close): its end, as below. (A
                # `continue` here would read the same cancelled call again, forever.)
                message = _EOF
            if message is not _EOF:
                if not plan.done and plan.committed is None:
                    self._run(plan.on_response(attempt))
                return message
            if not attempt.ended:
                code, details, trailers, _ = _status_of(attempt.call)
                self._end(attempt, code, details, trailers)
            if plan.done and (plan.outcome is None or plan.outcome.attempt in (attempt, None)):
                return self._end_of_stream()

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
        finish = self._plan.outcome
        assert finish is not None
        if finish.attempt is not None and finish.attempt.call is not None:
            code = _status_of(finish.attempt.call)[0]
        else:
            code = finish.code
        if code is _OK:
            return _EOF
        if self._cancelled and code is _CANCELLED:
            raise asyncio.CancelledError()
        raise self._error()


class _RequestStream:
    """write() / done_writing() for calls without a request iterator."""

    _requests: AsyncRequests | None

    async def write(self, request: Any) -> None:
        requests = self._requests
        assert requests is not None
        if not requests.pushed:
            raise grpc.aio.UsageError("Please don't mix two styles of API for streaming requests")
        plan: AttemptPlan = self._plan  # type: ignore[attr-defined]
        if plan.done:
            raise aio_error(  # as grpcio: writing to a finished call
                grpc.StatusCode.CANCELLED if plan.outcome is None else plan.outcome.code,
                "the call is already finished",
            )
        requests.write(request)

    async def done_writing(self) -> None:
        requests = self._requests
        assert requests is not None
        if not requests.pushed:
            raise grpc.aio.UsageError("Please don't mix two styles of API for streaming requests")
        requests.done_writing()


class BalancedUnaryUnaryCall(_UnaryResponse, grpc.aio.UnaryUnaryCall[Any, Any]):
    _kind = Kind.UNARY_UNARY


class BalancedUnaryStreamCall(_StreamResponse, grpc.aio.UnaryStreamCall[Any, Any]):
    _kind = Kind.UNARY_STREAM
    _unary_response = False


class BalancedStreamUnaryCall(_RequestStream, _UnaryResponse, grpc.aio.StreamUnaryCall[Any, Any]):
    _kind = Kind.STREAM_UNARY


class BalancedStreamStreamCall(
    _RequestStream, _StreamResponse, grpc.aio.StreamStreamCall[Any, Any]
):
    _kind = Kind.STREAM_STREAM
    _unary_response = False


class BalancedUnaryUnaryMultiCallable(_MultiCallable, grpc.aio.UnaryUnaryMultiCallable[Any, Any]):
    _kind = Kind.UNARY_UNARY

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


class BalancedUnaryStreamMultiCallable(_MultiCallable, grpc.aio.UnaryStreamMultiCallable[Any, Any]):
    _kind = Kind.UNARY_STREAM

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


class BalancedStreamUnaryMultiCallable(_MultiCallable, grpc.aio.StreamUnaryMultiCallable[Any, Any]):
    _kind = Kind.STREAM_UNARY

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
    _MultiCallable, grpc.aio.StreamStreamMultiCallable[Any, Any]
):
    _kind = Kind.STREAM_STREAM

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
