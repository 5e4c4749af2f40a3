"""One TCP connection per endpoint, as grpcio: counted with the OS, for both channel
kinds, with health checking and ORCA out-of-band streams on; the sync channel watches
connectivity, probes failures and streams on the very connection its calls use."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import grpc_balancer
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.testing import ServerProcesses, free_port
from tests.channels import open_channel
from tests.helpers import established_to, eventually, say_hello_ports

Req = greeter_pb2.HelloRequest
HEALTH = {"healthCheckConfig": {"serviceName": "greeter.Greeter"}}
ORCA_OOB = {
    "weighted_round_robin": {
        "enableOobLoadReport": True,
        "oobReportingPeriod": "0.2s",
        "blackoutPeriod": "0s",
        "weightUpdatePeriod": "0.1s",
    }
}


@pytest.fixture(scope="module")
def fleet() -> Iterator[ServerProcesses]:
    # Child processes: every socket in this process is a client's.
    with ServerProcesses(3, args=["--orca"]) as servers:
        yield servers


def ports_of(fleet: ServerProcesses) -> list[int]:
    return [server.port for server in fleet.servers]


def one_each(fleet: ServerProcesses) -> Counter[int]:
    return Counter(ports_of(fleet))


async def test_the_count_sees_grpcios_own_connections(fleet: ServerProcesses) -> None:
    """The reference: grpcio's round_robin over the same 3 backends holds 3."""
    config = '{"loadBalancingConfig": [{"round_robin": {}}]}'
    target = "ipv4:" + ",".join(fleet.addresses)
    with grpc.insecure_channel(target, options=[("grpc.service_config", config)]) as ch:
        stub = greeter_pb2_grpc.GreeterStub(ch)
        for _ in range(9):
            await asyncio.to_thread(stub.SayHello, Req(name="ref"), timeout=5)
        await eventually(lambda: established_to(ports_of(fleet)) == one_each(fleet))


@pytest.mark.parametrize("health", [False, True], ids=["plain", "health"])
async def test_one_connection_per_endpoint(
    channel_kind: str, health: bool, fleet: ServerProcesses
) -> None:
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if health:
        config |= HEALTH
    async with open_channel(channel_kind, fleet.target(), service_config=config) as ch:
        assert await ch.wait_for_settled(15)
        if health:
            await eventually(lambda: all(sc.health == "SERVING" for sc in ch.subchannels))
        assert set(await say_hello_ports(ch, 12)) == set(ports_of(fleet))
        # Bounded wait: the servers' own startup checks may still be closing theirs.
        await eventually(lambda: established_to(ports_of(fleet)) == one_each(fleet))
        assert set(await say_hello_ports(ch, 12)) == set(ports_of(fleet))
        assert established_to(ports_of(fleet)) == one_each(fleet)
    await eventually(lambda: not established_to(ports_of(fleet)))


async def test_each_sync_channel_has_its_own_connections(fleet: ServerProcesses) -> None:
    """The per-endpoint channels get the aio ones' options, the local subchannel pool
    among them: grpcio would otherwise share one connection between two channels."""
    targets = [fleet.target(), fleet.target()]
    async with (
        open_channel("sync", targets[0], policy="round_robin") as a,
        open_channel("sync", targets[1], policy="round_robin") as b,
    ):
        for ch in (a, b):
            assert await ch.wait_for_settled(15)
            await say_hello_ports(ch, 6)
        await eventually(
            lambda: established_to(ports_of(fleet)) == Counter({p: 2 for p in ports_of(fleet)})
        )


@pytest.mark.parametrize("health", [False, True], ids=["plain", "health"])
async def test_a_killed_backend_is_detected_and_rejoins_on_the_sync_channel(
    health: bool,
) -> None:
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if health:
        config |= HEALTH
    with ServerProcesses(3) as procs:
        ports = [server.port for server in procs.servers]
        victim = procs.servers[0]
        async with open_channel("sync", procs.target(), service_config=config) as ch:
            assert await ch.wait_for_settled(15)
            await eventually(lambda: all(sc.usable for sc in ch.subchannels))
            sc = next(sc for sc in ch.subchannels if sc.address == victim.address)
            victim.kill()
            await eventually(lambda: not sc.usable)
            # The failure probe (a sync .future() call) says why, on the same channel.
            await eventually(lambda: "refused" in sc.last_error.lower(), timeout=20)
            assert victim.port not in await say_hello_ports(ch, 10)
            victim.start()
            await eventually(lambda: sc.usable, timeout=30)
            # state changes reach the picker coalesced, a loop turn or more later
            assert await ch.wait_for_settled(10)
            if health:
                assert sc.health == "SERVING"
            assert victim.port in await say_hello_ports(ch, 10)
            await eventually(lambda: established_to(ports) == Counter(ports))


async def test_sync_channel_gets_out_of_band_orca_reports_on_its_one_connection(
    fleet: ServerProcesses,
) -> None:
    config = {"loadBalancingConfig": [ORCA_OOB]}
    async with open_channel("sync", fleet.target(), service_config=config) as ch:
        assert await ch.wait_for_settled(15)
        policy = ch.channel.core._policy
        assert all(not sc.trailer_observers for sc in ch.subchannels)  # OOB only

        async def reported() -> bool:
            await say_hello_ports(ch, 6)  # load for the servers to report on
            return all(w.non_empty_since is not None for w in policy.weights.values())

        for _ in range(100):  # bounded: reports come every 0.2 s
            if await reported():
                break
        assert all(w.non_empty_since is not None for w in policy.weights.values())
        assert established_to(ports_of(fleet)) == one_each(fleet)


def _ours(threads: set[threading.Thread]) -> list[str]:
    return sorted(t.name for t in threads if t.name.startswith("grpc_balancer"))


def test_close_leaves_no_thread_behind(fleet: ServerProcesses) -> None:
    warm = grpc_balancer.insecure_channel(f"static:///127.0.0.1:{free_port()}")
    warm.close()
    baseline = set(threading.enumerate())
    config = {"loadBalancingConfig": [ORCA_OOB], **HEALTH}
    ch = grpc_balancer.insecure_channel(fleet.target(), service_config=config)
    stub = greeter_pb2_grpc.GreeterStub(ch)
    assert ch.wait_for_settled(15)
    for _ in range(30):
        stub.SayHello(Req(name="t"), timeout=5)
    names = _ours(set(threading.enumerate()) - baseline)
    # The loop thread, and a reader thread per health and per ORCA stream.
    streams = [n for n in names if n.startswith("grpc_balancer.stream[")]
    assert len(streams) == 6, names
    assert all(sc.health == "SERVING" for sc in ch.subchannels)
    ch.close()
    assert not _ours(set(threading.enumerate()) - baseline)  # joined by close()
    # grpcio's own helper threads (connectivity poller, channel spin) end by themselves.
    for _ in range(750):  # bounded: 15 s
        if not (set(threading.enumerate()) - baseline):
            break
        time.sleep(0.02)
    assert not (set(threading.enumerate()) - baseline)
    assert not established_to(ports_of(fleet))
