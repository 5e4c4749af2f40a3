"""Active health checking (gRFC A17) and graceful drain, on real servers."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

import grpc_balancer
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.demo.servicer import Faults, GreeterServicer
from grpc_balancer.testing import GreeterFleet, ServerProcesses
from tests.channels import open_channel
from tests.helpers import eventually, say_hello_ports
from tests.load import Load

Req = greeter_pb2.HelloRequest


def health_config(service: str = "greeter.Greeter", policy: str = "round_robin") -> dict[str, Any]:
    return {"loadBalancingConfig": [{policy: {}}], "healthCheckConfig": {"serviceName": service}}


def sc_for(channel: Any, address: str) -> Any:
    return next(sc for sc in channel.subchannels if sc.address == address)


async def test_not_serving_gets_no_new_calls_after_the_update_then_rejoins(
    channel_kind: str,
) -> None:
    async with (
        GreeterFleet(3) as fleet,
        open_channel(channel_kind, fleet.target(), service_config=health_config()) as ch,
    ):
        assert await ch.wait_for_settled(10)
        await eventually(lambda: all(sc.health == "SERVING" for sc in ch.subchannels))
        victim = fleet.servers[0]
        sc = sc_for(ch, victim.address)
        load = Load(ch, total=3000, concurrency=16).start()
        await load.reached(1000)
        await victim.set_serving(False)
        await eventually(lambda: sc.health == "NOT_SERVING")
        assert victim.servicer is not None
        # calls already sent may still arrive; nothing picked from now on may
        ceiling = victim.servicer.calls + sc.in_flight
        at_update = load.done
        await load.finish()
        assert not load.errors, load.describe_errors()
        assert victim.servicer.calls <= ceiling
        assert load.done - at_update > 1000  # the rest of the load went elsewhere
        # SERVING again: it rejoins the rotation
        await victim.set_serving(True)
        await eventually(lambda: sc.health == "SERVING")
        ports = await say_hello_ports(ch, 30)
        assert victim.port in ports


async def test_pick_first_skips_a_backend_that_is_not_serving(channel_kind: str) -> None:
    async with GreeterFleet(2) as fleet:
        await fleet.servers[0].set_serving(False)
        async with open_channel(
            channel_kind, fleet.target(), service_config=health_config(policy="pick_first")
        ) as ch:
            assert set(await say_hello_ports(ch, 10)) == {fleet.ports[1]}
            await fleet.servers[0].set_serving(True)
            await fleet.servers[1].set_serving(False)
            await eventually(lambda: sc_for(ch, fleet.addresses[1]).health == "NOT_SERVING")
            assert set(await say_hello_ports(ch, 10)) == {fleet.ports[0]}


async def test_service_unknown_is_unhealthy_and_the_error_says_so(channel_kind: str) -> None:
    async with (
        GreeterFleet(2) as fleet,
        open_channel(
            channel_kind, fleet.target(), service_config=health_config("no.such.Service")
        ) as ch,
    ):
        await eventually(lambda: all(sc.health == "SERVICE_UNKNOWN" for sc in ch.subchannels))
        stub = ch.stub()
        with pytest.raises(grpc.RpcError) as info:
            await stub.SayHello(Req(name="x"), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "health check reports SERVICE_UNKNOWN" in (info.value.details() or "")


@pytest.fixture
async def server_without_health() -> AsyncIterator[str]:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    greeter_pb2_grpc.add_GreeterServicer_to_server(GreeterServicer(port), server)
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)


async def test_unimplemented_means_no_checking_with_one_warning(
    server_without_health: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with GreeterFleet(1) as fleet:
        target = f"static:///{server_without_health},{fleet.addresses[0]}"
        caplog.set_level(logging.WARNING, logger="grpc_balancer._core.health")
        async with grpc_balancer.aio.insecure_channel(target, service_config=health_config()) as ch:
            await eventually(lambda: sc_for(ch, server_without_health).health == "UNCHECKED")
            ports = await say_hello_ports(ch, 20)
            assert len(set(ports)) == 2  # the unchecked backend is used normally
    warnings = [r for r in caplog.records if "does not implement grpc.health.v1" in r.message]
    assert len(warnings) == 1 and server_without_health in warnings[0].message


class FlakyHealth(HealthServicer):  # type: ignore[misc]
    """Breaks the first ``failures`` Watch streams before answering."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.watches = 0

    async def Watch(self, request: Any, context: Any) -> None:
        self.watches += 1
        if self.watches <= self.failures:
            await context.abort(grpc.StatusCode.INTERNAL, "health service hiccup")
        await super().Watch(request, context)


