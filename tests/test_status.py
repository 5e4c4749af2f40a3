"""channel.status(): a plain snapshot that follows real backends (one SIGKILLed)."""

from __future__ import annotations

import json
import time

import pytest

import grpc_balancer
from grpc_balancer._core.status import ERROR, RESOLVED, RESOLVING, format_status
from grpc_balancer.testing import GreeterFleet, ServerProcesses, free_port, manual_resolver
from tests.helpers import eventually, say_hello_ports


async def test_status_reflects_a_killed_backend() -> None:
    with ServerProcesses(2) as fleet:
        victim, survivor = fleet.servers
        async with grpc_balancer.aio.insecure_channel(fleet.target(), policy="round_robin") as ch:
            assert await ch.wait_for_settled(10)
            await say_hello_ports(ch, 4)
            status = ch.status()
            assert status.target == fleet.target()
            assert status.policy == "round_robin"
            assert status.state == "READY"
            assert status.resolver_state == RESOLVED and status.resolver_error is None
            assert [s.address for s in status.subchannels] == fleet.addresses  # target order
            for sc in status.subchannels:
                assert (sc.connectivity, sc.health, sc.ejected, sc.usable) == (
                    "READY",
                    "UNCHECKED",
                    False,
                    True,
                )
                assert sc.calls_started == 2 and sc.in_flight == 0 and sc.calls_failed == 0
                assert sc.latency_ms is not None and sc.latency_ms > 0
                assert sc.weight == 1.0

            victim.kill()
            await eventually(lambda: not ch.status().subchannel(victim.address).usable)
            await eventually(lambda: ch.status().subchannel(victim.address).last_error != "")
            dead = ch.status().subchannel(victim.address)
            assert dead.connectivity in ("TRANSIENT_FAILURE", "IDLE", "CONNECTING")
            assert ch.status().subchannel(survivor.address).usable
            assert ch.status().state == "READY"

            text = format_status(ch.status())
            assert victim.address in text and survivor.address in text
            assert dead.last_error in text
            # plain data: JSON-serialisable as is
            assert json.loads(json.dumps(ch.status().as_dict()))["target"] == fleet.target()


async def test_resolver_states_and_errors(fleet3: GreeterFleet) -> None:
    resolver = manual_resolver()
    async with grpc_balancer.aio.insecure_channel(resolver.target) as ch:
        ch.get_state(try_to_connect=True)
        assert ch.status().resolver_state == RESOLVING
        assert ch.status().subchannels == ()
        assert "(no backends)" in format_status(ch.status())
        resolver.update(fleet3.addresses[:1])
        await eventually(lambda: ch.status().state == "READY")
        assert ch.status().resolver_state == RESOLVED
        resolver.fail("lookup timed out")
        status = ch.status()
        assert status.resolver_state == ERROR
        assert status.resolver_error == "lookup timed out"
        assert [s.address for s in status.subchannels] == fleet3.addresses[:1]  # kept
        assert "lookup timed out" in format_status(status)


async def test_unknown_subchannel_lookup_names_what_exists() -> None:
    target = f"static:///127.0.0.1:{free_port()}"
    async with grpc_balancer.aio.insecure_channel(target) as ch:
        ch.get_state(try_to_connect=True)
        with pytest.raises(KeyError, match="have:"):
            ch.status().subchannel("10.0.0.1:1")


def test_sync_channel_status_and_backend_series() -> None:
    from prometheus_client import CollectorRegistry

    from grpc_balancer import metrics
    from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc

    registry = CollectorRegistry()
    metrics.enable(registry)
    try:
        with (
            ServerProcesses(2) as fleet,
            grpc_balancer.insecure_channel(fleet.target(), policy="round_robin") as ch,
        ):
            assert ch.wait_for_settled(10)
            stub = greeter_pb2_grpc.GreeterStub(ch)
            for _ in range(6):
                stub.SayHello(greeter_pb2.HelloRequest(name="sync"), timeout=10)
            status = ch.status()
            assert status.target == fleet.target() and status.state == "READY"
            assert [s.address for s in status.subchannels] == fleet.addresses  # target order
            assert sum(s.calls_started for s in status.subchannels) == 6

            def attempts() -> float:
                return sum(
                    registry.get_sample_value(
                        "grpc_client_attempt_duration_seconds_count",
                        {
                            "grpc_target": fleet.target(),
                            "grpc_lb_backend": a,
                            "grpc_status": "OK",
                        },
                    )
                    or 0
                    for a in fleet.addresses
                )

            deadline = time.monotonic() + 10  # observers run on the loop thread
            while attempts() != 6 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert attempts() == 6
    finally:
        metrics.disable()


@pytest.mark.parametrize("policy", ["round_robin", "weighted_round_robin"])
async def test_status_shows_the_weights_in_use(fleet3: GreeterFleet, policy: str) -> None:
    from grpc_balancer.endpoint import Endpoint

    weights = (1, 3, 0)
    resolver = manual_resolver(
        [Endpoint(a, weight=w) for a, w in zip(fleet3.addresses, weights, strict=True)]
    )
    async with grpc_balancer.aio.insecure_channel(resolver.target, policy=policy) as ch:
        assert await ch.wait_for_settled(10)
        got = {s.address: s.weight for s in ch.status().subchannels}
    expected = dict(zip(fleet3.addresses, map(float, weights), strict=True))
    if policy == "weighted_round_robin":
        expected[fleet3.addresses[2]] = 1e-9  # "rarely", as the policy uses it
    assert got == expected


async def test_status_and_live_rows_follow_the_target_order(fleet3: GreeterFleet) -> None:
    from grpc_balancer.cli.live import CallStats, rows

    order = sorted(fleet3.addresses, reverse=True)
    order = [*order[1:], order[0]]  # neither sorted nor reverse-sorted
    async with grpc_balancer.aio.insecure_channel(
        "static:///" + ",".join(order), policy="round_robin"
    ) as ch:
        assert await ch.wait_for_settled(10)
        assert [s.address for s in ch.status().subchannels] == order
        assert [sc.address for sc in ch.subchannels] == order
        assert [row.backend for row in rows(ch, CallStats())] == order


def test_status_table_columns_stay_aligned() -> None:
    from grpc_balancer._core.status import ChannelStatus, SubchannelStatus

    def backend(address: str, weight: float, latency: float | None) -> SubchannelStatus:
        return SubchannelStatus(
            address, "READY", "SERVING", False, True, 3, 120, 1, latency, weight, ""
        )

    status = ChannelStatus(
        "static:///x",
        "READY",
        "weighted_round_robin",
        RESOLVED,
        None,
        (
            backend("127.0.0.1:50051", 1.0, 1.25),
            backend("[2001:db8:1234:5678::abcd]:50052", 0.000123456, None),
            backend("h:1", 65535.0, 12345.678),
            backend("h:2", 1234.5678, 0.5),
        ),
    )
    header, *rows = format_status(status).splitlines()[2:]
    end = header.index("  last error")
    for row in rows:
        assert row[end : end + 2] == "  " and row[end - 1] != " ", (header, row)
        float(row[:end].split()[-1])  # the weight ends exactly under the header
    assert len({row.index(" READY") for row in rows}) == 1  # backend column: one width
