"""A resolver's service config (what xDS gives) applied by a running channel, both kinds:
policy switched without dropping calls, method config re-read by existing stubs, limits
and precedence, and a config the channel cannot load refused with the old one kept."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from grpc_balancer.demo.servicer import Faults
from grpc_balancer.testing import GreeterFleet, manual_resolver
from tests.channels import Req, open_channel
from tests.etcd_helpers import until


async def test_a_policy_from_the_resolver_is_switched_to_without_dropping_calls(
    channel_kind: str, fleet3: GreeterFleet
) -> None:
    resolver = manual_resolver(fleet3.addresses)
    async with open_channel(channel_kind, resolver.target) as ch:
        assert ch.config.policy == "pick_first"
        assert len(set(await ch.say_hello_ports(10))) == 1
        stub = ch.stub()
        errors: list[str] = []
        ports: list[int] = []
        stop = asyncio.Event()

        async def load() -> None:
            for _ in range(5000):  # bounded
                if stop.is_set():
                    return
                try:
                    reply = await stub.SayHello(Req(name="x"), timeout=5)
                except grpc.RpcError as exc:
                    errors.append(str(exc))
                else:
                    ports.append(int(reply.message.rsplit(":", 1)[1].rstrip(")")))

        task = asyncio.get_running_loop().create_task(load())
        try:
            await until(lambda: len(ports) > 20)
            await asyncio.to_thread(
                resolver.set_service_config, {"loadBalancingConfig": [{"round_robin": {}}]}
            )
            assert ch.config.policy == "round_robin"
            mark = len(ports)
            await until(lambda: set(ports[mark:]) == set(fleet3.ports), timeout=20)
        finally:
            stop.set()
            await task
        assert errors == []
        core = ch.channel.core if channel_kind == "sync" else ch.channel
        assert core._switch.switches == 1 and not core._switch.switching


async def test_an_existing_stub_takes_the_new_method_config(channel_kind: str) -> None:
    async with GreeterFleet(1, [Faults(delay_ms=300)]) as fleet:
        resolver = manual_resolver(fleet.addresses)
        async with open_channel(channel_kind, resolver.target, policy="round_robin") as ch:
            stub = ch.stub()
            await stub.SayHello(Req(name="x"), timeout=10)  # no timeout of its own: works
            await asyncio.to_thread(
                resolver.set_service_config,
                {"methodConfig": [{"name": [{"service": "greeter.Greeter"}], "timeout": "0.01s"}]},
            )
            with pytest.raises(grpc.RpcError) as info:
                await stub.SayHello(Req(name="x"), timeout=10)
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]


async def test_limits_and_the_user_s_own_keys(channel_kind: str, fleet3: GreeterFleet) -> None:
    resolver = manual_resolver(fleet3.addresses)
    mine = {"circuitBreakers": {"maxRequests": 7}}
    async with open_channel(
        channel_kind, resolver.target, policy="pick_first", service_config=mine
    ) as ch:
        await asyncio.to_thread(
            resolver.set_service_config,
            {"loadBalancingConfig": [{"round_robin": {}}], "circuitBreakers": {"maxRequests": 50},
             "outlierDetection": {"interval": "1s"}},
            ["cds greeter: lrs_server is not applied"],
        )  # fmt: skip
        assert ch.config.policy == "pick_first"  # the user's policy= wins
        assert ch.config.max_requests_per_backend == 7  # so do the user's keys
        assert ch.config.outlier is not None  # the rest is the resolver's
        notes = ch.status().config_notes
        assert "cds greeter: lrs_server is not applied" in notes
        assert any("policy='pick_first' given to the channel wins" in n for n in notes)
        assert len(set(await ch.say_hello_ports(10))) == 1


async def test_a_config_the_channel_cannot_load_is_refused_and_the_old_one_kept(
    channel_kind: str, fleet3: GreeterFleet
) -> None:
    resolver = manual_resolver(fleet3.addresses)
    async with open_channel(channel_kind, resolver.target) as ch:
        good = {"loadBalancingConfig": [{"round_robin": {}}]}
        await asyncio.to_thread(resolver.set_service_config, good)
        bad = {"loadBalancingConfig": [{"round_robin": {"noSuchField": 1}}]}
        await asyncio.to_thread(resolver.set_service_config, bad)
        status = ch.status()
        assert status.config_error is not None and "noSuchField" in status.config_error
        assert ch.config.policy == "round_robin"
        assert set(await ch.say_hello_ports(12)) == set(fleet3.ports)
        await asyncio.to_thread(resolver.set_service_config, good)
        assert ch.status().config_error is None
