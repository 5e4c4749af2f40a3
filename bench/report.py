"""Markdown tables from bench/results/policies_*.json (for docs/benchmarks.md):
``python -m bench.report``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"policies_{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _latency_table(results: dict[str, dict[str, Any]], extra: tuple[str, ...] = ()) -> str:
    head = "| policy | success | p50 ms | p90 ms | p99 ms | p99.9 ms |" + "".join(
        f" {e} |" for e in extra
    )
    lines = [head, "|" + "---|" * (6 + len(extra))]
    for name, r in results.items():
        row = f"| {name} | {r['success']:.2%} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['p999_ms']} |"
        row += "".join(f" {r.get(e, '')} |" for e in extra)
        lines.append(row)
    return "\n".join(lines)


def render() -> str:
    out: list[str] = []
    for key in ("s1_one_slow", "s2_stall", "s3_two_slow", "s4_capacity_orca"):
        data = _load(key)
        if data is None:
            continue
        out.append(f"### {data['title']}\n")
        extra = ("throughput_per_s", "share_by_slots") if key.startswith("s4") else ()
        out.append(_latency_table(data["results"], extra))
        facts = {k: v for k, v in data.items() if k not in ("title", "results")}
        out.append(f"\n{json.dumps(facts)}\n\nPlot: `bench/results/policies_{key}.png`\n")
    s5 = _load("s5_slow_start")
    if s5 is not None:
        out.append(f"### {s5['title']}\n")
        out.append(
            "| policy | p99 during join ms | steady p99 ms | ratio | calls to the cold backends |"
        )
        out.append("|---|---|---|---|---|")
        for name, r in s5["results"].items():
            out.append(
                f"| {name} | {r['join_window']['p99_ms']} | {r['steady_p99_ms']} | "
                f"{r['join_p99_over_steady']} | {r['cold_share_during_join']:.2%} |"
            )
        out.append(
            f"\nslow start: {json.dumps(s5['slow_start_config'])}; target met: "
            f"{s5['target_met']}\n\nPlot: `bench/results/policies_s5_slow_start.png`\n"
        )
    s6 = _load("s6_ring_hash")
    if s6 is not None:
        out.append("### S6: ring_hash, 10,000 keys over 10 endpoints, each removed in turn\n")
        out.append(f"{json.dumps(s6)}\n")
    pick = _load("pick_cost")
    if pick is not None:
        out.append("### Pick cost (µs per pick)\n")
        out.append("| policy | 3 | 100 | 10,000 |\n|---|---|---|---|")
        for name, row in pick["us_per_pick"].items():
            out.append(f"| {name} | {row['3']} | {row['100']} | {row['10000']} |")
        out.append("\nPlot: `bench/results/policies_pick_cost.png`\n")
    return "\n".join(out)


if __name__ == "__main__":
    print(render())
