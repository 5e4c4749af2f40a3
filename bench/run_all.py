"""The policy benchmark suite (issue 5): ``make bench`` → ``python -m bench.run_all``.

Scenarios (open-loop Poisson load, backends in a child process, each bounded in time):

1. 5 backends (~5 ms lognormal), one 10x slower. Target: peak_ewma p99 <= 1.2x oracle
   (the same load with the slow backend removed), p50 no worse than round_robin's.
2. One of 5 stalls at 2 s for 30 s, 1 s deadline. Target: peak_ewma success >= 99.9%.
3. Two of five 10x slow. Target: best policy p99 <= 1.5x oracle.
4. Capacity 1, 2 and 4 slots (10 ms each), ORCA reports: weighted_round_robin (ours and
   grpcio's) vs round_robin: p99, success, throughput.
5. Two cold backends (5x slow for 10 s) join at 5 s. Target: p99 during the join
   <= 1.3x the same run's p99 outside it, with slow start.
6. ring_hash: 10,000 keys over 10 endpoints, one removed: keys moved (target <= 1.2/N),
   spread max/mean (target <= 1.25).
And the pick cost of every policy with 3, 100 and 10,000 endpoints (target <= 5 us).

Writes bench/results/policies_*.json and .png. ``--scale 0.5`` halves every duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import pick_cost, ring_spread
from bench.harness import Backends, Result, open_channel, percentile, run_load, warm_up

RESULTS = Path(__file__).parent / "results"
FAST: dict[str, Any] = {"delay_ms": 5, "dist": "lognormal"}
SLOW: dict[str, Any] = {"delay_ms": 50, "dist": "lognormal"}


def lb(name: str, **config: Any) -> dict[str, Any]:
    return {"loadBalancingConfig": [{name: config}]}


RR = lb("round_robin")
LR = lb("least_request")
PE = lb("peak_ewma")
PE3 = lb("peak_ewma", choiceCount=3)

Variant = tuple[str, str, dict[str, Any], Callable[[list[str]], list[str]]]


def _all(addresses: list[str]) -> list[str]:
    return addresses


async def run_variants(
    specs: Sequence[dict[str, Any]],
    variants: Sequence[Variant],
    rate: float,
    duration_s: float,
    deadline_s: float,
    events: Callable[[Backends, Any], list[tuple[float, Callable[[], None]]]] | None = None,
) -> dict[str, Result]:
    results: dict[str, Result] = {}
    with Backends(specs) as backends:
        for name, client, config, subset in variants:
            addresses = subset(backends.addresses)
            channel = open_channel(addresses, client, config)
            try:
                if client == "ours":
                    await channel.wait_for_settled(5)
                else:
                    await asyncio.wait_for(channel.channel_ready(), 5)
                await warm_up(channel)
                evs = events(backends, channel) if events else []
                results[name] = await run_load(name, channel, rate, duration_s, deadline_s, evs)
                results[name].backends = list(backends.addresses)
            finally:
                await channel.close()
            print(f"  {name:<28} {results[name].summary()}", flush=True)
            await asyncio.sleep(0.5)
    return results


def _write(name: str, payload: dict[str, Any], results: dict[str, Result] | None) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"policies_{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    if results:
        plot_cdf(name, payload.get("title", name), results)


def plot_cdf(name: str, title: str, results: dict[str, Result]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, result in results.items():
        lats = [x * 1000 for x in result.latencies() if x != float("inf")]
        if not lats:
            continue
        n = len(result.calls)
        ax.plot(lats, [(i + 1) / n for i in range(len(lats))], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("latency from scheduled arrival (ms, log)")
    ax.set_ylabel("fraction of calls")
    ax.set_ylim(0.5, 1.001)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(RESULTS / f"policies_{name}.png", dpi=110)
    plt.close(fig)


async def scenario1(scale: float) -> dict[str, Any]:
    variants: list[Variant] = [
        ("round_robin", "ours", RR, _all),
        ("grpcio round_robin", "grpcio", RR, _all),
        ("least_request", "ours", LR, _all),
        ("peak_ewma", "ours", PE, _all),
        ("oracle (slow removed)", "ours", RR, lambda a: a[1:]),
    ]
    res = await run_variants([SLOW, *[FAST] * 4], variants, 400, 14 * scale, 2.0)
    s = {k: v.summary() for k, v in res.items()}
    ratio = s["peak_ewma"]["p99_ms"] / s["oracle (slow removed)"]["p99_ms"]
    payload = {
        "title": "S1: 5 backends, one 10x slow, 400/s",
        "results": s,
        "peak_ewma_p99_over_oracle": round(ratio, 3),
        "target_met": ratio <= 1.2
        and s["peak_ewma"]["p50_ms"] <= s["round_robin"]["p50_ms"] * 1.05,
    }
    _write("s1_one_slow", payload, res)
    return payload


async def scenario2(scale: float) -> dict[str, Any]:
    stall_at, stall_s = 2.0, 30.0 * scale

    def events(b: Backends, _: Any) -> list[tuple[float, Callable[[], None]]]:
        return [
            (stall_at, lambda: b.set(0, delay_ms=2000, delay_dist="fixed")),
            (stall_at + stall_s, lambda: b.set(0, delay_ms=5, delay_dist="lognormal")),
        ]

    variants: list[Variant] = [
        ("round_robin", "ours", RR, _all),
        ("least_request", "ours", LR, _all),
        ("peak_ewma", "ours", PE, _all),
    ]
    res = await run_variants([FAST] * 5, variants, 300, stall_at + stall_s + 2, 1.0, events)
    s = {k: v.summary() for k, v in res.items()}
    for k, v in res.items():  # when the failures happened (s after the stall began)
        s[k]["failures_at_s"] = sorted(
            {round(t - stall_at, 1) for t, lat, _ in v.calls if lat is None}
        )[:40]
    payload = {
        "title": f"S2: one of 5 stalls at 2 s for {stall_s:.0f} s, 1 s deadline, 300/s",
        "results": s,
        "peak_ewma_success": s["peak_ewma"]["success"],
        "target_met": s["peak_ewma"]["success"] >= 0.999,
    }
    _write("s2_stall", payload, res)
    return payload


async def scenario3(scale: float) -> dict[str, Any]:
    variants: list[Variant] = [
        ("round_robin", "ours", RR, _all),
        ("least_request", "ours", LR, _all),
        ("least_request choiceCount=3", "ours", lb("least_request", choiceCount=3), _all),
        ("peak_ewma", "ours", PE, _all),
        ("peak_ewma choiceCount=3", "ours", PE3, _all),
        (
            "peak_ewma choiceCount=3 decayTime=1s",
            "ours",
            lb("peak_ewma", choiceCount=3, decayTime="1s"),
            _all,
        ),
        ("oracle (slow removed)", "ours", RR, lambda a: a[2:]),
    ]
    res = await run_variants([SLOW, SLOW, *[FAST] * 3], variants, 400, 14 * scale, 2.0)
    s = {k: v.summary() for k, v in res.items()}
    oracle = s.pop("oracle (slow removed)")
    best = min((k for k in s if k != "round_robin"), key=lambda k: s[k]["p99_ms"])
    s["oracle (slow removed)"] = oracle
    ratio = s[best]["p99_ms"] / oracle["p99_ms"]
    payload = {
        "title": "S3: two of five 10x slow, 400/s",
        "results": s,
        "best": best,
        "best_p99_over_oracle": round(ratio, 3),
        "target_met": ratio <= 1.5,
    }
    _write("s3_two_slow", payload, res)
    return payload


async def scenario4(scale: float) -> dict[str, Any]:
    wrr = lb("weighted_round_robin", blackoutPeriod="1s", weightUpdatePeriod="0.5s")
    specs = [
        {"delay_ms": 10, "dist": "lognormal", "max_concurrency": c, "orca": True} for c in (1, 2, 4)
    ]
    variants: list[Variant] = [
        ("round_robin", "ours", RR, _all),
        ("grpcio round_robin", "grpcio", RR, _all),
        ("weighted_round_robin", "ours", wrr, _all),
        ("grpcio weighted_round_robin", "grpcio", wrr, _all),
    ]
    duration = 18 * scale
    res = await run_variants(specs, variants, 330, duration, 1.0)
    learn = 4.0 * scale
    s = {}
    for k, v in res.items():
        summary = v.summary(learn)
        ok = sum(1 for t, lat, _ in v.calls if t >= learn and lat is not None)
        summary["throughput_per_s"] = round(ok / (duration - learn), 1)
        summary["share_by_slots"] = {
            f"{c} slot(s)": round(v.share([a], learn), 3)
            for c, a in zip((1, 2, 4), v.backends, strict=True)
        }
        s[k] = summary
    payload = {
        "title": "S4: capacity 1/2/4 slots x 10 ms, ORCA reports, 330/s (after 4 s of learning)",
        "results": s,
        "target_met": s["weighted_round_robin"]["p99_ms"] < s["round_robin"]["p99_ms"]
        and s["weighted_round_robin"]["success"] >= s["round_robin"]["success"],
    }
    _write("s4_capacity_orca", payload, res)
    return payload


async def scenario5(scale: float) -> dict[str, Any]:
    join_at, cold_s = 5.0 * scale, 10.0 * scale
    ss = {"slowStartWindow": f"{3 * cold_s:.1f}s", "aggression": 0.25, "minWeightPercent": 1}

    def events(b: Backends, channel: Any) -> list[tuple[float, Callable[[], None]]]:
        everyone = list(b.addresses)

        def join() -> None:
            b.set(3, delay_ms=25)
            b.set(4, delay_ms=25)
            channel.resolver.update(everyone)

        def warm() -> None:
            b.set(3, delay_ms=5)
            b.set(4, delay_ms=5)

        return [(join_at, join), (join_at + cold_s, warm)]

    variants: list[Variant] = [
        ("round_robin", "ours", RR, lambda a: a[:3]),
        (
            "round_robin + slow start",
            "ours",
            lb("round_robin", slowStartConfig=ss),
            lambda a: a[:3],
        ),
        (
            "least_request + slow start",
            "ours",
            lb("least_request", slowStartConfig=ss),
            lambda a: a[:3],
        ),
        ("peak_ewma", "ours", PE, lambda a: a[:3]),
    ]
    duration = join_at + cold_s + 8 * scale
    res = await run_variants([FAST] * 5, variants, 400, duration, 2.0, events)
    s = {}
    for k, v in res.items():
        during = v.summary(join_at, join_at + cold_s)
        before = v.latencies(0, join_at)
        after = v.latencies(join_at + cold_s + 1)
        steady_p99 = percentile(sorted(before + after), 99) * 1000
        s[k] = {
            "join_window": during,
            "steady_p99_ms": round(steady_p99, 2),
            "join_p99_over_steady": round(during["p99_ms"] / steady_p99, 3),
            "cold_share_during_join": round(v.share(v.backends[3:], join_at, join_at + cold_s), 4),
        }
    payload = {
        "title": "S5: two cold backends (5x slow for 10 s) join at 5 s, 400/s",
        "slow_start_config": ss,
        "results": s,
        "target_met": s["round_robin + slow start"]["join_p99_over_steady"] <= 1.3,
    }
    _write("s5_slow_start", payload, res)
    return payload


async def main(scale: float, only: set[str]) -> None:
    started = time.monotonic()
    summary: dict[str, Any] = {}
    for key, scenario in (
        ("s1", scenario1),
        ("s2", scenario2),
        ("s3", scenario3),
        ("s4", scenario4),
        ("s5", scenario5),
    ):
        if only and key not in only:
            continue
        print(f"{key}:", flush=True)
        summary[key] = await scenario(scale)
    if not only or "s6" in only:
        print("s6:", flush=True)
        summary["s6"] = ring_spread.run(RESULTS)
        print(f"  {summary['s6']}")
    if not only or "pick" in only:
        print("pick cost:", flush=True)
        summary["pick_cost"] = pick_cost.run(RESULTS)
        print(f"  {summary['pick_cost']}")
    summary["suite_seconds"] = round(time.monotonic() - started, 1)
    print(f"suite took {summary['suite_seconds']} s", flush=True)
    if not only:
        (RESULTS / "policies_summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every duration")
    parser.add_argument("--only", default="", help="comma list: s1,s2,s3,s4,s5,s6,pick")
    args = parser.parse_args()
    asyncio.run(main(args.scale, {x for x in args.only.split(",") if x}))
