"""Metrics overhead (issue 6): client CPU per RPC with Prometheus metrics on vs off.

Same 3 greeter server processes, round_robin, concurrency 32. Each round makes three
fresh channels in one process: "off" and "control" created with metrics off, "on"
after ``grpc_balancer.metrics.enable()``; after a warm-up, one batch of N calls goes to
each (creation and batch order rotate through every permutation); the CPU this process spent per batch (``time.process_time``: Python and
grpcio's C threads) is divided by N. Figures: the paired on/off ratio per round (its
median and spread: neighbouring batches see the same machine noise), the ratio of
total CPU and of the medians; "control" / "off", two identical channels, is the noise
floor. Target: ≤ 1.05. The collector is scraped once at the end so the exposition code
is exercised (not timed).

Also the cost of the per-call hooks alone (``call_started`` + ``on_attempt`` +
``call_finished``), timed in a tight loop.

Run: ``python -m bench.bench_metrics [--calls 2000] [--rounds 30]``.
Writes bench/results/metrics.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import time
import timeit
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import grpc.aio
from prometheus_client import CollectorRegistry, generate_latest

import grpc_balancer
from grpc_balancer import metrics
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.testing import ServerProcesses

RESULTS = Path(__file__).parent / "results"
CONCURRENCY = 32


async def _batch(stub: Any, request: Any, calls: int) -> float:
    """CPU seconds this process spent making ``calls`` calls with CONCURRENCY workers."""
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await stub.SayHello(request, timeout=10)

    cpu0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.process_time() - cpu0


async def _round(
    target: str, order: tuple[str, ...], calls: int, registry: CollectorRegistry
) -> dict[str, float]:
    """Fresh channels "off", "on" and "control" (off too), created and measured in
    ``order``: a channel's identity or creation order must not favour one kind."""
    channels: dict[str, grpc_balancer.aio.BalancedChannel] = {}
    request = greeter_pb2.HelloRequest(name="bench")
    try:
        for kind in order:
            if kind == "on":
                metrics.enable(registry)
            else:
                metrics.disable()
            channels[kind] = grpc_balancer.aio.insecure_channel(target, policy="round_robin")
            assert (channels[kind].instrument is not None) == (kind == "on")
        metrics.disable()
        stubs = {k: greeter_pb2_grpc.GreeterStub(ch) for k, ch in channels.items()}
        for kind in order:
            await channels[kind].wait_for_settled(10)
            await _batch(stubs[kind], request, 300)  # warm up connections and code paths
        cpu = {kind: await _batch(stubs[kind], request, calls) / calls for kind in order}
        metrics.enable(
            registry
        )  # scrape once, untimed: the exposition works under load's leftovers
        text = generate_latest(registry).decode()
        metrics.disable()
        assert "grpc_client_attempt_started_total" in text
        return cpu
    finally:
        for channel in channels.values():
            await channel.close()


async def _interleaved(target: str, calls: int, rounds: int) -> dict[str, list[float]]:
    """Rounds of fresh channels; creation and measurement order rotate through every
    permutation, so slow phases of a shared, noisy machine hit all kinds alike."""
    registry = CollectorRegistry()
    samples: dict[str, list[float]] = {"off": [], "on": [], "control": []}
    orders = list(itertools.permutations(samples))
    for i in range(rounds):
        cpu = await _round(target, orders[i % len(orders)], calls, registry)
        for kind, value in cpu.items():
            samples[kind].append(value)
        print(
            f"round {i + 1}/{rounds}: off {cpu['off'] * 1e6:.1f} µs/RPC, "
            f"on {cpu['on'] * 1e6:.1f} µs/RPC, control (off too) {cpu['control'] * 1e6:.1f} µs/RPC",
            flush=True,
        )
    return samples


