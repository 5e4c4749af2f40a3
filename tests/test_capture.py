"""Which backend served a call: the call object, and capture_backend() for plain awaits."""

from __future__ import annotations

import asyncio

import grpc.aio
import pytest

import grpc_balancer
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.testing import GreeterFleet, free_port
from tests.helpers import port_of

Req = greeter_pb2.HelloRequest


def _port(address: str | None) -> int:
    assert address is not None
    return int(address.rsplit(":", 1)[1])


async def test_call_object_names_its_backend(fleet3: GreeterFleet) -> None:
    async with grpc_balancer.aio.insecure_channel(fleet3.target(), policy="round_robin") as ch:
        stub = greeter_pb2_grpc.GreeterStub(ch)
        for _ in range(6):
            call = stub.SayHello(Req(name="c"), timeout=10)
            reply = await call
            assert port_of(reply.message) == _port(call.peer_address)
            assert call.subchannel is not None and call.subchannel.address == call.peer_address
        stream = stub.SayHelloStream(Req(name="s", count=2), timeout=10)
        replies = [r async for r in stream]
        assert {port_of(r.message) for r in replies} == {_port(stream.peer_address)}


async def test_capture_backend_for_plain_awaits(fleet3: GreeterFleet) -> None:
    async with grpc_balancer.aio.insecure_channel(fleet3.target(), policy="round_robin") as ch:
        assert await ch.wait_for_settled(10)
        stub = greeter_pb2_grpc.GreeterStub(ch)
        ports = []
        with grpc_balancer.capture_backend() as seen:
            assert seen.address is None
            for _ in range(6):
                reply = await stub.SayHello(Req(name="p"), timeout=10)
                ports.append(port_of(reply.message))
                assert _port(seen.address) == ports[-1]
        assert [_port(a) for a in seen.addresses] == ports
        assert set(ports) == set(fleet3.ports)
        # outside the block nothing more is recorded
        await stub.SayHello(Req(name="after"), timeout=10)
        assert len(seen.calls) == 6


async def test_capture_is_per_task_and_nests(fleet3: GreeterFleet) -> None:
    async with grpc_balancer.aio.insecure_channel(fleet3.target(), policy="round_robin") as ch:
        stub = greeter_pb2_grpc.GreeterStub(ch)

        async def one(name: str) -> tuple[int, str | None]:
            with grpc_balancer.capture_backend() as seen:
                reply = await stub.SayHello(Req(name=name), timeout=10)
            assert len(seen.calls) == 1
            return port_of(reply.message), seen.address

        with grpc_balancer.capture_backend() as outer:
            results = await asyncio.gather(*(one(f"t{i}") for i in range(9)))
            with grpc_balancer.capture_backend() as inner:
                await stub.SayHello(Req(name="inner"), timeout=10)
        for port, address in results:
            assert port == _port(address)
        assert len(inner.calls) == 1
        assert len(outer.calls) == 10  # gathered tasks copy the context, nested blocks too


async def test_capture_of_a_call_that_reached_no_backend() -> None:
    target = f"static:///127.0.0.1:{free_port()}"
    async with grpc_balancer.aio.insecure_channel(target) as ch:
        stub = greeter_pb2_grpc.GreeterStub(ch)
        with grpc_balancer.capture_backend() as seen, pytest.raises(grpc.aio.AioRpcError):
            await stub.SayHello(Req(name="x"), timeout=10)
        assert len(seen.calls) == 1


def test_capture_backend_with_the_sync_channel() -> None:
    from grpc_balancer.testing import ServerProcesses

    with (
        ServerProcesses(2) as fleet,
        grpc_balancer.insecure_channel(fleet.target(), policy="round_robin") as ch,
    ):
        assert ch.wait_for_settled(10)
        stub = greeter_pb2_grpc.GreeterStub(ch)
        ports = []
        with grpc_balancer.capture_backend() as seen:
            for _ in range(4):
                ports.append(port_of(stub.SayHello(Req(name="sync"), timeout=10).message))
        assert [_port(a) for a in seen.addresses] == ports
        assert set(ports) == {s.port for s in fleet.servers}
