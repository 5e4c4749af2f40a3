from __future__ import annotations

import asyncio

import pytest

from grpc_balancer import aio
from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.policies.slow_start import SlowStartConfig
from grpc_balancer.testing import GreeterFleet, manual_resolver
from tests.helpers import counts, eventually, say_hello_ports


def test_envoy_formula() -> None:
    linear = SlowStartConfig(window_s=10.0, aggression=1.0, min_weight=0.1)
    assert linear.factor(0.0) == pytest.approx(0.1)  # max(age, 1 s) / window
    assert linear.factor(5.0) == pytest.approx(0.5)
    assert linear.factor(10.0) == 1.0
    assert SlowStartConfig(10.0, 1.0, 0.3).factor(2.0) == pytest.approx(0.3)  # the floor
    steep = SlowStartConfig(10.0, 2.0, 0.0)
    assert steep.factor(2.5) == pytest.approx(0.5)  # (0.25) ** (1 / 2)


@pytest.mark.parametrize("policy", ["round_robin", "least_request", "weighted_round_robin"])
async def test_new_backend_ramps_up(policy: str) -> None:
    config = {"loadBalancingConfig": [{policy: {"slowStartConfig": {"slowStartWindow": "6s"}}}]}
    async with GreeterFleet(3) as fleet:
        resolver = manual_resolver(fleet.addresses[:2])
        async with aio.insecure_channel(resolver.target, service_config=config) as ch:
            assert await ch.wait_for_settled(10)
            await say_hello_ports(ch, 10)
            resolver.update(fleet.addresses)
            assert await ch.wait_for_settled(10)
            early = counts(await say_hello_ports(ch, 120))
            new = fleet.ports[2]
            # warm backends get ~1/3 each; the newcomer starts near minWeightPercent
            assert early[new] < min(early[p] for p in fleet.ports[:2]) / 2, early

            async def share() -> float:
                return counts(await say_hello_ports(ch, 90))[new] / 90

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30  # a bound, not a speed claim: the window is 6 s
            later = await share()
            while later <= 0.25 and loop.time() < deadline:
                later = await share()
            assert later > 0.25


def test_bad_slow_start_config_names_the_field() -> None:
    for raw, field in (
        ({"slowStartWindow": "5s", "minWeightPercent": 150}, "minWeightPercent"),
        ({"slowStartWindow": "5s", "aggresion": 1}, "aggresion"),
        ("5s", "slowStartConfig"),
    ):
        with pytest.raises(ServiceConfigError, match=field):
            aio.insecure_channel(
                "static:///127.0.0.1:1",
                service_config={"loadBalancingConfig": [{"round_robin": {"slowStartConfig": raw}}]},
            )


async def test_no_slow_start_without_config() -> None:
    async with GreeterFleet(3) as fleet:
        resolver = manual_resolver(fleet.addresses[:2])
        async with aio.insecure_channel(resolver.target, policy="round_robin") as ch:
            assert await ch.wait_for_settled(10)
            resolver.update(fleet.addresses)
            await eventually(lambda: sum(sc.usable for sc in ch.subchannels) == 3)
            assert counts(await say_hello_ports(ch, 90))[fleet.ports[2]] == 30
