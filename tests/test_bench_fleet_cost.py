"""bench/fleet_cost.py's summary: medians, ranges and per-round ratios to grpcio."""

from __future__ import annotations

import pytest

from bench.fleet_cost import KINDS, summarize


def row(kind: str, r: int, t: float | None, rss: float) -> dict[str, object]:
    return {
        "kind": kind,
        "round": r,
        "all_established_s": t,
        "cpu_s": 1.0,
        "rss_per_endpoint_kib": rss,
    }


def test_ratios_are_taken_per_round_against_that_rounds_grpcio() -> None:
    rows = [
        row("grpcio", 0, 1.0, 20.0),
        row("ours", 0, 1.5, 30.0),
        row("grpcio", 1, 2.0, 20.0),
        row("ours", 1, 2.0, 25.0),
    ]
    summary = summarize(rows)
    assert set(summary) == set(KINDS)
    ours = summary["ours"]
    assert ours["all_established_s"]["ratio_range"] == [1.0, 1.5]
    assert ours["all_established_s"]["ratio_median"] == pytest.approx(1.25)
    assert ours["rss_per_endpoint_kib"]["range"] == [25.0, 30.0]
    assert summary["core channels"]["cpu_s"]["median"] is None  # no runs: nothing made up


def test_a_run_that_never_connected_is_left_out_of_the_time() -> None:
    rows = [row("grpcio", 0, 1.0, 20.0), row("ours", 0, None, 30.0), row("ours", 1, 3.0, 30.0)]
    summary = summarize(rows)
    assert summary["ours"]["all_established_s"]["range"] == [3.0, 3.0]
    assert summary["ours"]["all_established_s"]["ratio_median"] is None  # round 1 has no grpcio
