"""Self-registration (library and ``serve --register``) against a real etcd."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Sequence

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import grpc_balancer
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.errors import BalancerConfigError
from grpc_balancer.testing import GreeterFleet, ServerProcess, cli_env, free_port
from tests.etcd_cluster import EtcdCluster
from tests.etcd_helpers import PREFIX, Recorder, start_resolver, until
from tests.helpers import eventually, say_hello_ports


def stored(cluster: EtcdCluster, key: str) -> dict[str, object] | None:
    out = cluster.etcdctl("get", key, "--print-value-only").strip()
    return json.loads(out) if out else None


async def test_registration_is_seen_by_a_client_and_removed_on_exit(
    etcd_node: EtcdCluster,
) -> None:
    async with GreeterFleet(2) as fleet:
        target = etcd_node.target(PREFIX)
        async with (
            grpc_balancer.registration(target, fleet.addresses[0], ttl=5),
            grpc_balancer.registration(
                target, fleet.addresses[1], ttl=5, metadata={"zone": "eu-1"}
            ) as second,
        ):
            key = f"{PREFIX}/{fleet.addresses[1]}"
            assert second.key == key
            assert stored(etcd_node, key) == {
                "Op": 0,
                "Addr": fleet.addresses[1],
                "Metadata": {"zone": "eu-1"},
            }
            async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as ch:
                seen: set[int] = set()

                async def both() -> bool:
                    seen.update(await say_hello_ports(ch, 4))
                    return seen == set(fleet.ports)

                await until(both)
        # deregistered on exit: the keys are gone now, not after a lease expiry
        assert etcd_node.etcdctl("get", "--prefix", f"{PREFIX}/", "--keys-only").strip() == ""


async def test_a_lost_lease_is_replaced_and_the_key_put_again(etcd_node: EtcdCluster) -> None:
    address = f"127.0.0.1:{free_port()}"
    key = f"{PREFIX}/{address}"
    async with grpc_balancer.registration(etcd_node.target(PREFIX), address, ttl=3) as reg:
        first = reg.lease_id
        etcd_node.etcdctl("lease", "revoke", f"{first:x}")  # as if it had expired
        await eventually(lambda: reg.lease_id != first and reg.registrations >= 2, timeout=10)
        await eventually(lambda: stored(etcd_node, key) is not None, timeout=5)
        leases = etcd_node.etcdctl("lease", "list")
        assert f"{reg.lease_id:x}" in leases and f"{first:x}" not in leases


async def test_registration_survives_an_etcd_restart(etcd_node: EtcdCluster) -> None:
    address = f"127.0.0.1:{free_port()}"
    key = f"{PREFIX}/{address}"
    async with grpc_balancer.registration(etcd_node.target(PREFIX), address, ttl=2) as reg:
        etcd_node.kill(0)
        await eventually(lambda: reg.registrations == 1 and reg._last_error is not None, 10)
        etcd_node.start()
        await eventually(lambda: reg.registrations >= 2, timeout=15)
        assert stored(etcd_node, key) is not None
        lease = reg.lease_id
        # kept alive well past its TTL after the restart
        await asyncio.sleep(3)
        assert stored(etcd_node, key) is not None and reg.lease_id == lease


async def test_first_registration_fails_with_a_reason_when_etcd_is_down() -> None:
    target = f"etcd://127.0.0.1:{free_port()}/{PREFIX}"
    with pytest.raises(grpc_balancer.RegistrationError, match=r"could not register .* UNAVAILABLE"):
        async with grpc_balancer.registration(target, "127.0.0.1:1", first_timeout_s=1):
            pass


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"address": "nohost"}, "missing port"),
        ({"ttl": 0}, "ttl must be a whole number"),
        ({"metadata": {"weight": -2}}, "weight"),
        ({"metadata": {"zone": 1}}, "zone"),
        ({"metadata": {"x": object()}}, "JSON"),
    ],
)
def test_bad_registration_arguments(kwargs: dict[str, object], needle: str) -> None:
    args: dict[str, object] = {"address": "127.0.0.1:1", **kwargs}
    with pytest.raises(BalancerConfigError, match=needle):
        grpc_balancer.registration("etcd://127.0.0.1:2379/svc", **args)  # type: ignore[arg-type]


# -- serve --register (child processes) ------------------------------------------------
async def test_sigkilled_server_is_removed_when_its_lease_expires(etcd_node: EtcdCluster) -> None:
    args = ["--register", etcd_node.target(PREFIX), "--ttl", "2"]
    rec = Recorder()
    resolver = start_resolver(etcd_node.target(PREFIX), rec)
    a, b = ServerProcess(args=args), ServerProcess(args=args)
    try:
        a.start(wait=False), b.start(wait=False)
        await a.await_serving(), await b.await_serving()
        await eventually(lambda: rec.addresses == {a.address, b.address}, timeout=10)
        a.kill()
        assert rec.addresses == {a.address, b.address}  # no goodbye: still listed
        await eventually(lambda: rec.addresses == {b.address}, timeout=10)
    finally:
        a.kill(), b.kill()
        await resolver.close()


async def test_sigterm_deregisters_before_the_process_exits(etcd_node: EtcdCluster) -> None:
    server = ServerProcess(
        args=["--register", etcd_node.target(PREFIX), "--ttl", "30", "--metadata", '{"zone":"z1"}']
    )
    try:
        server.start()
        key = f"{PREFIX}/{server.address}"
        await eventually(lambda: stored(etcd_node, key) is not None, timeout=10)
        assert stored(etcd_node, key) == {
            "Op": 0,
            "Addr": server.address,
            "Metadata": {"zone": "z1"},
        }
        assert server.stop() == 0
        # gone at once, not after the 30 s lease
        assert stored(etcd_node, key) is None
        assert etcd_node.etcdctl("lease", "list").count("id(") == 0
    finally:
        server.kill()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["--register", "etcd://127.0.0.1:1/x", "--metadata", "{bad"],
            "--metadata is not valid JSON",
        ),
        (["--register", "etcd://127.0.0.1:1/x", "--metadata", "[1]"], "must be a JSON object"),
        (
            ["--register", "etcd://127.0.0.1:1/x", "--ttl", "0"],
            "--ttl: must be a whole number in 1..9000000000",
        ),
        (["--register", "etcd://127.0.0.1:1/x", "--advertise", "h"], "missing port"),
        (["--register", "dns:///x:1"], "expected an etcd:// target"),
        (["--metadata", "{}"], "--metadata needs --register"),
    ],
)
def test_serve_register_usage_errors_are_one_line_exit_2(args: list[str], needle: str) -> None:
    cmd = [sys.executable, "-m", "grpc_balancer", "serve", "--port", str(free_port()), *args]
    proc = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


async def test_sigterm_order_not_serving_then_deregistered(etcd_node: EtcdCluster) -> None:
    """Health goes NOT_SERVING before the key disappears from the registry."""
    args = ["--register", etcd_node.target(PREFIX), "--ttl", "30", "--grace", "0.5"]
    server = ServerProcess(args=args)
    events: list[str] = []

    class Log(Recorder):
        def on_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
            super().on_endpoints(endpoints)
            listed = any(e.address == server.address for e in endpoints)
            events.append("listed" if listed else "unlisted")

    rec = Log()
    resolver = start_resolver(etcd_node.target(PREFIX), rec)
    try:
        server.start()
        await eventually(lambda: "listed" in events, timeout=10)
        async with grpc.aio.insecure_channel(server.address) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())

            async def follow() -> None:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    async for reply in watch:
                        events.append(
                            health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                        )

            task = asyncio.create_task(follow())
            await eventually(lambda: "SERVING" in events)
            assert await asyncio.to_thread(server.stop) == 0
            await eventually(lambda: "unlisted" in events)
            watch.cancel()
            await task
        assert events.index("NOT_SERVING") < events.index("unlisted"), events
    finally:
        server.kill()
        await resolver.close()
