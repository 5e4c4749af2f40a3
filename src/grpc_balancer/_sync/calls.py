"""Multicallables of :class:`~grpc_balancer._sync.channel.SyncBalancedChannel`.

A call runs in the caller's thread: pick on the current picker, send on that
endpoint's sync grpcio channel, count it on the subchannel, and re-send elsewhere when
the attempt never reached a server. ``methodConfig`` (timeout, waitForReady,
retryPolicy, hedgingPolicy), ``retryThrottling`` and ``circuitBreakers`` apply as in
the async calls: the decisions come from the same I/O-free core (:mod:`grpc_balancer._attempts.retry`).
Streaming calls pick once and return grpcio's own call object, so iteration,
``cancel()`` and metadata behave exactly as with a plain grpcio channel.
"""

from __future__ import annotations

import queue
import time
from typing import TYPE_CHECKING, Any, cast

import grpc
import grpc.aio

from grpc_balancer._aio.calls import (
    MAX_TRANSPARENT_RETRIES,
    _error_with_attempts,
    _pushback_ms,
    _with_previous_attempts,
    never_reached_server,
    rpc_error,
)
from grpc_balancer._attempts.retry import (
    HedgingPolicy,
    RetryPolicy,
    hedge_failure_is_fatal,
    may_send_hedge,
    record_success,
    retry_delay_s,
)
from grpc_balancer._observe.capture import CURRENT as _CAPTURE
from grpc_balancer._sync.future import BalancedFuture, CallWithAttempts, FailedCall
from grpc_balancer._sync.streams import RequestReplay, RetryingStream
from grpc_balancer.picker import PickInfo

if TYPE_CHECKING:
    from grpc_balancer._sync.channel import SyncBalancedChannel
    from grpc_balancer._sync.subchannel import SyncSubchannel

    class _UnaryUnaryBase(grpc.UnaryUnaryMultiCallable[Any, Any]): ...

    class _UnaryStreamBase(grpc.UnaryStreamMultiCallable[Any, Any]): ...

    class _StreamUnaryBase(grpc.StreamUnaryMultiCallable[Any, Any]): ...

    class _StreamStreamBase(grpc.StreamStreamMultiCallable[Any, Any]): ...

else:  # grpc-stubs makes these generic; grpcio's runtime classes are not
    _UnaryUnaryBase = grpc.UnaryUnaryMultiCallable
    _UnaryStreamBase = grpc.UnaryStreamMultiCallable
    _StreamUnaryBase = grpc.StreamUnaryMultiCallable
    _StreamStreamBase = grpc.StreamStreamMultiCallable

_OK = grpc.StatusCode.OK
_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
_CANCELLED = grpc.StatusCode.CANCELLED
_DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED


def _code(err: Any) -> grpc.StatusCode:
    return cast(grpc.Call, err).code()


def _not_sent(err: Any) -> bool:
    return never_reached_server(cast(grpc.aio.AioRpcError, err))


def with_attempts(err: Any, previous: int) -> Any:
    """``err`` with ``grpc-previous-rpc-attempts`` in its trailers (as the async calls)."""
    return _error_with_attempts(cast(grpc.aio.AioRpcError, err), previous) if previous else err


def metadata_for(metadata: Any, previous: int) -> Any:
    """The call's metadata for an attempt after ``previous`` others."""
    return metadata if not previous else tuple(_with_previous_attempts(metadata, previous))


