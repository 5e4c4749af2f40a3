"""grpc_balancer.server.probes: RIF counting, latency binned by RIF, and the probe
service answering from them, on a real server."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest

from grpc_balancer import aio
from grpc_balancer._probe import METHOD, ProbeRequest, ProbeResponse
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.demo.servicer import Faults
from grpc_balancer.server.probes import LoadProbes, rif_bin
from grpc_balancer.testing import GreeterFleet, ServerProcess


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        return self.now


def test_bins_are_exact_for_small_rif_then_two_per_doubling() -> None:
    assert [rif_bin(r) for r in range(16)] == list(range(16))
    assert [rif_bin(r) for r in (16, 23, 24, 31, 32, 47, 48, 64)] == [
        16,
        16,
        17,
        17,
        18,
        18,
        19,
        20,
    ]
    assert rif_bin(10**9) == 63


def test_latency_is_the_median_of_calls_that_arrived_at_that_rif() -> None:
    clock = Clock()
    probes = LoadProbes(clock=clock)
    for latency in (0.010, 0.030, 0.020):  # alone on the server: RIF 1
        rif, started = probes.call_started()
        assert rif == 1
        clock.now += latency
        probes.call_finished(rif, started)
    first, s1 = probes.call_started()
    second, s2 = probes.call_started()
    assert (first, second) == (1, 2)
    clock.now += 0.5
    probes.call_finished(second, s2)
    assert probes.requests_in_flight == 1
    assert probes.latency_at(1) == pytest.approx(0.020)
    assert probes.latency_at(2) == pytest.approx(0.5)
    # no sample at 8: the nearest bin (2), scaled by the RIF (a queue is not idle-fast)
    assert probes.latency_at(8) == pytest.approx(0.5 * 8 / 2)
    # a probe now: one call in flight, so a new call would arrive at RIF 2
    assert probes.answer() == ProbeResponse(requests_in_flight=1, latency_seconds=0.5)
    probes.call_finished(first, s1)


def test_a_higher_bin_stands_in_as_it_is() -> None:
    clock = Clock()
    probes = LoadProbes(clock=clock)
    calls = [probes.call_started() for _ in range(5)]
    clock.now += 0.1
    probes.call_finished(*calls[-1])  # arrived at RIF 5
    assert probes.latency_at(3) == pytest.approx(0.1)


def test_old_samples_are_forgotten() -> None:
    clock = Clock()
    probes = LoadProbes(window_s=5.0, clock=clock)
    rif, started = probes.call_started()
    clock.now += 0.1
    probes.call_finished(rif, started)
    assert probes.latency_at(1) == pytest.approx(0.1)
    clock.now += 6.0
    assert probes.latency_at(1) == 0.0  # unknown, not last minute's answer


@pytest.mark.parametrize(
    ("kwargs", "word"), [({"window_s": 0}, "window_s"), ({"samples_per_bin": 0}, "samples")]
)
def test_bad_arguments_are_named(kwargs: dict[str, float], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        LoadProbes(**kwargs)  # type: ignore[arg-type]


async def test_a_real_server_counts_its_calls_and_answers_probes() -> None:
    async with GreeterFleet(1, [Faults(delay_ms=200)], probes=True) as fleet:
        probes = fleet.servers[0].probes
        assert probes is not None
        async with grpc.aio.insecure_channel(fleet.addresses[0]) as channel:
            probe = channel.unary_unary(
                METHOD,
                request_serializer=ProbeRequest.SerializeToString,
                response_deserializer=ProbeResponse.FromString,
            )
            idle = await probe(ProbeRequest(), timeout=5)
            assert idle.requests_in_flight == 0
            stub = greeter_pb2_grpc.GreeterStub(channel)
            calls = [
                asyncio.ensure_future(stub.SayHello(greeter_pb2.HelloRequest(), timeout=5))
                for _ in range(3)
            ]
            for _ in range(200):  # until the server has all three in flight
                if probes.requests_in_flight == 3:
                    break
                await asyncio.sleep(0.01)
            busy = await probe(ProbeRequest(), timeout=5)
            assert busy.requests_in_flight == 3  # the probe itself is not counted
            await asyncio.gather(*calls)
            after = await probe(ProbeRequest(), timeout=5)
    assert after.requests_in_flight == 0
    assert after.latency_seconds >= 0.2  # calls that arrived at RIF 1 took the delay
    assert probes.probes_answered == 3


async def test_servers_without_probes_answer_unimplemented() -> None:
    async with (
        GreeterFleet(1) as fleet,
        grpc.aio.insecure_channel(fleet.addresses[0]) as channel,
    ):
        probe = channel.unary_unary(
            METHOD,
            request_serializer=ProbeRequest.SerializeToString,
            response_deserializer=ProbeResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await probe(ProbeRequest(), timeout=5)
    assert err.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_serve_probes_flag_answers_probes_and_prequal_uses_them() -> None:
    servers = [ServerProcess(args=["--probes"]) for _ in range(2)]
    try:
        for server in servers:
            await asyncio.to_thread(server.start)
        target = "static:///" + ",".join(s.address for s in servers)
        async with aio.insecure_channel(target, policy="prequal") as channel:
            assert await channel.wait_for_settled(10)
            stub = greeter_pb2_grpc.GreeterStub(channel)
            for _ in range(20):
                await stub.SayHello(greeter_pb2.HelloRequest(name="p"), timeout=5)
            policy = channel._policy
            assert not policy.unprobed  # both answered their probes
            async with grpc.aio.insecure_channel(servers[0].address) as direct:
                probe = direct.unary_unary(
                    METHOD,
                    request_serializer=ProbeRequest.SerializeToString,
                    response_deserializer=ProbeResponse.FromString,
                )
                answer = await probe(ProbeRequest(), timeout=5)
    finally:
        for server in servers:
            server.kill()
    assert answer.requests_in_flight == 0
    assert answer.latency_seconds > 0  # it has seen calls
