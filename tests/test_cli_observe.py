"""`grpc-balancer call --status / --concurrency / --metrics-port` and log levels, in subprocesses."""

from __future__ import annotations

import re
import subprocess
import sys

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
        assert fields[1] == "READY" and fields[2] == "UNCHECKED" and fields[3] == "no"
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
