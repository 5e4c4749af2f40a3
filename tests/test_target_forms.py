"""Target forms gRPC users expect, each against a real server: unix sockets (relative,
absolute, abstract), passthrough, dns:host:port without slashes, the default port."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc.aio
import pytest

import grpc_balancer
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.demo.servicer import GreeterServicer
from grpc_balancer.errors import InvalidTargetError
from grpc_balancer.resolvers.dns import parse_dns_target
from grpc_balancer.target import parse_target
from grpc_balancer.testing import GreeterFleet


@pytest.fixture
async def unix_server(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    """One greeter listening on a relative path, an absolute path and an abstract name."""
    os.chdir(tmp_path)  # restored by the fixture below
    server = grpc.aio.server()
    greeter_pb2_grpc.add_GreeterServicer_to_server(GreeterServicer(7), server)
    abstract = f"grpc-balancer-test-{uuid.uuid4().hex}"
    forms = {
        "relative": "unix:rel.sock",
        "absolute": f"unix://{tmp_path}/abs.sock",
        "abstract": f"unix-abstract:{abstract}",
    }
    server.add_insecure_port("unix:rel.sock")
    server.add_insecure_port(f"unix:{tmp_path}/abs.sock")
    server.add_insecure_port(f"unix-abstract:{abstract}")
    await server.start()
    yield forms
    await server.stop(0)


@pytest.fixture(autouse=True)
def _keep_cwd() -> object:
    cwd = os.getcwd()
    yield
    os.chdir(cwd)


async def _hello(target: str) -> str:
    async with grpc_balancer.aio.insecure_channel(target) as ch:
        reply = await greeter_pb2_grpc.GreeterStub(ch).SayHello(
            greeter_pb2.HelloRequest(name="u"), timeout=10
        )
    return str(reply.message)


@pytest.mark.parametrize("form", ["relative", "absolute", "abstract"])
async def test_unix_socket_targets(unix_server: dict[str, str], form: str) -> None:
    assert await _hello(unix_server[form]) == "Hello u (from :7)"


async def test_passthrough_and_dns_without_slashes(fleet3: GreeterFleet) -> None:
    port = fleet3.ports[0]
    assert await _hello(f"passthrough:///127.0.0.1:{port}") == f"Hello u (from :{port})"
    # an IP literal: no DNS query is made
    assert await _hello(f"dns:127.0.0.1:{port}") == f"Hello u (from :{port})"


def test_dns_short_form_and_default_port_443() -> None:
    target = parse_target("dns:greeter.example.com:50051")
    assert (target.scheme, target.authority, target.endpoint) == (
        "dns",
        "",
        "greeter.example.com:50051",
    )
    assert parse_dns_target(parse_target("dns:///greeter.example.com")).items == (
        ("greeter.example.com", 443),
    )
    assert parse_dns_target(parse_target("greeter.example.com")).items == (
        ("greeter.example.com", 443),
    )


def test_etcd_without_a_prefix_suggests_the_etcd_form() -> None:
    with pytest.raises(InvalidTargetError) as info:
        parse_target("etcd://127.0.0.1:2379")
    message = str(info.value)
    assert "etcd://127.0.0.1:2379/services/greeter" in message
    assert "etcd:///" not in message
