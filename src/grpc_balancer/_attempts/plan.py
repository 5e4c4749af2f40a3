"""AttemptPlan: every decision of one call, for all four call kinds, with no I/O.

gRFC A6 as grpc-go's ``stream.go`` does it, written once (h2's ``stream.py`` style:
transitions are an explicit table and an unknown (state, input) pair raises):

* pick (the one seam, :mod:`grpc_balancer._core.picking`): skip tried and saturated
  backends, wait for the next picker when nothing is ready, fail fast otherwise;
* transparent retry of attempts that never reached a server (bounded);
* ``retryPolicy``: attempts, full-jitter backoff, retryable codes,
  ``grpc-retry-pushback-ms``, throttling;
* ``hedgingPolicy``: a new attempt every ``hedgingDelay`` (at once after a non-fatal
  failure), the first success wins, the others are cancelled;
* commit on the first response message (streams) or the final status (unary
  responses), or when the request replay buffer passes its limit;
* the deadline bounds every wait; cancel works in every state;
  ``grpc-previous-rpc-attempts`` on every attempt after the first.

A driver (:mod:`grpc_balancer._aio.calls`, :mod:`grpc_balancer._sync.calls`) feeds
inputs (``start``, ``on_picker``, ``on_timer``, ``on_end``, ``on_response``,
``on_buffered``, ``cancel``) and performs the actions each returns (:class:`Send`,
:class:`Cancel`, :class:`Commit`, :class:`Finish`); after every input it re-arms one
timer at :attr:`AttemptPlan.wake_at` and waits on :attr:`AttemptPlan.waiting_on`.
The clock and the random source are passed in, so tests drive it with fakes.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import grpc

from grpc_balancer._attempts.attempt import Attempt
from grpc_balancer._attempts.retry import (
    PREVIOUS_ATTEMPTS_KEY,
    PUSHBACK_KEY,
    HedgingPolicy,
    MethodPolicy,
    RetryPolicy,
    RetryThrottle,
    hedge_failure_is_fatal,
    parse_pushback,
    record_success,
    retry_delay_s,
)
from grpc_balancer._observe.events import Event
from grpc_balancer.picker import HASH_KEY, PickError, PickInfo

if TYPE_CHECKING:
    from grpc_balancer._core.picking import PickerGeneration, Picking

Code = grpc.StatusCode
Metadata = Sequence[tuple[str, Any]]

#: How many times an attempt that never reached a server is re-sent elsewhere.
MAX_TRANSPARENT_RETRIES = 5
#: After such an attempt, how long to wait for the picker to learn of the failure.
TRANSPARENT_WAIT_S = 1.0
#: gRFC A6 / grpc-go's per-RPC retry buffer: past it, the call commits.
DEFAULT_BUFFER_LIMIT = 256 * 1024

CANCELLED_DETAILS = "Locally cancelled by application!"

#: grpcio's wording when the connection could not be made (the request never left).
_NOT_SENT_MARKERS = (
    "failed to connect to all addresses",
    "Connection refused",
    "channel is in state TRANSIENT_FAILURE",
    "Channel closed",
)


def never_reached_server(code: Code, details: str | None) -> bool:
    """UNAVAILABLE because no connection could be made: the request was not sent, so
    re-sending it elsewhere is safe even for non-idempotent methods."""
    if code is not Code.UNAVAILABLE or not details:
        return False
    return any(marker in details for marker in _NOT_SENT_MARKERS)


class Kind(enum.Enum):
    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"

    @property
    def unary_response(self) -> bool:
        return self in (Kind.UNARY_UNARY, Kind.STREAM_UNARY)

    __hash__ = object.__hash__  # members are singletons: C-level hashing on the hot path


class State(enum.Enum):
    IDLE = "idle"
    WAITING = "waiting"  # for the next picker (nothing ready, or after a not-sent attempt)
    ATTEMPTING = "attempting"  # attempts in flight; retry or hedge still possible
    BACKOFF = "backoff"  # a retry is due at wake_at
    COMMITTED = "committed"  # one attempt is the call now (a stream being read)
    DONE = "done"

    __hash__ = object.__hash__  # members are singletons: C-level hashing on the hot path


#: the hot path's names, read as module globals (one lookup, not two)
_OK = Code.OK
_IDLE = State.IDLE
_ATTEMPTING = State.ATTEMPTING
_DONE = State.DONE


class Input(enum.Enum):
    START = "start"
    PICKER = "picker"
    TIMER = "timer"
    END = "end"
    RESPONSE = "response"
    BUFFERED = "buffered"
    CANCEL = "cancel"

    __hash__ = object.__hash__  # members are singletons: C-level hashing on the hot path


class PlanError(RuntimeError):
    """An input the plan cannot take in its state: a driver bug, never a user error."""


# -- actions -----------------------------------------------------------------------------
class Send:
    """Start ``attempt`` (its subchannel, metadata and timeout are decided)."""

    __slots__ = ("attempt",)

    def __init__(self, attempt: Attempt) -> None:
        self.attempt = attempt

    def __repr__(self) -> str:
        return f"Send({self.attempt!r})"


class Cancel:
    """Cancel ``attempt`` (a hedge that lost, or the call was cancelled)."""

    __slots__ = ("attempt",)

    def __init__(self, attempt: Attempt) -> None:
        self.attempt = attempt

    def __repr__(self) -> str:
        return f"Cancel({self.attempt!r})"


class Commit:
    """``attempt`` is the call from now on: stop buffering requests for replays."""

    __slots__ = ("attempt",)

    def __init__(self, attempt: Attempt) -> None:
        self.attempt = attempt

    def __repr__(self) -> str:
        return f"Commit({self.attempt!r})"


class Finish:
    """The call is over. ``attempt`` is the one whose result the application gets
    (None: the plan itself failed the call with ``code`` / ``details``). ``trailers``
    are extra trailing metadata (``grpc-previous-rpc-attempts``) to add."""

    __slots__ = ("attempt", "code", "details", "trailers")

    def __init__(
        self, attempt: Attempt | None, code: Code, details: str, trailers: Metadata = ()
    ) -> None:
        self.attempt = attempt
        self.code = code
        self.details = details
        self.trailers = trailers

    def __repr__(self) -> str:
        return f"Finish({self.attempt!r}, {self.code.name}, {self.details!r})"


Action = Send | Cancel | Commit | Finish


class CallChannel(Protocol):
    """What a multicallable's spec is made from: the aio channel, or the sync one's core."""

    @property
    def picking(self) -> Picking: ...
    @property
    def throttle(self) -> RetryThrottle | None: ...
    @property
    def retry_buffer_size(self) -> int: ...

    def emit(self, event: Event, subchannel: Any, code: Code | None) -> None: ...
    def method_policy(self, method: str) -> MethodPolicy | None: ...


class CallSpec:
    """What every call of one method on one channel shares (made once per
    multicallable): its kind, the pick seam, its method config, the channel's
    throttle and event sink, the clock."""

    __slots__ = (
        "_bare_info",
        "buffer_limit",
        "clock",
        "emit",
        "hedging",
        "kind",
        "method",
        "picking",
        "retry",
        "rng",
        "throttle",
        "timeout",
        "wait_for_ready",
    )

    def __init__(
        self,
        kind: Kind,
        picking: Picking,
        retry: RetryPolicy | None,
        hedging: HedgingPolicy | None,
        throttle: RetryThrottle | None,
        emit: Callable[[Event, Any, Code | None], None],
        clock: Callable[[], float],
        rng: random.Random | None = None,
        buffer_limit: int = DEFAULT_BUFFER_LIMIT,
        method: str = "",
        timeout: float | None = None,
        wait_for_ready: bool | None = None,
    ) -> None:
        self.kind = kind
        self.picking = picking
        self.retry = retry
        self.hedging = hedging
        self.throttle = throttle
        self.emit = emit
        self.clock = clock
        self.rng = rng
        self.buffer_limit = buffer_limit
        self.method = method
        #: the methodConfig's timeout and waitForReady (None: not set)
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        #: the PickInfo of every call without metadata (a plan that excludes backends
        #: makes its own: see AttemptPlan._exclude_tried)
        self._bare_info = PickInfo(method)

    @classmethod
    def for_method(cls, kind: Kind, method: str, channel: CallChannel) -> CallSpec:
        """Both drivers' multicallables: ``method``'s methodConfig looked up once here,
        so calls without one pay nothing for it."""
        policy = channel.method_policy(method)
        return cls(
            kind,
            channel.picking,
            None if policy is None else policy.retry,
            None if policy is None else policy.hedging,
            channel.throttle,
            channel.emit,
            time.monotonic,
            None,
            channel.retry_buffer_size,
            method,
            None if policy is None else policy.timeout_s,
            None if policy is None else policy.wait_for_ready,
        )

    def plan(
        self, timeout: float | None, metadata: Metadata | None, wait_for_ready: bool | None
    ) -> AttemptPlan:
        """One call's plan from the call's own arguments: the methodConfig's timeout
        where it is smaller (gRFC A6), its waitForReady unless the call says."""
        if self.timeout is not None and (timeout is None or self.timeout < timeout):
            timeout = self.timeout
        # the plan made here, not in an AttemptPlan constructor: this runs once per
        # call, and only calls with a policy pay for _setup
        plan = AttemptPlan.__new__(AttemptPlan)
        plan._spec = self
        if metadata is None:
            plan.info = self._bare_info
            plan._metadata = ()
        else:
            plan._metadata = _as_tuple(metadata)
            plan.info = PickInfo(self.method, metadata)
        if timeout is None:
            plan.deadline = None
        else:  # the clock read once: the first attempt's timeout is the call's
            plan._created = now = self.clock()
            plan.deadline = now + timeout
        plan._wait_for_ready = bool(
            self.wait_for_ready if wait_for_ready is None else wait_for_ready
        )
        plan.running = []
        if self.retry is not None or self.hedging is not None:
            plan._setup(self, plan.info, metadata, plan.deadline, plan._wait_for_ready)
        return plan


def _as_tuple(metadata: Metadata | None) -> Metadata:
    """The call's metadata as a tuple, made once (grpcio's core takes nothing else),
    checked here: a malformed item fails the call at once with a ValueError, as on
    grpcio's channels, instead of failing each attempt as it is sent."""
    if not metadata:
        return ()
    items = metadata if type(metadata) is tuple else tuple(metadata)
    for item in items:
        try:
            _key, _value = item
        except (TypeError, ValueError):
            raise ValueError(f"metadata must be (key, value) pairs, got {item!r}") from None
    return items


