"""A user's own ``greeter.proto`` (package ``greeter``, the tutorial's service) next to
grpc_balancer: no descriptor-pool clash in either import order, also with the demo
loaded, and calls balanced with the user's stubs to the demo servers (another process)
and to the user's own servicer (issue 11, item 5)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from grpc_balancer.testing import ServerProcesses, cli_env

#: What a user of the tutorial has in their own tree (same messages and service).
USER_PROTO = """\
syntax = "proto3";

package greeter;

service Greeter {
  rpc SayHello (HelloRequest) returns (HelloReply);
  rpc SayHelloStream (HelloRequest) returns (stream HelloReply);
  rpc SayHelloToMany (stream HelloRequest) returns (HelloReply);
  rpc Chat (stream HelloRequest) returns (stream HelloReply);
}

message HelloRequest {
  string name = 1;
  int32 count = 2;
}

message HelloReply {
  string message = 1;
}
"""

_USER_APP = """
import asyncio, json, re, sys
import grpc

ORDER = sys.argv[1].split(",")
DEMO_ADDRESSES = sys.argv[2].split(",")
for name in ORDER:
    if name == "user":
        import greeter_pb2, greeter_pb2_grpc
    elif name == "balancer":
        import grpc_balancer, grpc_balancer.aio
    elif name == "demo":
        from grpc_balancer.demo import greeter_pb2 as demo_pb2
        from grpc_balancer.demo.server import GreeterServer
from google.protobuf import descriptor_pool

PORT = re.compile(r"\\(from :(\\d+)\\)$")


class MyGreeter(greeter_pb2_grpc.GreeterServicer):
    def __init__(self, port):
        self.port = port

    async def SayHello(self, request, context):
        return greeter_pb2.HelloReply(message=f"Hello {request.name} (from :{self.port})")

    async def SayHelloStream(self, request, context):
        for i in range(request.count):
            yield greeter_pb2.HelloReply(message=f"Hello {request.name} {i} (from :{self.port})")


async def main():
    out = {}
    user_file = descriptor_pool.Default().FindFileContainingSymbol("greeter.HelloRequest")
    out["default_pool_file"] = user_file.name
    assert greeter_pb2.HelloRequest.DESCRIPTOR.file is user_file
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    greeter_pb2_grpc.add_GreeterServicer_to_server(MyGreeter(port), server)
    await server.start()
    addresses = [*DEMO_ADDRESSES, f"127.0.0.1:{port}"]
    demo = None
    if "demo" in ORDER:
        demo = GreeterServer()
        await demo.start()
        addresses.append(demo.address)
        request = greeter_pb2.HelloRequest(name="wörld", count=3)
        same = demo_pb2.HelloRequest(name="wörld", count=3)
        assert request.SerializeToString() == same.SerializeToString()
        assert demo_pb2.HelloRequest.FromString(request.SerializeToString()) == same
    target = "static:///" + ",".join(addresses)
    config = {"loadBalancingConfig": [{"round_robin": {}}]}
    async with grpc_balancer.aio.insecure_channel(target, service_config=config) as channel:
        await channel.wait_for_settled(20)
        stub = greeter_pb2_grpc.GreeterStub(channel)
        ports = []
        for i in range(3 * len(addresses)):
            reply = await stub.SayHello(greeter_pb2.HelloRequest(name=f"u{i}"), timeout=10)
            assert isinstance(reply, greeter_pb2.HelloReply)
            assert reply.message.startswith(f"Hello u{i} "), reply.message
            ports.append(int(PORT.search(reply.message).group(1)))
        out["aio_ports"] = sorted(set(ports))
        out["stream"] = []
        for _ in addresses:  # a stream from each backend, demo and user's own
            stream = stub.SayHelloStream(greeter_pb2.HelloRequest(name="s", count=3), timeout=10)
            out["stream"].append(len([r async for r in stream]))

    def sync_calls():
        with grpc_balancer.insecure_channel(target, policy="round_robin") as channel:
            stub = greeter_pb2_grpc.GreeterStub(channel)
            got = set()
            for i in range(3 * len(addresses)):
                reply = stub.SayHello(greeter_pb2.HelloRequest(name="v"), timeout=10)
                got.add(int(PORT.search(reply.message).group(1)))
            return sorted(got)

    out["sync_ports"] = await asyncio.to_thread(sync_calls)
    out["ports"] = sorted(int(a.rsplit(":", 1)[1]) for a in addresses)
    if demo is not None:
        await demo.stop(0)
    await server.stop(None)
    print(json.dumps(out))


asyncio.run(main())
"""


@pytest.fixture(scope="module")
def user_code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's greeter.proto compiled with grpcio-tools into a temp dir."""
    root = tmp_path_factory.mktemp("user_app")
    (root / "greeter.proto").write_text(USER_PROTO)
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{root}", f"--python_out={root}",
         f"--grpc_python_out={root}", str(root / "greeter.proto")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    (root / "app.py").write_text(textwrap.dedent(_USER_APP))
    return root


@pytest.fixture(scope="module")
def demo_servers() -> Iterator[ServerProcesses]:
    """Two demo greeter servers (``grpc-balancer serve``) in other processes."""
    with ServerProcesses(2) as servers:
        yield servers


@pytest.mark.parametrize(
    "order",
    ["user,balancer,demo", "balancer,demo,user", "demo,user,balancer", "balancer,user"],
)
def test_users_greeter_next_to_grpc_balancer(
    user_code: Path, demo_servers: ServerProcesses, order: str
) -> None:
    env = cli_env()
    env["PYTHONPATH"] = f"{user_code}:{env['PYTHONPATH']}"
    result = subprocess.run(
        [sys.executable, str(user_code / "app.py"), order, ",".join(demo_servers.addresses)],
        env=env, capture_output=True, text=True, timeout=120, cwd=user_code,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["default_pool_file"] == "greeter.proto"  # the user's, in the default pool
    assert out["aio_ports"] == out["ports"]  # every backend answered, demo and user's own
    assert out["sync_ports"] == out["ports"]
    assert out["stream"] == [3] * len(out["ports"])
    assert len(out["ports"]) == (4 if "demo" in order else 3)


def test_demo_server_reflection_describes_the_greeter(demo_servers: ServerProcesses) -> None:
    """grpcurl-style reflection: the demo's services, from its own pool."""
    with grpc.insecure_channel(demo_servers.addresses[0]) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {"greeter.Greeter", "grpc.health.v1.Health"} <= services
        pool = descriptor_pool.DescriptorPool(database)
        greeter = pool.FindServiceByName("greeter.Greeter")
        assert greeter.file.name == "grpc_balancer/demo/greeter.proto"
        method = greeter.methods_by_name["SayHello"]
        assert method.input_type.full_name == "greeter.HelloRequest"
        assert [f.name for f in method.input_type.fields] == ["name", "count"]
        assert pool.FindServiceByName("grpc.health.v1.Health").file.name == (
            "grpc_health/v1/health.proto"
        )
