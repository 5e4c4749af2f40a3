"""`grpc-balancer call --status / --concurrency / --metrics-port` and log levels, in subprocesses."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request

from grpc_balancer.testing import ServerProcesses, cli_env


def run_cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "grpc_balancer", *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_call_status_dump_after_concurrent_calls() -> None:
    with ServerProcesses(2) as fleet:
        result = run_cli(
            "call", "--target", fleet.target(), "-n", "20", "--concurrency", "4", "--status"
        )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"target {fleet.target()}  policy round_robin  state READY" in out
    assert "resolver RESOLVED" in out
    calls = 0
    for address in fleet.addresses:
        line = next(ln for ln in out.splitlines() if ln.startswith(address + " "))
        fields = line.split()
        assert fields[1] == "READY" and fields[2] == "SERVING" and fields[3] == "no"
        calls += int(fields[5])
    assert calls == 20
    assert len(re.findall(r"^Response from server: ", out, re.M)) == 20


def test_log_level_info_shows_state_changes_not_calls() -> None:
    with ServerProcesses(2) as fleet:
        result = run_cli("--log-level", "info", "call", "--target", fleet.target(), "-n", "10")
    assert result.returncode == 0, result.stderr
    ours = [ln for ln in result.stderr.splitlines() if " grpc_balancer." in ln]
    for address in fleet.addresses:
        assert sum(f"endpoint added {address}" in ln for ln in ours) == 1
        assert sum(f"{address}: " in ln and ln.endswith("-> READY") for ln in ours) == 1
    assert len(ours) < 10  # a line per state change, none per call


def test_status_on_sigusr1_while_running() -> None:
    with ServerProcesses(2) as fleet:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "grpc_balancer", "call", "--target", fleet.target(),
                "-n", "400", "--rate", "20", "--status",
            ],
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None and proc.stderr is not None
            while "Response from server" not in proc.stdout.readline():
                assert proc.poll() is None
            proc.send_signal(signal.SIGUSR1)
            header = f"target {fleet.target()}  policy round_robin  state READY"
            lines = []
            while header not in (line := proc.stderr.readline()):  # bounded by the 400 calls
                assert line, "no status on stderr"
                lines.append(line)
            report = [proc.stderr.readline() for _ in range(4)]
            proc.send_signal(signal.SIGINT)  # no need to wait for all 400 calls
            proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
    assert "resolver RESOLVED" in report[0]
    assert sorted(ln.split()[0] for ln in report[2:]) == sorted(fleet.addresses)


def test_status_every_interval_on_stderr() -> None:
    with ServerProcesses(2) as fleet:
        result = run_cli(
            "call", "--target", fleet.target(), "-n", "40", "--rate", "20", "--status-every", "0.3"
        )
    assert result.returncode == 0, result.stderr
    headers = [ln for ln in result.stderr.splitlines() if ln.startswith(f"target {fleet.target()}")]
    assert len(headers) >= 2  # 2 s of calls, a report every 0.3 s
    assert not any(ln.startswith("target ") for ln in result.stdout.splitlines())


def test_metrics_port_serves_while_the_calls_run() -> None:
    with ServerProcesses(2) as fleet:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "grpc_balancer", "call", "--target", fleet.target(),
                "-n", "400", "--rate", "20", "--metrics-port", "0",
            ],
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            url = None
            while url is None:
                line = proc.stdout.readline()
                assert line, "no metrics URL printed"
                match = re.search(r"Metrics on (http://127\.0\.0\.1:\d+/metrics)", line)
                url = match.group(1) if match else None
            while "Response from server" not in proc.stdout.readline():
                assert proc.poll() is None
            with urllib.request.urlopen(url, timeout=10) as resp:
                text = resp.read().decode()
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
    for address in fleet.addresses:
        assert f'grpc_lb_backend="{address}"' in text
    assert "grpc_client_attempt_started_total{" in text