class AttemptPlan:
    """One call's plan. Not thread-safe: a driver feeding it from several threads
    holds one lock around each input."""

    # Starting values as class defaults: a call's fast path sets only what changes.
    state = State.IDLE
    #: When the driver must call :meth:`on_timer` (None: no timer).
    wake_at: float | None = None
    #: The picker generation whose replacement the driver must report (:meth:`on_picker`).
    waiting_on: PickerGeneration | None = None
    committed: Attempt | None = None
    outcome: Finish | None = None
    _buffered = 0
    #: Attempts that reached a server (retryPolicy.maxAttempts counts these).
    _counted = 0
    #: Attempts sent so far (their number is the next one's previous-attempts count).
    _sent = 0
    _transparent = 0
    _last_failure: tuple[Attempt, Code, str] | None = None
    #: The clock when the plan was made with a deadline, until the first send uses it.
    _created: float | None = None
    _retry: RetryPolicy | None = None
    _hedging: HedgingPolicy | None = None
    _hedge_limit = 1
    #: A success refills the throttle (even after a commit dropped the policies).
    _refills = False
    #: False once requests can no longer be re-sent (buffer limit passed): the next
    #: attempt is the last.
    _replayable = True
    #: Backends this call's attempts went to (PickInfo.exclude is made from it when
    #: another attempt is picked, not on every call).
    _tried: tuple[Any, ...] = ()

    def __init__(
        self,
        kind: Kind,
        picking: Picking,
        info: PickInfo,
        *,
        metadata: Metadata | None,
        deadline: float | None,
        wait_for_ready: bool,
        retry: RetryPolicy | None,
        hedging: HedgingPolicy | None,
        throttle: RetryThrottle | None,
        emit: Callable[[Event, Any, Code | None], None],
        clock: Callable[[], float],
        rng: random.Random | None = None,
        replayable: bool = True,
        buffer_limit: int = DEFAULT_BUFFER_LIMIT,
    ) -> None:
        spec = CallSpec(kind, picking, retry, hedging, throttle, emit, clock, rng, buffer_limit)
        self._setup(spec, info, metadata, deadline, wait_for_ready)
        if not replayable:
            self._replayable = False

    def _setup(
        self,
        spec: CallSpec,
        info: PickInfo,
        metadata: Metadata | None,
        deadline: float | None,
        wait_for_ready: bool,
    ) -> None:
        self._spec = spec
        self.info = info
        self._metadata = _as_tuple(metadata)
        self.deadline = deadline
        self._wait_for_ready = wait_for_ready
        self.running: list[Attempt] = []
        # only calls with a policy pay for it (the class defaults say "none")
        if spec.retry is not None:
            self._retry = spec.retry
            self._refills = True
        if spec.hedging is not None:
            self._hedging = spec.hedging
            self._hedge_limit = spec.hedging.max_attempts
            self._refills = True

    @property
    def kind(self) -> Kind:
        return self._spec.kind

    # -- inputs ---------------------------------------------------------------------------
    def start(self) -> list[Action]:
        if self.state is not _IDLE:
            raise PlanError(f"attempt plan: no transition for START in {self.state.name}")
        # the table's (IDLE, START), taken inline: every call's first step
        try:
            sc = self._spec.picking.pick(self.info, self._wait_for_ready)
        except PickError as err:
            return self._fail(err.code, err.message)
        if sc is None:
            self._created = None  # the send comes later: its clock is read then
            self._pin_hash_key()
            return self._wait_for_picker(self.deadline)
        return self._send(sc)

    def _pin_hash_key(self) -> None:
        """A call that waits is picked again from a callback, outside its caller's
        context: the hash key set around it (``grpc_balancer.hash_key``) goes into its
        PickInfo, so it still lands on its key's owner (ring_hash's lazy owners make
        first picks wait). Only on this slow path: the fast path reads nothing."""
        key = HASH_KEY.get()
        if key is not None and self.info.hash_key is None:
            info = self.info
            self.info = PickInfo(info.method, info.metadata, key, info.exclude)

    def on_picker(self) -> list[Action]:
        """The picker the plan was waiting on was replaced."""
        return self._step(Input.PICKER, None)

    def on_timer(self) -> list[Action]:
        return self._step(Input.TIMER, None)

    def on_end(
        self, attempt: Attempt, code: Code, details: str | None, trailers: Metadata | None = None
    ) -> list[Action]:
        """``attempt`` ended with ``code`` (its accounting is done here)."""
        attempt.finish(code, details, trailers)
        running = self.running
        if code is _OK and self.state is _ATTEMPTING and not self._refills and running == [attempt]:
            # the table's (ATTEMPTING, END) for the commonest end, taken inline: the
            # only attempt of a call without retries or hedges succeeded
            # (no retry or hedging policy: nothing set wake_at or waiting_on while
            # ATTEMPTING, so they need no reset)
            running.clear()
            self.committed = attempt
            n = attempt.number
            finish = Finish(attempt, _OK, "", ((PREVIOUS_ATTEMPTS_KEY, str(n)),) if n else ())
            self.state = _DONE
            self.outcome = finish
            return [finish]
        return self._step(Input.END, (attempt, code, details or "", trailers))

    def on_response(self, attempt: Attempt) -> list[Action]:
        """The first response message of ``attempt`` arrived (streaming responses)."""
        return self._step(Input.RESPONSE, attempt)

    def on_buffered(self, nbytes: int) -> list[Action]:
        """The application gave ``nbytes`` more request bytes (streaming requests)."""
        return self._step(Input.BUFFERED, nbytes)

    def cancel(self, details: str = CANCELLED_DETAILS) -> list[Action]:
        """The application cancelled (or the channel closed: ``details`` say which)."""
        return self._step(Input.CANCEL, details)

    @property
    def done(self) -> bool:
        return self.state is State.DONE

    def _step(self, what: Input, arg: Any) -> list[Action]:
        handler = _TRANSITIONS.get((self.state, what))
        if handler is None:
            raise PlanError(f"attempt plan: no transition for {what.name} in {self.state.name}")
        return handler(self, arg)

    # -- handlers -------------------------------------------------------------------------
    def _h_start(self, _: Any) -> list[Action]:
        return self._pick()

    def _h_ignore(self, _: Any) -> list[Action]:
        return []

    def _h_wait_over(self, _: Any) -> list[Action]:
        """WAITING: the picker changed, or the wait's bound came."""
        now = self._spec.clock()
        if (
            self.deadline is not None
            and now >= self.deadline
            and self._spec.picking.generation is self.waiting_on
        ):
            return self._fail(
                Code.DEADLINE_EXCEEDED,
                f"deadline exceeded while waiting for a backend: {self._spec.picking.why_waiting()}",
            )
        if (
            self.wake_at is not None
            and now < self.wake_at
            and self._spec.picking.generation is self.waiting_on
        ):
            return []  # a stale timer: still waiting
        return self._pick()

    def _h_backoff_over(self, _: Any) -> list[Action]:
        if self.wake_at is not None and self._spec.clock() < self.wake_at:
            return []
        return self._pick()

    def _h_hedge_timer(self, _: Any) -> list[Action]:
        if self.wake_at is None or self._spec.clock() < self.wake_at:
            return []
        return self._next_hedge()

    def _h_end(self, arg: tuple[Attempt, Code, str, Metadata | None]) -> list[Action]:
        attempt, code, details, trailers = arg
        if attempt not in self.running:
            return []  # a hedge cancelled earlier
        self.running.remove(attempt)
        if code is Code.OK:
            return self._won(attempt)
        return self._failed(attempt, code, details, trailers)

    def _h_end_committed(self, arg: tuple[Attempt, Code, str, Metadata | None]) -> list[Action]:
        attempt, code, details, _ = arg
        if attempt is not self.committed:
            return []
        self.running = []
        if code is Code.OK and self._refills:
            record_success(self._spec.throttle)
        return self._finish(Finish(attempt, code, details, self._previous(attempt)))

    def _h_end_done(self, arg: tuple[Attempt, Code, str, Metadata | None]) -> list[Action]:
        attempt = arg[0]
        if attempt in self.running:
            self.running.remove(attempt)
        return []

    def _h_response(self, attempt: Attempt) -> list[Action]:
        if attempt not in self.running:
            return []
        return self._commit(attempt)

    def _h_buffered(self, nbytes: int) -> list[Action]:
        self._buffered += nbytes
        if self._buffered <= self._spec.buffer_limit or not self._replayable:
            return []
        self._replayable = False  # no later attempt could replay what was dropped
        if self.state is State.ATTEMPTING and self.running:
            return self._commit(self.running[0])
        return []

    def _h_cancel(self, details: str | None) -> list[Action]:
        actions: list[Action] = [Cancel(a) for a in self.running]
        if self.state is State.COMMITTED:
            return actions  # the attempt ends CANCELLED and finishes the call
        self.running = []
        return actions + self._finish(Finish(None, Code.CANCELLED, details or CANCELLED_DETAILS))

    # -- decisions ------------------------------------------------------------------------
    def _pick(self) -> list[Action]:
        if self._tried:
            self._exclude_tried()
        try:
            sc = self._spec.picking.pick(self.info, self._wait_for_ready)
        except PickError as err:
            return self._fail(err.code, err.message)
        if sc is None:
            return self._wait_for_picker(self.deadline)
        return self._send(sc)

    def _wait_for_picker(self, until: float | None) -> list[Action]:
        now = self._spec.clock()
        if self.deadline is not None:
            if now >= self.deadline:
                return self._fail(
                    Code.DEADLINE_EXCEEDED,
                    f"deadline exceeded while waiting for a backend: {self._spec.picking.why_waiting()}",
                )
            until = self.deadline if until is None else min(until, self.deadline)
        self.state = State.WAITING
        self.waiting_on = self._spec.picking.generation
        self.wake_at = until
        return []

    def _send(self, sc: Any) -> list[Action]:
        # the clock is read only when a deadline or a hedging delay needs it (and not
        # again for a first attempt sent as the call starts)
        now = self._created
        if now is None:
            now = (
                self._spec.clock()
                if self.deadline is not None or self._hedging is not None
                else 0.0
            )
        else:
            self._created = None
        timeout = None
        if self.deadline is not None:
            timeout = self.deadline - now
            if timeout <= 0:
                return self._fail(Code.DEADLINE_EXCEEDED, "Deadline Exceeded")
        number = self._sent
        metadata = self._metadata
        if number:
            metadata = (
                *(kv for kv in metadata if kv[0] != PREVIOUS_ATTEMPTS_KEY),
                (PREVIOUS_ATTEMPTS_KEY, str(number)),
            )
        attempt = Attempt(sc, number, metadata, timeout)
        self._sent = number + 1
        self.running.append(attempt)
        self._tried = (*self._tried, sc)  # (number is 0 again after a transparent retry)
        self.state = _ATTEMPTING
        self.waiting_on = None
        self.wake_at = None
        if self._hedging is not None:
            if number:
                self._spec.emit(Event.HEDGE, sc, None)
            if self._sent < self._hedge_limit:
                self.wake_at = now + self._hedging.delay_s
        if not self._replayable:
            # nothing sent from here on could be replayed: this attempt is the call
            return [Send(attempt), *self._commit(attempt)]
        return [Send(attempt)]

    def _next_hedge(self) -> list[Action]:
        policy = self._hedging
        assert policy is not None
        self.wake_at = None
        if self._sent >= self._hedge_limit:
            return self._maybe_give_up()
        # _hedge_limit counts the attempts (maxAttempts plus not-sent ones re-sent):
        # only the throttle is left to ask (may_send_hedge would cap at maxAttempts)
        if self._spec.throttle is not None and not self._spec.throttle.allows_retry():
            self._spec.emit(Event.THROTTLED, None, None)
            self._hedge_limit = self._sent
            return self._maybe_give_up()
        if not self.running:
            return self._pick()  # nothing in flight: this one may wait for a backend
        self._exclude_tried()
        sc = self._spec.picking.pick_now(self.info)
        if sc is None:  # a hedge never waits: the others may answer meanwhile
            self.wake_at = self._spec.clock() + policy.delay_s
            return []
        return self._send(sc)

    def _exclude_tried(self) -> None:
        """The next pick skips the backends tried so far (a new PickInfo: the first
        one may be shared by every call of the method)."""
        info = self.info
        self.info = PickInfo(info.method, info.metadata, info.hash_key, frozenset(self._tried))

    def _maybe_give_up(self) -> list[Action]:
        if self.running:
            return []
        assert self._last_failure is not None
        attempt, code, details = self._last_failure
        return self._finish(Finish(attempt, code, details, self._previous(attempt)))

    def _won(self, attempt: Attempt) -> list[Action]:
        if self._refills:
            record_success(self._spec.throttle)
        actions: list[Action] = [Cancel(a) for a in self.running]
        self.running = []
        self.committed = attempt
        return actions + self._finish(Finish(attempt, Code.OK, "", self._previous(attempt)))

    def _commit(self, attempt: Attempt) -> list[Action]:
        actions: list[Action] = [Cancel(a) for a in self.running if a is not attempt]
        self.running = [attempt]
        self.committed = attempt
        self._replayable = False
        if self._spec.kind.unary_response:
            # the response is still to come: no retries from now on
            self._retry = None
            self._hedging = None
            self._hedge_limit = self._sent
            self.wake_at = None
            return [*actions, Commit(attempt)]
        self.state = State.COMMITTED
        self.wake_at = None
        return [*actions, Commit(attempt)]

    def _failed(
        self, attempt: Attempt, code: Code, details: str, trailers: Metadata | None
    ) -> list[Action]:
        self._last_failure = (attempt, code, details)
        if self.committed is attempt:
            return self._finish(Finish(attempt, code, details, self._previous(attempt)))
        not_sent = never_reached_server(code, details)
        if self._hedging is not None:
            return self._hedge_failed(attempt, code, details, not_sent)
        if not_sent and self._replayable and self._transparent < MAX_TRANSPARENT_RETRIES:
            self._transparent += 1
            self._spec.emit(Event.TRANSPARENT_RETRY, attempt.subchannel, code)
            self._sent -= 1  # it never left: the next one is not a retry
            # The picker has not seen the failure yet: give the subchannel's state
            # change a moment to land rather than re-sending blindly.
            return self._wait_for_picker(self._spec.clock() + TRANSPARENT_WAIT_S)
        retry = self._retry
        if retry is None or not self._replayable:
            return self._finish(Finish(attempt, code, details, self._previous(attempt)))
        self._counted += 1
        delay = retry_delay_s(
            retry, code, self._counted, self._spec.throttle, _pushback_ms(trailers), self._spec.rng
        )
        if delay is None:
            if (
                self._spec.throttle is not None
                and code in retry.retryable_codes
                and self._counted < retry.max_attempts
                and not self._spec.throttle.allows_retry()
            ):
                self._spec.emit(Event.THROTTLED, attempt.subchannel, code)
            return self._finish(Finish(attempt, code, details, self._previous(attempt)))
        now = self._spec.clock()
        if self.deadline is not None and now + delay >= self.deadline:
            return self._fail(
                Code.DEADLINE_EXCEEDED,
                "Deadline Exceeded (no time left for another attempt; the last one "
                f"failed with {code.name}: {details})",
                previous=self._sent,
            )
        self._spec.emit(Event.RETRY, attempt.subchannel, code)
        self.state = State.BACKOFF
        self.wake_at = now + delay
        return []

    def _hedge_failed(
        self, attempt: Attempt, code: Code, details: str, not_sent: bool
    ) -> list[Action]:
        policy = self._hedging
        assert policy is not None
        if not not_sent and hedge_failure_is_fatal(policy, code, self._spec.throttle):
            actions: list[Action] = [Cancel(a) for a in self.running]
            self.running = []
            return actions + self._finish(Finish(attempt, code, details, self._previous(attempt)))
        if not_sent and self._transparent < MAX_TRANSPARENT_RETRIES:
            self._transparent += 1
            self._spec.emit(Event.TRANSPARENT_RETRY, attempt.subchannel, code)
            self._hedge_limit = min(
                self._hedge_limit + 1, policy.max_attempts + MAX_TRANSPARENT_RETRIES
            )
        return self._next_hedge()  # a non-fatal failure: the next hedge goes now

    def _fail(self, code: Code, details: str, previous: int | None = None) -> list[Action]:
        actions: list[Action] = [Cancel(a) for a in self.running]
        self.running = []
        n = self._sent if previous is None else previous
        trailers = ((PREVIOUS_ATTEMPTS_KEY, str(n)),) if n else ()
        return actions + self._finish(Finish(None, code, details, trailers))

    def _finish(self, finish: Finish) -> list[Action]:
        self.state = State.DONE
        self.wake_at = None
        self.waiting_on = None
        self.outcome = finish
        return [finish]

    @staticmethod
    def _previous(attempt: Attempt) -> Metadata:
        n = attempt.number
        return ((PREVIOUS_ATTEMPTS_KEY, str(n)),) if n else ()

    def __repr__(self) -> str:
        return f"<AttemptPlan {self.kind.name} {self.state.name} running={self.running}>"


