"""Chaos under steady load, with backends in child processes: SIGKILL, restart, and a
health flip by signal. 3 backends, 16 concurrent callers, a few thousand calls."""

from __future__ import annotations

import signal
from typing import Any

import grpc
import grpc.aio
import pytest

import grpc_balancer
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.testing import ServerProcesses
from tests.helpers import eventually, say_hello_ports
from tests.load import Load
from tests.test_retry import retry_config


def sc_for(channel: Any, address: str) -> Any:
    return next(sc for sc in channel.subchannels if sc.address == address)


async def test_sigkill_midway_loses_no_call_and_the_restarted_backend_rejoins() -> None:
    with ServerProcesses(3) as procs:
        async with grpc_balancer.aio.insecure_channel(
            procs.target(), service_config=retry_config()
        ) as ch:
            assert await ch.wait_for_settled(15)
            victim = procs.servers[0]
            load = Load(ch, total=3000, concurrency=16).start()
            await load.reached(1000)
            victim.kill()
            before = load.by_port[victim.port]
            await load.reached(2000)
            await eventually(lambda: not sc_for(ch, victim.address).usable)
            victim.start(wait=False)  # same port
            await victim.await_serving()
            await load.finish()
            assert not load.errors, f"{len(load.errors)} failed: {load.describe_errors()}"
            assert before > 0
            # back in the rotation once reconnected
            await eventually(lambda: sc_for(ch, victim.address).usable, timeout=30)
            assert victim.port in await say_hello_ports(ch, 30)


async def test_sigkill_without_a_retry_policy_shows_failures() -> None:
    """The control for the test above: the failures are real, the retry policy hides them."""
    with ServerProcesses(3, args=["--delay-ms", "20"]) as procs:
        async with grpc_balancer.aio.insecure_channel(procs.target(), policy="round_robin") as ch:
            assert await ch.wait_for_settled(15)
            load = Load(ch, total=600, concurrency=16).start()
            await load.reached(200)
            procs.servers[0].kill()
            await load.finish()
            assert load.errors  # in-flight calls on the killed backend failed
            assert all(e.code().name == "UNAVAILABLE" for e in load.errors)


async def test_health_flip_under_load_stops_new_calls_after_the_update() -> None:
    config = retry_config()
    config["healthCheckConfig"] = {"serviceName": "greeter.Greeter"}
    with ServerProcesses(3) as procs:
        async with grpc_balancer.aio.insecure_channel(procs.target(), service_config=config) as ch:
            await eventually(lambda: all(sc.health == "SERVING" for sc in ch.subchannels))
            victim = procs.servers[0]
            sc = sc_for(ch, victim.address)
            load = Load(ch, total=2000, concurrency=16).start()
            await load.reached(600)
            victim.signal(signal.SIGUSR1)
            await eventually(lambda: sc.health == "NOT_SERVING")
            ceiling = load.by_port[victim.port] + sc.in_flight
            await load.finish()
            assert not load.errors, load.describe_errors()
            assert load.by_port[victim.port] <= ceiling
            assert load.done - 600 > 1000


async def test_serve_fault_flags_fail_with_the_given_code_and_delay() -> None:
    args = ["--fail-rate", "1", "--fail-code", "resource_exhausted", "--delay-ms", "30",
            "--delay-dist", "lognormal"]  # fmt: skip
    with ServerProcesses(1, args=args) as procs:
        async with grpc_balancer.aio.insecure_channel(procs.target()) as ch:
            stub = greeter_pb2_grpc.GreeterStub(ch)
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.SayHello(greeter_pb2.HelloRequest(name="f"), timeout=10)
                assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "injected failure" in (info.value.details() or "")
