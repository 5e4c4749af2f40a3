"""Per-backend concurrency limit (``circuitBreakers.maxRequests``) on real servers."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from grpc_balancer import Event
from grpc_balancer._config.service_config import load_service_config
from grpc_balancer.demo.servicer import Faults
from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.testing import GreeterFleet
from tests.channels import open_channel
from tests.load import Load


def limit_config(max_requests: int) -> dict[str, Any]:
    return {
        "loadBalancingConfig": [{"round_robin": {}}],
        "circuitBreakers": {"maxRequests": max_requests},
    }


async def test_limit_holds_under_load_and_saturation_fails_fast_with_a_clear_message(
    channel_kind: str,
) -> None:
    faults = [Faults(delay_ms=50) for _ in range(3)]
    async with (
        GreeterFleet(3, faults=faults) as fleet,
        open_channel(channel_kind, fleet.target(), service_config=limit_config(4)) as ch,
    ):
        events: list[str] = []
        ch.observers.append(lambda event, sc, code: events.append(event))
        assert await ch.wait_for_settled(10)
        load = await Load(ch, total=1000, concurrency=16).start().finish()
    peaks = [s.servicer.max_in_flight for s in fleet.servers if s.servicer]
    # Never exceeded. (The client reaches its limit, "saturated" below; a server sees
    # at most that many at once, one fewer while a reply is on its way back, so its
    # own peak may stay below 4 on a busy machine.)
    assert 2 <= max(peaks) <= 4, peaks
    # 16 workers, 12 slots: some calls are refused at once, never queued
    assert load.errors and "rejected" in events and "saturated" in events
    assert Event.REJECTED in events and all(type(e) is Event for e in events)
    for err in load.errors:
        assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "circuitBreakers.maxRequests=4" in (err.details() or "")
        assert "saturated" in (err.details() or "")


async def test_a_saturated_backend_is_skipped_while_others_have_room(channel_kind: str) -> None:
    # one slow backend fills up; the fast ones take the rest, nothing fails
    faults = [Faults(delay_ms=500), Faults(), Faults()]
    async with (
        GreeterFleet(3, faults=faults) as fleet,
        open_channel(channel_kind, fleet.target(), service_config=limit_config(2)) as ch,
    ):
        assert await ch.wait_for_settled(10)
        load = await Load(ch, total=600, concurrency=4).start().finish()
    assert not load.errors, load.describe_errors()
    slow = fleet.servers[0].servicer
    assert slow is not None and slow.max_in_flight <= 2
    assert load.by_port[fleet.ports[0]] < load.by_port[fleet.ports[1]]


async def test_without_a_limit_nothing_is_refused(channel_kind: str) -> None:
    faults = [Faults(delay_ms=20) for _ in range(3)]
    async with (
        GreeterFleet(3, faults=faults) as fleet,
        open_channel(channel_kind, fleet.target(), policy="round_robin") as ch,
    ):
        assert await ch.wait_for_settled(10)
        load = await Load(ch, total=300, concurrency=16).start().finish()
    assert not load.errors
    assert max(s.servicer.max_in_flight for s in fleet.servers if s.servicer) > 4


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"maxRequests": 0}, r"circuitBreakers\.maxRequests must be an integer >= 1, got 0"),
        ({"maxRequests": "5"}, r"circuitBreakers\.maxRequests must be an integer >= 1"),
        ({}, r"circuitBreakers\.maxRequests must be an integer >= 1, got None"),
        ({"maxRequest": 5}, r"circuitBreakers: unknown field\(s\) 'maxRequest'"),
        ([5], r"circuitBreakers must be an object"),
    ],
)
def test_config_errors_name_the_field(raw: Any, message: str) -> None:
    with pytest.raises(ServiceConfigError, match=message):
        load_service_config({"circuitBreakers": raw})
