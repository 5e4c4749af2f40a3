"""The CLI end to end, in subprocesses, as a user runs it."""

from __future__ import annotations

import contextlib
import itertools
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import grpc_balancer
from grpc_balancer.testing import ServerProcesses, cli_env, free_port

RESPONSE = re.compile(r"^Response from server: Hello (\w+) \(from :(\d+)\)$")


def run_cli(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "grpc_balancer", *args],
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _serve(*args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "grpc_balancer", "serve", *args],
        env=cli_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("how", ["flag", "env"])
def test_serve_prints_banner_and_stops_cleanly_on_sigterm(how: str) -> None:
    port = free_port()
    if how == "flag":
        proc = _serve("--host", "127.0.0.1", "--port", str(port))
    else:
        proc = _serve("--host", "127.0.0.1", SERVER_PORT=str(port))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().rstrip("\n") == (
            f"🚀 Starting the load-balanced gRPC server on :{port}..."
        )
        result = run_cli("call", "--target", f"static:///127.0.0.1:{port}", "-n", "1")
        assert result.returncode == 0, result.stderr
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_call_alternates_between_two_servers_like_the_seed() -> None:
    with ServerProcesses(2) as fleet:
        target = "static:///" + ",".join(f"localhost:{s.port}" for s in fleet.servers)
        result = run_cli("call", "--target", target)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "🚀 Running the gRPC client with load balancing..."
    replies = [RESPONSE.match(line) for line in lines[1:5]]
    assert all(replies), lines
    ports = [int(m.group(2)) for m in replies if m]
    assert ports[0] != ports[1] and ports[0] == ports[2] and ports[1] == ports[3]
    assert {m.group(1) for m in replies if m} == {"World"}
    table = "\n".join(lines[5:])
    for server in fleet.servers:
        assert re.search(rf"localhost:{server.port}\s+2\s+50\.0%", table), table


def test_call_reports_failures_with_exit_1() -> None:
    result = run_cli("call", "--target", f"static:///127.0.0.1:{free_port()}", "-n", "2")
    assert result.returncode == 1
    assert result.stderr.count("Call failed: UNAVAILABLE: no backend reachable") == 2
    assert "Traceback" not in result.stderr


