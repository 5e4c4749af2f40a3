"""``grpc-balancer xds serve | bootstrap | status`` end to end, as a user runs them."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("envoy")

from grpc_balancer.testing import ServerProcesses, cli_env
from tests.etcd_helpers import until
from tests.xds_helpers import XdsClient, all_acked, stream_of

pytestmark = pytest.mark.slow


def run_cli(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "grpc_balancer", *args],
        env=cli_env(**env), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


class Serve:
    """``grpc-balancer xds serve`` in a child process on an ephemeral port."""

    def __init__(self, config: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "grpc_balancer", "xds", "serve", "--config", str(config),
             "--port", "0", *extra],
            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"xDS control plane on (\S+) \(", line)
        assert match, (line, self.proc.stderr.read() if self.proc.stderr else "")
        self.address = match.group(1)

    def status(self) -> dict[str, object]:
        result = run_cli("xds", "status", "--server", self.address, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out, err


@pytest.fixture
def backends() -> Iterator[ServerProcesses]:
    """Two greeter servers (``grpc-balancer serve --port``) in child processes."""
    with ServerProcesses(2) as servers:
        yield servers


def write(path: Path, target: str, policy: object = "round_robin") -> Path:
    path.write_text(json.dumps({"services": {"greeter": {"target": target, "policy": policy}}}))
    return path


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_serve_bootstrap_status_with_a_real_client(
    tmp_path: Path, backends: ServerProcesses, sig: int
) -> None:
    config = write(tmp_path / "xds.json", backends.target())
    serve = Serve(config)
    try:
        boot = run_cli("xds", "bootstrap", "--server", serve.address, "--node-id", "cli-node")
        assert boot.returncode == 0, boot.stderr
        bootstrap = json.loads(boot.stdout)
        assert bootstrap["xds_servers"][0] == {
            "server_uri": serve.address,
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }
        assert bootstrap["node"]["id"] == "cli-node"
        ports = {s.port for s in backends.servers}
        async with XdsClient(serve.address, "cli-node") as client:
            assert await client.ports(20) == ports
            await until(lambda: all_acked(serve.status(), "cli-node"), timeout=30)
            text = run_cli("xds", "status", "--server", serve.address)
            assert text.returncode == 0, text.stderr
            assert "node 'cli-node' [grpc-core" in text.stdout
            assert "service greeter" in text.stdout
            for kind in ("lds", "rds", "cds", "eds"):
                assert f"  {kind}: greeter sent=" in text.stdout
            # SIGHUP reloads the file: one backend only.
            write(config, f"static:///{backends.servers[0].address}")
            serve.proc.send_signal(signal.SIGHUP)
            await until(client.reaches({backends.servers[0].port}), timeout=30)
    finally:
        code, out, err = serve.stop(sig)
    assert code == 0, err
    assert "stopped" in out


def test_bad_config_is_one_line_naming_the_field_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"services": {"greeter": {"target": "static:///127.0.0.1:1",
                                                         "policy": [{"round_robin": 1}]}}}))  # fmt: skip
    result = run_cli("xds", "serve", "--config", str(bad), "--port", "0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "services.greeter.policy[0].round_robin must be an object" in lines[0]


def test_a_busy_port_is_one_line(tmp_path: Path) -> None:
    config = write(tmp_path / "xds.json", "static:///127.0.0.1:1")
    serve = Serve(config)
    try:
        port = serve.address.rsplit(":", 1)[1]
        result = run_cli("xds", "serve", "--config", str(config), "--port", port)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines() == [
            f"grpc-balancer: error: cannot listen on 127.0.0.1:{port}: Address already in use"
        ]
    finally:
        serve.stop()


def test_status_of_nothing_is_one_line_exit_1() -> None:
    result = run_cli("xds", "status", "--server", "127.0.0.1:1", "--timeout", "2")
    assert result.returncode == 1
    assert result.stderr.startswith("grpc-balancer: error: no status from 127.0.0.1:1")


def test_test_hooks_are_off_unless_asked(tmp_path: Path) -> None:
    import grpc

    from grpc_balancer.xds import admin

    serve = Serve(write(tmp_path / "xds.json", "static:///127.0.0.1:1"))
    try:
        with pytest.raises(grpc.RpcError) as info:
            admin.call(serve.address, admin.FAULT, {"break": ["cds", "greeter"]})
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
        assert stream_of(serve.status(), "x") is None
    finally:
        serve.stop()


async def test_test_hooks_break_heal_and_set_config_over_the_admin_service(
    tmp_path: Path, backends: ServerProcesses
) -> None:
    import asyncio

    from grpc_balancer.xds import admin

    serve = Serve(write(tmp_path / "xds.json", backends.target()), "--test-hooks")
    try:
        async with XdsClient(serve.address, "hooks") as client:
            ports = {s.port for s in backends.servers}
            assert await client.ports(10) == ports
            await until(lambda: all_acked(serve.status(), "hooks"), timeout=30)
            await asyncio.to_thread(
                admin.call, serve.address, admin.FAULT, {"break": ["cds", "greeter"]}
            )

            def nack() -> object:
                stream = stream_of(serve.status(), "hooks")
                return stream and stream["types"]["cds"]["nack"]

            await until(lambda: bool(nack()), timeout=30)
            assert "LB policy is not supported" in nack()["error"]  # type: ignore[index]
            assert await client.ports(10) == ports  # the last good config
            await asyncio.to_thread(admin.call, serve.address, admin.FAULT, {"heal": True})
            await until(lambda: all_acked(serve.status(), "hooks"), timeout=30)
            one = backends.servers[1]
            new = {"services": {"greeter": {"target": f"static:///{one.address}"}}}
            await asyncio.to_thread(admin.call, serve.address, admin.SET_CONFIG, new)
            await until(client.reaches({one.port}), timeout=30)
            with pytest.raises(Exception, match=r"services\.greeter: unknown field"):
                bad = {"services": {"greeter": {"target": "static:///1.2.3.4:5", "x": 1}}}
                await asyncio.to_thread(admin.call, serve.address, admin.SET_CONFIG, bad)
    finally:
        serve.stop()
