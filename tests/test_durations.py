"""Durations from a service config are bounded as gRPC bounds them (issue 13.3): a
protobuf Duration's range, zero refused where it cannot mean anything, and a huge call
timeout means "no earlier deadline" rather than failing every call."""

from __future__ import annotations

from typing import Any

import pytest

import grpc_balancer
from grpc_balancer._config.method_config import MAX_TIMEOUT_S
from grpc_balancer._config.service_config import load_service_config
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.testing import GreeterFleet

RETRY = {
    "maxAttempts": 2,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def _method(**fields: Any) -> dict[str, Any]:
    return {"methodConfig": [{"name": [{}], **fields}]}


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (_method(timeout="0s"), r"methodConfig\[0\]\.timeout must be > 0s"),
        (_method(timeout="0.000s"), r"timeout must be > 0s"),
        (_method(timeout="9" * 400 + "s"), r"timeout must be a duration string"),
        (_method(timeout="315576000001s"), r"timeout must be at most 315576000000s"),
        (
            _method(retryPolicy={**RETRY, "initialBackoff": "9" * 20 + "s"}),
            r"initialBackoff must be at most",
        ),
        (
            _method(retryPolicy={**RETRY, "maxBackoff": "1" + "0" * 12 + "s"}),
            r"maxBackoff must be at most",
        ),
        (
            _method(hedgingPolicy={"maxAttempts": 2, "hedgingDelay": "1e3s"}),
            r"hedgingDelay must be a duration string",
        ),
    ],
)
def test_bad_durations_are_service_config_errors(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(ServiceConfigError, match=problem):
        load_service_config(config)


def test_a_long_error_value_is_shortened() -> None:
    with pytest.raises(ServiceConfigError) as info:
        load_service_config(_method(timeout="x" * 10_000))
    assert len(str(info.value)) < 300


async def test_a_huge_timeout_means_no_earlier_deadline(fleet3: GreeterFleet) -> None:
    config = _method(timeout="100000000000s")
    assert load_service_config(config).methods.lookup("/greeter.Greeter/SayHello").timeout_s == (
        MAX_TIMEOUT_S
    )
    async with grpc_balancer.aio.insecure_channel(
        fleet3.target(), policy="round_robin", service_config=config
    ) as ch:
        assert await ch.wait_for_settled(10)
        stub = greeter_pb2_grpc.GreeterStub(ch)
        for _ in range(3):  # no timeout of the call's own: the config's applies
            reply = await stub.SayHello(greeter_pb2.HelloRequest(name="t"))
            assert reply.message.startswith("Hello t")  # before: DEADLINE_EXCEEDED at once