class CallRecord:
    """What metrics sinks and :func:`grpc_balancer.capture_backend` see of a sync call
    (the async calls hand them the call object itself)."""

    def __init__(self, mc: _SyncMultiCallable) -> None:
        self._mc = mc
        self._subchannel: SyncSubchannel | None = None

    @property
    def subchannel(self) -> SyncSubchannel | None:
        return self._subchannel

    @property
    def peer_address(self) -> str | None:
        return None if self._subchannel is None else self._subchannel.address


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
        # methodConfig, looked up once here so calls without a policy pay nothing.
        policy = channel.core.method_policy(method)
        self._timeout = None if policy is None else policy.timeout_s
        self._wait_for_ready = None if policy is None else policy.wait_for_ready
        self._retry: RetryPolicy | None = None if policy is None else policy.retry
        self._hedging: HedgingPolicy | None = None if policy is None else policy.hedging

    # -- per-call setup -------------------------------------------------------------------
    def deadline_of(self, timeout: float | None) -> float | None:
        if self._timeout is not None and (timeout is None or self._timeout < timeout):
            timeout = self._timeout  # methodConfig timeout: the smaller one wins
        return None if timeout is None else time.monotonic() + timeout

    def wait_for_ready_of(self, wait_for_ready: bool | None) -> bool:
        return bool(self._wait_for_ready if wait_for_ready is None else wait_for_ready)

    def record(self) -> CallRecord | None:
        """A record for metrics / capture_backend, when either is on (else None)."""
        capture = _CAPTURE.get()
        instrument = self._channel.core.instrument
        if capture is None and instrument is None:
            return None
        record = CallRecord(self)
        if capture is not None:
            capture.add(record)
        if instrument is not None:
            self._channel.on_loop(instrument.call_started, record)
        return record

    def finish_record(self, record: CallRecord | None, code: grpc.StatusCode) -> None:
        if record is not None:
            instrument = self._channel.core.instrument
            if instrument is not None:
                self._channel.on_loop(instrument.call_finished, record, code)

    # -- attempts -----------------------------------------------------------------------------
    def inner(self, sc: SyncSubchannel) -> Any:
        """This method on ``sc``'s sync channel, or ``None`` if ``sc`` is closing."""
        mc = sc.sync_callables.get(self._key)
        if mc is None:
            mc = sc.new_sync_callable(self._key, self._kind, self._method, self._ser, self._deser)
        return mc

    def pick_limited(
        self, info: PickInfo, deadline: float | None, wait_for_ready: bool
    ) -> SyncSubchannel:
        """A pick, then ``circuitBreakers.maxRequests``: skip a saturated backend."""
        return self.adjust_pick(info, self._channel.pick(info, deadline, wait_for_ready))

    def adjust_pick(self, info: PickInfo, sc: SyncSubchannel) -> SyncSubchannel:
        """As the async calls do after a pick: avoid a backend this call already tried
        (a policy may ignore ``PickInfo.exclude``), then apply ``maxRequests``."""
        core = self._channel.core
        limit = core.max_requests
        if not (info.exclude and sc in info.exclude) and not (limit and sc.in_flight >= limit):
            return sc
        for _ in range(3):
            try:  # the loop thread may change the subchannel set while we read it
                if info.exclude and sc in info.exclude:
                    sc = cast("SyncSubchannel", core.avoid_tried(info, sc))
                if limit and sc.in_flight >= limit:
                    sc = cast("SyncSubchannel", core.pick_unsaturated(info, sc))
                return sc
            except RuntimeError:
                continue
        return sc

    def start(
        self, info: PickInfo, deadline: float | None, wait_for_ready: bool
    ) -> tuple[SyncSubchannel, Any, float, float | None]:
        """Pick and count one attempt: (subchannel, inner multicallable, start time,
        timeout left). Skips subchannels that are closing under us."""
        channel = self._channel
        for _ in range(MAX_TRANSPARENT_RETRIES + 1):
            picker = channel.picker
            sc = self.pick_limited(info, deadline, wait_for_ready)
            inner = self.inner(sc)
            started = sc.try_call_started() if inner is not None else None
            if started is not None:
                if deadline is None:
                    return sc, inner, started, None
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    return sc, inner, started, remaining
                sc.call_finished(started, _DEADLINE)
                raise rpc_error(_DEADLINE, "Deadline Exceeded")
            info.exclude = info.exclude | {sc}
            channel.wait_for_picker_change(picker, deadline, 1.0)
        channel.check_usable()
        raise rpc_error(_UNAVAILABLE, f"no backend of {channel.target!r} accepted the call")

    def start_nowait(
        self, info: PickInfo, deadline: float | None, wait_for_ready: bool
    ) -> tuple[SyncSubchannel, Any, float, float | None] | None:
        """Like :meth:`start`, but ``None`` instead of waiting for a backend."""
        picked = self._channel.core.pick_now(info, wait_for_ready)
        if picked is None:
            return None
        sc = self.adjust_pick(info, cast("SyncSubchannel", picked))
        inner = self.inner(sc)
        started = sc.try_call_started() if inner is not None else None
        if started is None:
            return None
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            sc.call_finished(started, _DEADLINE)
            raise rpc_error(_DEADLINE, "Deadline Exceeded")
        return sc, inner, started, remaining

    def closed_under_us(self, sc: SyncSubchannel, started: float) -> None:
        """grpcio raised ValueError: the endpoint channel was closed between pick and send."""
        sc.call_finished(started, _CANCELLED)
        if self._channel._unusable is not None:
            raise rpc_error(_CANCELLED, "channel closed while the call was starting") from None

    def retry_delay(
        self, retry: RetryPolicy, sc: SyncSubchannel, err: Any, attempts: int, info: PickInfo
    ) -> float | None:
        """After ``attempts`` attempts, the last one failed with ``err`` on ``sc``: the
        delay before the next (on another backend), or None to give up."""
        core = self._channel.core
        code = _code(err)
        throttle = core.throttle
        with self._channel.throttle_lock:
            delay = retry_delay_s(
                retry, code, attempts, throttle, _pushback_ms(cast(grpc.aio.AioRpcError, err))
            )
        if delay is None:
            refused = throttle is not None and attempts < retry.max_attempts
            if refused and code in retry.retryable_codes:
                core.emit("throttled", sc, code)
            return None
        core.emit("retry", sc, code)
        info.exclude = info.exclude | {sc}
        return delay

    def succeeded(self) -> None:
        with self._channel.throttle_lock:
            record_success(self._channel.core.throttle)


