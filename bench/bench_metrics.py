"""Metrics overhead (issue 6): client CPU per RPC with Prometheus metrics on vs off.

Same 3 greeter server processes, round_robin, concurrency 32. Each round makes one
channel with metrics off and one with metrics on (``grpc_balancer.metrics.enable()``
before the channel is created), in alternating order, N calls each; the CPU this
process spent (``time.process_time``: Python and grpcio's C threads) is divided by N.
The figure is the ratio on/off per round (paired, so machine noise mostly cancels) and
the ratio of the medians. Target: ≤ 1.05. A scrape of the collector runs between
rounds so the exposition code is exercised (not timed).

Also the cost of the per-call hooks alone (``call_started`` + ``on_attempt`` +
``call_finished``), timed in a tight loop.

Run: ``python -m bench.bench_metrics [--calls 20000] [--rounds 8]``.
Writes bench/results/metrics.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
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
from grpc_balancer.greeter import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.testing import ServerProcesses

RESULTS = Path(__file__).parent / "results"
CONCURRENCY = 32


async def _drive(channel: grpc.aio.Channel, calls: int) -> float:
    """CPU seconds this process spent making ``calls`` calls with CONCURRENCY workers."""
    stub = greeter_pb2_grpc.GreeterStub(channel)
    request = greeter_pb2.HelloRequest(name="bench")
    for _ in range(200):  # warm up connections and code paths
        await stub.SayHello(request, timeout=10)
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await stub.SayHello(request, timeout=10)

    cpu0 = time.process_time()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return time.process_time() - cpu0


async def _one_run(on: bool, target: str, calls: int, registry: CollectorRegistry) -> float:
    if on:
        metrics.enable(registry)
    else:
        metrics.disable()
    channel = grpc_balancer.aio.insecure_channel(target, policy="round_robin")
    assert (channel.instrument is not None) == on
    await channel.wait_for_settled(10)
    try:
        return await _drive(channel, calls) / calls
    finally:
        if on:
            generate_latest(registry)  # the exposition path works under load's leftovers
        await channel.close()
        metrics.disable()


async def _interleaved(target: str, calls: int, rounds: int) -> dict[str, list[float]]:
    registry = CollectorRegistry()
    samples: dict[str, list[float]] = {"off": [], "on": []}
    for i in range(rounds):
        order = (False, True) if i % 2 == 0 else (True, False)
        for on in order:
            cpu = await _one_run(on, target, calls, registry)
            samples["on" if on else "off"].append(cpu)
            print(
                f"round {i + 1}/{rounds} metrics {'on ' if on else 'off'}: {cpu * 1e6:.1f} µs/RPC"
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
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    with ServerProcesses(3) as fleet:
        samples = asyncio.run(_interleaved(fleet.target(), args.calls, args.rounds))
    hooks = _hook_cost_ns()
    ratios = [on / off for on, off in zip(samples["on"], samples["off"], strict=True)]
    off_med, on_med = statistics.median(samples["off"]), statistics.median(samples["on"])
    result: dict[str, Any] = {
        "scenario": {
            "servers": 3,
            "policy": "round_robin",
            "concurrency": CONCURRENCY,
            "calls_per_run": args.calls,
            "rounds": args.rounds,
            "command": f"python -m bench.bench_metrics --calls {args.calls} --rounds {args.rounds}",
        },
        "cpu_per_rpc_us": {k: [v * 1e6 for v in vs] for k, vs in samples.items()},
        "median_cpu_per_rpc_us": {"off": off_med * 1e6, "on": on_med * 1e6},
        "ratio_of_medians": on_med / off_med,
        "paired_ratios": ratios,
        "paired_ratio_median": statistics.median(ratios),
        "paired_ratio_min": min(ratios),
        "paired_ratio_max": max(ratios),
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
    left.boxplot([data["off"], data["on"]], tick_labels=["metrics off", "metrics on"])
    for x, key in ((1, "off"), (2, "on")):
        left.scatter([x] * len(data[key]), data[key], alpha=0.6, s=12)
    left.set_ylabel("client CPU per RPC (µs)")
    left.set_title("CPU per RPC, interleaved runs")
    ratios = result["paired_ratios"]
    right.plot(range(1, len(ratios) + 1), ratios, "o-")
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
