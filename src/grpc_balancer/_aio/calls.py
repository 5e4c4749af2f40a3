"""Multicallables and call objects of :class:`~grpc_balancer._aio.channel.BalancedChannel`.

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

from grpc_balancer._attempts.replay import ReplayableRequests
from grpc_balancer._attempts.retry import (
    PREVIOUS_ATTEMPTS_KEY,
    PUSHBACK_KEY,
    HedgingPolicy,
    RetryPolicy,
    hedge_failure_is_fatal,
    may_send_hedge,
    parse_pushback,
    record_success,
    retry_delay_s,
)
from grpc_balancer._observe.capture import CURRENT as _CAPTURE
from grpc_balancer.picker import PickInfo

if TYPE_CHECKING:
    from grpc_balancer._aio.channel import BalancedChannel
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


def _with_previous_attempts(metadata: Any, previous: int) -> Metadata:
    """The call's metadata plus ``grpc-previous-rpc-attempts`` (retries and hedges only)."""
    items = [(k, v) for k, v in (metadata or ()) if k != PREVIOUS_ATTEMPTS_KEY]
    return Metadata(*items, (PREVIOUS_ATTEMPTS_KEY, str(previous)))


def _error_with_attempts(err: grpc.aio.AioRpcError, previous: int) -> grpc.aio.AioRpcError:
    """``err`` as the application sees it: its trailers carry the earlier attempts' count."""
    if not previous:
        return err
    return grpc.aio.AioRpcError(
        err.code(),
        Metadata(*(err.initial_metadata() or ())),
        _with_previous_attempts(err.trailing_metadata(), previous),
        err.details(),
        err.debug_error_string(),
    )