def _pushback_ms(trailers: Metadata | None) -> int | None:
    if not trailers:
        return None
    return parse_pushback([v for k, v in trailers if k == PUSHBACK_KEY])


_S, _I = State, Input
_P = AttemptPlan
#: (state, input) -> handler. A pair that is not here is a driver bug: PlanError.
_TRANSITIONS: dict[tuple[State, Input], Callable[[AttemptPlan, Any], list[Action]]] = {
    (_S.IDLE, _I.START): _P._h_start,
    (_S.IDLE, _I.CANCEL): _P._h_cancel,
    (_S.IDLE, _I.BUFFERED): _P._h_buffered,
    (_S.WAITING, _I.PICKER): _P._h_wait_over,
    (_S.WAITING, _I.TIMER): _P._h_wait_over,
    (_S.WAITING, _I.CANCEL): _P._h_cancel,
    (_S.WAITING, _I.BUFFERED): _P._h_buffered,
    (_S.ATTEMPTING, _I.END): _P._h_end,
    (_S.ATTEMPTING, _I.RESPONSE): _P._h_response,
    (_S.ATTEMPTING, _I.TIMER): _P._h_hedge_timer,
    (_S.ATTEMPTING, _I.PICKER): _P._h_ignore,
    (_S.ATTEMPTING, _I.BUFFERED): _P._h_buffered,
    (_S.ATTEMPTING, _I.CANCEL): _P._h_cancel,
    (_S.BACKOFF, _I.TIMER): _P._h_backoff_over,
    (_S.BACKOFF, _I.PICKER): _P._h_ignore,
    (_S.BACKOFF, _I.BUFFERED): _P._h_buffered,
    (_S.BACKOFF, _I.CANCEL): _P._h_cancel,
    (_S.COMMITTED, _I.END): _P._h_end_committed,
    (_S.COMMITTED, _I.RESPONSE): _P._h_ignore,
    (_S.COMMITTED, _I.TIMER): _P._h_ignore,
    (_S.COMMITTED, _I.PICKER): _P._h_ignore,
    (_S.COMMITTED, _I.BUFFERED): _P._h_ignore,
    (_S.COMMITTED, _I.CANCEL): _P._h_cancel,
    (_S.DONE, _I.END): _P._h_end_done,
    (_S.DONE, _I.RESPONSE): _P._h_ignore,
    (_S.DONE, _I.TIMER): _P._h_ignore,
    (_S.DONE, _I.PICKER): _P._h_ignore,
    (_S.DONE, _I.BUFFERED): _P._h_ignore,
    (_S.DONE, _I.CANCEL): _P._h_ignore,
}
