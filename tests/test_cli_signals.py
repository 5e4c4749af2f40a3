"""Ctrl-C and signals as a user meets them: serve's drain (announced, a second Ctrl-C
stops now), Ctrl-C during registration retries, call/demo print what they counted, no
traceback for a Ctrl-C during startup imports, and graceful stops that fail no call."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import grpc
import grpc.aio
import pytest

import grpc_balancer
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.demo.server import GreeterServer, serve_forever
from grpc_balancer.demo.servicer import Faults
from grpc_balancer.testing import ServerProcesses, cli_env, free_port
from tests.helpers import eventually
from tests.load import Load

pytestmark = pytest.mark.slow


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "grpc_balancer", *args],
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _lines_until(stream: object, pattern: str, limit: int = 10_000) -> Iterator[str]:
    """Lines of ``stream`` up to and including the first matching ``pattern``."""
    for _ in range(limit):
        line = stream.readline()  # type: ignore[attr-defined]
        assert line, f"stream ended before {pattern!r}"
        yield line
        if re.search(pattern, line):
            return
    raise AssertionError(f"no {pattern!r} in {limit} lines")


def test_ctrl_c_during_registration_retries_stops_at_once() -> None:
    dead_etcd = free_port()
    proc = _cli(
        "serve", "--host", "127.0.0.1", "--port", str(free_port()),
        "--register", f"etcd://127.0.0.1:{dead_etcd}/svc",
    )  # fmt: skip
    try:
        list(_lines_until(proc.stdout, "Starting the load-balanced gRPC server"))
        list(_lines_until(proc.stderr, r"\(retrying\)"))  # inside the first retry
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    # before: the retries went on to their 10 s limit, then "could not register", exit 1
    assert proc.returncode == 0, err
    assert "could not register" not in err and "Traceback" not in err
    assert "draining 0 in-flight calls for up to 5 s; Ctrl-C again to stop now" in out


async def test_first_ctrl_c_announces_the_drain_and_the_second_stops_now() -> None:
    server = GreeterServer(0, "127.0.0.1", faults=Faults(delay_ms=3_600_000), grace_s=3600)
    said: list[str] = []
    ready = asyncio.Event()

    def started(_server: GreeterServer) -> None:
        ready.set()

    serving = asyncio.get_running_loop().create_task(
        serve_forever(server, on_started=started, announce=said.append)
    )
    await asyncio.wait_for(ready.wait(), 30)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = greeter_pb2_grpc.GreeterStub(channel).SayHello(greeter_pb2.HelloRequest())
        await eventually(lambda: server.in_flight == 1)
        os.kill(os.getpid(), signal.SIGINT)
        await eventually(lambda: bool(said))
        assert said == ["draining 1 in-flight calls for up to 3600 s; Ctrl-C again to stop now"]
        os.kill(os.getpid(), signal.SIGINT)  # the hour-long call is cut off now
        await asyncio.wait_for(serving, 30)
        with pytest.raises(grpc.aio.AioRpcError):
            await call


@pytest.mark.parametrize("command", ["call", "demo"])
def test_ctrl_c_in_call_or_demo_prints_what_was_counted(command: str) -> None:
    with ServerProcesses(2) as fleet:
        if command == "call":
            proc = _cli("call", "--target", fleet.target(), "-n", "1000000", "--rate", "50")
            marker = "^Response from server"
        else:
            proc = _cli("demo", "--live", "-n", "1000000", "--rate", "50")
            marker = r"^\[\s*\d+\.\ds\] .*: [1-9]\d*/1000000 calls"  # plain live lines
        try:
            seen = list(_lines_until(proc.stdout, marker))
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    lines = [*seen, *out.splitlines()]
    header = next(i for i, ln in enumerate(lines) if ln.startswith("backend "))
    counted = [int(ln.split()[1]) for ln in lines[header + 1 :] if re.match(r"\S+:\d+ ", ln)]
    done = re.search(r"^interrupted after (\d+) calls$", out, re.MULTILINE)
    assert done is not None, out
    assert sum(counted) <= int(done.group(1)) and int(done.group(1)) >= 1


def test_ctrl_c_during_startup_imports_is_quiet() -> None:
    script = (
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def imp(name, *a, **k):\n"
        "    if name == 'grpc_balancer.cli.main':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = imp\n"
        "from grpc_balancer.cli import main\n"
        "sys.exit(main(['--version']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 130
    assert result.stderr == ""


async def test_twenty_graceful_stops_under_load_fail_no_call() -> None:
    """The client as `grpc-balancer call` makes it (health checked), a backend stopped
    with SIGINT 20 times while calls flow: grpcio's server cancels a call that arrives
    after its stop began, so the server drains (NOT_SERVING, calls stop) first."""
    from grpc_balancer.cli.main import cli_service_config

    with ServerProcesses(2) as fleet:
        config = cli_service_config(None)
        async with grpc_balancer.aio.insecure_channel(
            fleet.target(), policy="round_robin", service_config=config
        ) as ch:
            assert await ch.wait_for_settled(10)
            victim = fleet.servers[1]
            errors = []
            for _ in range(20):
                await eventually(lambda: all(sc.usable for sc in ch.subchannels), timeout=30)
                load = Load(ch, total=300, concurrency=8, pace_s=0.005).start()
                await load.reached(50)
                victim.signal(signal.SIGINT)
                assert victim.proc is not None
                assert await asyncio.to_thread(victim.proc.wait, 60) == 0
                await load.finish()
                errors += load.errors
                victim.start(wait=True)
    assert errors == [], [f"{e.code().name}: {e.details()}" for e in errors]
