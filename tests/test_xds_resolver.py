"""``xds:///`` on grpc_balancer's own channels (aio and sync), fed by our control plane.

The control plane (:class:`XdsServer`) runs in this process on a 127.0.0.1 ephemeral
port, or, to be SIGKILLed, as ``grpc-balancer xds serve`` in a child process. Each test
uses its own node id, so its channels get their own ADS stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

pytest.importorskip("envoy")

from grpc_balancer._xds_client import ads
from grpc_balancer.resolvers.base import ResolverOptions
from grpc_balancer.testing import GreeterFleet, cli_env
from grpc_balancer.xds import admin, bootstrap
from grpc_balancer.xds.server import XdsServer
from tests.channels import AnyChannel, Req, open_channel
from tests.etcd_helpers import until
from tests.xds_clients import free_port
from tests.xds_helpers import all_acked, config, stream_of

pytestmark = pytest.mark.slow

SERVICE_CONFIG = {
    "methodConfig": [
        {"name": [{"service": "greeter.Greeter", "method": "SayHello"}], "timeout": "7s",
         "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
                         "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}},
    ],
    "outlierDetection": {"interval": "1s", "failurePercentageEjection": {"threshold": 90}},
    "circuitBreakers": {"maxRequests": 50},
}  # fmt: skip


def static(fleet: GreeterFleet, indexes: list[int] | None = None) -> str:
    addresses = fleet.addresses
    return "static:///" + ",".join(addresses[i] for i in (indexes or range(len(addresses))))


def options(server: str, node: str) -> ResolverOptions:
    return ResolverOptions(extra={"bootstrap": bootstrap(server, node)})


def xds_channel(kind: str, server: str, node: str, **kwargs: Any) -> AnyChannel:
    return open_channel(kind, "xds:///greeter", resolver_options=options(server, node), **kwargs)


def reaches(ch: AnyChannel, ports: set[int] | list[int], n: int = 12) -> Any:
    want = set(ports)

    async def check() -> bool:
        return set(await ch.say_hello_ports(n)) == want

    return check


class Load:
    """Calls back to back (at most ``limit``, for at most ``seconds``) until stopped."""

    def __init__(self, ch: AnyChannel, limit: int = 20_000, seconds: float = 60.0) -> None:
        self.ok = 0
        self.errors: list[str] = []
        self.ports: list[int] = []
        self._stop = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(ch, limit, seconds))

    async def _run(self, ch: AnyChannel, limit: int, seconds: float) -> None:
        stub = ch.stub()
        deadline = time.monotonic() + seconds
        for _ in range(limit):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            try:
                reply = await stub.SayHello(Req(name="load"), timeout=5)
            except grpc.RpcError as exc:
                self.errors.append(f"{exc.code().name}: {exc.details()}")  # type: ignore[attr-defined]
            else:
                self.ok += 1
                self.ports.append(int(reply.message.rsplit(":", 1)[1].rstrip(")")))
            await asyncio.sleep(0)

    async def calls_after(self, n: int, timeout: float = 30.0) -> None:
        target = self.ok + len(self.errors) + n
        await until(lambda: self.ok + len(self.errors) >= target or self._task.done(), timeout)

    async def stop(self) -> None:
        self._stop.set()
        await self._task


def notes_of(ch: AnyChannel) -> tuple[str, ...]:
    return tuple(ch.status().config_notes)


# -- discovery and configuration ------------------------------------------------------------
async def test_endpoints_policy_and_method_config_come_from_the_control_plane(
    channel_kind: str,
) -> None:
    node = f"cfg-{channel_kind}"
    async with (
        GreeterFleet(3) as fleet,
        XdsServer(config(static(fleet), "round_robin", service_config=SERVICE_CONFIG)) as server,
        xds_channel(channel_kind, server.address, node) as ch,
    ):
        assert set(await ch.say_hello_ports(30)) == set(fleet.ports)
        cfg = ch.config
        assert cfg.policy == "round_robin"
        method = cfg.methods.lookup("/greeter.Greeter/SayHello")
        assert method is not None and method.timeout_s == 7.0
        assert method.retry is not None and method.retry.max_attempts == 3
        assert cfg.max_requests_per_backend == 50
        assert cfg.outlier is not None and cfg.outlier.failure_percentage is not None
        status = ch.status()
        assert status.resolver_state == "RESOLVED" and status.config_notes == ()
        assert status.resolver_detail is not None
        assert status.resolver_detail["stream"]["connected"] is True
        await until(lambda: all_acked(server.status(), node), timeout=10)
        stream = stream_of(server.status(), node)
        assert stream is not None and stream["client"].startswith("grpc-balancer")
        # An endpoint change reaches the channel.
        await server.update_config(
            config(static(fleet, [0, 2]), "round_robin", service_config=SERVICE_CONFIG)
        )
        await until(reaches(ch, {fleet.ports[0], fleet.ports[2]}), timeout=20)


async def test_peak_ewma_is_sent_to_us_and_applied() -> None:
    async with (
        GreeterFleet(2) as fleet,
        XdsServer(config(static(fleet), [{"peak_ewma": {"decayTime": "5s"}}])) as server,
        xds_channel("aio", server.address, "ewma") as ch,
    ):
        assert set(await ch.say_hello_ports(20)) == set(fleet.ports)
        assert (ch.config.policy, dict(ch.config.policy_config)) == (
            "peak_ewma",
            {"decayTime": "5s"},
        )


async def test_every_channel_of_the_process_shares_one_ads_stream() -> None:
    node = "shared"
    async with (
        GreeterFleet(2) as fleet,
        XdsServer(config(static(fleet))) as server,
        xds_channel("aio", server.address, node) as a,
        xds_channel("aio", server.address, node) as b,
        xds_channel("sync", server.address, node) as c,
    ):
        for ch in (a, b, c):
            assert set(await ch.say_hello_ports(10)) == set(fleet.ports)
        streams = [s for s in server.status()["streams"] if s["node"] == node]
        assert len(streams) == 1
        mine = [cl for cl in ads.clients() if cl.bootstrap.node.id == node]
        assert len(mine) == 1 and mine[0].refs == 3 and mine[0].streams == 1
    assert not [cl for cl in ads.clients() if cl.bootstrap.node.id == node]


async def test_the_user_s_policy_wins_over_the_control_plane_s() -> None:
    async with (
        GreeterFleet(3) as fleet,
        XdsServer(config(static(fleet), "round_robin")) as server,
        xds_channel("aio", server.address, "user-policy", policy="pick_first") as ch,
    ):
        assert len(set(await ch.say_hello_ports(20))) == 1
        assert ch.config.policy == "pick_first"
        assert any("policy='pick_first' given to the channel wins" in n for n in notes_of(ch))


# -- NACKs -------------------------------------------------------------------------------------
async def test_a_nacked_resource_keeps_the_last_good_one(channel_kind: str) -> None:
    node = f"nack-{channel_kind}"
    async with (
        GreeterFleet(3) as fleet,
        XdsServer(config(static(fleet)), test_hooks=True) as server,
        xds_channel(channel_kind, server.address, node) as ch,
    ):
        assert set(await ch.say_hello_ports(30)) == set(fleet.ports)
        await until(lambda: all_acked(server.status(), node), timeout=10)
        good = stream_of(server.status(), node)["types"]["cds"]["acked_version"]  # type: ignore[index]
        server.break_resource("cds", "greeter")

        def nacked() -> bool:
            stream = stream_of(server.status(), node)
            return stream is not None and stream["types"]["cds"]["nack"] is not None

        await until(nacked, timeout=20)
        cds = stream_of(server.status(), node)["types"]["cds"]  # type: ignore[index]
        assert cds["acked_version"] == good
        assert "lb_policy 99 is not supported" in cds["nack"]["error"]
        await until(lambda: any(n.startswith("NACKed cds 'greeter'") for n in notes_of(ch)))
        # Calls go on, on the last good cluster.
        assert set(await ch.say_hello_ports(30)) == set(fleet.ports)
        assert ch.status().resolver_state == "RESOLVED"
        server.heal()
        await until(lambda: all_acked(server.status(), node), timeout=20)
        await until(lambda: notes_of(ch) == (), timeout=10)


async def test_a_listener_deleted_is_an_error_and_the_last_endpoints_stay() -> None:
    async with GreeterFleet(2) as fleet:
        server = XdsServer(config(static(fleet)))
        await server.start()
        try:
            async with xds_channel("aio", server.address, "deleted") as ch:
                assert set(await ch.say_hello_ports(10)) == set(fleet.ports)
                renamed = config(static(fleet)).services["greeter"]
                other = type(config(static(fleet)))(services={"other": renamed})
                await server.update_config(other)
                await until(lambda: ch.status().resolver_state == "ERROR", timeout=20)
                assert "does not exist" in (ch.status().resolver_error or "")
                assert set(await ch.say_hello_ports(10)) == set(fleet.ports)
        finally:
            await server.stop()


# -- policy changes and restarts ---------------------------------------------------------------
async def test_a_policy_change_over_cds_drops_no_call(channel_kind: str) -> None:
    node = f"switch-{channel_kind}"
    async with (
        GreeterFleet(3) as fleet,
        XdsServer(config(static(fleet))) as server,
        xds_channel(channel_kind, server.address, node) as ch,
    ):
        assert set(await ch.say_hello_ports(30)) == set(fleet.ports)
        load = Load(ch)
        try:
            await load.calls_after(50)
            await server.update_config(config(static(fleet), "pick_first"))
            await until(lambda: ch.config.policy == "pick_first", timeout=20)
            await load.calls_after(100)
            mark = len(load.ports)
            await load.calls_after(50)
            assert len(set(load.ports[mark:])) == 1  # pick_first: one backend
            await server.update_config(config(static(fleet), "round_robin"))
            await until(lambda: ch.config.policy == "round_robin", timeout=20)
            await load.calls_after(100)
            mark = len(load.ports)
            await load.calls_after(60)
            assert set(load.ports[mark:]) == set(fleet.ports)
        finally:
            await load.stop()
        assert load.errors == []
        assert load.ok > 300


async def test_a_control_plane_restart_leaves_the_channel_working_and_it_resubscribes() -> None:
    async with GreeterFleet(3) as fleet:
        server = XdsServer(config(static(fleet, [0, 1])))
        await server.start()
        port = server.port
        try:
            async with xds_channel("aio", server.address, "restart") as ch:
                assert set(await ch.say_hello_ports(20)) == set(fleet.ports[:2])
                await server.stop()
                await until(lambda: ch.status().resolver_state == "ERROR", timeout=20)
                assert set(await ch.say_hello_ports(20)) == set(fleet.ports[:2])
                server = XdsServer(config(static(fleet)), port=port)
                await server.start()
                await until(lambda: all_acked(server.status(), "restart"), timeout=60)
                await until(reaches(ch, set(fleet.ports)), timeout=20)
                assert ch.status().resolver_state == "RESOLVED"
        finally:
            await server.stop()


# -- SIGKILL under load ------------------------------------------------------------------------
class ControlPlane:
    """``grpc-balancer xds serve`` in a child process, to SIGKILL."""

    def __init__(self, tmp: Path, port: int) -> None:
        self.tmp, self.port = tmp, port
        self.address = f"127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, target: str) -> None:
        path = self.tmp / f"xds-{time.monotonic_ns()}.json"
        path.write_text(json.dumps({"services": {"greeter": {"target": target}}}))
        argv = [sys.executable, "-m", "grpc_balancer", "xds", "serve", "--config", str(path)]
        self.proc = subprocess.Popen(
            [*argv, "--port", str(self.port), "--host", "127.0.0.1"],
            env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    async def up(self, timeout: float = 30.0) -> None:
        async def answers() -> bool:
            try:
                await asyncio.to_thread(admin.fetch_status, self.address, 1.0)
            except Exception:
                return False
            return True

        await until(answers, timeout)

    async def status(self) -> dict[str, Any]:
        result: dict[str, Any] = await asyncio.to_thread(admin.fetch_status, self.address, 5.0)
        return result

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    cp = ControlPlane(tmp_path, free_port())
    try:
        yield cp
    finally:
        cp.close()


async def test_a_sigkilled_control_plane_fails_no_call_and_its_restart_is_followed(
    channel_kind: str, control_plane: ControlPlane
) -> None:
    node = f"sigkill-{channel_kind}"
    async with GreeterFleet(3) as fleet:
        control_plane.start(static(fleet, [0, 1]))
        await control_plane.up()
        async with xds_channel(channel_kind, control_plane.address, node) as ch:
            assert set(await ch.say_hello_ports(20)) == set(fleet.ports[:2])
            load = Load(ch)
            try:
                await load.calls_after(50)
                control_plane.kill()
                await until(lambda: ch.status().resolver_state == "ERROR", timeout=20)
                await load.calls_after(200)
                assert set(load.ports[-150:]) == set(fleet.ports[:2])
                control_plane.start(static(fleet))
                await control_plane.up()

                async def resubscribed() -> bool:
                    return all_acked(await control_plane.status(), node)

                await until(resubscribed, timeout=60)
                await until(lambda: set(load.ports[-30:]) == set(fleet.ports), timeout=30)
            finally:
                await load.stop()
            assert load.errors == []
            assert ch.status().resolver_state == "RESOLVED"


# -- bad targets ---------------------------------------------------------------------------------
def test_a_bad_xds_target_or_bootstrap_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import grpc_balancer

    monkeypatch.delenv("GRPC_XDS_BOOTSTRAP", raising=False)
    monkeypatch.delenv("GRPC_XDS_BOOTSTRAP_CONFIG", raising=False)
    with pytest.raises(grpc_balancer.BalancerConfigError, match="GRPC_XDS_BOOTSTRAP"):
        grpc_balancer.insecure_channel("xds:///greeter")
    opts = options("127.0.0.1:1", "x")
    with pytest.raises(grpc_balancer.BalancerConfigError, match="federation"):
        grpc_balancer.insecure_channel("xds://authority/greeter", resolver_options=opts)
    with pytest.raises(grpc_balancer.BalancerConfigError, match="no endpoint after the scheme"):
        grpc_balancer.insecure_channel("xds:///", resolver_options=opts)


async def test_the_cli_calls_an_xds_target_with_the_control_plane_s_policy() -> None:
    async with (
        GreeterFleet(2) as fleet,
        XdsServer(config(static(fleet), "pick_first")) as server,
    ):
        env = cli_env(GRPC_XDS_BOOTSTRAP_CONFIG=json.dumps(bootstrap(server.address, "cli")))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "grpc_balancer", "call", "--target", "xds:///greeter",
            "-n", "6", "--status", env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        text = out.decode()
        assert "target xds:///greeter  policy pick_first  state READY" in text
        assert "resolver RESOLVED" in text and "not applied" not in text
