"""Benchmark figures in README.md and docs/ are rendered from bench/results/*.json
(``python -m bench.figures --write``); a figure that disagrees with its JSON fails here."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from bench import figures

ROOT = Path(__file__).resolve().parent.parent


def test_every_figures_block_matches_its_json() -> None:
    assert figures.stale() == [], "run: python -m bench.figures --write"


def test_a_figure_that_disagrees_with_its_json_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    real = figures._json

    def edited(name: str) -> Any:
        data = copy.deepcopy(real(name))
        if name == "policies_s4_capacity_orca":
            data["results"]["grpcio weighted_round_robin"]["p99_ms"] = 211.0
        return data

    monkeypatch.setattr(figures, "_json", edited)
    assert "README.md: policies-summary" in figures.stale()
    assert "docs/benchmarks.md: policies-summary" in figures.stale()


def _tables_outside_blocks(text: str) -> list[str]:
    inside = False
    loose = []
    for line in text.splitlines():
        # ours, and other generators' blocks (bench_cpu --render: <!-- bench_cpu:begin -->)
        if re.match(r"<!-- (figures:[\w-]+|[\w-]+:begin) -->", line):
            inside = True
        elif line == "<!-- /figures -->" or re.match(r"<!-- [\w-]+:end -->", line):
            inside = False
        elif line.startswith("|") and not inside:
            loose.append(line)
    return loose


def test_benchmark_tables_are_all_generated() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Benchmarks") : readme.index("\n## Troubleshooting")]
    assert _tables_outside_blocks(section) == []
    assert _tables_outside_blocks((ROOT / "docs" / "benchmarks.md").read_text()) == []


def test_s4_figures_are_the_committed_ones() -> None:
    """The figures of issue 12's report: 48.4 ms vs 39.1 ms, round_robin 83.7 %."""
    summary = figures.policies_summary()
    assert "p99 39.1 ms" in summary and "p99 48.4 ms" in summary and "83.7 %" in summary
    assert "211" not in summary and "86.6" not in summary


def test_bytecode_layers_put_each_file_in_its_layer() -> None:
    from bench.bench_bytecodes import OTHER, layer_of

    site = "/x/site-packages"
    assert layer_of("/r/src/grpc_balancer/_aio/calls.py").startswith("ours: driver")
    assert layer_of("/r/src/grpc_balancer/_attempts/plan.py").startswith("ours: attempt plan")
    assert layer_of("/r/src/grpc_balancer/policies/round_robin.py").startswith("ours: picking")
    assert layer_of("/r/src/grpc_balancer/_core/load.py").startswith("ours: accounting")
    assert layer_of("/r/src/grpc_balancer/_core/status.py") == "ours: other"
    assert layer_of(f"{site}/grpc/aio/_call.py").startswith("grpcio")
    assert layer_of("/usr/lib/python3.11/asyncio/events.py") == OTHER