async def test_a_broken_health_stream_is_retried_with_backoff() -> None:
    health = FlakyHealth(failures=3)
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    greeter_pb2_grpc.add_GreeterServicer_to_server(GreeterServicer(port), server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    await health.set("greeter.Greeter", health_pb2.HealthCheckResponse.SERVING)
    await server.start()
    try:
        async with grpc_balancer.aio.insecure_channel(
            f"static:///127.0.0.1:{port}", service_config=health_config()
        ) as ch:
            sc = ch.subchannels[0]
            assert sc.health == "UNKNOWN"  # not usable before the first answer
            await eventually(lambda: sc.health == "SERVING", timeout=20)
            assert health.watches == 4
            assert await say_hello_ports(ch, 3) == [port] * 3
    finally:
        await server.stop(0)


async def test_graceful_drain_in_flight_calls_finish_and_new_ones_go_elsewhere() -> None:
    async with GreeterFleet(3, faults=[Faults(delay_ms=200) for _ in range(3)]) as fleet:
        victim = fleet.servers[0]
        victim.drain_delay_s = 3.0  # NOT_SERVING first, then stop accepting
        victim.grace_s = 5.0
        async with grpc_balancer.aio.insecure_channel(
            fleet.target(), service_config=health_config()
        ) as ch:
            await eventually(lambda: all(sc.health == "SERVING" for sc in ch.subchannels))
            load = Load(ch, total=600, concurrency=16).start()
            await load.reached(100)
            assert victim.servicer is not None
            await eventually(lambda: victim.servicer is not None and victim.servicer.in_flight > 0)
            stopping = asyncio.get_running_loop().create_task(victim.stop())
            await load.finish()
            await stopping
        # no retry policy: every call succeeded, including those in flight on the victim
        assert not load.errors, load.describe_errors()
        assert load.by_port[victim.port] > 0


async def test_sigusr1_toggles_a_server_process_out_of_and_back_into_rotation() -> None:
    with ServerProcesses(2) as procs:
        async with grpc_balancer.aio.insecure_channel(
            procs.target(), service_config=health_config()
        ) as ch:
            await eventually(lambda: all(sc.health == "SERVING" for sc in ch.subchannels))
            victim = procs.servers[0]
            victim.signal(signal.SIGUSR1)
            await eventually(lambda: sc_for(ch, victim.address).health == "NOT_SERVING")
            assert victim.port not in await say_hello_ports(ch, 20)
            victim.signal(signal.SIGUSR1)
            await eventually(lambda: sc_for(ch, victim.address).health == "SERVING")
            assert victim.port in await say_hello_ports(ch, 20)


async def test_health_follows_a_backend_restart() -> None:
    async with (
        GreeterFleet(2) as fleet,
        grpc_balancer.aio.insecure_channel(fleet.target(), service_config=health_config()) as ch,
    ):
        await eventually(lambda: all(sc.health == "SERVING" for sc in ch.subchannels))
        await fleet.servers[0].stop(0)
        await eventually(lambda: not sc_for(ch, fleet.addresses[0]).usable)
        await fleet.restart(0)
        await eventually(lambda: sc_for(ch, fleet.addresses[0]).health == "SERVING", timeout=30)
        assert fleet.ports[0] in await say_hello_ports(ch, 10)
