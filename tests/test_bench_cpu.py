"""bench/bench_cpu.py: the quick mode runs end to end and writes the documented JSON;
the README and docs tables are the ones rendered from the committed cpu.json."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import bench_cpu

ROOT = Path(__file__).resolve().parent.parent

POINT_KEYS = {
    "name": str,
    "label": str,
    "kind": str,
    "param": int,
    "target": float,
    "unit": str,
    "rounds": int,
    "cycles_per_round": int,
    "chunk": int,
    "ratio_median": float,
    "ratio_min": float,
    "ratio_max": float,
    "ratios": list,
    "ratio_pooled": float,
    "rounds_above_1": int,
    "us_per_unit_median": dict,
    "us_per_unit": dict,
    "units_per_s_median": dict,
    "units": dict,
    "failed": dict,
    "met": bool,
}


def check_schema(result: dict[str, Any], names: list[str]) -> None:
    assert result["schema"] == bench_cpu.SCHEMA_VERSION
    for key in ("command", "started_utc", "duration_s", "settings", "method", "summary"):
        assert key in result
    machine = result["machine"]
    assert len(machine["loadavg_start"]) == 3 and len(machine["loadavg_end"]) == 3
    assert [p["name"] for p in result["points"]] == names
    for p in result["points"]:
        for key, kind in POINT_KEYS.items():
            assert isinstance(p[key], kind), (p["name"], key, p[key])
        assert len(p["ratios"]) == p["rounds"] >= 1
        assert p["ratio_min"] <= p["ratio_median"] <= p["ratio_max"]
        assert p["met"] == (p["ratio_median"] <= p["target"])
        if p["kind"] == "open":
            assert set(p["launch_lag_ms"]) == set(bench_cpu.SIDES)
        for side in bench_cpu.SIDES:
            assert p["us_per_unit_median"][side] > 0
            assert p["units"][side] > 0
            assert p["failed"][side] == 0
    met = set(result["summary"]["met"]) | set(result["summary"]["not_met"])
    assert met == set(names)
    for side in bench_cpu.SIDES:
        profile = result["profile"][side]
        assert profile["calls_per_rpc"] >= profile["python_calls_per_rpc"] > 0
        assert profile["top_cumulative"]


@pytest.mark.slow
def test_quick_run_writes_the_documented_json(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_cpu", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "cpu.json").read_text())
    assert result["quick"] is True
    check_schema(result, list(bench_cpu.BY_NAME))
    assert (tmp_path / "cpu.png").stat().st_size > 10_000
    assert "| aio closed loop, concurrency 8 |" in proc.stdout


def test_committed_results_follow_the_schema() -> None:
    result = json.loads((bench_cpu.RESULTS / "cpu.json").read_text())
    assert result["quick"] is False
    check_schema(result, list(bench_cpu.BY_NAME))


@pytest.mark.parametrize("path", bench_cpu.RENDERED, ids=lambda p: p.name)
def test_tables_are_rendered_from_the_json(path: Path) -> None:
    """Figures are never typed by hand: ``python -m bench.bench_cpu --render``."""
    result = json.loads((bench_cpu.RESULTS / "cpu.json").read_text())
    text = path.read_text()
    begin, end = text.index(bench_cpu.BEGIN), text.index(bench_cpu.END)
    block = text[begin + len(bench_cpu.BEGIN) : end].strip()
    assert block == bench_cpu.render_markdown(result)
