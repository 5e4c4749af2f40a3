"""Hedging (``hedgingPolicy``): the first success wins, the others are cancelled."""

from __future__ import annotations

from typing import Any

import grpc
import grpc.aio
import pytest

from grpc_balancer.demo import greeter_pb2
from grpc_balancer.demo.servicer import Faults
from grpc_balancer.testing import GreeterFleet
from tests.channels import open_channel
from tests.helpers import eventually, port_of
from tests.load import Load

Req = greeter_pb2.HelloRequest


def hedging_config(
    delay: str = "0.05s",
    max_attempts: int = 3,
    non_fatal: tuple[str, ...] = ("UNAVAILABLE",),
    policy: str = "round_robin",
) -> dict[str, Any]:
    return {
        "loadBalancingConfig": [{policy: {}}],
        "methodConfig": [
            {
                "name": [{"service": "greeter.Greeter", "method": "SayHello"}],
                "hedgingPolicy": {
                    "maxAttempts": max_attempts,
                    "hedgingDelay": delay,
                    "nonFatalStatusCodes": list(non_fatal),
                },
            }
        ],
    }


async def test_a_hanging_backend_is_hedged_and_the_fast_answer_wins(channel_kind: str) -> None:
    faults = [Faults(delay_ms=30_000), Faults(), Faults()]
    async with (
        GreeterFleet(3, faults=faults) as fleet,
        open_channel(channel_kind, fleet.target(), service_config=hedging_config()) as ch,
    ):
        events: list[str] = []
        ch.observers.append(lambda event, sc, code: events.append(event))
        assert await ch.wait_for_settled(10)
        stub = ch.stub()
        hedged = 0
        for _ in range(15):
            reply, trailers = await stub.SayHelloWithTrailers(Req(name="h"), timeout=10)
            assert port_of(reply.message) != fleet.ports[0]
            if "grpc-previous-rpc-attempts" in dict(trailers):
                hedged += 1  # (on a busy machine a slow fast backend may be hedged too)
        hung = fleet.servers[0].servicer
        assert hung is not None and hung.calls > 0
        # every call whose first attempt went to the hanging backend was hedged
        assert events.count("hedge") >= hedged >= hung.calls
        # the losing attempts were cancelled, not left running for 30 s
        await eventually(lambda: hung.in_flight == 0)
        # (the sync channel learns of a cancelled attempt's end on grpcio's thread)
        await eventually(lambda: all(sc.in_flight == 0 for sc in ch.subchannels))


async def test_a_non_fatal_failure_sends_the_next_hedge_at_once(channel_kind: str) -> None:
    faults = [Faults(fail_rate=1.0), Faults()]
    async with (
        GreeterFleet(2, faults=faults) as fleet,
        open_channel(
            channel_kind, fleet.target(), service_config=hedging_config(delay="60s")
        ) as ch,
    ):
        assert await ch.wait_for_settled(10)
        stub = ch.stub()
        # a 60 s hedging delay and a 10 s deadline: success means no waiting for the delay
        for _ in range(6):
            reply = await stub.SayHello(Req(name="n"), timeout=10)
            assert port_of(reply.message) == fleet.ports[1]
    failing = fleet.servers[0].servicer
    assert failing is not None and failing.calls > 0


async def test_a_fatal_failure_ends_the_call_without_more_hedges(channel_kind: str) -> None:
    faults = [Faults(fail_rate=1.0, fail_code=grpc.StatusCode.INTERNAL) for _ in range(2)]
    async with (
        GreeterFleet(2, faults=faults) as fleet,
        open_channel(
            channel_kind, fleet.target(), service_config=hedging_config(delay="0.5s")
        ) as ch,
    ):
        assert await ch.wait_for_settled(10)
        stub = ch.stub()
        with pytest.raises(grpc.RpcError) as info:
            await stub.SayHello(Req(name="f"), timeout=10)
        assert info.value.code() is grpc.StatusCode.INTERNAL
    assert sum(s.servicer.calls for s in fleet.servers if s.servicer) == 1


async def test_all_attempts_failing_returns_the_last_error_with_the_count(
    channel_kind: str,
) -> None:
    faults = [Faults(fail_rate=1.0) for _ in range(3)]
    async with (
        GreeterFleet(3, faults=faults) as fleet,
        open_channel(
            channel_kind, fleet.target(), service_config=hedging_config(delay="0.01s")
        ) as ch,
    ):
        assert await ch.wait_for_settled(10)
        stub = ch.stub()
        with pytest.raises(grpc.RpcError) as info:
            await stub.SayHello(Req(name="f"), timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert ("grpc-previous-rpc-attempts", "2") in tuple(info.value.trailing_metadata() or ())
    assert sorted(s.servicer.calls for s in fleet.servers if s.servicer) == [1, 1, 1]


async def test_hedged_calls_respect_the_deadline(channel_kind: str) -> None:
    faults = [Faults(delay_ms=30_000) for _ in range(2)]
    async with (
        GreeterFleet(2, faults=faults) as fleet,
        open_channel(
            channel_kind, fleet.target(), service_config=hedging_config(delay="0.05s")
        ) as ch,
    ):
        stub = ch.stub()
        with pytest.raises(grpc.RpcError) as info:
            await stub.SayHello(Req(name="d"), timeout=0.5)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(lambda: all(sc.in_flight == 0 for sc in ch.subchannels))


async def test_hedging_with_throttling_stops_extra_attempts_when_tokens_run_low(
    channel_kind: str,
) -> None:
    config = hedging_config(delay="0.01s")
    config["retryThrottling"] = {"maxTokens": 4, "tokenRatio": 0.1}
    faults = [Faults(fail_rate=1.0) for _ in range(3)]
    async with (
        GreeterFleet(3, faults=faults) as fleet,
        open_channel(channel_kind, fleet.target(), service_config=config) as ch,
    ):
        assert await ch.wait_for_settled(10)
        stub = ch.stub()
        for _ in range(10):
            with pytest.raises(grpc.RpcError):
                await stub.SayHello(Req(name="t"), timeout=10)
    attempts = sum(s.servicer.calls for s in fleet.servers if s.servicer)
    assert attempts < 10 * 3
    assert attempts >= 10  # the first attempt of each call always goes


async def test_hedging_under_load_with_one_slow_backend(channel_kind: str) -> None:
    faults = [Faults(delay_ms=2_000), Faults(), Faults()]
    async with (
        GreeterFleet(3, faults=faults) as fleet,
        open_channel(
            channel_kind, fleet.target(), service_config=hedging_config(policy="round_robin")
        ) as ch,
    ):
        assert await ch.wait_for_settled(10)
        load = await Load(ch, total=400, concurrency=16).start().finish()
    assert not load.errors, load.describe_errors()
    assert fleet.ports[0] not in load.by_port


async def test_a_hedge_with_nowhere_to_go_waits_for_the_attempts_already_sent(
    channel_kind: str,
) -> None:
    # one backend, limited to one call: the hedges are refused locally, the first
    # attempt still answers
    config = hedging_config(delay="0.02s")
    config["circuitBreakers"] = {"maxRequests": 1}
    async with (
        GreeterFleet(1, faults=[Faults(delay_ms=300)]) as fleet,
        open_channel(channel_kind, fleet.target(), service_config=config) as ch,
    ):
        stub = ch.stub()
        reply = await stub.SayHello(Req(name="w"), timeout=10)
        assert port_of(reply.message) == fleet.ports[0]
    assert fleet.servers[0].servicer is not None and fleet.servers[0].servicer.calls == 1