def _no_time_left(err: Any, attempts: int) -> Any:
    return with_attempts(
        rpc_error(
            _DEADLINE,
            "Deadline Exceeded (no time left for another attempt; the last one "
            f"failed with {_code(err).name}: {cast(grpc.Call, err).details()})",
        ),
        attempts,
    )


# ---------------------------------------------------------------------------------------------
# unary response: unary → unary and stream → unary share the blocking / future paths
# ---------------------------------------------------------------------------------------------
class _UnaryResponse(_SyncMultiCallable):
    #: A request iterator can be read only once: stream → unary is never re-sent.
    resendable = True

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
            self, request, timeout, metadata, credentials, wait_for_ready, compression
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
        record = self.record()
        if not self.resendable and self._retry is not None:
            request = RequestReplay(request)  # a request stream, kept for retries
        try:
            result = self._attempts(
                request,
                self.deadline_of(timeout),
                metadata,
                credentials,
                self.wait_for_ready_of(wait_for_ready),
                compression,
                with_call,
                record,
            )
        except grpc.RpcError as err:
            self.finish_record(record, _code(err))
            raise
        self.finish_record(record, _OK)
        return result

    def _attempts(
        self,
        request: Any,
        deadline: float | None,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wfr: bool,
        compression: grpc.Compression | None,
        with_call: bool,
        record: CallRecord | None,
    ) -> Any:
        if self._hedging is not None and self.resendable:
            return self._hedged(
                request, deadline, metadata, credentials, wfr, compression, with_call, record
            )
        channel = self._channel
        info = PickInfo(self._method, metadata)
        replay = request if isinstance(request, RequestReplay) else None
        resendable = self.resendable or replay is not None
        retry = self._retry if resendable else None
        transparent = 0
        attempts = 0  # attempts that reached a server (retryPolicy.maxAttempts counts these)
        while True:
            picker = channel.picker
            sc, inner, started, remaining = self.start(info, deadline, wfr)
            if record is not None:
                record._subchannel = sc
            md = metadata_for(metadata, attempts)
            sent = request if replay is None else replay.replay()
            trailers = bool(sc.trailer_observers)  # ORCA load reports: need the trailers
            try:
                if with_call or trailers:
                    result = inner.with_call(sent, remaining, md, credentials, False, compression)
                else:
                    result = inner(sent, remaining, md, credentials, False, compression)
            except grpc.RpcError as err:
                code = _code(err)
                sc.call_finished(started, code)
                if code is _UNAVAILABLE:
                    sc.record_failure_detail(cast(grpc.Call, err).details() or "")
                    if resendable and transparent < MAX_TRANSPARENT_RETRIES and _not_sent(err):
                        transparent += 1
                        info.exclude = info.exclude | {sc}
                        channel.core.emit("transparent_retry", sc, code)
                        channel.wait_for_picker_change(picker, deadline, 1.0)
                        continue
                if retry is None:
                    raise
                attempts += 1
                delay = self.retry_delay(retry, sc, err, attempts, info)
                if delay is None:
                    raise with_attempts(err, attempts - 1) from None
                if deadline is not None and time.monotonic() + delay >= deadline:
                    raise _no_time_left(err, attempts) from None
                time.sleep(delay)
                continue
            except ValueError:
                self.closed_under_us(sc, started)
                transparent += 1
                if transparent > MAX_TRANSPARENT_RETRIES:
                    raise
                info.exclude = info.exclude | {sc}
                continue
            sc.call_finished(started, _OK)
            if trailers:
                channel.on_loop(sc.trailers_received, result[1].trailing_metadata())
                if not with_call:
                    result = result[0]
            if retry is not None:
                self.succeeded()
                if with_call and attempts:
                    return result[0], CallWithAttempts(result[1], attempts)
            return result

    def _hedged(
        self,
        request: Any,
        deadline: float | None,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wfr: bool,
        compression: grpc.Compression | None,
        with_call: bool,
        record: CallRecord | None,
    ) -> Any:
        """Hedging: a new attempt on another backend every ``hedgingDelay`` (or at once
        after a non-fatal failure) until one succeeds; the others are then cancelled."""
        policy = self._hedging
        assert policy is not None
        core = self._channel.core
        throttle = core.throttle
        info = PickInfo(self._method, metadata)
        finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
        running: dict[Any, SyncSubchannel] = {}
        sent = 0
        limit = policy.max_attempts  # lowered to `sent` when no more hedges may go out
        next_at = time.monotonic()
        last_err: Any = None
        try:
            while True:
                if sent < limit and time.monotonic() >= next_at:
                    with self._channel.throttle_lock:
                        allowed = may_send_hedge(policy, sent, throttle)
                    if not allowed:
                        core.emit("throttled", None, None)
                        limit = sent
                    else:
                        try:
                            # a hedge never waits for a backend: the others may answer meanwhile
                            got = (
                                self.start(info, deadline, wfr)
                                if not running
                                else self.start_nowait(info, deadline, wfr)
                            )
                        except grpc.RpcError:
                            if not running:
                                raise
                            limit = sent  # no backend (or time) for a hedge: wait for the others
                            got = None
                        if got is None:
                            next_at = time.monotonic() + policy.delay_s
                        else:
                            sc, inner, started, remaining = got
                            if sent:
                                core.emit("hedge", sc, None)
                            attempt = inner.future(
                                request,
                                remaining,
                                metadata_for(metadata, sent),
                                credentials,
                                False,
                                compression,
                            )
                            running[attempt] = sc
                            if record is not None and record._subchannel is None:
                                record._subchannel = sc
                            attempt.add_done_callback(_accounted(sc, started, finished.put))
                            info.exclude = info.exclude | {sc}
                            sent += 1
                            next_at = time.monotonic() + policy.delay_s
                if not running:
                    raise with_attempts(last_err, sent - 1)
                wait = None if sent >= limit else max(next_at - time.monotonic(), 0)
                if deadline is not None:
                    left = max(deadline - time.monotonic(), 0.0) + 0.05
                    wait = left if wait is None else min(wait, left)
                try:
                    attempt = finished.get(timeout=wait)
                except queue.Empty:
                    continue
                sc = running.pop(attempt)
                code = attempt.code()
                if code is _OK:
                    if record is not None:
                        record._subchannel = sc
                    with self._channel.throttle_lock:
                        record_success(throttle)
                    response = attempt.result()
                    if not with_call:
                        return response
                    return response, (CallWithAttempts(attempt, sent - 1) if sent > 1 else attempt)
                last_err = attempt
                with self._channel.throttle_lock:
                    fatal = hedge_failure_is_fatal(policy, code, throttle)
                if fatal:
                    raise with_attempts(attempt, sent - 1)
                next_at = time.monotonic()  # a non-fatal failure: send the next one now
        finally:
            for attempt in running:
                attempt.cancel()


