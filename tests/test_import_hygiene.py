"""``import grpc_balancer`` loads only what a channel needs (issue 11, item 5).

Each check runs in a fresh interpreter: this test process has long since imported the
demo, etcd and metrics modules through other tests and fixtures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from grpc_balancer.testing import cli_env

SRC = Path(__file__).resolve().parent.parent / "src"

#: Loaded on first use only (module name, or a package and everything under it).
#: grpcio itself imports the bare ``grpc_reflection`` package (its ``grpc.reflection``
#: shim, an empty ``__init__``), so the reflection service is checked one level down.
LAZY = (
    "grpc_balancer.demo",
    "grpc_balancer.cli",
    "grpc_balancer._orca",
    "grpc_balancer._probe",
    "grpc_balancer.server.probes",
    "grpc_balancer._etcd.client",
    "grpc_balancer.resolvers.etcd",
    "grpc_balancer.metrics",
    "grpc_balancer.otel",
    "grpc_reflection.v1alpha",
    "aetcd",
    "rich",
    "prometheus_client",
    "opentelemetry",
    "grpc_balancer.xds",
    "grpc_balancer.resolvers.xds",
    "grpc_balancer._xds_client",
    "envoy",
    "udpa",
)

#: Every .proto of ours, by the path it registers under (and the bare name it once had).
OUR_PROTOS = sorted(str(p.relative_to(SRC)) for p in SRC.joinpath("grpc_balancer").rglob("*.proto"))

_PROBE = """
import json, sys
from google.protobuf import descriptor_pool

LAZY = {lazy!r}
PROTOS = {protos!r}


def report():
    pool = descriptor_pool.Default()
    registered = []
    for name in PROTOS + [p.rsplit("/", 1)[-1] for p in PROTOS] + ["rpc.proto", "kv.proto", "auth.proto"]:
        try:
            pool.FindFileByName(name)
        except KeyError:
            continue
        registered.append(name)
    symbols = []
    for symbol in ("greeter.HelloRequest", "greeter.Greeter", "etcdserverpb.KV"):
        try:
            pool.FindFileContainingSymbol(symbol)
        except KeyError:
            continue
        symbols.append(symbol)
    loaded = sorted(
        m for m in sys.modules if any(m == p or m.startswith(p + ".") for p in LAZY)
    )
    return {{"loaded": loaded, "files": registered, "symbols": symbols}}


