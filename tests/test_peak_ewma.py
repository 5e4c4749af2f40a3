from __future__ import annotations

import random

import grpc
import pytest

from grpc_balancer import aio
from grpc_balancer._core.load import LatencyEstimate
from grpc_balancer.demo.servicer import Faults
from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.picker import PickInfo
from grpc_balancer.policies.peak_ewma import PeakEwmaPicker
from grpc_balancer.testing import GreeterFleet
from tests.channels import open_channel
from tests.helpers import counts, say_hello_ports
from tests.policy_helpers import burst, fake_subchannels


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_estimate_is_peak_sensitive_and_decays() -> None:
    est = LatencyEstimate(decay_s=10.0, penalty_s=1.0)
    est.observe(0.010, 0.0)
    est.observe(0.100, 1.0)
    assert est.value_s == 0.100  # a slower sample replaces the average at once
    est.observe(0.010, 2.0)
    assert 0.010 < est.value_s < 0.100  # a faster one only pulls it down
    assert est.at(50.0) < est.at(3.0)  # not picked: decays, so it is tried again later


def test_failures_count_as_slow_and_cancellations_not_at_all() -> None:
    est = LatencyEstimate(decay_s=10.0, penalty_s=1.0)
    est.on_call(0.001, grpc.StatusCode.OK, 0.0)
    est.on_call(0.001, grpc.StatusCode.CANCELLED, 0.1)
    assert est.samples == 1
    est.on_call(0.001, grpc.StatusCode.UNAVAILABLE, 0.2)
    assert est.value_s == 1.0


def _picker(n: int, values: list[float | None], clock: Clock) -> tuple[PeakEwmaPicker, list]:
    subs = fake_subchannels(n)
    estimates = []
    for value in values:
        est = LatencyEstimate(10.0, 1.0)
        if value is not None:
            est.observe(value, clock.now)
            est.observe(value, clock.now)
        estimates.append(est)
    return PeakEwmaPicker(subs, estimates, 2, random.Random(4), clock), subs


def test_cost_is_latency_times_in_flight_plus_one() -> None:
    clock = Clock()
    picker, subs = _picker(2, [0.010, 0.030], clock)
    assert picker.pick(PickInfo("/m")) is subs[0]
    subs[0].in_flight = 3  # 10 ms x 4 > 30 ms x 1
    assert picker.pick(PickInfo("/m")) is subs[1]


def test_unknown_backend_is_probed_one_call_at_a_time() -> None:
    clock = Clock()
    picker, subs = _picker(2, [0.010, None], clock)
    assert picker.pick(PickInfo("/m")) is subs[1]  # the probe
    subs[1].in_flight = 1
    assert picker.pick(PickInfo("/m")) is subs[0]  # no second call before it answers
    subs[0].in_flight = 50
    assert picker.pick(PickInfo("/m")) is subs[0]


async def test_slow_backend_gets_few_calls(channel_kind: str) -> None:
    faults = [Faults(delay_ms=60), Faults(delay_ms=2), Faults(delay_ms=2)]
    async with (
        GreeterFleet(3, faults) as fleet,
        open_channel(channel_kind, fleet.target(), policy="peak_ewma") as ch,
    ):
        assert await ch.wait_for_settled(10)
        by_port = counts(await say_hello_ports(ch, 150))
    assert by_port[fleet.ports[0]] < 15, by_port  # round robin: 50


async def test_fast_failing_backend_does_not_attract_traffic() -> None:
    faults = [
        Faults(fail_rate=1.0, fail_code=grpc.StatusCode.INTERNAL),
        Faults(delay_ms=3),
        Faults(delay_ms=3),
    ]
    async with (
        GreeterFleet(3, faults) as fleet,
        aio.insecure_channel(fleet.target(), policy="peak_ewma") as ch,
    ):
        assert await ch.wait_for_settled(10)
        by_port, errors = await burst(ch, 150, gap_s=0.003)
    assert sum(by_port.values()) + len(errors) == 150
    assert len(errors) < 10, errors[:3]  # round robin: 50 (each call there fails)


async def test_in_flight_pile_up_moves_calls_away() -> None:
    faults = [Faults(delay_ms=5), Faults(delay_ms=5)]
    async with (
        GreeterFleet(2, faults) as fleet,
        aio.insecure_channel(fleet.target(), policy="peak_ewma") as ch,
    ):
        assert await ch.wait_for_settled(10)
        await say_hello_ports(ch, 20)  # both measured at ~5 ms
        fleet.servers[0].faults.delay_ms = 1000  # a stall: no sample comes back for 1 s
        by_port, errors = await burst(ch, 60, gap_s=0.005)
    assert not errors
    assert by_port[fleet.ports[0]] < 10, by_port


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"decayTime": 10}, "decayTime"),
        ({"decayTime": "0s"}, "decayTime"),
        ({"failurePenalty": "x"}, "failurePenalty"),
        ({"choiceCount": 0}, "choiceCount"),
        ({"decay": "1s"}, "decay"),
    ],
)
def test_config_errors_name_the_field(config: dict[str, object], field: str) -> None:
    with pytest.raises(ServiceConfigError, match=field):
        aio.insecure_channel(
            "static:///127.0.0.1:1", service_config={"loadBalancingConfig": [{"peak_ewma": config}]}
        )


async def test_one_latency_estimate_per_backend_is_what_the_policy_and_status_read() -> None:
    from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc

    config = {"loadBalancingConfig": [{"peak_ewma": {"decayTime": "3s"}}]}
    async with (
        GreeterFleet(2) as fleet,
        aio.insecure_channel(fleet.target(), service_config=config) as ch,
    ):
        assert await ch.wait_for_settled(10)
        stub = greeter_pb2_grpc.GreeterStub(ch)
        for _ in range(6):
            await stub.SayHello(greeter_pb2.HelloRequest(name="x"), timeout=10)
        for sc in ch.subchannels:
            assert sc.latency.decay_s == 3.0  # the policy tuned the backend's own estimate
        status = {b.address: b for b in ch.status().subchannels}
        for sc in ch.subchannels:
            if sc.latency.samples:
                assert status[sc.address].latency_ms == sc.latency.value_s * 1000.0
