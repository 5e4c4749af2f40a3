"""Outlier detection (gRFC A50 + consecutive failures): the detector with a fake clock,
config errors, and ejection under load on real servers."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from grpc_balancer._config.service_config import load_service_config
from grpc_balancer._core.outlier import OutlierDetector, parse_outlier_detection
from grpc_balancer.demo.servicer import Faults
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.subchannel import Subchannel
from grpc_balancer.testing import GreeterFleet
from tests.channels import open_channel
from tests.helpers import eventually
from tests.load import Load
from tests.test_retry import retry_config

OK = grpc.StatusCode.OK
BAD = grpc.StatusCode.UNAVAILABLE


class _Listener:
    def __init__(self) -> None:
        self.changes = 0

    def on_subchannel_state(self, subchannel: Subchannel) -> None:
        self.changes += 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(n: int, config: dict[str, Any]) -> tuple[OutlierDetector, list[Subchannel], Clock]:
    clock = Clock()
    parsed = parse_outlier_detection(config)
    assert parsed is not None
    detector = OutlierDetector(parsed, clock=clock)
    detector._timer = object()  # type: ignore[assignment]  # no event loop timer in unit tests
    subchannels = [
        Subchannel(Endpoint(f"10.0.0.{i}:1"), object(), _Listener())  # type: ignore[arg-type]
        for i in range(n)
    ]
    for sc in subchannels:
        detector.add(sc)
    return detector, subchannels, clock


def calls(sc: Subchannel, code: grpc.StatusCode, n: int) -> None:
    for _ in range(n):
        sc.call_finished(sc.call_started(), code)


def test_consecutive_failures_eject_at_the_threshold_and_success_resets() -> None:
    detector, (a, b), _ = make(
        2, {"consecutiveFailures": {"threshold": 3}, "maxEjectionPercent": 50}
    )
    calls(a, BAD, 2)
    calls(a, OK, 1)
    calls(a, BAD, 2)
    assert not a.ejected
    calls(a, BAD, 1)
    assert a.ejected and detector.ejected() == [a]
    calls(b, grpc.StatusCode.CANCELLED, 10)  # a cancelled call says nothing about b
    assert not b.ejected


def test_ejection_time_grows_with_repeated_ejections_and_decays() -> None:
    config = {
        "consecutiveFailures": {"threshold": 1},
        "baseEjectionTime": "30s",
        "maxEjectionTime": "50s",
        "interval": "10s",
        "maxEjectionPercent": 100,
    }
    detector, (a,), clock = make(1, config)
    calls(a, BAD, 1)
    assert a.ejected
    clock.now += 29
    detector.run_interval()
    assert a.ejected
    clock.now += 1
    detector.run_interval()
    assert not a.ejected
    calls(a, BAD, 1)  # second ejection: 2 x 30 s, capped at 50 s
    assert a.ejected
    clock.now += 49
    detector.run_interval()
    assert a.ejected
    clock.now += 1
    detector.run_interval()
    assert not a.ejected
    for _ in range(2):  # healthy intervals bring the multiplier back down
        detector.run_interval()
    calls(a, BAD, 1)
    clock.now += 30
    detector.run_interval()
    assert not a.ejected


def test_success_rate_ejects_the_statistical_outlier() -> None:
    config = {"successRateEjection": {"requestVolume": 100}, "maxEjectionPercent": 50}
    detector, subchannels, _ = make(5, config)
    for sc in subchannels[:4]:
        calls(sc, OK, 100)
    calls(subchannels[4], OK, 50)
    calls(subchannels[4], BAD, 50)
    detector.run_interval()
    assert detector.ejected() == [subchannels[4]]


def test_success_rate_needs_minimum_hosts_with_enough_volume() -> None:
    detector, subchannels, _ = make(5, {"successRateEjection": {}, "maxEjectionPercent": 50})
    for sc in subchannels[:4]:
        calls(sc, OK, 100)
    calls(subchannels[4], BAD, 99)  # below requestVolume: only 4 hosts qualify
    detector.run_interval()
    assert detector.ejected() == []


def test_failure_percentage_and_max_ejection_percent() -> None:
    config = {
        "failurePercentageEjection": {"minimumHosts": 3, "requestVolume": 10, "threshold": 50},
        "maxEjectionPercent": 10,
    }
    detector, (a, b, c), _ = make(3, config)
    calls(a, BAD, 10)
    calls(b, BAD, 10)
    calls(c, OK, 10)
    detector.run_interval()
    # 10% of 3 backends: the first ejection is allowed, the second is not
    assert len(detector.ejected()) == 1


def test_counts_restart_every_interval() -> None:
    config = {
        "failurePercentageEjection": {"minimumHosts": 2, "requestVolume": 10},
        "maxEjectionPercent": 50,
    }
    detector, (a, b), _ = make(2, config)
    calls(a, BAD, 6)
    calls(b, OK, 10)
    detector.run_interval()
    calls(a, BAD, 6)
    calls(b, OK, 10)
    detector.run_interval()
    assert detector.ejected() == []


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"intervall": "1s"}, r"outlierDetection: unknown field\(s\) 'intervall'"),
        ({"interval": 10}, r"outlierDetection\.interval must be a duration"),
        ({"interval": "0s"}, r"outlierDetection\.interval must be > 0s"),
        (
            {"maxEjectionPercent": 101},
            r"outlierDetection\.maxEjectionPercent must be an integer in 0\.\.100",
        ),
        (
            {"successRateEjection": {"stdevFactr": 1}},
            r"successRateEjection: unknown field\(s\) 'stdevFactr'",
        ),
        (
            {"failurePercentageEjection": {"threshold": 150}},
            r"failurePercentageEjection\.threshold must be an integer in 0\.\.100",
        ),
        (
            {"consecutiveFailures": {"threshold": 0}},
            r"consecutiveFailures\.threshold must be an integer >= 1",
        ),
        ({"consecutiveFailures": []}, r"outlierDetection\.consecutiveFailures must be an object"),
        (
            {"successRateEjection": {"requestVolume": "100"}},
            r"successRateEjection\.requestVolume must be an integer",
        ),
    ],
)
def test_config_errors_name_the_field(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ServiceConfigError, match=message):
        load_service_config({"outlierDetection": config})


async def test_failing_backend_is_ejected_and_retries_with_throttling_stay_under_1_1x(
    channel_kind: str,
) -> None:
    config = retry_config(throttling={"maxTokens": 100, "tokenRatio": 0.1})
    config["outlierDetection"] = {
        "interval": "1s",
        "baseEjectionTime": "30s",
        "consecutiveFailures": {"threshold": 5},
        "failurePercentageEjection": {"minimumHosts": 3, "requestVolume": 20},
    }
    faults = [Faults(fail_rate=1.0), Faults(), Faults()]
    async with (
        GreeterFleet(3, faults=faults) as fleet,
        open_channel(channel_kind, fleet.target(), service_config=config) as ch,
    ):
        events: list[str] = []
        ch.observers.append(lambda event, sc, code: events.append(event))
        assert await ch.wait_for_settled(10)
        load = await Load(ch, total=2000, concurrency=16).start().finish()
        bad = next(sc for sc in ch.subchannels if sc.address == fleet.addresses[0])
        assert bad.ejected and "ejected" in events
    assert not load.errors, load.describe_errors()
    attempts = sum(s.servicer.calls for s in fleet.servers if s.servicer)
    assert attempts <= 1.1 * load.total, attempts
    assert fleet.servers[0].port not in load.by_port


async def test_ejected_backend_returns_after_its_ejection_time(channel_kind: str) -> None:
    config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "outlierDetection": {
            "interval": "0.1s",
            "baseEjectionTime": "0.5s",
            "consecutiveFailures": {"threshold": 3},
        },
    }
    async with (
        GreeterFleet(3, faults=[Faults(fail_rate=1.0), Faults(), Faults()]) as fleet,
        open_channel(channel_kind, fleet.target(), service_config=config) as ch,
    ):
        assert await ch.wait_for_settled(10)
        await Load(ch, total=60, concurrency=4).start().finish()
        bad = next(sc for sc in ch.subchannels if sc.address == fleet.addresses[0])
        assert bad.ejected
        fleet.servers[0].faults.fail_rate = 0.0
        await eventually(lambda: not bad.ejected)
        load = await Load(ch, total=60, concurrency=4).start().finish()
        assert fleet.servers[0].port in load.by_port and not load.errors
