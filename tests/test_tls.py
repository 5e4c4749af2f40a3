"""secure_channel: TLS to every endpoint, with a throwaway CA made by openssl."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import pytest

from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.demo.servicer import GreeterServicer
from tests.channels import open_channel
from tests.helpers import say_hello_ports

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _make_cert(tmp: Path) -> tuple[bytes, bytes]:
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key.read_bytes(), cert.read_bytes()


@pytest.fixture
async def tls_servers(tmp_path: Path) -> AsyncIterator[tuple[list[int], bytes]]:
    key, cert = _make_cert(tmp_path)
    creds = grpc.ssl_server_credentials([(key, cert)])
    servers, ports = [], []
    for _ in range(2):
        server = grpc.aio.server()
        port = server.add_secure_port("127.0.0.1:0", creds)
        greeter_pb2_grpc.add_GreeterServicer_to_server(GreeterServicer(port), server)
        await server.start()
        servers.append(server)
        ports.append(port)
    yield ports, cert
    for server in servers:
        await server.stop(0)


async def test_secure_channel_balances_over_tls(
    channel_kind: str, tls_servers: tuple[list[int], bytes]
) -> None:
    ports, cert = tls_servers
    creds = grpc.ssl_channel_credentials(root_certificates=cert)
    target = "static:///" + ",".join(f"127.0.0.1:{p}" for p in ports)
    async with open_channel(channel_kind, target, creds, policy="round_robin") as ch:
        await ch.wait_for_settled(10)
        assert set(await say_hello_ports(ch, 4)) == set(ports)


async def test_secure_channel_with_untrusted_cert_fails_with_a_reason(
    channel_kind: str, tls_servers: tuple[list[int], bytes]
) -> None:
    ports, _cert = tls_servers
    creds = grpc.ssl_channel_credentials()  # system roots: our cert is not trusted
    target = f"static:///127.0.0.1:{ports[0]}"
    async with open_channel(channel_kind, target, creds) as ch:
        with pytest.raises(grpc.RpcError) as info:
            await ch.stub().SayHello(greeter_pb2.HelloRequest(), timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "no backend reachable" in (info.value.details() or "")