def _accounted(sc: SyncSubchannel, started: float, then: Any) -> Any:
    """A done-callback for an attempt future: count it on ``sc``, then ``then(attempt)``."""

    def done(attempt: Any) -> None:
        code = attempt.code()
        sc.call_finished(started, code)
        if code is _UNAVAILABLE:
            sc.record_failure_detail(attempt.details() or "")
        then(attempt)

    return done


class SyncUnaryUnaryMultiCallable(_UnaryResponse, _UnaryUnaryBase):
    _kind = "unary_unary"


class SyncStreamUnaryMultiCallable(_UnaryResponse, _StreamUnaryBase):
    _kind = "stream_unary"
    resendable = False


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
        self._channel.check_usable()
        if self._retry is not None:
            return RetryingStream(
                self,
                request,
                self.deadline_of(timeout),
                metadata,
                credentials,
                self.wait_for_ready_of(wait_for_ready),
                compression,
                self._retry,
            )
        record = self.record()
        info = PickInfo(self._method, metadata)
        try:
            sc, inner, started, remaining = self.start(
                info, self.deadline_of(timeout), self.wait_for_ready_of(wait_for_ready)
            )
        except grpc.RpcError as err:
            self.finish_record(record, _code(err))
            return FailedCall(err)  # raised when read, as grpcio does
        if record is not None:
            record._subchannel = sc
        try:
            call = inner(request, remaining, metadata, credentials, False, compression)
        except ValueError:
            self.closed_under_us(sc, started)
            raise

        def done() -> None:
            self.finish_record(record, stream_done(sc, started, call))

        if not call.add_callback(done):
            done()
        return call


def stream_done(sc: SyncSubchannel, started: float, call: Any) -> grpc.StatusCode:
    """A streaming attempt ended: count it on its subchannel; its status code."""
    code: grpc.StatusCode = call.code()
    sc.call_finished(started, code)
    if code is _UNAVAILABLE:
        sc.record_failure_detail(call.details() or "")
    return code


class SyncUnaryStreamMultiCallable(_StreamResponse, _UnaryStreamBase):
    _kind = "unary_stream"


class SyncStreamStreamMultiCallable(_StreamResponse, _StreamStreamBase):
    _kind = "stream_stream"
