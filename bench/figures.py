"""Every benchmark figure in README.md and docs/*.md, rendered from the committed JSON
in bench/results/. The docs hold each block between markers::

    <!-- figures:NAME -->
    ...generated markdown...
    <!-- /figures -->

``python -m bench.figures --write`` rewrites the blocks; ``python -m bench.figures``
(no flag) exits 1 and names each stale block. tests/test_figures.py runs the check, so
a figure that disagrees with its JSON fails the tests.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- figures:([\w-]+) -->\n)(.*?)(<!-- /figures -->)", re.DOTALL)


def _json(name: str) -> Any:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _pct(x: float, digits: int = 1) -> str:
    return f"{x * 100:.{digits}f} %"


def _ms(x: float) -> str:
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def _ratio(x: float, digits: int = 2) -> str:
    return f"{x:.{digits}f}×"


# -- call path --------------------------------------------------------------------------------
def instructions() -> str:
    r = _json("instructions")
    rows = "".join(
        f"| {p['unit']} | {p['ours']:,.0f} | {p['grpcio']:,.0f} | {_ratio(p['ratio'], 3)} "
        f"({p['ratio_min']:.3f}–{p['ratio_max']:.3f}) |\n"
        for p in r["points"].values()
    )
    return (
        "| client instructions per … (callgrind) | grpc_balancer | grpcio "
        "| ratio, median of rounds (range) |\n|---|---|---|---|\n"
        + rows
        + f"\n`{r['command']}`, {r['when']}, {len(next(iter(r['points'].values()))['rounds'])} "
        f"rounds per point, load average {r['load_average']:.1f}.\n"
    )


def bytecodes() -> str:
    r = _json("bytecodes")
    ours, theirs = r["ours"]["layers"], r["grpcio"]["layers"]
    layers = list(dict.fromkeys([*ours, *theirs]))
    rows = "".join(
        f"| {layer} | {ours.get(layer, 0):,.0f} | {theirs.get(layer, 0):,.0f} |\n"
        for layer in layers
    )
    totals = r["totals"]
    top = ", ".join(
        f"`{f['function']}` {f['per_rpc']:.0f}"
        for f in r["ours"]["top_functions"]
        if not f["function"].startswith(("base_events", "events", "selector", "contextlib"))
    )
    return (
        "| Python bytecodes per unary RPC, by layer | grpc_balancer | grpcio |\n|---|---|---|\n"
        + rows
        + f"| **total** | **{r['ours']['per_rpc']:,.0f}** | **{r['grpcio']['per_rpc']:,.0f}** |\n"
        + f"\nOurs' busiest functions (bytecodes per RPC): {top}. Totals per round: ours "
        + ", ".join(f"{t:,.0f}" for t in totals["ours"])
        + "; grpcio "
        + ", ".join(f"{t:,.0f}" for t in totals["grpcio"])
        + f". `{r['command']}`, {r['when']}, {r['rpcs']} RPCs at concurrency "
        f"{r['concurrency']} per round.\n"
    )


# -- policies --------------------------------------------------------------------------------
def policies_summary() -> str:
    s1, s2, s3 = (
        _json("policies_s1_one_slow"),
        _json("policies_s2_stall"),
        _json("policies_s3_two_slow"),
    )
    s4, s5 = _json("policies_s4_capacity_orca"), _json("policies_s5_slow_start")
    s6, pick = _json("policies_s6_ring_hash"), _json("policies_pick_cost")
    r1, r2, r3 = s1["results"], s2["results"], s3["results"]
    r4, r5 = s4["results"], s5["results"]
    oracle = r1["oracle (slow removed)"]
    ours, rr4, grpc_wrr = (
        r4["weighted_round_robin"],
        r4["round_robin"],
        r4["grpcio weighted_round_robin"],
    )
    best = s3["best"]
    others = max(
        v for p, row in pick["us_per_pick"].items() if p != "peak_ewma" for v in row.values()
    )
    rows = [
        (
            "S1: one of 5 backends 10× slower",
            "peak_ewma p99 ≤ 1.2× oracle, p50 ≤ round_robin's",
            f"**{_ratio(s1['peak_ewma_p99_over_oracle'])}** ({r1['peak_ewma']['p99_ms']:.1f} vs "
            f"{oracle['p99_ms']:.1f} ms); p50 {r1['peak_ewma']['p50_ms']:.1f} vs "
            f"{r1['round_robin']['p50_ms']:.1f} ms; round_robin p99 {_ms(r1['round_robin']['p99_ms'])} ms",
        ),
        (
            "S2: one backend stalls at 2 s for 30 s, 1 s deadline",
            "peak_ewma success ≥ 99.9 %",
            f"**{_pct(s2['peak_ewma_success'], 2)}**; round_robin {_pct(r2['round_robin']['success'])}, "
            f"least_request {_pct(r2['least_request']['success'], 2)}",
        ),
        (
            "S3: two of five slow",
            "best p99 ≤ 1.5× oracle",
            f"**{_ratio(s3['best_p99_over_oracle'])}** with `{best}` "
            f"({r3[best]['p99_ms']:.1f} vs {r3['oracle (slow removed)']['p99_ms']:.1f} ms); "
            f"plain P2C {_ms(r3['peak_ewma']['p99_ms'])} ms",
        ),
        (
            "S4: capacity 1/2/4 slots, ORCA reports",
            "weighted_round_robin vs round_robin",
            f"ours **{_pct(ours['success'])}** success, p99 {_ms(ours['p99_ms'])} ms, "
            f"{ours['throughput_per_s']:.0f} calls/s; round_robin {_pct(rr4['success'])}, "
            f"{rr4['throughput_per_s']:.0f} calls/s; grpcio's own WRR on our reports "
            f"{_pct(grpc_wrr['success'])}, p99 {_ms(grpc_wrr['p99_ms'])} ms",
        ),
        (
            "S5: two cold backends join (5× slow for 10 s)",
            "p99 during join ≤ 1.3× steady with slow start",
            f"round_robin + slow start **{_ratio(r5['round_robin + slow start']['join_p99_over_steady'])}**, "
            f"least_request + slow start **{_ratio(r5['least_request + slow start']['join_p99_over_steady'])}**; "
            f"without slow start {_ratio(r5['round_robin']['join_p99_over_steady'], 1)}",
        ),
        (
            f"S6: ring_hash, {s6['keys']:,} keys over {s6['endpoints']} endpoints, one removed",
            "moved ≤ 1.2/N, max/mean ≤ 1.25",
            f"moved **{s6['moved_over_1_n_max']:.2f}/N** at worst, max/mean "
            f"**{s6['spread_max_over_mean']:.2f}**",
        ),
        (
            "pick cost, 3 / 100 / 10,000 endpoints, every policy",
            "≤ 5 µs",
            f"**≤ {pick['worst_us']:.1f} µs** (peak_ewma at 10,000; the others ≤ {others:.2f} µs)",
        ),
    ]
    lines = ["| scenario | target | result |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    slow = json.dumps(s5["slow_start_config"])
    lines += ["", f"S5's slow start: `{slow}`."]
    return "\n".join(lines)


def policies_results() -> str:
    from bench.report import render

    return render()


# -- other benchmarks ------------------------------------------------------------------------
def round_robin() -> str:
    rr = _json("round_robin")
    pick, cpu = rr["pick_cost_us"], rr["cpu_per_rpc"]
    ours, theirs = cpu["us_cpu_per_rpc"]["grpc_balancer"], cpu["us_cpu_per_rpc"]["grpcio"]
    per_round = [a / b for a, b in zip(ours, theirs, strict=True)]
    return "\n".join(
        [
            "| measure | target | measured |",
            "|---|---|---|",
            f"| round_robin pick, 3 / 100 / 10,000 READY endpoints | ≤ 2 µs | "
            f"{pick['3']:.2f} / {pick['100']:.2f} / {pick['10000']:.2f} µs |",
            f"| client CPU per RPC, grpc_balancer ÷ grpcio (`--calls {cpu['calls_per_run']} "
            f"--rounds {cpu['rounds']}`) | ≤ {cpu['target_ratio']:.2f} | {cpu['ratio']:.3f} "
            f"(median {cpu['median_us']['grpc_balancer']:.0f} µs vs {cpu['median_us']['grpcio']:.0f} µs; "
            f"per round {min(per_round):.2f}–{max(per_round):.2f}, the machine is shared) |",
        ]
    )


def failover() -> str:
    data = _json("failover")
    f = data["failover"]
    trials = f["trials"]
    amp = {a["mode"]: a for a in data["amplification"]}
    plain, ejection = amp["retries+throttling"], amp["retries+throttling+ejection"]
    return "\n".join(
        [
            "| measure | target | result |",
            "|---|---|---|",
            f"| failed calls | 0 | **{f['failed_total']} of {f['calls_total']:,}** |",
            "| p99 in the second around the kill ÷ steady p99 | ≤ 3× | "
            + ", ".join(_ratio(t["p99_ratio"]) for t in trials)
            + " |",
            "| last attempt sent to the dead backend after the kill | ≤ 100 ms | "
            + ", ".join(f"{t['last_attempt_to_dead_after_kill_ms']:.1f}" for t in trials)
            + " ms |",
            f"| attempts per call, one backend failing 100 %, retries + throttling | "
            f"≤ {data['amplification_target']} | {plain['amplification']:.3f} "
            f"({plain['failed']:,} of {plain['calls']:,} calls failed) |",
            f"| the same with outlier ejection | ≤ {data['amplification_target']} | "
            f"{ejection['amplification']:.3f} ({ejection['failed']} failed) |",
        ]
    )


def overheads() -> str:
    m, s = _json("metrics"), _json("sync")
    lo, hi = min(s["ratio_per_round"]), max(s["ratio_per_round"])
    return "\n".join(
        [
            "| measure | command | target | result |",
            "|---|---|---|---|",
            f"| client CPU per RPC, metrics on ÷ off ({m['scenario']['rounds']} interleaved rounds) | "
            f"`{m['scenario']['command']}` | ≤ {m['target_ratio']:.2f} | median paired ratio "
            f"**{m['paired_ratio_median']:.3f}** (ratio of medians {m['ratio_of_medians']:.3f}) |",
            f"| sync channel CPU per RPC ÷ grpcio's sync channel with round_robin, "
            f"{s['threads']} threads | `python -m bench.bench_sync` | ≤ {s['target_ratio']:.2f} | "
            f"**{s['ratio']:.2f}** (per round {lo:.2f}–{hi:.2f}) |",
        ]
    )


def sync() -> str:
    s = _json("sync")
    us = s["us_cpu_per_rpc"]
    names = {
        "grpc_balancer": "grpc_balancer sync channel",
        "loop_handoff": "same, completions handed to the loop",
        "grpcio": "grpcio sync channel, `round_robin`",
    }
    lines = ["| channel | median client CPU per RPC | per round |", "|---|---|---|"]
    for key, label in names.items():
        lines.append(
            f"| {label} | {median(us[key]):.0f} µs | {min(us[key]):.0f}–{max(us[key]):.0f} µs |"
        )
    lo, hi = min(s["ratio_per_round"]), max(s["ratio_per_round"])
    lines += [
        "",
        f"Ratio to grpcio: **{s['ratio']:.2f}×** (median; per round {lo:.2f}–{hi:.2f}×), target "
        f"≤ {s['target_ratio']:.2f}×. Handing every completion to the loop thread: "
        f"{s['loop_handoff_ratio']:.2f}×.",
    ]
    return "\n".join(lines)


def dns() -> str:
    lines = ["| record TTL | target | p50 | max | within target |", "|---|---|---|---|---|"]
    for sc in _json("dns")["scenarios"]:
        lines.append(
            f"| {sc['ttl_s']} s | ≤ TTL + {sc['target_s'] - sc['ttl_s']:g} s | {sc['p50_s']:.2f} s | "
            f"{sc['max_s']:.2f} s | {sc['within_target']}/{sc['trials']} |"
        )
    return "\n".join(lines)


def etcd() -> str:
    e = _json("etcd")
    put, dereg = e["put_to_first_call"], e["deregister_to_last_call"]

    def ms(x: float) -> str:
        return f"{x:.1f} ms" if x < 10 else f"{x:.0f} ms"

    return "\n".join(
        [
            "| event | trials | target | p50 | p99 | max |",
            "|---|---|---|---|---|---|",
            f"| a new server's key is put → first reply served by it | {put['trials']} | "
            f"p50 ≤ {put['target_p50_ms']} ms, p99 ≤ {put['target_p99_ms']} ms | {ms(put['p50_ms'])} | "
            f"{ms(put['p99_ms'])} | {ms(put['max_ms'])} |",
            f"| a server deregisters → last call sent to it | {dereg['trials']} | "
            f"≤ {dereg['target_max_ms']} ms | {ms(dereg['p50_ms'])} | {ms(dereg['p99_ms'])} | "
            f"{ms(dereg['max_ms'])} |",
        ]
    )


# -- xDS client ---------------------------------------------------------------------------------
def xds_push() -> str:
    r = _json("xds_push")
    g = r["clients"]["grpcio"]
    m = r["machine"]
    target = f"≤ {r['target_p50_ms']:.0f} / {r['target_p99_ms']:.0f} ms"
    lines = [
        f"| EDS push → first call on the new backend ({g['trials']} changes each) | p50 | "
        "p99 (slowest) | target p50 / p99 | met | per-round ratio to grpcio (median, range) |",
        "|---|---|---|---|---|---|",
    ]
    for kind, label in (("balancer", "sync"), ("balancer-aio", "asyncio")):
        c, ratios = r["clients"][kind], r["round_ratios"][kind]
        lines.append(
            f"| grpc_balancer `xds:///` ({label} channel, our xds resolver) "
            f"| **{_ms(c['p50_ms'])} ms** | **{_ms(c['p99_ms'])} ms** | {target} "
            f"| {'yes' if r['met'][kind] else '**no**'} | {_ratio(r['ratio_median'][kind])} "
            f"({_ratio(min(ratios))}–{_ratio(max(ratios))}) |"
        )
    lines += [
        f"| grpcio native `xds:///` (C-core), same run | {_ms(g['p50_ms'])} ms "
        f"| {_ms(g['p99_ms'])} ms | | | 1 |",
        "",
        f"Blocks of {r['per_block']} changes, {r['order']}; a round is three consecutive "
        f"blocks. `{r['command']}`, {r['started_utc']}, {m['cpus']} cores, load average "
        f"{m['loadavg_start'][0]:.2f} at start, grpcio {m['grpcio']}, commit {r['commit']}.",
    ]
    return "\n".join(lines)


# -- large fleets ----------------------------------------------------------------------------------
def _range(values: list[float], fmt: Callable[[float], str]) -> str:
    lo, hi = min(values), max(values)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}–{fmt(hi)}"


def _versus(
    ours: list[Any], theirs: list[Any], summary: Any, key: str, unit: str, digits: int = 2
) -> str:
    a = median(x[key] for x in ours if x[key] is not None)
    b = median(x[key] for x in theirs if x[key] is not None)
    lo, hi = summary[key]["ratio_range"]
    return (
        f"{a:.{digits}f} / {b:.{digits}f} {unit} (**{_ratio(summary[key]['ratio_median'])}**, "
        f"{_ratio(lo)}–{_ratio(hi)})"
    )


def fleet() -> str:
    r = _json("fleet")
    rows = [
        "| N endpoints (round_robin) | first successful call, ours / grpcio | all N connected, "
        "ours / grpcio | RSS per endpoint, ours / grpcio | longest loop stall (ours) "
        "| picker rebuilds (ours) |",
        "|---|---|---|---|---|---|",
    ]
    for n in r["sizes"]:
        runs = [x for x in r["connect"] if x["n"] == n]
        ours = [x for x in runs if x["kind"] == "ours"]
        theirs = [x for x in runs if x["kind"] == "grpcio"]
        if not ours or not theirs:
            continue
        summary = r["summary"][str(n)]

        stall = _range([x["stall_connect_s"] * 1e3 for x in ours], lambda v: f"{v:.0f}")
        rebuilds = _range([x["rebuilds"]["count"] for x in ours], lambda v: f"{v:.0f}")
        cost = _range([x["rebuilds"]["max_ms"] for x in ours], lambda v: f"{v:.1f}")
        rows.append(
            f"| {n:,} | {_versus(ours, theirs, summary, 'first_call_s', 's')} "
            f"| {_versus(ours, theirs, summary, 'all_established_s', 's')} "
            f"| {_versus(ours, theirs, summary, 'rss_per_endpoint_kib', 'KiB', 1)} | {stall} ms "
            f"| {rebuilds} (longest {cost} ms) |"
        )
    with_update = [x for x in r["connect"] if x.get("update")]
    if with_update:
        rows += [
            "",
            "| resolver update on a READY channel | list applied (policy done) | picker in use "
            "without them / all new ones dialing | longest loop stall | new ones READY and "
            "picked (handshakes) |",
            "|---|---|---|---|---|",
        ]
    for n in sorted({x["n"] for x in with_update}):
        for variant, label in (("plain", ""), ("gc_frozen", ", after `gc.freeze()`")):
            runs = [x["update"][variant] for x in with_update if x["n"] == n]
            rm, add = [u["remove"] for u in runs], [u["add"] for u in runs]
            rows += [
                f"| {n:,}: remove 10 %{label} | {_range([u['applied_ms'] for u in rm], _ms)} ms "
                f"| {_range([u['in_use_ms'] for u in rm], _ms)} ms "
                f"| {_range([u['stall_ms'] for u in rm], _ms)} ms | — |",
                f"| {n:,}: add 10 %{label} | {_range([u['applied_ms'] for u in add], _ms)} ms "
                f"| {_range([u['dialing_ms'] for u in add], _ms)} ms "
                f"| {_range([u['stall_ms'] for u in add], _ms)} ms "
                f"| {_range([u['all_ready_in_picker_ms'] for u in add], _ms)} ms |",
            ]
    subsets = r.get("subset") or []
    if subsets:
        rows += [
            "",
            f"| subset {r['subset_size']} of N (child least_request) | first successful call "
            "| connections opened | grpc channels created |",
            "|---|---|---|---|",
        ]
    for n in sorted({x["n"] for x in subsets}):
        for policy in sorted({x["policy"] for x in subsets}):
            mine = [x for x in subsets if x["policy"] == policy and x["n"] == n]
            rows.append(
                f"| `{policy}`, N = {n:,} | {_range([x['first_call_s'] * 1e3 for x in mine], _ms)} ms "
                f"| {_range([x['connections'] for x in mine], lambda v: f'{v:.0f}')} "
                f"| {_range([x['grpc_channels'] for x in mine], lambda v: f'{v:.0f}')} |"
            )
    pick = _json("policies_pick_cost")["us_per_pick"]
    rr, lr = pick["round_robin"], pick["least_request"]
    rows += [
        "",
        "Pick cost (µs, `python -m bench.pick_cost`): round_robin "
        + ", ".join(f"{v:.2f} at {int(k):,}" for k, v in rr.items())
        + "; least_request "
        + ", ".join(f"{v:.2f} at {int(k):,}" for k, v in lr.items())
        + ".",
        "",
        f"`{r['command']}`, {r['when']}, {r['rounds']} rounds (A B, B A, ...); ratios are ours ÷ "
        f"grpcio's per round (median, range). The open-files hard limit here is "
        f"{r['nofile_hard_limit']:,}, so the largest N that fits one client is "
        f"{max(r['sizes']):,}.",
    ]
    return "\n".join(rows) + "\n"


def fleet_cost() -> str:
    r = _json("fleet_cost")
    rows = [
        f"| {r['n']:,} endpoints, held as | all connected | ÷ grpcio | CPU until then "
        "| ÷ grpcio | RSS per endpoint | ÷ grpcio |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, entry in r["summary"].items():
        cells = []
        for key, fmt in (
            ("all_established_s", lambda v: f"{v:.2f} s"),
            ("cpu_s", lambda v: f"{v:.2f} s"),
            ("rss_per_endpoint_kib", lambda v: f"{v:.1f} KiB"),
        ):
            fig = entry[key]
            lo, hi = fig["range"]
            cells.append(f"{fmt(fig['median'])} ({fmt(lo)}–{fmt(hi)})")
            if kind == "grpcio":
                cells.append("1")
            else:
                rlo, rhi = fig["ratio_range"]
                cells.append(f"{_ratio(fig['ratio_median'])} ({_ratio(rlo)}–{_ratio(rhi)})")
        rows.append(f"| {kind} | " + " | ".join(cells) + " |")
    rows += [
        "",
        f"`{r['command']}`, {r['when']}, {r['rounds']} rounds, the kinds interleaved in a "
        "rotating order, each in a fresh process against a fresh server; median (range), "
        "ratios per round.",
    ]
    return "\n".join(rows) + "\n"


def fleet_balance() -> str:
    r = _json("fleet_balance")
    names = {
        "least_request": "every client to every server (least_request)",
        "random_subsetting": "`random_subsetting`",
        "deterministic_aperture": "`deterministic_aperture`",
    }
    rows = [
        f"| {r['clients']} clients, subset {r['subset']} | servers | connections per client "
        "| connections per server, max / mean | load per server, max / mean "
        f"(target ≤ {r['target_load_spread']}) |",
        "|---|---|---|---|---|",
    ]
    for key, v in r["summary"].items():
        policy, servers = key.split("/")
        rows.append(
            f"| {names[policy]} | {servers} | {v['connections_per_client']:.1f} "
            f"| {_range(v['connection_spread'], lambda x: f'{x:.2f}')} "
            f"| {_range(v['load_spread'], lambda x: f'{x:.2f}')} |"
        )
    rows += [
        "",
        f"`{r['command']}`, {r['when']}: connections from the real subsetting code, load from "
        f"the fleet simulator (`bench/sim`, the real policies, 30 simulated seconds at 60 calls/s "
        f"per server), seeds {', '.join(map(str, r['seeds']))} (range over seeds).",
    ]
    return "\n".join(rows) + "\n"


# -- fleet simulator and prequal (issue 16) ----------------------------------------------------
def _yes(ok: bool) -> str:
    return "met" if ok else "**not met**"


def sim_ramp() -> str:
    r = _json("sim_ramp")
    steps, res = r["steps"], r["results"]
    head = "| p99.9 ms (errors) | " + " | ".join(steps) + " |\n|---|" + "---|" * len(steps) + "\n"
    rows = []
    for label, row in res.items():
        cells = []
        for step in steps:
            cell = _ms(row[step]["p999_ms"])
            if row[step]["error_rate"]:
                cell += f" ({_pct(row[step]['error_rate'])})"
            cells.append(f"**{cell}**" if label == "prequal" else cell)
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    t, v = r["targets"], r["variant_targets"]
    return (
        head
        + "\n".join(rows)
        + f"\n\n1.0× = {r['capacity_per_s']:.0f} calls/s (50 % of the servers' peak at nominal "
        f"speed); {r['step_s']:g} s per step; prequal, weighted_round_robin and peak_ewma over seeds "
        f"{', '.join(map(str, r['seeds']))} pooled. Targets: prequal p99.9 ≤ "
        f"0.5× weighted_round_robin's from 1.0×: {_yes(t['prequal_p999_le_half_wrr_from_1x'])}; "
        f"≤ peak_ewma's at every step: {_yes(t['prequal_p999_le_peak_ewma_every_step'])}; no "
        f"errors up to 1.3× (where weighted_round_robin already fails): "
        f"{_yes(t['prequal_no_errors_to_1_3x'] and t['wrr_fails_by_1_3x'])}. With "
        f"`probesPerCall: 2`: {_yes(v['prequal2_p999_le_half_wrr_from_1x'])}, "
        f"{_yes(v['prequal2_p999_le_peak_ewma_every_step'])}, "
        f"{_yes(v['prequal2_no_errors_to_1_3x'])}.\n"
    )


def sim_scenarios() -> str:
    st, os_, ns = _json("sim_stuck"), _json("sim_one_slow_stalls"), _json("sim_one_slow")
    cap, fl, suite = _json("sim_capacity"), _json("sim_fleet"), _json("sim_suite")
    lines = [
        "| scenario | round_robin | least_request | peak_ewma | prequal | weighted_round_robin |",
        "|---|---|---|---|---|---|",
    ]

    def row(name: str, values: dict[str, str]) -> str:
        order = ["round_robin", "least_request", "peak_ewma", "prequal", "weighted_round_robin"]
        return f"| {name} | " + " | ".join(values.get(k, "–") for k in order) + " |"

    lines.append(
        row(
            f"{st['title']}: success",
            {k: _pct(v["success"], 2) for k, v in st["results"].items()},
        )
    )
    for data, name in ((ns, "one of five 10× slow"), (os_, "the same, client loop stalling")):
        lines.append(
            row(
                f"{name}: worst p99 ÷ oracle over {data['rounds']} rounds",
                {k: _ratio(v) for k, v in data["worst_p99_over_oracle"].items() if k != "oracle"},
            )
        )
    for data, step in ((cap, "weighted"), (fl, "all")):
        lines.append(
            row(
                f"{data['title']}: p99 / p99.9 ms (errors)",
                {
                    k: f"{_ms(v[step]['p99_ms'])} / {_ms(v[step]['p999_ms'])}"
                    + (f" ({_pct(v[step]['error_rate'], 2)})" if v[step]["error_rate"] else "")
                    for k, v in data["results"].items()
                },
            )
        )
    met = suite["targets"]
    lines.append("")
    lines.append(
        f"Targets: stuck backend, success ≥ 99.9 % for peak_ewma and prequal: "
        f"{_yes(met['stuck.peak_ewma_success_ge_99_9'] and met['stuck.prequal_success_ge_99_9'])}; "
        "one slow of five with the client stalling, p99 ≤ 1.5× oracle and ≤ round_robin in every "
        f"round: peak_ewma {_yes(met['one_slow_stalls.peak_ewma_p99_le_1_5_oracle_and_rr_every_round'])}, "
        f"prequal {_yes(met['one_slow_stalls.prequal_p99_le_1_5_oracle_and_rr_every_round'])}. "
        f"The whole suite: `{suite['command']}`, {suite['cpu_s']:.0f} s of CPU "
        f"({suite['elapsed_s']:.0f} s wall, load average {suite['loadavg'][0]:.1f} on "
        f"{suite['cpus']} cores)."
    )
    return "\n".join(lines) + "\n"


def prequal_loopback() -> str:
    mixed, stalls, cost = _json("prequal_mixed"), _json("prequal_stalls"), _json("prequal_cost")
    lines = [
        f"| {mixed['title']} ({mixed['rounds']} rounds, interleaved) | simulator p50 / p99 ms "
        "| loopback p50 / p99 ms (p99 range) |",
        "|---|---|---|",
    ]
    for label, loop in mixed["loopback"].items():
        sim = mixed["simulator"][label]
        lo, hi = loop["p99_ms_range"]
        lines.append(
            f"| {label} | {_ms(sim['p50_ms'])} / {_ms(sim['p99_ms'])} | {_ms(loop['p50_ms'])} / "
            f"**{_ms(loop['p99_ms'])}** ({_ms(lo)}–{_ms(hi)}) |"
        )
    lines += [
        "",
        f"p99 order, simulator: {', '.join(mixed['p99_rank_simulator'])}; loopback: "
        f"{', '.join(mixed['p99_rank_loopback'])}.",
        "",
        f"| {stalls['title']}, {stalls['rounds']} rounds | median p99 ms | worst p99 ÷ oracle "
        "| slow backend calls/s (range) |",
        "|---|---|---|---|",
    ]
    for label, med in stalls["median_p99_ms"].items():
        rates = stalls["slow_calls_per_s_per_round"][label]
        lines.append(
            f"| {label} | {_ms(med)} | {_ratio(stalls['worst_p99_over_oracle'][label])} "
            f"| {min(rates):g}–{max(rates):g} |"
        )
    t = stalls["targets"]
    u, rng = cost["us_per_call"], cost["us_per_call_range"]
    lines += [
        "",
        "Target, p99 ≤ 1.5× oracle and ≤ round_robin in every round: peak_ewma "
        f"{_yes(t['peak_ewma_every_round'])}, prequal {_yes(t['prequal_every_round'])}.",
        "",
        f"Server CPU per call ({cost['rounds']} interleaved rounds of {cost['calls_per_round']:,} "
        f"calls): greeter {u['plain']:g} µs ({rng['plain'][0]:g}–{rng['plain'][1]:g}), with the "
        f"probe interceptor {u['interceptor']:g} µs ({rng['interceptor'][0]:g}–"
        f"{rng['interceptor'][1]:g}; ratio {_ratio(cost['interceptor_over_plain_median'])}, range "
        f"{_ratio(cost['interceptor_over_plain_range'][0])}–"
        f"{_ratio(cost['interceptor_over_plain_range'][1])}); one probe answered {u['probe']:g} µs.",
    ]
    return "\n".join(lines) + "\n"


BLOCKS: dict[str, Callable[[], str]] = {
    "instructions": instructions,
    "bytecodes": bytecodes,
    "policies-summary": policies_summary,
    "policies-results": policies_results,
    "round-robin": round_robin,
    "failover": failover,
    "overheads": overheads,
    "sync": sync,
    "dns": dns,
    "etcd": etcd,
    "xds-push": xds_push,
    "fleet": fleet,
    "fleet-balance": fleet_balance,
    "fleet-cost": fleet_cost,
    "sim-ramp": sim_ramp,
    "sim-scenarios": sim_scenarios,
    "prequal-loopback": prequal_loopback,
}


def rewrite(text: str) -> str:
    """``text`` with every figures block re-rendered."""

    def one(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in BLOCKS:
            raise KeyError(f"unknown figures block {name!r} (known: {', '.join(BLOCKS)})")
        return f"{match.group(1)}{BLOCKS[name]().rstrip()}\n{match.group(4)}"

    return BLOCK.sub(one, text)


def stale() -> list[str]:
    """``path: block`` for each block whose text differs from its JSON."""
    out = []
    for path in DOCS:
        text = path.read_text()
        for match in BLOCK.finditer(text):
            want = BLOCKS[match.group(2)]().rstrip() + "\n"
            if match.group(3) != want:
                out.append(f"{path.relative_to(ROOT)}: {match.group(2)}")
    return out


def main(argv: list[str]) -> int:
    if "--write" in argv:
        for path in DOCS:
            text = path.read_text()
            new = rewrite(text)
            if new != text:
                path.write_text(new)
                print(f"rewrote {path.relative_to(ROOT)}")
        return 0
    problems = stale()
    for problem in problems:
        print(f"stale figures: {problem} (run python -m bench.figures --write)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
