"""Loopback confirmation of the simulator (issue 16, item 4), the busy-client bench
(item 5) and the server-side cost of load probes (item 2).

``python -m bench.bench_prequal [--rounds N] [--only mixed stalls cost]``:

* **mixed**: five real greeter servers (``serve --probes`` and ORCA) with
  heterogeneous delays (median 5, 5, 10, 10, 20 ms lognormal) and
  ``--max-concurrency 2``, one open-loop client at 45 % of their capacity: prequal
  (also with ``probesPerCall: 0.25``), peak_ewma, least_request, weighted_round_robin
  (ours) and grpcio's round_robin,
  interleaved (A B C D E E D C B A ...). The same scenario runs in the simulator
  (:func:`bench.sim.scenarios.loopback`), side by side in the JSON.
* **stalls**: one of five backends 10x slow (5 vs 50 ms), 300/s, and the client's own
  event loop kept busy by CPU work (5 stalls/s, median 30 ms, as the simulator's
  ``one_slow_stalls``): round_robin, peak_ewma, peak_ewma with the stall discount
  switched off (the behaviour before issue 16), prequal, and the oracle (round robin
  over the four fast ones), interleaved for ``--rounds`` rounds.
* **cost**: server CPU per call with and without the probe interceptor, and per
  probe answered (the servers' process CPU time over a fixed number of calls).

Writes bench/results/prequal_*.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc.aio

from bench.harness import Backends, open_channel, run_load, warm_up
from bench.sim import scenarios
from bench.sim.run import simulate
from grpc_balancer._core.stalls import StallMeter
from grpc_balancer._probe import METHOD, ProbeRequest, ProbeResponse
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc

RESULTS = Path(__file__).parent / "results"


def lb(name: str, **config: Any) -> dict[str, Any]:
    return {"loadBalancingConfig": [{name: config}]}


# ours/grpcio, service config
MIXED_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "prequal": ("ours", lb("prequal")),
    "prequal probesPerCall=0.25": ("ours", lb("prequal", probesPerCall=0.25)),
    "peak_ewma": ("ours", lb("peak_ewma")),
    "least_request": ("ours", lb("least_request")),
    "weighted_round_robin": ("ours", lb("weighted_round_robin", **scenarios.LOOPBACK_WRR)),
    "grpcio round_robin": ("grpcio", lb("round_robin")),
}


def _interleave(labels: list[str], rounds: int) -> Iterator[tuple[int, str]]:
    for r in range(rounds):
        for label in labels if r % 2 == 0 else list(reversed(labels)):
            yield r, label


async def _one_run(
    addresses: list[str],
    client: str,
    config: dict[str, Any],
    rate: float,
    duration_s: float,
    seed: int,
    stalls: bool = False,
) -> Any:
    channel = open_channel(addresses, client, config)
    try:
        if client == "ours":
            await channel.wait_for_settled(5)
        else:
            await asyncio.wait_for(channel.channel_ready(), 5)
        await warm_up(channel)
        stopper = _busy_client(seed) if stalls else None
        try:
            return await run_load("run", channel, rate, duration_s, 1.0, seed=seed)
        finally:
            if stopper is not None:
                stopper()
    finally:
        await channel.close()


def _busy_client(seed: int) -> Callable[[], None]:
    """Keep this process's event loop busy with CPU work now and then: Poisson, 5 per
    second, each lognormal with median 30 ms (the simulator's ``Stalls(5, 0.03)``)."""
    loop = asyncio.get_running_loop()
    rng = random.Random(seed + 1000)
    handle: list[asyncio.TimerHandle] = []

    def stall() -> None:
        end = time.perf_counter() + rng.lognormvariate(math.log(0.030), 0.5)
        while time.perf_counter() < end:
            pass
        handle[:] = [loop.call_later(rng.expovariate(5.0), stall)]

    handle.append(loop.call_later(rng.expovariate(5.0), stall))
    return lambda: handle[0].cancel()


# -- mixed: the simulator's claims on real servers -------------------------------------------
async def mixed(rounds: int, duration_s: float) -> dict[str, Any]:
    scenario = scenarios.loopback(duration_s)
    rate = scenario.steps[-1].rate
    specs = [
        {"delay_ms": s.median_s * 1000, "dist": "lognormal", "max_concurrency": s.slots}
        | {"probes": True, "orca": True}
        for s in scenario.servers
    ]
    labels = list(MIXED_VARIANTS)
    loop_p99: dict[str, list[float]] = {label: [] for label in labels}
    loop_p50: dict[str, list[float]] = {label: [] for label in labels}
    errors: dict[str, list[float]] = {label: [] for label in labels}
    with Backends(specs) as backends:
        for r, label in _interleave(labels, rounds):
            client, config = MIXED_VARIANTS[label]
            result = await _one_run(backends.addresses, client, config, rate, duration_s, 100 + r)
            s = result.summary(2.0)
            loop_p99[label].append(s["p99_ms"])
            loop_p50[label].append(s["p50_ms"])
            errors[label].append(1 - s["success"])
            print(f"  mixed r{r} {label:<22} {s}", flush=True)
            await asyncio.sleep(0.3)
    sim = await asyncio.to_thread(_simulate_mixed, labels, rounds, duration_s)
    loopback = {
        label: {
            "p50_ms": statistics.median(loop_p50[label]),
            "p99_ms": statistics.median(loop_p99[label]),
            "p99_ms_range": [min(loop_p99[label]), max(loop_p99[label])],
            "error_rate": statistics.median(errors[label]),
        }
        for label in labels
    }
    rank_sim = sorted(labels, key=lambda k: sim[k]["p99_ms"])
    rank_loop = sorted(labels, key=lambda k: loopback[k]["p99_ms"])
    data = {
        "title": scenario.title,
        "rate": rate,
        "rounds": rounds,
        "duration_s": duration_s,
        "loopback": loopback,
        "simulator": sim,
        "p99_rank_simulator": rank_sim,
        "p99_rank_loopback": rank_loop,
        "prequal_beats_wrr_and_rr_on_both": all(
            src["prequal"]["p99_ms"]
            < min(src["weighted_round_robin"]["p99_ms"], src["grpcio round_robin"]["p99_ms"])
            for src in (sim, loopback)
        ),
    }
    _plot_mixed(data)
    return data


def _simulate_mixed(labels: list[str], rounds: int, duration_s: float) -> dict[str, Any]:
    """The same scenario in the simulator (in a thread of its own: it runs its own loop)."""
    scenario = scenarios.loopback(duration_s)
    sim: dict[str, dict[str, float]] = {}
    for label in labels:
        _, service_config = MIXED_VARIANTS[label]
        [(name, config)] = service_config["loadBalancingConfig"][0].items()
        p50s, p99s = [], []
        for r in range(rounds):
            res = simulate(scenario, name, config, 100 + r)
            w = res.window(2.0, duration_s, scenario.timeout_s)
            p50s.append(w["p50_ms"])
            p99s.append(w["p99_ms"])
        sim[label] = {"p50_ms": statistics.median(p50s), "p99_ms": statistics.median(p99s)}
    return sim


def _plot_mixed(data: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(data["loopback"])
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(labels))
    ax.bar(
        [x - 0.2 for x in xs],
        [data["simulator"][k]["p99_ms"] for k in labels],
        0.4,
        label="simulator",
    )
    ax.bar(
        [x + 0.2 for x in xs],
        [data["loopback"][k]["p99_ms"] for k in labels],
        0.4,
        label="loopback",
    )
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("p99 (ms, median of rounds)")
    ax.legend(fontsize=8)
    ax.set_title(f"Simulator vs loopback: {data['title']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(RESULTS / "prequal_mixed.png", dpi=110)
    plt.close(fig)


# -- stalls: a busy client -------------------------------------------------------------------
@contextmanager
def _stall_discount_off() -> Iterator[None]:
    """peak_ewma as before issue 16: the client's stalls counted as backend latency."""
    original = StallMeter.stalled_between
    StallMeter.stalled_between = lambda self, start, end: 0.0  # type: ignore[method-assign]
    try:
        yield
    finally:
        StallMeter.stalled_between = original  # type: ignore[method-assign]


async def stalls(rounds: int, duration_s: float) -> dict[str, Any]:
    fast = {"delay_ms": 5, "dist": "lognormal", "probes": True}
    slow = {"delay_ms": 50, "dist": "lognormal", "probes": True}
    variants: dict[str, tuple[dict[str, Any], bool, bool]] = {
        # config, all backends (else the oracle's four fast), stall discount on
        "round_robin": (lb("round_robin"), True, True),
        "peak_ewma": (lb("peak_ewma"), True, True),
        "peak_ewma (stall discount off)": (lb("peak_ewma"), True, False),
        "prequal": (lb("prequal"), True, True),
        "oracle": (lb("round_robin"), False, True),
    }
    labels = list(variants)
    p99: dict[str, list[float]] = {label: [] for label in labels}
    slow_rate: dict[str, list[float]] = {label: [] for label in labels}
    with Backends([slow, fast, fast, fast, fast]) as backends:
        for r, label in _interleave(labels, rounds):
            config, everything, discount = variants[label]
            addresses = backends.addresses if everything else backends.addresses[1:]
            if discount:
                result = await _one_run(addresses, "ours", config, 300, duration_s, 200 + r, True)
            else:
                with _stall_discount_off():
                    result = await _one_run(
                        addresses, "ours", config, 300, duration_s, 200 + r, True
                    )
            s = result.summary(2.0)
            p99[label].append(s["p99_ms"])
            slow_rate[label].append(round(result.share([backends.addresses[0]], 2.0) * 300, 1))
            print(f"  stalls r{r} {label:<32} {s} slow {slow_rate[label][-1]}/s", flush=True)
            await asyncio.sleep(0.3)
    oracle, rr = p99["oracle"], p99["round_robin"]

    def every_round(label: str) -> bool:
        return all(x <= 1.5 * o and x <= q for x, o, q in zip(p99[label], oracle, rr, strict=True))

    data = {
        "title": "One of five backends 10x slow, 300/s, the client's loop busy (5 stalls/s, median 30 ms)",
        "rounds": rounds,
        "duration_s": duration_s,
        "p99_ms_per_round": p99,
        "slow_calls_per_s_per_round": slow_rate,
        "median_p99_ms": {k: statistics.median(v) for k, v in p99.items()},
        "worst_p99_over_oracle": {
            k: round(max(x / o for x, o in zip(v, oracle, strict=True)), 3) for k, v in p99.items()
        },
        "targets": {
            "peak_ewma_every_round": every_round("peak_ewma"),
            "prequal_every_round": every_round("prequal"),
        },
    }
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label in labels:
        ax.plot(range(1, rounds + 1), p99[label], marker="o", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("p99 (ms, log)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(data["title"], fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "prequal_stalls.png", dpi=110)
    plt.close(fig)
    return data


# -- cost: what the probes cost a server --------------------------------------------------------
def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks


async def _drive(address: str, calls: int, probe: bool) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        if probe:
            call = channel.unary_unary(
                METHOD,
                request_serializer=ProbeRequest.SerializeToString,
                response_deserializer=ProbeResponse.FromString,
            )
            request: Any = ProbeRequest()
        else:
            call = greeter_pb2_grpc.GreeterStub(channel).SayHello
            request = greeter_pb2.HelloRequest(name="cost")
        remaining = calls

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await call(request, timeout=10)

        await asyncio.gather(*(worker() for _ in range(8)))


async def cost(rounds: int, calls: int) -> dict[str, Any]:
    per_call: dict[str, list[float]] = {"plain": [], "interceptor": [], "probe": []}
    with Backends([{}]) as plain, Backends([{"probes": True}]) as probed:
        pids = {"plain": plain.pid, "interceptor": probed.pid, "probe": probed.pid}
        address = {
            "plain": plain.addresses[0],
            "interceptor": probed.addresses[0],
            "probe": probed.addresses[0],
        }
        for _, kind in _interleave(list(per_call), rounds):
            await _drive(address[kind], 200, kind == "probe")  # warm
            before = _cpu_s(pids[kind])
            await _drive(address[kind], calls, kind == "probe")
            per_call[kind].append((_cpu_s(pids[kind]) - before) / calls * 1e6)
    ratios = [i / p for i, p in zip(per_call["interceptor"], per_call["plain"], strict=True)]
    return {
        "title": "Server CPU per unary call (us): greeter without and with the probe interceptor, and per probe answered",
        "calls_per_round": calls,
        "rounds": rounds,
        "us_per_call": {k: round(statistics.median(v), 1) for k, v in per_call.items()},
        "us_per_call_range": {k: [round(min(v), 1), round(max(v), 1)] for k, v in per_call.items()},
        "interceptor_over_plain_median": round(statistics.median(ratios), 3),
        "interceptor_over_plain_range": [round(min(ratios), 3), round(max(ratios), 3)],
    }


def _write(name: str, data: dict[str, Any]) -> None:
    (RESULTS / f"prequal_{name}.json").write_text(json.dumps(data, indent=2) + "\n")


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--only", nargs="*", default=["cost", "mixed", "stalls"])
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if "cost" in args.only:
        _write("cost", await cost(max(args.rounds // 2, 3), 3000))
    if "mixed" in args.only:
        _write("mixed", await mixed(max(args.rounds // 3, 2), args.duration))
    if "stalls" in args.only:
        _write("stalls", await stalls(args.rounds, args.duration))
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    asyncio.run(main())
