"""AttemptPlan without servers: a fake clock, a seeded rng, fake subchannels and a real
Picking with simple pickers. Every (state, input) pair of the table is driven, every
pair outside it raises PlanError, and a seeded random driver checks the accounting
invariants (each attempt finished once, exactly one Finish) over many input sequences.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from typing import Any

import grpc
import pytest

from grpc_balancer._attempts.attempt import Attempt
from grpc_balancer._attempts.plan import (
    _TRANSITIONS,
    CANCELLED_DETAILS,
    MAX_TRANSPARENT_RETRIES,
    TRANSPARENT_WAIT_S,
    Action,
    AttemptPlan,
    Cancel,
    Commit,
    Finish,
    Input,
    Kind,
    PlanError,
    Send,
    State,
)
from grpc_balancer._attempts.retry import (
    PREVIOUS_ATTEMPTS_KEY,
    PUSHBACK_KEY,
    HedgingPolicy,
    RetryPolicy,
    RetryThrottle,
)
from grpc_balancer._core.picking import Picking
from grpc_balancer._observe.events import Event
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.picker import FailPicker, PickInfo, QueuePicker, first_not_excluded

Code = grpc.StatusCode
READY = grpc.ChannelConnectivity.READY
TARGET = "static:///svc"
NOT_SENT = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:10.0.0.1:1: Connection refused"
)
REFUSED = "Connection refused"


# -- fakes -------------------------------------------------------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSub:
    """The attributes of a Subchannel the plan, Attempt and Picking use."""

    def __init__(self, address: str, clock: FakeClock, priority: int = 0) -> None:
        self.address = address
        self.endpoint = Endpoint(address, priority=priority)
        self.usable = True
        self.in_flight = 0
        self.started = 0
        self.finished: list[Code] = []
        self.failure_details: list[str] = []
        self.trailer_observers: list[Any] = []
        self.trailers: list[Any] = []
        self._clock = clock

    def call_started(self) -> float:
        self.in_flight += 1
        self.started += 1
        return self._clock()

    def call_finished(self, started_at: float, code: Code) -> None:
        assert started_at <= self._clock()
        self.in_flight -= 1
        self.finished.append(code)

    def record_failure_detail(self, details: str) -> None:
        self.failure_details.append(details)

    def trailers_received(self, trailers: Any) -> None:
        self.trailers.append(trailers)

    def __repr__(self) -> str:
        return f"<FakeSub {self.address}>"


class ListPicker:
    """Round-robin over a fixed list from index 0, honouring PickInfo.exclude."""

    def __init__(self, subchannels: Sequence[FakeSub]) -> None:
        self._subchannels = tuple(subchannels)
        self._next = itertools.count().__next__

    def pick(self, info: PickInfo) -> Any:
        i = self._next() % len(self._subchannels)
        sc = self._subchannels[i]
        if info.exclude and sc in info.exclude:
            return first_not_excluded(self._subchannels, i, info.exclude)  # type: ignore[arg-type]
        return sc


class StickyPicker:
    """Always the same backend: a policy that ignores PickInfo.exclude."""

    def __init__(self, sc: FakeSub) -> None:
        self._sc = sc

    def pick(self, info: PickInfo) -> Any:
        return self._sc


RETRY = RetryPolicy(
    max_attempts=4,
    initial_backoff_s=0.1,
    max_backoff_s=1.0,
    backoff_multiplier=2.0,
    retryable_codes=frozenset({Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED}),
)
HEDGE = HedgingPolicy(max_attempts=3, delay_s=0.1, non_fatal_codes=frozenset({Code.UNAVAILABLE}))


class Harness:
    """A plan plus a "driver" that records every action and checks the accounting."""

    def __init__(
        self,
        kind: Kind = Kind.UNARY_UNARY,
        *,
        n: int = 3,
        ready: bool = True,
        timeout: float | None = 10.0,
        wait_for_ready: bool = False,
        retry: RetryPolicy | None = None,
        hedging: HedgingPolicy | None = None,
        throttle: RetryThrottle | None = None,
        max_requests: int = 0,
        metadata: Sequence[tuple[str, Any]] | None = None,
        seed: int = 7,
        buffer_limit: int | None = None,
        replayable: bool = True,
        clock: FakeClock | None = None,
        subs: list[FakeSub] | None = None,
        picking: Picking | None = None,
    ) -> None:
        self.clock = clock or FakeClock()
        self.subs = (
            subs
            if subs is not None
            else [FakeSub(f"10.0.0.{i}:50051", self.clock) for i in range(n)]
        )
        self.events: list[tuple[Event, Any, Code | None]] = []
        if picking is None:
            picking = Picking(
                TARGET, self.subs, max_requests, self._emit, lambda: "3 endpoints: CONNECTING"
            )
            if ready:
                picking.publish(READY, ListPicker(self.subs))  # type: ignore[arg-type]
        self.picking = picking
        self.seed = seed
        extra: dict[str, Any] = {}
        if buffer_limit is not None:
            extra["buffer_limit"] = buffer_limit
        self.plan = AttemptPlan(
            kind,
            picking,
            PickInfo("/svc.Svc/Method"),
            metadata=metadata,
            deadline=None if timeout is None else self.clock() + timeout,
            wait_for_ready=wait_for_ready,
            retry=retry,
            hedging=hedging,
            throttle=throttle,
            emit=self._emit,
            clock=self.clock,
            rng=random.Random(seed),
            replayable=replayable,
            **extra,
        )
        self.sent: list[Attempt] = []
        self.reported: list[Attempt] = []  # on_end given
        self.cancelled: list[Attempt] = []
        self.commits: list[Attempt] = []
        self.finishes: list[Finish] = []

    def _emit(self, event: Event, sc: Any, code: Code | None) -> None:
        self.events.append((event, sc, code))

    def event_names(self) -> list[Event]:
        return [e for e, _, _ in self.events]

    # driver side
    def take(self, actions: list[Action]) -> list[Action]:
        assert isinstance(actions, list)
        for action in actions:
            if isinstance(action, Send):
                assert not self.finishes, "Send after Finish"
                assert action.attempt not in self.sent
                self.sent.append(action.attempt)
            elif isinstance(action, Cancel):
                assert action.attempt in self.sent
                self.cancelled.append(action.attempt)
            elif isinstance(action, Commit):
                assert action.attempt in self.sent
                self.commits.append(action.attempt)
            else:
                assert isinstance(action, Finish)
                assert not self.finishes, f"second Finish {action!r} after {self.finishes!r}"
                self.finishes.append(action)
        return actions

    def start(self) -> list[Action]:
        return self.take(self.plan.start())

    def timer(self) -> list[Action]:
        return self.take(self.plan.on_timer())

    def fire_timer(self) -> list[Action]:
        """Advance the clock to wake_at and fire it (what a driver's timer does)."""
        assert self.plan.wake_at is not None
        self.clock.now = max(self.clock.now, self.plan.wake_at)
        return self.timer()

    def picker(self) -> list[Action]:
        return self.take(self.plan.on_picker())

    def publish(self, picker: Any = None) -> None:
        self.picking.publish(READY, picker if picker is not None else ListPicker(self.subs))

    def end(
        self, attempt: Attempt, code: Code, details: str = "", trailers: Any = None
    ) -> list[Action]:
        assert attempt not in self.reported
        self.reported.append(attempt)
        actions = self.take(self.plan.on_end(attempt, code, details, trailers))
        assert attempt.ended
        return actions

    def response(self, attempt: Attempt) -> list[Action]:
        return self.take(self.plan.on_response(attempt))

    def buffered(self, nbytes: int) -> list[Action]:
        return self.take(self.plan.on_buffered(nbytes))

    def cancel(self) -> list[Action]:
        return self.take(self.plan.cancel())

    def sends(self, actions: list[Action]) -> list[Attempt]:
        return [a.attempt for a in actions if isinstance(a, Send)]

    def only_send(self, actions: list[Action]) -> Attempt:
        assert len(actions) == 1 and isinstance(actions[0], Send), actions
        return actions[0].attempt

    def check_accounting(self) -> None:
        """Every attempt sent is counted in flight until its end is reported, then
        finished exactly once; never more than one Finish."""
        assert len(self.finishes) <= 1
        for attempt in self.sent:
            assert attempt.ended == (attempt in self.reported)
        for sc in self.subs:
            on_sc = [a for a in self.sent if a.subchannel is sc]
            assert sc.started == len(on_sc)
            assert len(sc.finished) == sum(a.ended for a in on_sc)
            assert sc.in_flight == sum(not a.ended for a in on_sc)
        if self.plan.done:
            assert self.finishes == [self.plan.outcome]
            # the call is over: no attempt is left running without a Cancel
            for attempt in self.sent:
                assert attempt in self.reported or attempt in self.cancelled, attempt
            assert self.plan.wake_at is None and self.plan.waiting_on is None
        else:
            assert not self.finishes


def finish_of(actions: list[Action]) -> Finish:
    finishes = [a for a in actions if isinstance(a, Finish)]
    assert len(finishes) == 1, actions
    return finishes[0]


def previous(metadata: Sequence[tuple[str, Any]]) -> list[Any]:
    return [v for k, v in metadata if k == PREVIOUS_ATTEMPTS_KEY]


# -- the table ---------------------------------------------------------------------------
def reach(state: State) -> Harness:
    """A plan (server streaming, with a retryPolicy) in ``state``, reached by inputs."""
    h = Harness(Kind.UNARY_STREAM, retry=RETRY, ready=state is not State.WAITING)
    if state is State.IDLE:
        return h
    h.start()
    if state is State.WAITING or state is State.ATTEMPTING:
        pass
    elif state is State.BACKOFF:
        h.end(h.sent[0], Code.UNAVAILABLE, "backend went away")
    elif state is State.COMMITTED:
        h.response(h.sent[0])
    elif state is State.DONE:
        h.end(h.sent[0], Code.OK)
    assert h.plan.state is state
    return h


#: Where each pair of the table leads from the state :func:`reach` builds.
EXPECTED_NEXT = {
    (State.IDLE, Input.START): State.ATTEMPTING,
    (State.IDLE, Input.CANCEL): State.DONE,
    (State.IDLE, Input.BUFFERED): State.IDLE,
    (State.WAITING, Input.PICKER): State.ATTEMPTING,
    (State.WAITING, Input.TIMER): State.WAITING,  # before the deadline: a stale timer
    (State.WAITING, Input.CANCEL): State.DONE,
    (State.WAITING, Input.BUFFERED): State.WAITING,
    (State.ATTEMPTING, Input.END): State.DONE,
    (State.ATTEMPTING, Input.RESPONSE): State.COMMITTED,
    (State.ATTEMPTING, Input.TIMER): State.ATTEMPTING,
    (State.ATTEMPTING, Input.PICKER): State.ATTEMPTING,
    (State.ATTEMPTING, Input.BUFFERED): State.ATTEMPTING,
    (State.ATTEMPTING, Input.CANCEL): State.DONE,
    (State.BACKOFF, Input.TIMER): State.ATTEMPTING,  # at wake_at
    (State.BACKOFF, Input.PICKER): State.BACKOFF,
    (State.BACKOFF, Input.BUFFERED): State.BACKOFF,
    (State.BACKOFF, Input.CANCEL): State.DONE,
    (State.COMMITTED, Input.END): State.DONE,
    (State.COMMITTED, Input.RESPONSE): State.COMMITTED,
    (State.COMMITTED, Input.TIMER): State.COMMITTED,
    (State.COMMITTED, Input.PICKER): State.COMMITTED,
    (State.COMMITTED, Input.BUFFERED): State.COMMITTED,
    (State.COMMITTED, Input.CANCEL): State.COMMITTED,  # the attempt's CANCELLED end finishes
    (State.DONE, Input.END): State.DONE,
    (State.DONE, Input.RESPONSE): State.DONE,
    (State.DONE, Input.TIMER): State.DONE,
    (State.DONE, Input.PICKER): State.DONE,
    (State.DONE, Input.BUFFERED): State.DONE,
    (State.DONE, Input.CANCEL): State.DONE,
}


def feed(h: Harness, what: Input) -> list[Action]:
    """Give ``what`` to the plan the way a driver would."""
    plan = h.plan
    attempt = plan.running[0] if plan.running else (h.sent[-1] if h.sent else None)
    if attempt is None or attempt in h.reported:
        attempt = Attempt(FakeSub("10.9.9.9:1", h.clock), 0, (), None)  # type: ignore[arg-type]
    if what is Input.START:
        return h.start()
    if what is Input.PICKER:
        h.publish()
        return h.picker()
    if what is Input.TIMER:
        if plan.state is State.BACKOFF:
            return h.fire_timer()
        return h.timer()
    if what is Input.END:
        if attempt not in h.sent:  # a stray attempt: not the driver's
            return plan.on_end(attempt, Code.OK, "")
        return h.end(attempt, Code.OK)
    if what is Input.RESPONSE:
        return h.response(attempt)
    if what is Input.BUFFERED:
        return h.buffered(10)
    assert what is Input.CANCEL
    return h.cancel()


def test_the_table_is_what_the_tests_expect() -> None:
    assert set(_TRANSITIONS) == set(EXPECTED_NEXT)


@pytest.mark.parametrize(
    ("state", "what"),
    [(s, i) for s in State for i in Input],
    ids=[f"{s.name}-{i.name}" for s in State for i in Input],
)
def test_every_state_input_pair(state: State, what: Input) -> None:
    h = reach(state)
    if (state, what) in _TRANSITIONS:
        feed(h, what)
        assert h.plan.state is EXPECTED_NEXT[state, what]
    else:
        with pytest.raises(PlanError, match=f"{what.name} in {state.name}"):
            feed(h, what)
        assert h.plan.state is state
    h.check_accounting()


# -- the fast path -----------------------------------------------------------------------
def test_fast_path_one_send_one_finish() -> None:
    h = Harness(metadata=[("k", "v")])
    actions = h.start()
    attempt = h.only_send(actions)
    assert attempt.subchannel is h.subs[0]
    assert attempt.number == 0
    assert list(attempt.metadata) == [("k", "v")]  # no grpc-previous-rpc-attempts
    assert attempt.timeout == pytest.approx(10.0)
    assert h.subs[0].in_flight == 1
    assert h.plan.state is State.ATTEMPTING and h.plan.wake_at is None
    h.clock.advance(0.01)
    finish = finish_of(h.end(attempt, Code.OK, None))
    assert finish.attempt is attempt and finish.code is Code.OK and finish.trailers == ()
    assert h.subs[0].in_flight == 0 and h.subs[0].finished == [Code.OK]
    assert h.plan.done and h.events == []
    h.check_accounting()


def test_trailers_reach_observers_and_unavailable_details_are_recorded() -> None:
    h = Harness()
    h.subs[0].trailer_observers.append(object())
    attempt = h.only_send(h.start())
    assert attempt.wants_trailers
    h.end(attempt, Code.UNAVAILABLE, "backend said no", [("endpoint-load-metrics-bin", b"x")])
    assert h.subs[0].trailers == [[("endpoint-load-metrics-bin", b"x")]]
    assert h.subs[0].failure_details == ["backend said no"]
    h.check_accounting()


# -- waiting for a backend ---------------------------------------------------------------
def test_nothing_ready_waits_for_the_next_picker() -> None:
    h = Harness(ready=False)
    generation = h.picking.generation
    woken: list[bool] = []
    assert h.start() == []
    assert h.plan.state is State.WAITING
    assert h.plan.waiting_on is generation
    assert h.plan.wake_at == h.plan.deadline
    generation.changed.add_callback(lambda: woken.append(True))  # the driver's wait
    h.clock.advance(0.5)
    assert h.timer() == []  # a stale timer before wake_at: still waiting
    h.publish()
    assert woken == [True] and generation.changed.fired
    attempt = h.only_send(h.picker())
    assert attempt.timeout == pytest.approx(9.5)
    assert h.plan.waiting_on is None and h.plan.wake_at is None
    h.end(attempt, Code.OK)
    h.check_accounting()


def test_deadline_while_waiting_names_why() -> None:
    h = Harness(ready=False, timeout=2.0)
    assert h.start() == []
    finish = finish_of(h.fire_timer())
    assert finish.attempt is None and finish.code is Code.DEADLINE_EXCEEDED
    assert "while waiting for a backend" in finish.details
    assert repr(TARGET) in finish.details and "3 endpoints: CONNECTING" in finish.details
    assert finish.trailers == ()
    h.check_accounting()


def test_a_picker_that_still_queues_keeps_waiting() -> None:
    h = Harness(ready=False)
    h.start()
    h.publish(QueuePicker())
    assert h.picker() == []
    assert h.plan.state is State.WAITING and h.plan.waiting_on is h.picking.generation


def test_no_deadline_waits_without_a_timer() -> None:
    h = Harness(ready=False, timeout=None)
    assert h.start() == [] and h.plan.wake_at is None
    h.publish()
    h.only_send(h.picker())


def test_wait_for_ready_waits_on_a_fail_picker_and_names_it_at_the_deadline() -> None:
    h = Harness(ready=False, wait_for_ready=True, timeout=1.0)
    h.publish(FailPicker(Code.UNAVAILABLE, "all 3 endpoints failed: Connection refused"))
    assert h.start() == []
    assert h.plan.state is State.WAITING
    finish = finish_of(h.fire_timer())
    assert finish.code is Code.DEADLINE_EXCEEDED
    assert "all 3 endpoints failed: Connection refused" in finish.details


def test_wait_for_ready_then_a_ready_picker_sends() -> None:
    h = Harness(ready=False, wait_for_ready=True)
    h.publish(FailPicker(Code.UNAVAILABLE, "down"))
    h.start()
    h.publish()
    h.only_send(h.picker())


def test_without_wait_for_ready_a_fail_picker_fails_fast() -> None:
    h = Harness(ready=False)
    h.publish(FailPicker(Code.UNAVAILABLE, "all 3 endpoints failed"))
    finish = finish_of(h.start())
    assert (finish.attempt, finish.code, finish.details) == (
        None,
        Code.UNAVAILABLE,
        "all 3 endpoints failed",
    )
    h.check_accounting()


def test_wait_for_ready_does_not_wait_on_other_codes() -> None:
    h = Harness(ready=False, wait_for_ready=True)
    h.publish(FailPicker(Code.PERMISSION_DENIED, "no"))
    assert finish_of(h.start()).code is Code.PERMISSION_DENIED


def test_deadline_already_past_at_send() -> None:
    h = Harness(timeout=0.0)
    finish = finish_of(h.start())
    assert finish.code is Code.DEADLINE_EXCEEDED and finish.attempt is None
    assert h.sent == []


# -- transparent retry -------------------------------------------------------------------
@pytest.mark.parametrize("details", [NOT_SENT, REFUSED])
def test_transparent_retry_goes_elsewhere_and_is_not_a_retry(details: str) -> None:
    h = Harness(metadata=[("k", "v")])
    first = h.only_send(h.start())
    assert h.end(first, Code.UNAVAILABLE, details) == []
    assert h.plan.state is State.WAITING
    assert h.plan.wake_at == pytest.approx(h.clock() + TRANSPARENT_WAIT_S)
    assert h.event_names() == [Event.TRANSPARENT_RETRY]
    h.publish()  # the policy learnt of the failure
    second = h.only_send(h.picker())
    assert second.subchannel is not first.subchannel
    assert second.number == 0 and previous(second.metadata) == []
    finish = finish_of(h.end(second, Code.OK))
    assert finish.trailers == ()
    assert Event.RETRY not in h.event_names()
    h.check_accounting()


def test_a_retry_after_a_transparent_retry_skips_both_backends_tried() -> None:
    # the transparent retry is attempt number 0 again; the backend it replaced still
    # counts as tried when a retryPolicy retry is picked later
    h = Harness(retry=RETRY)

    class PreferFirst:  # the first backend not excluded, in list order
        def pick(self, info: PickInfo) -> Any:
            return first_not_excluded(h.subs, 0, info.exclude)  # type: ignore[arg-type]

    h.publish(PreferFirst())
    first = h.only_send(h.start())
    assert h.end(first, Code.UNAVAILABLE, NOT_SENT) == []
    h.publish(PreferFirst())
    second = h.only_send(h.picker())
    assert second.number == 0 and second.subchannel is not first.subchannel
    assert h.end(second, Code.UNAVAILABLE, "backend said no") == []
    third = h.only_send(h.fire_timer())
    assert third.subchannel not in (first.subchannel, second.subchannel)
    finish_of(h.end(third, Code.OK))
    h.check_accounting()


def test_transparent_retry_after_the_wait_even_if_the_picker_did_not_change() -> None:
    h = Harness()
    first = h.only_send(h.start())
    h.end(first, Code.UNAVAILABLE, NOT_SENT)
    second = h.only_send(h.fire_timer())
    assert second.subchannel is not first.subchannel


def test_transparent_retries_are_bounded() -> None:
    h = Harness()
    actions = h.start()
    for _ in range(MAX_TRANSPARENT_RETRIES):
        attempt = h.only_send(actions)
        assert h.end(attempt, Code.UNAVAILABLE, NOT_SENT) == []
        actions = h.fire_timer()
    last = h.only_send(actions)
    finish = finish_of(h.end(last, Code.UNAVAILABLE, NOT_SENT))
    assert finish.attempt is last and finish.code is Code.UNAVAILABLE
    assert len(h.sent) == 1 + MAX_TRANSPARENT_RETRIES
    # one event per re-send: the last one was not re-sent
    assert h.event_names() == [Event.TRANSPARENT_RETRY] * MAX_TRANSPARENT_RETRIES
    h.check_accounting()


def test_transparent_retries_do_not_use_up_max_attempts() -> None:
    retry = RetryPolicy(2, 0.1, 0.1, 1.0, frozenset({Code.UNAVAILABLE}))
    h = Harness(retry=retry)
    a = h.only_send(h.start())
    h.end(a, Code.UNAVAILABLE, NOT_SENT)
    b = h.only_send(h.fire_timer())
    h.end(b, Code.UNAVAILABLE, "backend said no")  # reached a server: attempt 1 of 2
    assert h.plan.state is State.BACKOFF
    c = h.only_send(h.fire_timer())
    assert previous(c.metadata) == ["1"]
    finish = finish_of(h.end(c, Code.UNAVAILABLE, "backend said no"))
    assert finish.attempt is c and finish.trailers == ((PREVIOUS_ATTEMPTS_KEY, "1"),)


def test_unavailable_from_a_server_is_not_transparent() -> None:
    h = Harness()
    a = h.only_send(h.start())
    finish = finish_of(h.end(a, Code.UNAVAILABLE, "upstream connect error"))
    assert finish.attempt is a and h.events == []


def test_a_policy_that_ignores_exclude_still_gets_an_untried_backend_of_its_priority() -> None:
    clock = FakeClock()
    subs = [
        FakeSub("a:1", clock),
        FakeSub("b:1", clock, priority=1),
        FakeSub("c:1", clock),
    ]
    picking = Picking(TARGET, subs, 0, lambda *_: None, lambda: "")
    picking.publish(READY, StickyPicker(subs[0]))  # type: ignore[arg-type]
    h = Harness(clock=clock, subs=subs, picking=picking)
    first = h.only_send(h.start())
    assert first.subchannel is subs[0]
    h.end(first, Code.UNAVAILABLE, NOT_SENT)
    second = h.only_send(h.fire_timer())
    assert second.subchannel is subs[2]  # same priority, untried; never b (priority 1)


# -- retryPolicy -------------------------------------------------------------------------
def test_retryable_codes_retry_after_full_jitter_backoff() -> None:
    h = Harness(retry=RETRY, metadata=[("k", "v"), (PREVIOUS_ATTEMPTS_KEY, "9")], seed=3)
    mirror = random.Random(3)
    attempt = h.only_send(h.start())
    assert previous(attempt.metadata) == ["9"]  # the first attempt passes metadata as is
    for n in (1, 2, 3):
        h.clock.advance(0.01)
        assert h.end(attempt, Code.UNAVAILABLE, "backend said no") == []
        assert h.plan.state is State.BACKOFF
        ceiling = min(RETRY.initial_backoff_s * RETRY.backoff_multiplier ** (n - 1), 1.0)
        delay = h.plan.wake_at - h.clock()  # type: ignore[operator]
        assert 0.0 <= delay <= ceiling
        assert delay == pytest.approx(mirror.uniform(0.0, ceiling))
        assert h.timer() == []  # early: nothing yet
        attempt = h.only_send(h.fire_timer())
        assert attempt.number == n
        assert previous(attempt.metadata) == [str(n)]
        assert ("k", "v") in attempt.metadata
        assert attempt.subchannel is h.subs[n % 3]  # each retry on another backend
    assert h.event_names() == [Event.RETRY] * 3
    finish = finish_of(h.end(attempt, Code.OK))
    assert finish.trailers == ((PREVIOUS_ATTEMPTS_KEY, "3"),)
    h.check_accounting()


def test_max_attempts_is_respected() -> None:
    h = Harness(retry=RETRY)
    actions = h.start()
    for _ in range(RETRY.max_attempts - 1):
        h.end(h.only_send(actions), Code.UNAVAILABLE, "no")
        actions = h.fire_timer()
    last = h.only_send(actions)
    finish = finish_of(h.end(last, Code.RESOURCE_EXHAUSTED, "quota"))
    assert (finish.attempt, finish.code, finish.details) == (last, Code.RESOURCE_EXHAUSTED, "quota")
    assert finish.trailers == ((PREVIOUS_ATTEMPTS_KEY, "3"),)
    assert len(h.sent) == RETRY.max_attempts
    h.check_accounting()


def test_non_retryable_codes_finish_at_once() -> None:
    h = Harness(retry=RETRY)
    a = h.only_send(h.start())
    finish = finish_of(h.end(a, Code.INVALID_ARGUMENT, "bad"))
    assert finish.attempt is a and finish.code is Code.INVALID_ARGUMENT and h.events == []


def test_pushback_is_honoured() -> None:
    h = Harness(retry=RETRY)
    a = h.only_send(h.start())
    h.end(a, Code.UNAVAILABLE, "busy", [(PUSHBACK_KEY, "250")])
    assert h.plan.wake_at == pytest.approx(h.clock() + 0.25)
    h.only_send(h.fire_timer())


@pytest.mark.parametrize("value", ["-1", "soon"])
def test_negative_or_bad_pushback_stops_retrying(value: str) -> None:
    throttle = RetryThrottle(10, 0.1)
    h = Harness(retry=RETRY, throttle=throttle)
    a = h.only_send(h.start())
    finish = finish_of(h.end(a, Code.UNAVAILABLE, "go away", [(PUSHBACK_KEY, value)]))
    assert finish.attempt is a
    assert Event.THROTTLED not in h.event_names()  # the server said stop, not the bucket


def test_throttling_stops_retries_and_says_so() -> None:
    throttle = RetryThrottle(3, 0.5)
    h = Harness(retry=RETRY, throttle=throttle)
    a = h.only_send(h.start())
    h.end(a, Code.UNAVAILABLE, "no")  # tokens 2 > 1.5: retry
    b = h.only_send(h.fire_timer())
    finish = finish_of(h.end(b, Code.UNAVAILABLE, "no"))  # tokens 1: throttled
    assert finish.attempt is b
    assert h.event_names() == [Event.RETRY, Event.THROTTLED]
    assert throttle.tokens == 1.0


def test_success_refills_the_throttle() -> None:
    throttle = RetryThrottle(10, 0.5)
    throttle.tokens = 5.0
    h = Harness(retry=RETRY, throttle=throttle)
    h.end(h.only_send(h.start()), Code.OK)
    assert throttle.tokens == 5.5


@pytest.mark.parametrize("policy", ["retry", "hedge"])
def test_success_after_a_buffer_commit_still_refills_the_throttle(policy: str) -> None:
    throttle = RetryThrottle(10, 0.5)
    throttle.tokens = 6.0
    h = Harness(
        Kind.STREAM_UNARY,
        retry=RETRY if policy == "retry" else None,
        hedging=HEDGE if policy == "hedge" else None,
        throttle=throttle,
        buffer_limit=10,
    )
    a = h.only_send(h.start())
    h.buffered(11)
    assert h.commits == [a]
    h.end(a, Code.OK)
    assert throttle.tokens == 6.5


def test_a_backoff_past_the_deadline_fails_with_no_time_left() -> None:
    h = Harness(retry=RETRY, timeout=0.5)
    a = h.only_send(h.start())
    finish = finish_of(h.end(a, Code.UNAVAILABLE, "no", [(PUSHBACK_KEY, "1000")]))
    assert finish.code is Code.DEADLINE_EXCEEDED and finish.attempt is None
    assert "no time left" in finish.details and "UNAVAILABLE: no" in finish.details
    assert finish.trailers == ((PREVIOUS_ATTEMPTS_KEY, "1"),)
    h.check_accounting()


def test_retry_waits_for_a_picker_when_nothing_is_ready() -> None:
    h = Harness(retry=RETRY)
    a = h.only_send(h.start())
    h.end(a, Code.UNAVAILABLE, "no")
    h.publish(QueuePicker())
    assert h.fire_timer() == []
    assert h.plan.state is State.WAITING
    h.publish()
    b = h.only_send(h.picker())
    assert previous(b.metadata) == ["1"]


# -- hedging -----------------------------------------------------------------------------
def test_hedge_delay_sends_to_another_backend_and_the_first_success_wins() -> None:
    h = Harness(hedging=HEDGE, metadata=[("k", "v")])
    a = h.only_send(h.start())
    assert h.plan.wake_at == pytest.approx(h.clock() + HEDGE.delay_s)
    assert h.timer() == []  # early
    b = h.only_send(h.fire_timer())
    assert b.subchannel is not a.subchannel and previous(b.metadata) == ["1"]
    assert h.event_names() == [Event.HEDGE]
    c = h.only_send(h.fire_timer())
    assert {a.subchannel, b.subchannel, c.subchannel} == set(h.subs)
    assert h.plan.wake_at is None  # maxAttempts sent: no more hedges
    actions = h.end(b, Code.OK)
    assert [x.attempt for x in actions if isinstance(x, Cancel)] == [a, c]
    finish = finish_of(actions)
    assert finish.attempt is b and finish.trailers == ((PREVIOUS_ATTEMPTS_KEY, "1"),)
    assert h.end(a, Code.CANCELLED, CANCELLED_DETAILS) == []
    assert h.end(c, Code.CANCELLED, CANCELLED_DETAILS) == []
    assert all(sc.in_flight == 0 for sc in h.subs)
    h.check_accounting()


def test_a_non_fatal_failure_sends_the_next_hedge_at_once() -> None:
    h = Harness(hedging=HEDGE)
    a = h.only_send(h.start())
    b = h.only_send(h.end(a, Code.UNAVAILABLE, "overloaded"))
    assert b.subchannel is not a.subchannel
    h.end(b, Code.OK)
    h.check_accounting()


def test_a_fatal_failure_cancels_the_others() -> None:
    h = Harness(hedging=HEDGE)
    a = h.only_send(h.start())
    b = h.only_send(h.fire_timer())
    actions = h.end(b, Code.INVALID_ARGUMENT, "bad")
    assert [x.attempt for x in actions if isinstance(x, Cancel)] == [a]
    finish = finish_of(actions)
    assert finish.attempt is b and finish.code is Code.INVALID_ARGUMENT
    h.end(a, Code.CANCELLED, CANCELLED_DETAILS)
    h.check_accounting()


def test_all_hedges_failing_non_fatally_end_with_the_last_failure() -> None:
    h = Harness(hedging=HEDGE)
    a = h.only_send(h.start())
    b = h.only_send(h.fire_timer())
    c = h.only_send(h.fire_timer())
    assert h.end(a, Code.UNAVAILABLE, "1") == []  # the others may still answer
    assert h.end(c, Code.UNAVAILABLE, "3") == []
    finish = finish_of(h.end(b, Code.UNAVAILABLE, "2"))
    assert finish.attempt is b and finish.details == "2"
    h.check_accounting()


def test_a_hedge_never_waits_for_a_backend() -> None:
    h = Harness(hedging=HEDGE)
    a = h.only_send(h.start())
    h.publish(QueuePicker())
    assert h.fire_timer() == []  # pick_now found nothing: try again after the delay
    assert h.plan.state is State.ATTEMPTING and h.plan.waiting_on is None
    assert h.plan.wake_at == pytest.approx(h.clock() + HEDGE.delay_s)
    h.publish(FailPicker(Code.UNAVAILABLE, "down"))
    assert h.fire_timer() == []  # nor fails the call
    h.publish()
    b = h.only_send(h.fire_timer())
    assert b.subchannel is not a.subchannel


def test_the_throttle_stops_hedges() -> None:
    throttle = RetryThrottle(10, 0.1)
    throttle.tokens = 5.0  # not more than half
    h = Harness(hedging=HEDGE, throttle=throttle)
    a = h.only_send(h.start())
    assert h.fire_timer() == []
    assert h.event_names() == [Event.THROTTLED] and h.plan.wake_at is None
    finish = finish_of(h.end(a, Code.UNAVAILABLE, "no"))  # non-fatal, but no more hedges
    assert finish.attempt is a


def test_a_hedge_that_never_reached_a_server_is_sent_again() -> None:
    hedging = HedgingPolicy(2, 0.1, frozenset({Code.UNAVAILABLE}))
    h = Harness(hedging=hedging)
    a = h.only_send(h.start())
    b = h.only_send(h.fire_timer())
    # maxAttempts (2) are out; one that never left adds one more try (not a THROTTLED)
    c = h.only_send(h.end(a, Code.UNAVAILABLE, NOT_SENT))
    assert c.subchannel not in (a.subchannel, b.subchannel)
    assert h.event_names() == [Event.HEDGE, Event.TRANSPARENT_RETRY, Event.HEDGE]
    h.end(b, Code.OK)
    h.end(c, Code.CANCELLED, CANCELLED_DETAILS)
    h.check_accounting()


# -- commit ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", [Kind.UNARY_STREAM, Kind.STREAM_STREAM])
def test_streams_commit_on_the_first_response_and_then_never_retry(kind: Kind) -> None:
    h = Harness(kind, retry=RETRY)
    a = h.only_send(h.start())
    actions = h.response(a)
    assert len(actions) == 1 and isinstance(actions[0], Commit) and actions[0].attempt is a
    assert h.plan.state is State.COMMITTED and h.plan.committed is a
    assert h.response(a) == []
    finish = finish_of(h.end(a, Code.UNAVAILABLE, "mid-stream"))
    assert finish.attempt is a and h.events == []
    h.check_accounting()


def test_a_hedged_stream_commits_to_the_first_that_answers() -> None:
    h = Harness(Kind.UNARY_STREAM, hedging=HEDGE)
    a = h.only_send(h.start())
    b = h.only_send(h.fire_timer())
    actions = h.response(b)
    assert [type(x) for x in actions] == [Cancel, Commit]
    assert actions[0].attempt is a and actions[1].attempt is b
    assert h.plan.wake_at is None
    assert h.end(a, Code.CANCELLED, CANCELLED_DETAILS) == []
    assert h.timer() == []
    assert finish_of(h.end(b, Code.OK)).attempt is b
    h.check_accounting()


def test_a_response_from_a_cancelled_hedge_is_ignored() -> None:
    h = Harness(Kind.UNARY_STREAM, hedging=HEDGE)
    a = h.only_send(h.start())
    b = h.only_send(h.fire_timer())
    h.response(b)
    assert h.response(a) == []
    assert h.plan.committed is b


@pytest.mark.parametrize("kind", [Kind.STREAM_UNARY, Kind.STREAM_STREAM])
def test_passing_the_buffer_limit_commits_and_stops_retries(kind: Kind) -> None:
    h = Harness(kind, retry=RETRY, buffer_limit=100)
    a = h.only_send(h.start())
    assert h.buffered(60) == []
    assert h.buffered(40) == []  # at the limit, not past it
    actions = h.buffered(1)
    assert len(actions) == 1 and isinstance(actions[0], Commit) and actions[0].attempt is a
    assert h.buffered(1000) == []
    finish = finish_of(h.end(a, Code.UNAVAILABLE, "no"))
    assert finish.attempt is a and h.events == []
    h.check_accounting()


def test_a_hedged_unary_response_commits_on_the_buffer_and_sends_no_more_hedges() -> None:
    h = Harness(Kind.STREAM_UNARY, hedging=HEDGE, buffer_limit=10)
    a = h.only_send(h.start())
    b = h.only_send(h.fire_timer())
    actions = h.buffered(11)
    assert [type(x) for x in actions] == [Cancel, Commit]
    assert actions[0].attempt is b and actions[1].attempt is a
    assert h.plan.state is State.ATTEMPTING and h.plan.wake_at is None
    assert h.end(b, Code.CANCELLED, CANCELLED_DETAILS) == []
    assert h.timer() == []
    finish = finish_of(h.end(a, Code.UNAVAILABLE, "no"))
    assert finish.attempt is a
    h.check_accounting()


def test_passing_the_buffer_limit_during_backoff_makes_the_next_attempt_the_last() -> None:
    h = Harness(Kind.STREAM_UNARY, retry=RETRY, buffer_limit=10)
    a = h.only_send(h.start())
    h.end(a, Code.UNAVAILABLE, "no")
    assert h.buffered(11) == []
    actions = h.fire_timer()
    b = h.sends(actions)[0]
    assert h.commits == [b]  # the buffer is dropped from here on: it is the call now
    finish = finish_of(h.end(b, Code.UNAVAILABLE, "no"))
    assert finish.attempt is b
    h.check_accounting()


def test_not_replayable_hedging_sends_no_hedge() -> None:
    h = Harness(Kind.STREAM_STREAM, hedging=HEDGE, replayable=False)
    a = h.sends(h.start())[0]
    assert h.commits == [a]
    assert h.plan.wake_at is None
    finish = finish_of(h.end(a, Code.UNAVAILABLE, "no"))
    assert finish.attempt is a and len(h.sent) == 1


# -- cancel in every state ---------------------------------------------------------------
@pytest.mark.parametrize("state", [State.IDLE, State.WAITING, State.ATTEMPTING, State.BACKOFF])
def test_cancel_before_commit_finishes_at_once(state: State) -> None:
    h = reach(state)
    running = list(h.plan.running)
    actions = h.cancel()
    assert [x.attempt for x in actions if isinstance(x, Cancel)] == running
    finish = finish_of(actions)
    assert (finish.attempt, finish.code, finish.details) == (
        None,
        Code.CANCELLED,
        CANCELLED_DETAILS,
    )
    assert h.plan.done
    for attempt in running:
        assert h.end(attempt, Code.CANCELLED, CANCELLED_DETAILS) == []
    assert h.cancel() == []
    h.check_accounting()


def test_cancel_when_committed_ends_with_the_attempts_own_cancelled() -> None:
    h = reach(State.COMMITTED)
    a = h.plan.committed
    assert a is not None
    actions = h.cancel()
    assert len(actions) == 1 and isinstance(actions[0], Cancel) and actions[0].attempt is a
    assert h.plan.state is State.COMMITTED
    finish = finish_of(h.end(a, Code.CANCELLED, CANCELLED_DETAILS))
    assert finish.attempt is a and finish.code is Code.CANCELLED
    h.check_accounting()


def test_cancel_when_done_does_nothing() -> None:
    h = reach(State.DONE)
    assert h.cancel() == []
    assert h.plan.outcome is h.finishes[0] and h.plan.outcome.code is Code.OK


def test_a_hedge_due_at_the_deadline_fails_the_call_and_cancels_the_others() -> None:
    h = Harness(hedging=HEDGE, timeout=HEDGE.delay_s)
    a = h.only_send(h.start())
    actions = h.fire_timer()
    assert [x.attempt for x in actions if isinstance(x, Cancel)] == [a]
    finish = finish_of(actions)
    assert finish.code is Code.DEADLINE_EXCEEDED and finish.attempt is None
    h.end(a, Code.DEADLINE_EXCEEDED, "Deadline Exceeded")
    h.check_accounting()


def test_cancel_a_hedged_call_cancels_every_attempt() -> None:
    h = Harness(hedging=HEDGE)
    a = h.only_send(h.start())
    b = h.only_send(h.fire_timer())
    actions = h.cancel()
    assert [x.attempt for x in actions if isinstance(x, Cancel)] == [a, b]
    assert finish_of(actions).code is Code.CANCELLED
    for x in (a, b):
        h.end(x, Code.CANCELLED, CANCELLED_DETAILS)
    h.check_accounting()


# -- saturation --------------------------------------------------------------------------
def test_saturated_backends_are_skipped_and_all_saturated_is_resource_exhausted() -> None:
    first = Harness(max_requests=1)
    plans = [first]
    for _ in range(2):
        plans.append(Harness(clock=first.clock, subs=first.subs, picking=first.picking))
    used = [p.only_send(p.start()).subchannel for p in plans]
    assert sorted(sc.address for sc in used) == sorted(sc.address for sc in first.subs)
    assert all(sc.in_flight == 1 for sc in first.subs)
    late = Harness(clock=first.clock, subs=first.subs, picking=first.picking)
    finish = finish_of(late.start())
    assert finish.code is Code.RESOURCE_EXHAUSTED and finish.attempt is None
    assert "maxRequests=1" in finish.details
    names = first.event_names()
    assert Event.SATURATED in names and names[-1] is Event.REJECTED
    # one ends: the next call gets that backend
    plans[1].end(plans[1].sent[0], Code.OK)
    again = Harness(clock=first.clock, subs=first.subs, picking=first.picking)
    assert again.only_send(again.start()).subchannel is plans[1].sent[0].subchannel


def test_saturation_is_not_waited_on_even_with_wait_for_ready() -> None:
    h = Harness(max_requests=1, n=1, wait_for_ready=True)
    h.only_send(h.start())
    other = Harness(clock=h.clock, subs=h.subs, picking=h.picking, wait_for_ready=True)
    assert finish_of(other.start()).code is Code.RESOURCE_EXHAUSTED


# -- randomized: any input sequence keeps the accounting right --------------------------
CODES = [Code.OK, Code.UNAVAILABLE, Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED, Code.CANCELLED]
DETAILS = ["", "backend said no", NOT_SENT, REFUSED]
PICKERS: list[Callable[[list[FakeSub]], Any]] = [
    ListPicker,
    lambda subs: QueuePicker(),
    lambda subs: FailPicker(Code.UNAVAILABLE, "all failed"),
    lambda subs: FailPicker(Code.INTERNAL, "broken"),
    lambda subs: StickyPicker(subs[0]),
]


INPUT_WEIGHTS = {
    Input.START: 5.0,
    Input.END: 4.0,
    Input.TIMER: 3.0,
    Input.PICKER: 2.0,
    Input.RESPONSE: 1.0,
    Input.BUFFERED: 1.0,
    Input.CANCEL: 0.3,
}


class Driver:
    """Random inputs (legal or not) to one plan; checks the invariants after each."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        policy = rng.choice(["none", "retry", "hedge"])
        self.h = Harness(
            rng.choice(list(Kind)),
            ready=rng.random() < 0.7,
            timeout=rng.choice([None, 0.3, 2.0, 30.0]),
            wait_for_ready=rng.random() < 0.3,
            retry=RETRY if policy == "retry" else None,
            hedging=HEDGE if policy == "hedge" else None,
            throttle=RetryThrottle(rng.choice([2, 6, 20]), 0.5) if rng.random() < 0.5 else None,
            max_requests=rng.choice([0, 0, 1, 2]),
            seed=rng.randrange(1 << 30),
            buffer_limit=rng.choice([50, 1000]),
            replayable=rng.random() < 0.9,
        )
        self.strays: list[Attempt] = []

    def step(self, what: Input) -> None:
        h, rng = self.h, self.rng
        pair = (h.plan.state, what)
        call: Callable[[], list[Action]]
        unreported = [a for a in h.sent if a not in h.reported]
        if what is Input.START:
            call = h.plan.start
        elif what is Input.PICKER:
            h.publish(rng.choice(PICKERS)(h.subs))
            call = h.plan.on_picker
        elif what is Input.TIMER:
            if h.plan.wake_at is not None and rng.random() < 0.8:
                h.clock.now = max(h.clock.now, h.plan.wake_at)
            else:
                h.clock.advance(rng.choice([0.0, 0.01, 0.2]))
            call = h.plan.on_timer
        elif what in (Input.END, Input.RESPONSE):
            if unreported and rng.random() < 0.9:
                attempt = rng.choice(unreported)
            else:
                attempt = Attempt(FakeSub("stray:1", h.clock), 0, (), None)  # type: ignore[arg-type]
                self.strays.append(attempt)
            if what is Input.END:
                code = rng.choice(CODES)
                trailers = rng.choice([None, [(PUSHBACK_KEY, rng.choice(["0", "50", "-1"]))]])
                details = rng.choice(DETAILS)

                def call() -> list[Action]:
                    if attempt in h.sent:
                        h.reported.append(attempt)
                    return h.plan.on_end(attempt, code, details, trailers)
            else:

                def call() -> list[Action]:
                    return h.plan.on_response(attempt)
        elif what is Input.BUFFERED:
            nbytes = rng.choice([1, 30, 600])

            def call() -> list[Action]:
                return h.plan.on_buffered(nbytes)
        else:
            call = h.plan.cancel
        if pair in _TRANSITIONS:
            h.take(call())
        else:
            with pytest.raises(PlanError):
                call()
            assert h.plan.state is pair[0]
        h.check_accounting()
        assert all(a.ended for a in self.strays if a in h.reported)

    def choose(self) -> Input:
        """Mostly an input the table takes in this state (so the call gets somewhere),
        sometimes any input at all."""
        if self.rng.random() < 0.15:
            return self.rng.choice(list(Input))
        legal = [i for i in Input if (self.h.plan.state, i) in _TRANSITIONS]
        return self.rng.choices(legal, [INPUT_WEIGHTS[i] for i in legal])[0]

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step(self.choose())
            if self.h.plan.done and self.rng.random() < 0.3:
                break
        self.wind_down()

    def wind_down(self) -> None:
        """What a driver does at the end: cancel, then report every attempt's end. The
        call is then over with exactly one Finish and nothing in flight."""
        h = self.h
        if h.plan.state is State.IDLE and self.rng.random() < 0.5:
            h.start()
        h.cancel()
        for attempt in [a for a in h.sent if a not in h.reported]:
            h.end(attempt, Code.CANCELLED, CANCELLED_DETAILS)
        assert h.plan.done and len(h.finishes) == 1
        assert all(sc.in_flight == 0 for sc in h.subs)
        assert all(len(sc.finished) == sc.started for sc in h.subs)
        h.check_accounting()


def test_random_input_sequences_keep_the_invariants() -> None:
    for seed in range(500):
        try:
            Driver(random.Random(seed)).run(40)
        except BaseException as err:
            raise AssertionError(f"seed {seed}: {err!r}") from err


try:
    from hypothesis import settings
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
except ImportError:  # pragma: no cover - hypothesis is a dev extra
    pass
else:

    class PlanMachine(RuleBasedStateMachine):
        """The same random driver, with Hypothesis choosing (and shrinking) the inputs."""

        def __init__(self) -> None:
            super().__init__()
            self.driver: Driver | None = None

        @initialize(seed=st.integers(0, 2**32 - 1))
        def setup(self, seed: int) -> None:
            self.driver = Driver(random.Random(seed))

        @rule(what=st.sampled_from(list(Input)))
        def feed(self, what: Input) -> None:
            assert self.driver is not None
            self.driver.step(what)

        @rule()
        def feed_mostly_legal(self) -> None:
            assert self.driver is not None
            self.driver.step(self.driver.choose())

        @invariant()
        def accounting(self) -> None:
            if self.driver is not None:
                self.driver.h.check_accounting()

        def teardown(self) -> None:
            if self.driver is not None:
                self.driver.wind_down()

    PlanMachine.TestCase.settings = settings(
        max_examples=40,
        stateful_step_count=25,
        derandomize=True,
        database=None,
        deadline=None,
    )
    TestPlanMachine = PlanMachine.TestCase