def _pushback_ms(err: grpc.aio.AioRpcError) -> int | None:
    trailers: Any = err.trailing_metadata()
    if not trailers:
        return None
    return parse_pushback([v for k, v in trailers if k == PUSHBACK_KEY])


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
        # methodConfig, looked up once here so calls without a policy pay nothing.
        policy = channel.method_policy(method)
        self._timeout = None if policy is None else policy.timeout_s
        self._wait_for_ready = None if policy is None else policy.wait_for_ready
        self._retry: RetryPolicy | None = None if policy is None else policy.retry
        self._hedging: HedgingPolicy | None = None if policy is None else policy.hedging

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
        if mc._timeout is not None and (timeout is None or mc._timeout < timeout):
            timeout = mc._timeout  # methodConfig timeout: the smaller one wins
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._metadata = metadata
        self._credentials = credentials
        if wait_for_ready is None:
            wait_for_ready = mc._wait_for_ready
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
        #: Attempts before the one that produced the result (retries/hedging only).
        self._previous_attempts = 0
        #: Final status of a call whose last attempt ended on its own (streams).
        self._final_code = grpc.StatusCode.OK
        capture = _CAPTURE.get()
        if capture is not None:
            capture.add(self)
        if self._channel.instrument is not None:
            self._channel.instrument.call_started(self)

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
        trailers = await self._attempt.trailing_metadata()
        if self._previous_attempts:
            return _with_previous_attempts(trailers, self._previous_attempts)
        return trailers  # type: ignore[no-any-return]

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
        if self._channel.instrument is not None:
            code = self._final_code if error is None else error.code()
            self._channel.instrument.call_finished(self, code)
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)
        callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            callback(self)

    async def _pick(self) -> Subchannel:
        sc = self._pick_nowait()
        if sc is None:
            sc = await self._channel.pick(self._info, self._deadline, self._wait_for_ready)
            sc = self._checked(sc)
        return sc

    def _pick_nowait(self) -> Subchannel | None:
        """The current picker's choice, or None if the call would have to wait."""
        if self._cancelled:
            raise rpc_error(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
        sc = self._channel.pick_now(self._info, self._wait_for_ready)
        return None if sc is None else self._checked(sc)

    def _checked(self, sc: Subchannel) -> Subchannel:
        """Apply what pickers may not know: backends already tried, per-backend limits."""
        channel = self._channel
        if self._info.exclude and sc in self._info.exclude:
            sc = channel.avoid_tried(self._info, sc)
        if channel.max_requests and sc.in_flight >= channel.max_requests:
            sc = channel.pick_unsaturated(self._info, sc)
        return sc

    async def _backoff(self, delay: float, err: grpc.aio.AioRpcError) -> None:
        """Sleep before a retry, unless the wait would run past the call's deadline."""
        if self._deadline is not None and time.monotonic() + delay >= self._deadline:
            raise _error_with_attempts(
                rpc_error(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "Deadline Exceeded (no time left for another attempt; the last one "
                    f"failed with {err.code().name}: {err.details()})",
                ),
                self._previous_attempts,
            )
        if delay > 0:
            await asyncio.sleep(delay)
        if self._cancelled:
            raise rpc_error(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")

    def _retry_after(
        self, retry: RetryPolicy, sc: Subchannel, err: grpc.aio.AioRpcError, attempts: int
    ) -> float | None:
        """After ``attempts`` attempts, the last one failed with ``err`` on ``sc``: the
        delay before the next (on another backend), or None to give up."""
        if self._cancelled:
            return None
        code = err.code()
        throttle = self._channel.throttle
        delay = retry_delay_s(retry, code, attempts, throttle, _pushback_ms(err))
        if delay is None:
            if (
                throttle is not None
                and code in retry.retryable_codes
                and attempts < retry.max_attempts
            ):
                self._channel.emit("throttled", sc, code)
            return None
        self._channel.emit("retry", sc, code)
        self._info.exclude = self._info.exclude | {sc}
        self._previous_attempts = attempts
        return delay

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
        if mc._hedging is not None:
            return await self._drive_hedged(mc, mc._hedging)
        retry = mc._retry
        transparent = 0
        attempts = 0  # attempts that reached a server (retryPolicy.maxAttempts counts these)
        while True:
            picker = self._channel.picker
            sc = await self._pick()
            self._subchannel = sc
            attempt = mc.inner(sc)(
                self._request,
                timeout=self._remaining(),
                metadata=self._metadata
                if not attempts
                else _with_previous_attempts(self._metadata, attempts),
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
                    self._channel.emit("transparent_retry", sc, code)
                    # The picker has not seen the failure yet: give the subchannel's
                    # state change a moment to land rather than re-sending blindly.
                    await self._channel.wait_for_picker_change(picker, self._deadline, 1.0)
                    continue
                if retry is None:
                    raise
                attempts += 1
                delay = self._retry_after(retry, sc, err, attempts)
                if delay is None:
                    raise _error_with_attempts(err, attempts - 1) from None
                await self._backoff(delay, err)
                continue
            except asyncio.CancelledError:
                sc.call_finished(started, grpc.StatusCode.CANCELLED)
                raise
            sc.call_finished(started, grpc.StatusCode.OK)
            if sc.trailer_observers:  # ORCA load reports (weighted_round_robin)
                sc.trailers_received(await attempt.trailing_metadata())
            if retry is not None:
                record_success(self._channel.throttle)
            return response

    async def _drive_hedged(
        self, mc: BalancedUnaryUnaryMultiCallable, policy: HedgingPolicy
    ) -> Any:
        """Hedging: a new attempt on another backend every ``hedgingDelay`` (or at once
        after a non-fatal failure) until one succeeds; the others are then cancelled."""
        loop = asyncio.get_running_loop()
        throttle = self._channel.throttle
        running: dict[asyncio.Task[tuple[Any, Any]], tuple[Subchannel, Any]] = {}
        sent = 0
        limit = policy.max_attempts  # lowered to `sent` when no more hedges may go out
        next_at = loop.time()
        last_err: grpc.aio.AioRpcError | None = None
        try:
            while True:
                if sent < limit and loop.time() >= next_at:
                    if not may_send_hedge(policy, sent, throttle):
                        self._channel.emit("throttled", None, None)
                        limit = sent
                    else:
                        try:
                            # a hedge never waits for a backend: the others may answer meanwhile
                            picked = await self._pick() if not running else self._pick_nowait()
                            if picked is None:
                                next_at = loop.time() + policy.delay_s
                                continue
                            sc = picked
                            attempt = mc.inner(sc)(
                                self._request,
                                timeout=self._remaining(),
                                metadata=self._metadata
                                if not sent
                                else _with_previous_attempts(self._metadata, sent),
                                credentials=self._credentials,
                                wait_for_ready=False,
                                compression=self._compression,
                            )
                        except grpc.aio.AioRpcError:
                            if not running:
                                raise
                            limit = sent  # no backend (or time) for a hedge: wait for the others
                        else:
                            if sent:
                                self._channel.emit("hedge", sc, None)
                            if self._attempt is None:
                                self._attempt, self._subchannel = attempt, sc
                            task = loop.create_task(_run_attempt(sc, attempt))
                            running[task] = (sc, attempt)
                            self._info.exclude = self._info.exclude | {sc}
                            sent += 1
                            next_at = loop.time() + policy.delay_s
                if not running:
                    assert last_err is not None
                    raise _error_with_attempts(last_err, sent - 1)
                timeout = None if sent >= limit else max(next_at - loop.time(), 0)
                if self._deadline is not None:
                    left = max(self._deadline - time.monotonic(), 0.0) + 0.05
                    timeout = left if timeout is None else min(timeout, left)
                done, _ = await asyncio.wait(
                    running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    sc, attempt = running.pop(task)
                    response, err = task.result()
                    if err is None:
                        self._attempt, self._subchannel = attempt, sc
                        self._previous_attempts = sent - 1
                        record_success(throttle)
                        return response
                    last_err = err
                    if hedge_failure_is_fatal(policy, err.code(), throttle):
                        self._attempt, self._subchannel = attempt, sc
                        raise _error_with_attempts(err, sent - 1)
                    next_at = loop.time()  # a non-fatal failure: send the next one now
        finally:
            for task in running:
                task.cancel()


async def _run_attempt(sc: Subchannel, attempt: Any) -> tuple[Any, grpc.aio.AioRpcError | None]:
    """One hedged attempt, accounted on its subchannel; errors are returned, not raised."""
    started = sc.call_started()
    try:
        response = await attempt
    except grpc.aio.AioRpcError as err:
        sc.call_finished(started, err.code())
        if err.code() is grpc.StatusCode.UNAVAILABLE:
            sc.record_failure_detail(err.details() or "")
        return None, err
    except asyncio.CancelledError:
        sc.call_finished(started, grpc.StatusCode.CANCELLED)
        raise
    sc.call_finished(started, grpc.StatusCode.OK)
    if sc.trailer_observers:
        sc.trailers_received(await attempt.trailing_metadata())
    return response, None


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
        self._prefetched: Any = None  # the first response, read while retries were possible

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
            retry = self._mc._retry
            if retry is not None and (
                isinstance(self, BalancedUnaryStreamCall) or self._request is not None
            ):
                await self._start_with_retries(retry, loop)
                return
            sc = await self._pick()
            self._subchannel = sc
            attempt = self._send(sc, self._metadata)
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

    def _send(self, sc: Subchannel, metadata: Any, request: Any = None) -> Any:
        if request is None:
            request = self._request
        kwargs: dict[str, Any] = {
            "timeout": self._remaining(),
            "metadata": metadata,
            "credentials": self._credentials,
            "wait_for_ready": False,
            "compression": self._compression,
        }
        inner = self._mc.inner(sc)
        return inner(request, **kwargs) if request is not None else inner(**kwargs)

    async def _start_with_retries(
        self, retry: RetryPolicy, loop: asyncio.AbstractEventLoop
    ) -> None:
        """A stream with a retry policy: read the first response before handing the
        stream over, retrying (elsewhere) until one arrives; after it, no retries.
        Request streams (given as an iterator) are buffered until then and replayed."""
        transparent = 0
        attempts = 0
        replay = (
            None if isinstance(self, BalancedUnaryStreamCall) else ReplayableRequests(self._request)
        )
        single_response = isinstance(self, BalancedStreamUnaryCall)
        while True:
            picker = self._channel.picker
            sc = await self._pick()
            self._subchannel = sc
            metadata = (
                self._metadata
                if not attempts
                else _with_previous_attempts(self._metadata, attempts)
            )
            attempt = self._send(sc, metadata, None if replay is None else replay.replay())
            self._attempt = attempt
            started = sc.call_started()
            try:
                first = None if single_response else await attempt.read()
                if single_response:
                    await attempt
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
                    self._channel.emit("transparent_retry", sc, code)
                    await self._channel.wait_for_picker_change(picker, self._deadline, 1.0)
                    continue
                attempts += 1
                delay = self._retry_after(retry, sc, err, attempts)
                if delay is None:
                    self._prefetched = _EOF
                    self._final_code = code
                    self._finish(None)  # the attempt holds the final status
                    return
                self._attempt = None
                await self._backoff(delay, err)
                continue
            except asyncio.CancelledError:
                sc.call_finished(started, grpc.StatusCode.CANCELLED)
                raise
            if replay is not None:
                replay.commit()
            self._prefetched = first
            record_success(self._channel.throttle)
            self._watch_attempt(loop, sc, started, attempt)
            return

    def _watch_attempt(
        self, loop: asyncio.AbstractEventLoop, sc: Subchannel, started: float, attempt: Any
    ) -> None:
        attempt.add_done_callback(lambda c: loop.create_task(self._attempt_done(sc, started, c)))

    async def _attempt_done(self, sc: Subchannel, started: float, attempt: Any) -> None:
        code = await attempt.code()
        sc.call_finished(started, code)
        if code is grpc.StatusCode.UNAVAILABLE:
            sc.record_failure_detail(await attempt.details() or "")
        if sc.trailer_observers and code is grpc.StatusCode.OK:
            sc.trailers_received(await attempt.trailing_metadata())
        self._final_code = code
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
        if self._prefetched is None:
            async for response in self._attempt:
                yield response
            return
        # Retried stream: the first response was read with read(), so keep reading.
        while True:
            response = await self.read()
            if response is _EOF:
                return
            yield response

    async def read(self) -> Any:
        await self._ensure_attempt()
        first = self._prefetched
        if first is not None and first is not _TAKEN:
            self._prefetched = _TAKEN
            if first is _EOF:
                await self._attempt.code()
                # read() raises the stream's error, like grpc.aio does
                return await self._attempt.read()
            return first
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


_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]
_TAKEN = object()  # the prefetched first response was handed out


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
