from __future__ import annotations

import asyncio
import json

import grpc
import grpc.aio
import pytest

from grpc_balancer import aio
from grpc_balancer._orca import OrcaLoadReport, report_from_trailers, weight_from_report
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.demo.servicer import Faults
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.policies.weighted_round_robin import BackendWeight
from grpc_balancer.testing import GreeterFleet, ServerProcess, manual_resolver
from tests.channels import open_channel
from tests.helpers import counts, eventually, say_hello_ports
from tests.policy_helpers import burst

FAST_WEIGHTS = {"blackoutPeriod": "0s", "weightUpdatePeriod": "0.1s"}


def _config(**fields: object) -> dict[str, object]:
    return {"loadBalancingConfig": [{"weighted_round_robin": {**FAST_WEIGHTS, **fields}}]}


def test_a58_weight_formula() -> None:
    report = OrcaLoadReport(rps_fractional=100, cpu_utilization=0.5, eps=10)
    assert weight_from_report(report, 1.0) == pytest.approx(100 / (0.5 + 0.1))
    assert weight_from_report(report, 0.0) == pytest.approx(200)
    report.application_utilization = 0.25  # wins over CPU
    assert weight_from_report(report, 0.0) == pytest.approx(400)
    assert weight_from_report(OrcaLoadReport(rps_fractional=5), 1.0) is None
    assert weight_from_report(OrcaLoadReport(cpu_utilization=0.5), 1.0) is None


def test_blackout_and_expiration() -> None:
    weight = BackendWeight()
    assert weight.current(0.0, 10.0, 180.0) is None
    weight.update(50.0, 100.0)
    assert weight.current(105.0, 10.0, 180.0) is None  # still in blackout
    assert weight.current(111.0, 10.0, 180.0) == 50.0
    weight.update(60.0, 200.0)
    assert weight.current(379.0, 10.0, 180.0) == 60.0
    assert weight.current(381.0, 10.0, 180.0) is None  # no report for 180 s: expired
    weight.update(70.0, 400.0)
    assert weight.current(405.0, 10.0, 180.0) is None  # reports resumed: a new blackout


async def test_server_helper_trailer_parses() -> None:
    async with (
        GreeterFleet(1, [Faults(max_concurrency=4)], orca=True) as fleet,
        grpc.aio.insecure_channel(fleet.addresses[0]) as ch,
    ):
        stub = greeter_pb2_grpc.GreeterStub(ch)
        for _ in range(5):
            call = stub.SayHello(greeter_pb2.HelloRequest(name="o"), timeout=5)
            await call
        report = report_from_trailers(await call.trailing_metadata())
    assert report is not None
    assert report.rps_fractional > 0
    assert report.application_utilization > 0
    assert weight_from_report(report, 1.0) is not None


async def test_discovery_weights() -> None:
    async with GreeterFleet(3) as fleet:
        endpoints = [Endpoint(a, weight=w) for a, w in zip(fleet.addresses, (1, 1, 4), strict=True)]
        resolver = manual_resolver(endpoints)
        async with aio.insecure_channel(resolver.target, service_config=_config()) as ch:
            assert await ch.wait_for_settled(10)
            by_port = counts(await say_hello_ports(ch, 300))
    heavy, light = fleet.ports[2], fleet.ports[:2]
    assert 170 <= by_port[heavy] <= 230, by_port  # 4/6 of the calls
    assert all(35 <= by_port[p] <= 65 for p in light), by_port


async def test_orca_reports_shift_traffic_to_capacity() -> None:
    faults = [Faults(delay_ms=20, max_concurrency=1), Faults(delay_ms=20, max_concurrency=4)]
    async with (
        GreeterFleet(2, faults, orca=True) as fleet,
        aio.insecure_channel(fleet.target(), service_config=_config()) as ch,
    ):
        assert await ch.wait_for_settled(10)
        policy = ch._policy
        await burst(ch, 150, gap_s=0.004)  # learn: round robin overloads the 1-slot one
        await eventually(lambda: all(w.value > 0 for w in policy.weights.values()))
        by_port, errors = await burst(ch, 200, gap_s=0.004)
    assert not errors
    small, big = fleet.ports
    assert by_port[big] > 1.5 * by_port[small], by_port


async def test_out_of_band_reports() -> None:
    faults = [Faults(delay_ms=2, max_concurrency=2)] * 2
    config = _config(enableOobLoadReport=True, oobReportingPeriod="1s")
    async with (
        GreeterFleet(2, faults, orca=True) as fleet,
        aio.insecure_channel(fleet.target(), service_config=config) as ch,
    ):
        assert await ch.wait_for_settled(10)
        assert all(not sc.trailer_observers for sc in ch.subchannels)
        policy = ch._policy
        for _ in range(20):  # bounded: reports come every second
            await burst(ch, 20)
            if all(w.non_empty_since is not None for w in policy.weights.values()):
                break
        assert all(w.non_empty_since is not None for w in policy.weights.values())


async def test_grpcio_native_weighted_round_robin_follows_our_reports() -> None:
    faults = [Faults(delay_ms=20, max_concurrency=1), Faults(delay_ms=20, max_concurrency=4)]
    async with GreeterFleet(2, faults, orca=True) as fleet:
        service_config = json.dumps(_config())
        target = "ipv4:" + ",".join(fleet.addresses)
        async with grpc.aio.insecure_channel(
            target, options=[("grpc.service_config", service_config)]
        ) as ch:
            await burst(ch, 150, gap_s=0.004)
            by_port, errors = await burst(ch, 200, gap_s=0.004)
    assert not errors
    small, big = fleet.ports
    assert by_port[big] > 1.5 * by_port[small], by_port


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"blackoutPeriod": 10}, "blackoutPeriod"),
        ({"weightExpirationPeriod": "x"}, "weightExpirationPeriod"),
        ({"enableOobLoadReport": "yes"}, "enableOobLoadReport"),
        ({"errorUtilizationPenalty": -1}, "errorUtilizationPenalty"),
        ({"weightUpdate": "1s"}, "weightUpdate"),
    ],
)
def test_config_errors_name_the_field(fields: dict[str, object], field: str) -> None:
    with pytest.raises(ServiceConfigError, match=field):
        aio.insecure_channel(
            "static:///127.0.0.1:1",
            service_config={"loadBalancingConfig": [{"weighted_round_robin": fields}]},
        )


async def test_serve_orca_flag_sends_reports() -> None:
    server = ServerProcess(args=["--orca", "--max-concurrency", "2"])
    try:
        await asyncio.to_thread(server.start)
        async with grpc.aio.insecure_channel(server.address) as ch:
            call = greeter_pb2_grpc.GreeterStub(ch).SayHello(
                greeter_pb2.HelloRequest(name="o"), timeout=5
            )
            await call
            report = report_from_trailers(await call.trailing_metadata())
    finally:
        server.kill()
    assert report is not None
    assert report.rps_fractional > 0


async def test_sync_channel_reads_per_call_reports() -> None:
    faults = [Faults(delay_ms=2, max_concurrency=2)] * 2
    async with (
        GreeterFleet(2, faults, orca=True) as fleet,
        open_channel("sync", fleet.target(), service_config=_config()) as ch,
    ):
        assert await ch.wait_for_settled(10)
        ports = await say_hello_ports(ch, 20)
        policy = ch.channel._core._policy
        await eventually(lambda: all(w.value > 0 for w in policy.weights.values()))
    assert set(ports) == set(fleet.ports)
