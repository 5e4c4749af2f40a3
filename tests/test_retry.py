"""Retries (gRFC A6): the I/O-free core, config validation, and end to end on real servers."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import grpc
import grpc.aio
import pytest

import grpc_balancer
from grpc_balancer._attempts.retry import (
    HedgingPolicy,
    RetryPolicy,
    RetryThrottle,
    hedge_failure_is_fatal,
    may_send_hedge,
    parse_pushback,
    retry_delay_s,
)
from grpc_balancer._config.service_config import load_service_config
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.demo.servicer import Faults
from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.testing import GreeterFleet
from tests.channels import open_channel
from tests.helpers import port_of

Req = greeter_pb2.HelloRequest
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE

POLICY = RetryPolicy(
    max_attempts=4,
    initial_backoff_s=0.1,
    max_backoff_s=0.3,
    backoff_multiplier=2.0,
    retryable_codes=frozenset({UNAVAILABLE}),
)


def retry_config(
    max_attempts: int = 5,
    codes: tuple[str, ...] = ("UNAVAILABLE",),
    throttling: dict[str, Any] | None = None,
    policy: str = "round_robin",
    **extra: Any,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "loadBalancingConfig": [{policy: {}}],
        "methodConfig": [
            {
                "name": [{"service": "greeter.Greeter"}],
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.05s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": list(codes),
                },
                **extra,
            }
        ],
    }
    if throttling is not None:
        config["retryThrottling"] = throttling
    return config


# -- the core ---------------------------------------------------------------------------------
def test_backoff_is_full_jitter_capped_by_max_backoff() -> None:
    rng = random.Random(1)
    for retry, ceiling in ((1, 0.1), (2, 0.2), (3, 0.3), (4, 0.3)):
        samples = [POLICY.backoff_s(retry, rng) for _ in range(500)]
        assert min(samples) >= 0 and max(samples) <= ceiling
        assert max(samples) > ceiling * 0.8  # spread over the whole range


def test_retry_decision_codes_attempts_and_pushback() -> None:
    assert retry_delay_s(POLICY, grpc.StatusCode.INTERNAL, 1, None) is None
    assert retry_delay_s(POLICY, UNAVAILABLE, 1, None) is not None
    assert retry_delay_s(POLICY, UNAVAILABLE, 3, None) is not None
    assert retry_delay_s(POLICY, UNAVAILABLE, 4, None) is None  # maxAttempts reached
    assert retry_delay_s(POLICY, UNAVAILABLE, 1, None, pushback_ms=250) == 0.25
    assert retry_delay_s(POLICY, UNAVAILABLE, 1, None, pushback_ms=-1) is None
    assert parse_pushback([]) is None
    assert parse_pushback(["120"]) == 120
    assert parse_pushback([b"x"]) == -1
    assert parse_pushback(["-5"]) == -1


def test_throttle_stops_retries_below_half_and_refills_with_successes() -> None:
    throttle = RetryThrottle(10, 0.5)
    allowed = 0
    for _ in range(20):
        if retry_delay_s(POLICY, UNAVAILABLE, 1, throttle) is not None:
            allowed += 1
    assert allowed == 4  # 10 → 9, 8, 7, 6 allowed; at 5 (half) no more
    assert throttle.tokens == 0
    for _ in range(12):
        throttle.on_success()
    assert throttle.tokens == 6 and throttle.allows_retry()
    # non-retryable codes do not take tokens
    retry_delay_s(POLICY, grpc.StatusCode.INTERNAL, 1, throttle)
    assert throttle.tokens == 6


def test_hedging_decisions() -> None:
    policy = HedgingPolicy(3, 0.1, frozenset({UNAVAILABLE}))
    throttle = RetryThrottle(4, 1)
    assert may_send_hedge(policy, 0, throttle) and may_send_hedge(policy, 2, throttle)
    assert not may_send_hedge(policy, 3, throttle)
    assert hedge_failure_is_fatal(policy, grpc.StatusCode.INTERNAL, throttle)
    assert not hedge_failure_is_fatal(policy, UNAVAILABLE, throttle)
    assert not hedge_failure_is_fatal(policy, UNAVAILABLE, throttle)
    assert not may_send_hedge(policy, 1, throttle)  # throttled: 2 of 4 tokens left
    assert may_send_hedge(policy, 0, throttle)  # the first attempt always goes


def test_method_lookup_prefers_method_then_service_then_default() -> None:
    rp = retry_config()["methodConfig"][0]["retryPolicy"]
    cfg = load_service_config(
        {
            "methodConfig": [
                {"name": [{}], "timeout": "1s"},
                {"name": [{"service": "a.S"}], "timeout": "2s"},
                {"name": [{"service": "a.S", "method": "M"}], "retryPolicy": rp},
            ]
        }
    )
    exact = cfg.methods.lookup("/a.S/M")
    assert exact is not None and exact.retry is not None and exact.retry.max_attempts == 5
    assert exact.timeout_s is None
    service = cfg.methods.lookup("/a.S/Other")
    assert service is not None and service.timeout_s == 2.0
    default = cfg.methods.lookup("/b.T/X")
    assert default is not None and default.timeout_s == 1.0


def test_max_attempts_above_5_is_capped() -> None:
    cfg = load_service_config(retry_config(max_attempts=9))
    policy = cfg.methods.lookup("/greeter.Greeter/SayHello")
    assert policy is not None and policy.retry is not None and policy.retry.max_attempts == 5


def _with_retry(**changes: Any) -> dict[str, Any]:
    config = retry_config()
    config["methodConfig"][0]["retryPolicy"].update(changes)
    return config


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            _with_retry(maxAttempts=1),
            r"methodConfig\[0\]\.retryPolicy\.maxAttempts must be an integer >= 2",
        ),
        (_with_retry(maxAttempts="3"), r"retryPolicy\.maxAttempts must be an integer"),
        (_with_retry(initialBackoff="1"), r"retryPolicy\.initialBackoff must be a duration"),
        (_with_retry(initialBackoff="0s"), r"retryPolicy\.initialBackoff must be > 0s"),
        (
            _with_retry(backoffMultiplier=0),
            r"retryPolicy\.backoffMultiplier must be a number in \(0, 1000\]",
        ),
        (_with_retry(retryableStatusCodes=[]), r"retryableStatusCodes must not be empty"),
        (_with_retry(retryableStatusCodes=["UNAVAILBLE"]), r"'UNAVAILBLE' is not a gRPC status"),
        (_with_retry(retryableStatusCodes="UNAVAILABLE"), r"retryableStatusCodes must be a list"),
        (_with_retry(maxAttempt=3), r"retryPolicy: unknown field\(s\) 'maxAttempt'"),
        (
            {"methodConfig": [{"name": [{"service": "s"}], "retryPolicy": {"maxAttempts": 2}}]},
            r"retryPolicy\.backoffMultiplier is required",
        ),
        (
            {"methodConfig": [{"name": [{"service": "s"}], "timeout": 3}]},
            r"methodConfig\[0\]\.timeout must be a duration",
        ),
        (
            {"methodConfig": [{"name": [{"service": "s"}], "timout": "1s"}]},
            r"methodConfig\[0\]: unknown field\(s\) 'timout'",
        ),
        (
            {"methodConfig": [{"timeout": "1s"}]},
            r"methodConfig\[0\]\.name must be a non-empty list",
        ),
        ({"methodConfig": [{"name": [{"method": "M"}]}]}, r"name\[0\]: a method needs its service"),
        (
            {"methodConfig": [{"name": [{"service": "s", "methd": "M"}]}]},
            r"name\[0\]: unknown field\(s\) 'methd'",
        ),
        (
            {"methodConfig": [{"name": [{"service": "s"}]}, {"name": [{"service": "s"}]}]},
            r"methodConfig\[1\]\.name\[0\]: service s is named twice",
        ),
        (
            {"methodConfig": [{"name": [{"service": "s"}], "waitForReady": "yes"}]},
            r"waitForReady must be a boolean",
        ),
        (
            {
                "methodConfig": [
                    {
                        "name": [{"service": "s"}],
                        "retryPolicy": retry_config()["methodConfig"][0]["retryPolicy"],
                        "hedgingPolicy": {"maxAttempts": 2},
                    }
                ]
            },
            r"mutually exclusive",
        ),
        (
            {"methodConfig": [{"name": [{"service": "s"}], "hedgingPolicy": {"maxAttempts": 0}}]},
            r"hedgingPolicy\.maxAttempts must be an integer >= 2",
        ),
        (
            {
                "methodConfig": [
                    {
                        "name": [{"service": "s"}],
                        "hedgingPolicy": {"maxAttempts": 2, "hedgingDelay": "x"},
                    }
                ]
            },
            r"hedgingPolicy\.hedgingDelay must be a duration",
        ),
        ({"retryThrottling": {"maxTokens": 10}}, r"retryThrottling\.tokenRatio is required"),
        (
            {"retryThrottling": {"maxTokens": 0, "tokenRatio": 1}},
            r"retryThrottling\.maxTokens must be an integer in 1\.\.1000",
        ),
        (
            {"retryThrottling": {"maxTokens": 10, "tokenRatio": -1}},
            r"retryThrottling\.tokenRatio must be a number in \(0, 1000\]",
        ),
        (
            {"retryThrottling": {"maxTokens": 10, "tokenRatio": 1, "x": 1}},
            r"retryThrottling: unknown field\(s\) 'x'",
        ),
    ],
)
def test_config_errors_name_the_field(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ServiceConfigError, match=message):
        load_service_config(config)
    with pytest.raises(ServiceConfigError, match=message):  # and at channel creation
        grpc_balancer.aio.insecure_channel("static:///127.0.0.1:1", service_config=config)


# -- end to end -------------------------------------------------------------------------------
def _fleet_with_one_failing() -> GreeterFleet:
    return GreeterFleet(3, faults=[Faults(fail_rate=1.0), Faults(), Faults()])


async def test_retries_go_to_other_backends_and_every_call_succeeds(channel_kind: str) -> None:
    async with _fleet_with_one_failing() as fleet:
        bad = fleet.servers[0]
        async with open_channel(channel_kind, fleet.target(), service_config=retry_config()) as ch:
            assert await ch.wait_for_settled(10)
            stub = ch.stub()
            retried = 0
            for _ in range(60):
                reply, trailer_items = await stub.SayHelloWithTrailers(Req(name="r"), timeout=10)
                assert port_of(reply.message) != bad.port
                trailers = dict(trailer_items)
                if "grpc-previous-rpc-attempts" in trailers:
                    assert trailers["grpc-previous-rpc-attempts"] == "1"
                    retried += 1
    assert bad.servicer is not None
    # every call that hit the failing backend was retried once, elsewhere
    assert retried == bad.servicer.calls > 0


async def test_without_a_retry_policy_failures_reach_the_application(channel_kind: str) -> None:
    fleet = _fleet_with_one_failing()
    async with (
        fleet,
        open_channel(channel_kind, fleet.target(), policy="round_robin") as ch,
    ):
        assert await ch.wait_for_settled(10)
        stub = ch.stub()
        failed = 0
        for _ in range(30):
            try:
                await stub.SayHello(Req(name="r"), timeout=10)
            except grpc.RpcError as err:
                assert err.code() is UNAVAILABLE and "injected failure" in (err.details() or "")
                failed += 1
        assert failed == 10


async def test_max_attempts_each_on_a_different_backend_then_the_error_with_its_count(
    channel_kind: str,
) -> None:
    fleet = GreeterFleet(3, faults=[Faults(fail_rate=1.0) for _ in range(3)])
    config = retry_config(max_attempts=3)
    async with (
        fleet,
        open_channel(channel_kind, fleet.target(), service_config=config) as ch,
    ):
        assert await ch.wait_for_settled(10)
        stub = ch.stub()
        with pytest.raises(grpc.RpcError) as info:
            await stub.SayHello(Req(name="r"), timeout=10)
    assert info.value.code() is UNAVAILABLE
    assert ("grpc-previous-rpc-attempts", "2") in tuple(info.value.trailing_metadata() or ())
    assert sorted(s.servicer.calls for s in fleet.servers if s.servicer) == [1, 1, 1]


async def test_non_retryable_code_is_not_retried(channel_kind: str) -> None:
    faults = [Faults(fail_rate=1.0, fail_code=grpc.StatusCode.INTERNAL) for _ in range(2)]
    async with (
        GreeterFleet(2, faults=faults) as fleet,
        open_channel(channel_kind, fleet.target(), service_config=retry_config()) as ch,
    ):
        assert await ch.wait_for_settled(10)
        stub = ch.stub()
        with pytest.raises(grpc.RpcError) as info:
            await stub.SayHello(Req(name="r"), timeout=10)
    assert info.value.code() is grpc.StatusCode.INTERNAL
    assert sum(s.servicer.calls for s in fleet.servers if s.servicer) == 1


async def test_throttling_bounds_attempts_when_everything_fails(channel_kind: str) -> None:
    faults = [Faults(fail_rate=1.0) for _ in range(3)]
    throttling = {"maxTokens": 10, "tokenRatio": 0.1}
    events: list[str] = []
    async with (
        GreeterFleet(3, faults=faults) as fleet,
        open_channel(
            channel_kind, fleet.target(), service_config=retry_config(throttling=throttling)
        ) as ch,
    ):
        ch.observers.append(lambda event, sc, code: events.append(event))
        assert await ch.wait_for_settled(10)
        stub = ch.stub()
        for _ in range(50):
            with pytest.raises(grpc.RpcError):
                await stub.SayHello(Req(name="r"), timeout=10)
    attempts = sum(s.servicer.calls for s in fleet.servers if s.servicer)
    # 10 tokens, retries only above 5: 4 retries, then none (without throttling: 250)
    assert attempts == 50 + 4
    assert events.count("retry") == 4 and events.count("throttled") >= 40


async def test_deadline_bounds_all_attempts_no_late_success(channel_kind: str) -> None:
    # pick_first sends the first attempt to the slow failing backend; a retry on the
    # other one would succeed, but only after the deadline.
    faults = [Faults(delay_ms=300, fail_rate=1.0), Faults(delay_ms=300)]
    async with (
        GreeterFleet(2, faults=faults) as fleet,
        open_channel(
            channel_kind, fleet.target(), service_config=retry_config(policy="pick_first")
        ) as ch,
    ):
        assert await ch.wait_for_settled(10)
        stub = ch.stub()
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as info:
                await stub.SayHello(Req(name="d"), timeout=0.45)
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_method_config_timeout_applies_and_the_smaller_deadline_wins(
    channel_kind: str,
) -> None:
    async with GreeterFleet(1, faults=[Faults(delay_ms=2000)]) as fleet:
        config = {"methodConfig": [{"name": [{"service": "greeter.Greeter"}], "timeout": "0.2s"}]}
        async with open_channel(channel_kind, fleet.target(), service_config=config) as ch:
            stub = ch.stub()
            with pytest.raises(grpc.RpcError) as info:
                await stub.SayHello(Req(name="t"))
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            with pytest.raises(grpc.RpcError) as info:
                await stub.SayHello(Req(name="t"), timeout=30)
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            fleet.servers[0].faults.delay_ms = 0
            assert (await stub.SayHello(Req(name="t"), timeout=30)).message


async def test_server_stream_retries_before_the_first_message(channel_kind: str) -> None:
    async with _fleet_with_one_failing() as fleet:
        bad = fleet.servers[0]
        async with open_channel(channel_kind, fleet.target(), service_config=retry_config()) as ch:
            assert await ch.wait_for_settled(10)
            stub = ch.stub()
            for _ in range(12):
                replies, error, code, _ = await stub.SayHelloStreamOutcome(Req(name="s", count=3))
                assert error is None and code is grpc.StatusCode.OK
                assert len(replies) == 3 and port_of(replies[0].message) != bad.port
    assert bad.servicer is not None and bad.servicer.calls > 0


async def test_server_stream_retry_read_style() -> None:
    async with _fleet_with_one_failing() as fleet:
        bad = fleet.servers[0]
        async with grpc_balancer.aio.insecure_channel(
            fleet.target(), service_config=retry_config()
        ) as ch:
            assert await ch.wait_for_settled(10)
            stub = greeter_pb2_grpc.GreeterStub(ch)
            for _ in range(6):
                call = stub.SayHelloStream(Req(name="s", count=2))
                first, second, end = await call.read(), await call.read(), await call.read()
                assert first.message.endswith("#1") and second.message.endswith("#2")
                assert port_of(first.message) != bad.port
                assert end is grpc.aio.EOF


async def test_server_stream_failure_without_retry_left_reaches_the_reader(
    channel_kind: str,
) -> None:
    faults = [Faults(fail_rate=1.0) for _ in range(2)]
    async with (
        GreeterFleet(2, faults=faults) as fleet,
        open_channel(
            channel_kind, fleet.target(), service_config=retry_config(max_attempts=2)
        ) as ch,
    ):
        replies, error, code, trailers = await ch.stub().SayHelloStreamOutcome(
            Req(name="s", count=3)
        )
        assert not replies and error is not None and error.code() is UNAVAILABLE
        assert code is UNAVAILABLE
        assert ("grpc-previous-rpc-attempts", "1") in trailers


async def test_cancelling_a_call_during_backoff_stops_it() -> None:
    config = retry_config(max_attempts=5)
    config["methodConfig"][0]["retryPolicy"].update(initialBackoff="5s", maxBackoff="5s")
    fleet = GreeterFleet(2, faults=[Faults(fail_rate=1.0) for _ in range(2)])
    async with (
        fleet,
        grpc_balancer.aio.insecure_channel(fleet.target(), service_config=config) as ch,
    ):
        stub = greeter_pb2_grpc.GreeterStub(ch)
        task = asyncio.ensure_future(stub.SayHello(Req(name="c"), timeout=30))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_client_stream_is_replayed_on_another_backend(channel_kind: str) -> None:
    fleet = _fleet_with_one_failing()
    async with (
        fleet,
        open_channel(channel_kind, fleet.target(), service_config=retry_config()) as ch,
    ):
        assert await ch.wait_for_settled(10)
        stub = ch.stub()
        for i in range(9):
            names = [Req(name=n) for n in ("a", "b", "c")]
            reply = await stub.SayHelloToMany(names, plain_iterator=i % 2 == 0, timeout=10)
            # the retried attempt got every request message again
            assert reply.message.startswith("Hello a, b, c (from :")
            assert port_of(reply.message) != fleet.ports[0]
    bad = fleet.servers[0].servicer
    assert bad is not None and bad.calls > 0


async def test_bidi_stream_with_an_iterator_retries_before_the_first_response(
    channel_kind: str,
) -> None:
    # The failing backend answers after a pause: had it failed while the client was still
    # writing, grpc.aio may report the write's local failure as INTERNAL instead.
    fleet = GreeterFleet(3, faults=[Faults(fail_rate=1.0, delay_ms=200), Faults(), Faults()])
    async with (
        fleet,
        open_channel(channel_kind, fleet.target(), service_config=retry_config()) as ch,
    ):
        assert await ch.wait_for_settled(10)
        stub = ch.stub()
        for _ in range(9):
            chat = await stub.Chat([Req(name="x"), Req(name="y")], plain_iterator=True, timeout=10)
            replies = [r.message for r in chat]
            assert [m.split(" (")[0] for m in replies] == ["Hello x", "Hello y"]
            assert port_of(replies[0]) != fleet.ports[0]
    bad = fleet.servers[0].servicer
    assert bad is not None and bad.calls > 0


async def test_bidi_stream_written_by_hand_is_retried_with_its_writes_replayed() -> None:
    # write()/read() style: writes go to the replay buffer too (as grpc-go's SendMsg),
    # so a failing attempt is retried with them until maxAttempts
    fleet = GreeterFleet(1, faults=[Faults(fail_rate=1.0)])
    async with (
        fleet,
        grpc_balancer.aio.insecure_channel(fleet.target(), service_config=retry_config()) as ch,
    ):
        stub = greeter_pb2_grpc.GreeterStub(ch)
        chat = stub.Chat(timeout=10)
        await chat.write(Req(name="x"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await chat.read()
        assert info.value.code() is UNAVAILABLE
        trailers = dict(info.value.trailing_metadata() or ())
        assert trailers.get("grpc-previous-rpc-attempts") == "4"
    assert fleet.servers[0].servicer is not None and fleet.servers[0].servicer.calls == 5


async def test_replayable_requests_replay_then_forget_after_commit() -> None:
    from grpc_balancer._attempts.replay import AsyncRequests

    sizes: list[int] = []
    replay = AsyncRequests(iter([Req(name=str(i)) for i in range(5)]), sizes.append)
    first = replay.replay()
    assert [(await first.__anext__()).name for _ in range(3)] == ["0", "1", "2"]  # attempt 1 dies
    second = replay.replay()
    replay.commit()
    assert [x.name async for x in second] == ["0", "1", "2", "3", "4"]
    assert replay._buffer.items == []  # nothing kept once committed
    assert sizes == [Req(name="0").ByteSize()] * 3  # sizes reported until the commit


class _StubbornPicker:
    """Always the first backend, ignoring ``PickInfo.exclude``."""

    def __init__(self, first: Any) -> None:
        self._first = first

    def pick(self, info: Any) -> Any:
        return self._first


class _StubbornPolicy(grpc_balancer.BasePolicy):
    NAME = "stubborn_first"

    def build_picker(self, usable: list[Any]) -> Any:
        return _StubbornPicker(usable[0])


async def test_retries_go_elsewhere_even_under_a_policy_that_ignores_exclude(
    channel_kind: str,
) -> None:
    grpc_balancer.register_policy("stubborn_first", _StubbornPolicy)
    config = retry_config(policy="stubborn_first")
    fleet = GreeterFleet(3, faults=[Faults(fail_rate=1.0), Faults(), Faults()])
    async with (
        fleet,
        open_channel(
            channel_kind,
            f"static:///{fleet.addresses[0]},{fleet.addresses[1]},{fleet.addresses[2]}",
            service_config=config,
        ) as ch,
    ):
        assert await ch.wait_for_settled(10)
        stub = ch.stub()
        for _ in range(5):
            reply = await stub.SayHello(Req(name="s"), timeout=10)
            assert port_of(reply.message) != fleet.ports[0]
    assert fleet.servers[0].servicer is not None and fleet.servers[0].servicer.calls == 5