def _hook_cost_ns(n: int = 200_000) -> dict[str, float]:
    """What the hooks add per unary call, measured without any I/O."""
    target = "static:///bench-hooks:1"
    fake_channel = SimpleNamespace(target=target)
    inst = metrics._ChannelMetrics(fake_channel)
    series = metrics.BackendSeries(target, "10.0.0.1:1")
    sc = SimpleNamespace(attrs={"grpc_balancer.metrics": series})
    call = SimpleNamespace(_mc=SimpleNamespace(_method="/greeter.Greeter/SayHello"), _subchannel=sc)
    ok = grpc.StatusCode.OK

    def one() -> None:
        inst.call_started(call)
        series.on_attempt(sc, 0.0012, ok)  # type: ignore[arg-type]
        inst.call_finished(call, ok)

    per_call = min(timeit.repeat(one, number=n, repeat=5)) / n
    inst.closed()
    return {"hooks_per_call_ns": per_call * 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2_000, help="calls per batch")
    parser.add_argument("--rounds", type=int, default=30, help="off/on batch pairs")
    args = parser.parse_args()
    with ServerProcesses(3) as fleet:
        samples = asyncio.run(_interleaved(fleet.target(), args.calls, args.rounds))
    hooks = _hook_cost_ns()
    ratios = [on / off for on, off in zip(samples["on"], samples["off"], strict=True)]
    off_med, on_med = statistics.median(samples["off"]), statistics.median(samples["on"])
    quartiles = statistics.quantiles(ratios, n=4)
    control = [c / off for c, off in zip(samples["control"], samples["off"], strict=True)]
    control_q = statistics.quantiles(control, n=4)
    result: dict[str, Any] = {
        "scenario": {
            "servers": 3,
            "policy": "round_robin",
            "concurrency": CONCURRENCY,
            "calls_per_batch": args.calls,
            "rounds": args.rounds,
            "command": f"python -m bench.bench_metrics --calls {args.calls} --rounds {args.rounds}",
        },
        "cpu_per_rpc_us": {k: [v * 1e6 for v in vs] for k, vs in samples.items()},
        "median_cpu_per_rpc_us": {"off": off_med * 1e6, "on": on_med * 1e6},
        "ratio_of_medians": on_med / off_med,
        "paired_ratios": ratios,
        "control_ratios": control,
        "paired_ratio_median": statistics.median(ratios),
        "ratio_of_totals": sum(samples["on"]) / sum(samples["off"]),
        "paired_ratio_iqr": [quartiles[0], quartiles[2]],
        "paired_ratio_min": min(ratios),
        "paired_ratio_max": max(ratios),
        "control_ratio_median": statistics.median(control),
        "control_ratio_of_totals": sum(samples["control"]) / sum(samples["off"]),
        "control_ratio_iqr": [control_q[0], control_q[2]],
        "target_ratio": 1.05,
        **hooks,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    _plot(result, RESULTS / "metrics.png")
    print(json.dumps({k: v for k, v in result.items() if k != "cpu_per_rpc_us"}, indent=2))


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    data = result["cpu_per_rpc_us"]
    left.boxplot(
        [data["off"], data["on"], data["control"]],
        tick_labels=["metrics off", "metrics on", "control (off)"],
    )
    for x, key in ((1, "off"), (2, "on"), (3, "control")):
        left.scatter([x] * len(data[key]), data[key], alpha=0.6, s=12)
    left.set_ylabel("client CPU per RPC (µs)")
    left.set_title("CPU per RPC, interleaved runs")
    ratios = result["paired_ratios"]
    right.plot(range(1, len(ratios) + 1), ratios, "o-", label="on / off")
    right.plot(
        range(1, len(ratios) + 1),
        result["control_ratios"],
        "x:",
        alpha=0.6,
        label="control / off (noise)",
    )
    right.axhline(1.05, color="red", linestyle="--", label="target 1.05")
    right.axhline(1.0, color="grey", linewidth=0.8)
    right.set_xlabel("round")
    right.set_ylabel("on / off")
    right.set_title(f"paired ratio (median {result['paired_ratio_median']:.3f})")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
