"""bench/bench_xds_push.py: the quick mode runs end to end (our control plane, grpcio's
native client and our own, each in a child process) and writes the documented JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("envoy")

from bench import bench_xds_push as bench
from grpc_balancer.testing import cli_env

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_the_quick_run_measures_both_clients(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_xds_push", "--quick", "--out", str(tmp_path)],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "xds_push.json").read_text())
    assert set(result["clients"]) == set(bench.CLIENTS)
    for client in result["clients"].values():
        assert client["trials"] == 2
        assert 0 < client["p50_ms"] <= client["p99_ms"] == client["max_ms"]
    assert [r["client"] for r in result["runs"]] == ["grpcio", "balancer", "balancer-aio"]
    assert {k: len(v) for k, v in result["round_ratios"].items()} == dict.fromkeys(bench.OURS, 1)
    assert result["quick"] is True
    assert (tmp_path / "xds_push.png").stat().st_size > 0


def test_the_committed_result_is_a_full_run() -> None:
    result = json.loads((ROOT / "bench" / "results" / "xds_push.json").read_text())
    assert result["quick"] is False
    assert all(c["trials"] == 20 for c in result["clients"].values())
    for kind in bench.OURS:
        assert result["met"][kind] == (
            result["clients"][kind]["p50_ms"] <= bench.TARGET_P50_MS
            and result["clients"][kind]["p99_ms"] <= bench.TARGET_P99_MS
        )
