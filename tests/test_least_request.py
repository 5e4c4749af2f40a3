from __future__ import annotations

import random
from collections import Counter

import pytest

from grpc_balancer import aio
from grpc_balancer.demo.servicer import Faults
from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.picker import PickInfo
from grpc_balancer.policies.least_request import LeastRequestPicker
from grpc_balancer.testing import GreeterFleet
from tests.channels import open_channel
from tests.helpers import counts, say_hello_ports
from tests.policy_helpers import burst, fake_subchannels


def test_picker_prefers_fewer_in_flight() -> None:
    subs = fake_subchannels(2)
    subs[0].in_flight = 5
    picker = LeastRequestPicker(subs, 2, random.Random(1))
    assert {picker.pick(PickInfo("/m")) for _ in range(50)} == {subs[1]}


def test_more_choices_avoid_more_loaded_backends() -> None:
    subs = fake_subchannels(5)
    for sc in subs[:2]:
        sc.in_flight = 3
    # with 3 distinct choices out of 5, one of the 3 idle backends is always sampled
    picker = LeastRequestPicker(subs, 3, random.Random(2))
    picked = {picker.pick(PickInfo("/m")) for _ in range(500)}
    assert picked == set(subs[2:])


def test_exclusion_is_honoured() -> None:
    subs = fake_subchannels(2)
    subs[1].in_flight = 9
    picker = LeastRequestPicker(subs, 2, random.Random(3))
    assert picker.pick(PickInfo("/m", exclude=frozenset({subs[0]}))) is subs[1]


async def test_idle_backends_share_evenly(channel_kind: str, fleet3: GreeterFleet) -> None:
    async with open_channel(channel_kind, fleet3.target(), policy="least_request") as ch:
        assert await ch.wait_for_settled(10)
        by_port = counts(await say_hello_ports(ch, 300))
    assert set(by_port) == set(fleet3.ports)
    assert min(by_port.values()) > 50  # ~100 each; a stuck or skipped backend fails this


async def test_busy_backend_gets_fewer_calls() -> None:
    faults = [Faults(delay_ms=400), Faults(), Faults()]
    async with GreeterFleet(3, faults) as fleet:
        slow = fleet.ports[0]
        async with aio.insecure_channel(fleet.target(), policy="least_request") as ch:
            assert await ch.wait_for_settled(10)
            by_port, errors = await burst(ch, 90)
    assert not errors
    # round robin would send 30 there; least_request stops once it holds calls
    assert by_port[slow] < 15, by_port


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"choiceCount": 1}, "choiceCount"),
        ({"choiceCount": "2"}, "choiceCount"),
        ({"choiceCunt": 2}, "choiceCunt"),
        ({"slowStartConfig": {"slowStartWindow": 5}}, "slowStartWindow"),
        ({"slowStartConfig": {"aggression": 0, "slowStartWindow": "5s"}}, "aggression"),
    ],
)
def test_config_errors_name_the_field(config: dict[str, object], field: str) -> None:
    with pytest.raises(ServiceConfigError, match=field):
        aio.insecure_channel(
            "static:///127.0.0.1:1",
            service_config={"loadBalancingConfig": [{"least_request": config}]},
        )


def test_choice_count_above_ten_is_capped() -> None:
    ch = aio.insecure_channel(
        "static:///127.0.0.1:1",
        service_config={"loadBalancingConfig": [{"least_request": {"choiceCount": 50}}]},
    )
    assert ch._policy.choice_count == 10  # type: ignore[union-attr]


def test_slow_start_factor_limits_a_warming_backends_share() -> None:
    subs = fake_subchannels(5)
    picker = LeastRequestPicker(subs, 2, random.Random(5), factors=[1, 1, 1, 0.01, 0.01])
    picked = [picker.pick(PickInfo("/m")) for _ in range(5000)]
    cold = sum(sc in subs[3:] for sc in picked)
    assert 0 < cold < 100  # ~1% of a fair share each, not the 40% plain P2C gives them


def test_ties_are_broken_at_random_when_every_backend_is_sampled() -> None:
    subs = fake_subchannels(3)
    picker = LeastRequestPicker(subs, 3, random.Random(4))
    picked = Counter(picker.pick(PickInfo("/m")) for _ in range(300))
    assert set(picked) == set(subs) and min(picked.values()) >= 60, picked


async def test_choice_count_covering_the_fleet_still_spreads_sequential_calls(
    fleet3: GreeterFleet,
) -> None:
    config = {"loadBalancingConfig": [{"least_request": {"choiceCount": 3}}]}
    async with aio.insecure_channel(fleet3.target(), service_config=config) as ch:
        assert await ch.wait_for_settled(10)
        by_port = counts(await say_hello_ports(ch, 300))
    assert set(by_port) == set(fleet3.ports)
    assert min(by_port.values()) >= 60, by_port  # each of 3 gets at least 20 %


def test_slow_start_ties_are_broken_at_random() -> None:
    subs = fake_subchannels(3)
    picker = LeastRequestPicker(subs, 3, random.Random(5), factors=[1.0, 1.0, 1.0])
    picked = Counter(picker.pick(PickInfo("/m")) for _ in range(300))
    assert set(picked) == set(subs) and min(picked.values()) >= 60, picked