def test_demo_needs_nothing_running() -> None:
    result = run_cli("demo")
    assert result.returncode == 0, result.stderr
    banners = re.findall(r"Starting the load-balanced gRPC server on :(\d+)", result.stdout)
    assert len(banners) == 3
    ports = [
        int(p)
        for p in re.findall(
            r"^Response from server: Hello World \(from :(\d+)\)$", result.stdout, re.M
        )
    ]
    assert len(ports) == 9
    assert {ports.count(int(p)) for p in banners} == {3}
    assert all(a != b for a, b in itertools.pairwise(ports))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["call", "--target", "static:///"], "no endpoint"),
        (["call", "--target", "static:///,"], "empty address list"),
        (["call", "--target", "nosuch:///a:1"], "unknown scheme 'nosuch'"),
        (["call", "--policy", "fastest"], "unknown load-balancing policy 'fastest'"),
        (["call", "--target", "static:///a:70000"], "out of range"),
        (["call", "--service-config", "{bad"], "not valid JSON"),
        (["serve", "--port", "70000"], "--port: must be a whole number in 1..65535, got 70000"),
        (["serve", "--fail-rate", "2"], "--fail-rate: must be a number in [0, 1], got 2"),
        (["serve", "--fail-rate", "nan"], "--fail-rate: must be a number in [0, 1], got nan"),
        (["serve", "--fail-code", "OK", "--fail-rate", "1"], "--fail-code: must be an error"),
        (["serve", "--max-concurrency", "-5"], "--max-concurrency: must be a whole number in 0.."),
        (["serve", "--port", "0"], "argument --port: must be a whole number in 1..65535, got 0"),
        (["serve", "--port", "\uff15"], "argument --port: '\uff15' is not a whole number"),
        (["serve", "--grace", "-1"], "--grace: must be a number in [0, 86400], got -1"),
        (["serve", "--delay-ms", "inf"], "--delay-ms: must be a number in [0, 86400000], got inf"),
        *(
            (["call", "--timeout", bad], f"--timeout: must be a number in (0, 86400], got {bad}")
            for bad in ("0", "-1", "inf", "nan", "1e20")
        ),
        (["call", "-n", "0"], "must be at least 1"),
        (["call", "--policy", ""], "--policy: must be a policy name"),
        (["call", "--policy", " "], "--policy: must be a policy name"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = run_cli(*args, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_server_port_env_is_exit_2() -> None:
    result = run_cli("serve", SERVER_PORT="fifty")
    assert result.returncode == 2
    assert "SERVER_PORT" in result.stderr and "Traceback" not in result.stderr


@contextlib.contextmanager
def _listening(host: str = "0.0.0.0") -> Iterator[int]:
    """A port somebody else is already listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("host", ["127.0.0.1", None])
def test_serve_on_a_busy_port_is_one_line_and_exit_1(host: str | None) -> None:
    with _listening() as port:
        args = ["--port", str(port)] + ([] if host is None else ["--host", host])
        result = run_cli("serve", *args, timeout=30)
    shown = "[::]" if host is None else host
    assert result.returncode == 1
    assert result.stdout == ""  # no banner before the bind succeeded
    assert result.stderr == (
        f"grpc-balancer: error: cannot listen on {shown}:{port}: address already in use\n"
    )


def test_serve_on_an_unassignable_host_is_one_line_and_exit_1() -> None:
    result = run_cli("serve", "--host", "192.0.2.1", "--port", str(free_port()), timeout=30)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("grpc-balancer: error: cannot listen on 192.0.2.1:")
    assert result.stderr.endswith(": cannot assign requested address\n")
    assert result.stderr.count("\n") == 1


def test_call_metrics_port_busy_is_one_line_and_exit_1() -> None:
    with _listening("127.0.0.1") as port:
        result = run_cli(
            "call", "--target", f"static:///127.0.0.1:{free_port()}", "--metrics-port", str(port)
        )
    assert result.returncode == 1
    assert result.stderr == (
        f"grpc-balancer: error: --metrics-port: cannot listen on 127.0.0.1:{port}: "
        "address already in use\n"
    )


@pytest.mark.parametrize(
    ("config", "spread"),
    [
        ('{"methodConfig": [{"name": [{}], "timeout": "5s"}]}', True),  # still round_robin
        ('{"loadBalancingConfig": [{"pick_first": {}}]}', False),  # the config's own policy
    ],
)
def test_a_method_config_alone_does_not_change_the_policy(config: str, spread: bool) -> None:
    with ServerProcesses(2) as fleet:
        target = "static:///" + ",".join(f"localhost:{s.port}" for s in fleet.servers)
        result = run_cli("call", "--target", target, "--service-config", config)
    assert result.returncode == 0, result.stderr
    ports = {m.group(2) for line in result.stdout.splitlines() if (m := RESPONSE.match(line))}
    assert len(ports) == (2 if spread else 1), result.stdout


def test_version() -> None:
    result = run_cli("--version", timeout=30)
    assert result.returncode == 0
    assert result.stdout == f"grpc-balancer {grpc_balancer.__version__}\n"


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_raises_only_our_loggers_and_is_accepted_after_the_subcommand(
    where: str,
) -> None:
    call = ["call", "--target", f"static:///127.0.0.1:{free_port()}", "-n", "1", "--timeout", "2"]
    args = ["-v", *call] if where == "before" else [*call, "-v"]
    result = run_cli(*args)
    assert result.returncode == 1  # nothing listens there
    logged = [line.split()[3] for line in result.stderr.splitlines() if " DEBUG " in line]
    assert logged, result.stderr
    assert all(name.startswith("grpc_balancer") for name in logged), logged  # no asyncio


def test_log_level_after_the_subcommand() -> None:
    result = run_cli("resolve", "static:///127.0.0.1:1", "--log-level", "info", timeout=30)
    assert result.returncode == 0, result.stderr


def _readme_block_after(marker: str) -> list[str]:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    after = text[text.index(marker) :]
    start = after.index("```\n") + 4
    return after[start : after.index("```", start)].rstrip("\n").split("\n")


def test_readme_demo_sample_is_what_demo_prints() -> None:
    """Every line of the README's `make demo` sample (ports aside) is printed, in order."""
    result = run_cli("demo")
    assert result.returncode == 0, result.stderr
    printed = [re.sub(r":\d{2,5}", ":PORT", line) for line in result.stdout.splitlines()]
    sample = [
        re.sub(r":\d{2,5}", ":PORT", line) for line in _readme_block_after("`make demo` prints:")
    ]
    at = 0
    for line in sample:
        if line == "...":
            continue
        assert line in printed[at:], (line, printed)
        at = printed.index(line, at) + 1
    assert any(line.startswith("Target: static:///") for line in sample)


def test_demo_rejects_an_unknown_policy_before_starting_servers() -> None:
    result = run_cli("demo", "--policy", "nope", timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""  # no server was started
    assert "unknown load-balancing policy 'nope'" in result.stderr


def test_call_lists_backends_in_target_order_and_each_unreachable_one() -> None:
    down = free_port()
    with ServerProcesses(2) as fleet:
        up = sorted((s.port for s in fleet.servers), reverse=True)  # not string order
        addresses = [f"127.0.0.1:{up[0]}", f"127.0.0.1:{down}", f"127.0.0.1:{up[1]}"]
        result = run_cli("call", "--target", "static:///" + ",".join(addresses), "-n", "4")
    assert result.returncode == 0, result.stderr  # the calls went to the two that are up
    lines = result.stdout.splitlines()
    table = lines[lines.index("backend                       calls   share") + 1 :]
    assert [line.split()[0] for line in table[:3]] == addresses
    assert table[3].startswith(f"unreachable: 127.0.0.1:{down} (TRANSIENT_FAILURE): ")
    assert "Connection refused" in table[3]