{body}
print(json.dumps(report()))
"""


def probe(body: str) -> dict[str, list[str]]:
    """Run ``body`` in a fresh interpreter; what it loaded and registered."""
    script = _PROBE.format(lazy=LAZY, protos=OUR_PROTOS, body=textwrap.dedent(body))
    result = subprocess.run(
        [sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def test_our_protos_have_namespaced_paths() -> None:
    assert OUR_PROTOS == [
        "grpc_balancer/_orca/orca.proto",
        "grpc_balancer/_probe/probe.proto",
        "grpc_balancer/demo/greeter.proto",
    ]


def test_import_loads_no_optional_module_and_registers_no_proto() -> None:
    assert probe("import grpc_balancer, grpc_balancer.aio") == {
        "loaded": [],
        "files": [],
        "symbols": [],
    }


def test_channels_and_calls_with_builtin_policies_stay_lean() -> None:
    """A channel (round_robin, static) and a call on it: still no etcd, ORCA, demo."""
    report = probe(
        """
        import asyncio, grpc, grpc_balancer, grpc_balancer.aio

        async def main():
            server = grpc.aio.server()
            port = server.add_insecure_port("127.0.0.1:0")
            handler = grpc.method_handlers_generic_handler(
                "x.Echo", {"Say": grpc.unary_unary_rpc_method_handler(lambda r, c: r)}
            )
            server.add_generic_rpc_handlers((handler,))
            await server.start()
            target = f"static:///127.0.0.1:{port}"
            async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as ch:
                assert await ch.unary_unary("/x.Echo/Say")(b"hi", timeout=10) == b"hi"
            for policy in ("pick_first", "least_request", "ring_hash", "peak_ewma"):
                await grpc_balancer.aio.insecure_channel(target, policy=policy).close()
            with grpc_balancer.insecure_channel(f"dns:///127.0.0.1:{port}") as sync:
                call = sync.unary_unary("/x.Echo/Say")
                assert await asyncio.to_thread(call, b"hi", timeout=10) == b"hi"
            await server.stop(None)

        asyncio.run(main())
        """
    )
    assert report == {"loaded": [], "files": [], "symbols": []}


@pytest.mark.parametrize(
    ("first_use", "loads"),
    [
        (
            "grpc_balancer.aio.insecure_channel('etcd://127.0.0.1:1/x')",
            {"aetcd", "grpc_balancer._etcd.client", "grpc_balancer.resolvers.etcd"},
        ),
        (
            "grpc_balancer.registration('etcd://127.0.0.1:1/x', '127.0.0.1:5')",
            {"aetcd", "grpc_balancer._etcd.client"},
        ),
        (
            "grpc_balancer.aio.insecure_channel('static:///a:1', policy='weighted_round_robin')",
            {"grpc_balancer._orca"},
        ),
        ("import grpc_balancer.server.load_reports", {"grpc_balancer._orca"}),
        (
            "grpc_balancer.aio.insecure_channel('static:///a:1', policy='prequal')",
            {"grpc_balancer._probe"},
        ),
        ("import grpc_balancer.server.probes", {"grpc_balancer._probe"}),
        ("import grpc_balancer.metrics; grpc_balancer.metrics.enable()", {"prometheus_client"}),
        ("import grpc_balancer.otel", {"grpc_balancer.metrics", "opentelemetry"}),
        ("import grpc_balancer.cli.live", {"rich"}),
        ("import grpc_balancer.xds", {"grpc_balancer.xds"}),
        ("from grpc_balancer.xds.server import XdsServer", {"grpc_balancer.xds", "envoy"}),
        ("import grpc_balancer.demo.server", {"grpc_balancer.demo"}),
        (
            "from grpc_balancer.demo.server import enable_reflection\n"
            "import grpc.aio\n"
            "enable_reflection(grpc.aio.server())",
            {"grpc_balancer.demo", "grpc_reflection.v1alpha"},
        ),
    ],
)
def test_each_optional_module_loads_on_first_use(first_use: str, loads: set[str]) -> None:
    report = probe(f"import grpc_balancer, grpc_balancer.aio\n{first_use}\n")
    roots = {p for p in LAZY if any(m == p or m.startswith(p + ".") for m in report["loaded"])}
    assert loads <= roots, report
    # Whatever loads, nothing of ours lands in the default pool under a bare name, and the
    # greeter's symbols never do (the ORCA messages are package grpc_balancer.orca.v3).
    assert set(report["files"]) <= {
        "grpc_balancer/_orca/orca.proto", "grpc_balancer/_probe/probe.proto",
        "rpc.proto", "kv.proto", "auth.proto",
    }  # fmt: skip
    assert "greeter.HelloRequest" not in report["symbols"]
    if first_use == "import grpc_balancer.xds":  # the config and bootstrap need no protos
        assert "envoy" not in roots, report


def test_a_users_registration_wins_over_a_lazily_loaded_builtin() -> None:
    """Registered before first use: the built-in module never replaces it, even when it is
    imported for another name it registers (static also registers ipv4 and ipv6)."""
    report = probe(
        """
        import grpc_balancer
        from grpc_balancer.policies.base import get_policy_factory, registered_policies
        from grpc_balancer.resolvers.base import get_resolver_factory

        def mine_resolver(target, listener, options): ...
        def mine_policy(control, config): ...

        grpc_balancer.register_resolver("ipv4", mine_resolver)
        grpc_balancer.register_policy("weighted_round_robin", mine_policy)
        static = get_resolver_factory(grpc_balancer.parse_target("static:///a:1"))
        assert static.__name__ == "StaticResolver", static
        assert get_resolver_factory(grpc_balancer.parse_target("ipv4:1.2.3.4:5")) is mine_resolver
        assert get_policy_factory("weighted_round_robin") is mine_policy
        assert "round_robin" in registered_policies()
        """
    )
    assert "grpc_balancer._orca" not in report["loaded"]


def test_demo_messages_are_in_a_private_pool_and_unchanged_on_the_wire() -> None:
    from google.protobuf import descriptor_pool

    from grpc_balancer._orca import orca_pb2
    from grpc_balancer.demo import greeter_pb2

    assert greeter_pb2.DESCRIPTOR.name == "grpc_balancer/demo/greeter.proto"
    assert greeter_pb2.DESCRIPTOR.pool is not descriptor_pool.Default()
    assert greeter_pb2.HelloRequest.DESCRIPTOR.full_name == "greeter.HelloRequest"
    assert greeter_pb2.DESCRIPTOR.services_by_name["Greeter"].full_name == "greeter.Greeter"
    # The bytes of the messages as generated from the bare "greeter.proto" / "orca.proto".
    request = greeter_pb2.HelloRequest(name="wörld", count=7)
    assert request.SerializeToString().hex() == "0a0677c3b6726c641007"
    reply = greeter_pb2.HelloReply(message="Hello x (from :1)")
    assert reply.SerializeToString().hex() == "0a1148656c6c6f2078202866726f6d203a3129"
    report = orca_pb2.OrcaLoadReport(cpu_utilization=0.5, rps_fractional=12.5, eps=1.0)
    report.named_metrics["a"] = 1.5
    assert report.SerializeToString(deterministic=True).hex() == (
        "09000000000000e03f31000000000000294039000000000000f03f420c0a016111000000000000f83f"
    )
    assert orca_pb2.DESCRIPTOR.name == "grpc_balancer/_orca/orca.proto"


_WITHOUT_REFLECTION = """
import importlib.abc, sys

class Hide(importlib.abc.MetaPathFinder):  # a default install: no grpcio-reflection
    def find_spec(self, name, path, target=None):
        if name == "grpc_reflection" or name.startswith("grpc_reflection."):
            raise ImportError(name)
        return None

sys.meta_path.insert(0, Hide())
import asyncio
import grpc_balancer, grpc_balancer.aio
assert not [m for m in sys.modules if m.startswith("grpc_reflection")], "loaded"
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.demo.server import GreeterServer

async def main():
    server = GreeterServer(port=0)
    port = await server.start()
    try:
        async with grpc_balancer.aio.insecure_channel(f"static:///127.0.0.1:{port}") as ch:
            reply = await greeter_pb2_grpc.GreeterStub(ch).SayHello(
                greeter_pb2.HelloRequest(name="x"), timeout=10
            )
            print(reply.message)
    finally:
        await server.stop(0)

asyncio.run(main())
"""


def test_without_the_reflection_extra_nothing_loads_it_and_the_demo_serves() -> None:
    # grpcio's own `import grpc` imports an installed grpc_reflection (its grpc.reflection
    # shim), so grpcio-reflection is the optional `reflection` extra; without it
    # `import grpc_balancer` loads none of it and the demo serves all but reflection
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_REFLECTION],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(Path(__file__).resolve().parent.parent),
        env=cli_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Hello x" in proc.stdout
