"""The balanced channels end to end on real servers: call kinds, failures, deadlines,
close. Behaviour tests take ``channel_kind`` and run against both the asyncio and the
sync channel (tests/channels.py); tests of the asyncio call-object API are aio-only."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import grpc
import grpc.aio
import pytest

import grpc_balancer
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.testing import (
    GreeterFleet,
    ServerProcess,
    ServerProcesses,
    free_port,
    manual_resolver,
)
from tests.channels import open_channel
from tests.helpers import counts, eventually, port_of, say_hello_ports

Req = greeter_pb2.HelloRequest


async def test_all_four_call_kinds_through_a_generated_stub(
    channel_kind: str, fleet3: GreeterFleet
) -> None:
    async with open_channel(channel_kind, fleet3.target(), policy="round_robin") as ch:
        assert isinstance(ch.channel, grpc.aio.Channel if channel_kind == "aio" else grpc.Channel)
        stub = ch.stub()
        reply = await stub.SayHello(Req(name="unary"))
        assert reply.message.startswith("Hello unary (from :")

        stream = [r.message for r in await stub.SayHelloStream(Req(name="s", count=3))]
        assert len(stream) == 3 and [m[-2:] for m in stream] == ["#1", "#2", "#3"]

        many = await stub.SayHelloToMany([Req(name="a"), Req(name="b")])
        assert many.message.startswith("Hello a, b (from :")

        chat = await stub.Chat([Req(name="x"), Req(name="y")])
        assert [m.message.split(" (")[0] for m in chat] == ["Hello x", "Hello y"]
        assert port_of(chat[0].message) == port_of(chat[1].message)


async def test_stream_stream_write_read_api(fleet3: GreeterFleet) -> None:
    async with grpc_balancer.aio.insecure_channel(fleet3.target(), policy="round_robin") as ch:
        chat = greeter_pb2_grpc.GreeterStub(ch).Chat()
        await chat.write(Req(name="x"))
        first = await chat.read()
        await chat.write(Req(name="y"))
        second = await chat.read()
        await chat.done_writing()
        assert port_of(first.message) == port_of(second.message)
        assert await chat.code() is grpc.StatusCode.OK


async def test_call_object_api(fleet3: GreeterFleet) -> None:
    async with grpc_balancer.aio.insecure_channel(fleet3.target(), policy="round_robin") as ch:
        stub = greeter_pb2_grpc.GreeterStub(ch)
        call = stub.SayHello(Req(name="m"), timeout=5)
        reply = await call
        assert await call.code() is grpc.StatusCode.OK
        assert call.done() and not call.cancelled()
        assert call.peer_address is not None
        assert reply.message.endswith(f"(from :{call.peer_address.rsplit(':', 1)[1]})")
        assert isinstance(await call.trailing_metadata(), grpc.aio.Metadata)


async def test_server_stream_stays_on_one_backend(channel_kind: str, fleet3: GreeterFleet) -> None:
    async with open_channel(channel_kind, fleet3.target(), policy="round_robin") as ch:
        await ch.wait_for_settled(10)
        stub = ch.stub()
        seen_streams = []
        for _ in range(6):
            ports = {port_of(r.message) for r in await stub.SayHelloStream(Req(name="s", count=5))}
            assert len(ports) == 1
            seen_streams.append(ports.pop())
        # ... while successive streams are balanced.
        assert set(seen_streams) == set(fleet3.ports)


async def test_all_backends_down_fails_fast_with_each_endpoint_error(channel_kind: str) -> None:
    ports = [free_port(), free_port()]
    target = "static:///" + ",".join(f"127.0.0.1:{p}" for p in ports)
    async with open_channel(channel_kind, target, policy="round_robin") as ch:
        stub = ch.stub()
        with pytest.raises(grpc.RpcError) as info:
            await stub.SayHello(Req(), timeout=30)
    err: Any = info.value
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    details = err.details() or ""
    assert f"no backend reachable for target {target!r}" in details
    for port in ports:
        assert f"127.0.0.1:{port}: TRANSIENT_FAILURE" in details
    assert details.count("Connection refused") == 2, details


async def test_wait_for_ready_waits_until_the_deadline(channel_kind: str) -> None:
    target = f"static:///127.0.0.1:{free_port()}"
    async with open_channel(channel_kind, target, policy="round_robin") as ch:
        stub = ch.stub()
        with pytest.raises(grpc.RpcError) as info:
            await stub.SayHello(Req(), timeout=1.0, wait_for_ready=True)
    err: Any = info.value
    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "Connection refused" in (err.details() or "")


async def test_wait_for_ready_call_succeeds_when_a_backend_appears(channel_kind: str) -> None:
    server = ServerProcess()
    async with open_channel(channel_kind, f"static:///{server.address}") as ch:
        stub = ch.stub()
        call = asyncio.ensure_future(
            stub.SayHello(Req(name="late"), timeout=60, wait_for_ready=True)
        )
        await eventually(lambda: ch.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE)
        assert not call.done()
        server.start()
        try:
            reply = await call
        finally:
            server.kill()
    assert reply.message == f"Hello late (from :{server.port})"


async def test_killed_backend_leaves_round_robin_and_rejoins_after_restart(
    channel_kind: str,
) -> None:
    with ServerProcesses(3) as fleet:
        victim = fleet.servers[1]
        async with open_channel(channel_kind, fleet.target(), policy="round_robin") as ch:
            await ch.wait_for_settled(10)
            assert set(await say_hello_ports(ch, 30)) == {s.port for s in fleet.servers}
            victim.kill()
            sc = next(sc for sc in ch.subchannels if sc.address == victim.address)
            await eventually(lambda: not sc.usable)
            survivors = {s.port for s in fleet.servers} - {victim.port}
            assert set(await say_hello_ports(ch, 30)) == survivors

            restarted = ServerProcess(port=victim.port).start()
            try:
                await eventually(lambda: sc.usable, timeout=30)
                # state changes reach the picker coalesced, a loop turn or more later
                assert await ch.wait_for_settled(10)
                ports = await say_hello_ports(ch, 30)
            finally:
                restarted.kill()
        assert sorted(counts(ports).values()) == [10, 10, 10]


async def test_resolver_error_before_any_list_fails_calls_with_the_error(
    channel_kind: str,
) -> None:
    resolver = manual_resolver()
    async with open_channel(channel_kind, resolver.target) as ch:
        resolver.fail("registry unreachable: connection refused")
        stub = ch.stub()
        with pytest.raises(grpc.RpcError) as info:
            await stub.SayHello(Req(), timeout=5)
    err: Any = info.value
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert "registry unreachable" in (err.details() or "")


async def test_resolver_error_keeps_the_last_good_list(
    channel_kind: str, fleet3: GreeterFleet
) -> None:
    resolver = manual_resolver(fleet3.addresses)
    async with open_channel(channel_kind, resolver.target, policy="round_robin") as ch:
        await ch.wait_for_settled(10)
        resolver.fail("temporary failure")
        assert set(await say_hello_ports(ch, 9)) == set(fleet3.ports)


async def test_endpoint_updates_reuse_subchannels_and_empty_list_is_honoured(
    channel_kind: str, fleet3: GreeterFleet
) -> None:
    a, b, c = fleet3.addresses
    resolver = manual_resolver([a, b])
    async with open_channel(channel_kind, resolver.target, policy="round_robin") as ch:
        await ch.wait_for_settled(10)
        before = {sc.address: sc for sc in ch.subchannels}
        resolver.update([b, c])
        after = {sc.address: sc for sc in ch.subchannels}
        assert after[b] is before[b]  # reused, not reconnected
        assert set(after) == {b, c}
        await ch.wait_for_settled(10)
        assert set(await say_hello_ports(ch, 6)) == {fleet3.ports[1], fleet3.ports[2]}

        resolver.update([])
        stub = ch.stub()
        with pytest.raises(grpc.RpcError) as info:
            await stub.SayHello(Req(), timeout=5)
        err: Any = info.value
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        assert "resolver returned an empty list" in (err.details() or "")


async def test_queued_call_honours_its_deadline_while_resolving(channel_kind: str) -> None:
    resolver = manual_resolver()  # never answers
    async with open_channel(channel_kind, resolver.target) as ch:
        stub = ch.stub()
        with pytest.raises(grpc.RpcError) as info:
            await stub.SayHello(Req(), timeout=0.3)
    err: Any = info.value
    assert err.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "still resolving" in (err.details() or "")


async def test_channel_state_api(channel_kind: str, fleet3: GreeterFleet) -> None:
    ch = open_channel(channel_kind, fleet3.target(), policy="round_robin")
    await ch.channel_ready()
    assert ch.get_state() is grpc.ChannelConnectivity.READY
    await ch.close()
    assert ch.get_state() is grpc.ChannelConnectivity.SHUTDOWN
    with pytest.raises(grpc_balancer.ChannelClosedError, match="is closed"):
        await ch.stub().SayHello(Req())


async def test_close_leaves_no_tasks_and_no_open_channels() -> None:
    # Servers in child processes, so every task in this loop is the client's.
    with ServerProcesses(3) as fleet:
        baseline = {t for t in asyncio.all_tasks() if not t.done()}
        ch = grpc_balancer.aio.insecure_channel(fleet.target(), policy="round_robin")
        await say_hello_ports(ch, 6)
        inner = [sc.channel for sc in ch.subchannels]
        assert len(inner) == 3
        await ch.close()
        await asyncio.sleep(0)
        leftover = {t for t in asyncio.all_tasks() if not t.done()} - baseline
        assert not leftover, leftover
        for channel in inner:
            assert channel.get_state() is grpc.ChannelConnectivity.SHUTDOWN
        gc.collect()


async def test_cancel_a_call(fleet3: GreeterFleet) -> None:
    fleet3.servers[0].faults.delay_ms = 5000
    target = f"static:///{fleet3.addresses[0]}"
    async with grpc_balancer.aio.insecure_channel(target) as ch:
        call = greeter_pb2_grpc.GreeterStub(ch).SayHello(Req())
        task = asyncio.ensure_future(call)
        await eventually(lambda: fleet3.servers[0].servicer.in_flight == 1)  # type: ignore[union-attr]
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert call.cancelled()
        assert await call.code() is grpc.StatusCode.CANCELLED
