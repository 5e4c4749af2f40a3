"""Foundation benchmarks (issue 2).

1. Client CPU time per RPC: grpc_balancer's round_robin channel vs grpcio's own channel
   (``ipv4:`` target, ``round_robin`` service config), same 3 server processes,
   concurrency 32, interleaved runs of N calls each. Target: ratio ≤ 1.05.
2. Pick cost of the round_robin picker with 3, 100 and 10,000 READY endpoints.
   Target: ≤ 2 µs per pick.

Run: ``python -m bench.bench_round_robin [--calls 20000] [--rounds 3]``.
Writes bench/results/round_robin.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import timeit
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

import grpc_balancer
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.picker import PickInfo
from grpc_balancer.policies.round_robin import RoundRobinPicker
from grpc_balancer.testing import ServerProcesses

RESULTS = Path(__file__).parent / "results"
CONCURRENCY = 32


async def _drive(channel: grpc.aio.Channel, calls: int) -> float:
    """CPU seconds this process spent making ``calls`` calls with CONCURRENCY workers."""
    stub = greeter_pb2_grpc.GreeterStub(channel)
    request = greeter_pb2.HelloRequest(name="bench")
    for _ in range(50):  # warm up connections and code paths
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


async def _one_run(kind: str, addresses: list[str], calls: int) -> float:
    if kind == "grpc_balancer":
        channel: grpc.aio.Channel = grpc_balancer.aio.insecure_channel(
            "static:///" + ",".join(addresses), policy="round_robin"
        )
        await channel.wait_for_settled(10)  # type: ignore[attr-defined]
    else:
        channel = grpc.aio.insecure_channel(
            "ipv4:" + ",".join(addresses),
            options=[
                ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]}))
            ],
        )
        await channel.channel_ready()
    try:
        return await _drive(channel, calls)
    finally:
        await channel.close()


async def _interleaved(addresses: list[str], calls: int, rounds: int) -> dict[str, list[float]]:
    # One event loop for every run: grpc.aio's poller outlives a loop.
    samples: dict[str, list[float]] = {"grpc_balancer": [], "grpcio": []}
    for _ in range(rounds):
        for kind in ("grpc_balancer", "grpcio"):  # interleaved
            cpu = await _one_run(kind, addresses, calls)
            samples[kind].append(cpu / calls * 1e6)
            print(f"  {kind:14s} {samples[kind][-1]:7.1f} µs CPU/RPC")
    return samples


def cpu_per_rpc(calls: int, rounds: int) -> dict[str, Any]:
    with ServerProcesses(3) as fleet:
        samples = asyncio.run(_interleaved(fleet.addresses, calls, rounds))
    ours, theirs = (statistics.median(samples[k]) for k in ("grpc_balancer", "grpcio"))
    return {
        "calls_per_run": calls,
        "rounds": rounds,
        "concurrency": CONCURRENCY,
        "us_cpu_per_rpc": samples,
        "median_us": {"grpc_balancer": ours, "grpcio": theirs},
        "ratio": ours / theirs,
        "target_ratio": 1.05,
    }


class _FakeSubchannel:
    """Stands in for a READY subchannel: the picker only needs identity."""

    def __init__(self, i: int) -> None:
        self.endpoint = Endpoint(f"10.0.{i // 256}.{i % 256}:1")


def pick_cost() -> dict[str, float]:
    info = PickInfo("/greeter.Greeter/SayHello")
    out = {}
    for n in (3, 100, 10_000):
        picker = RoundRobinPicker([_FakeSubchannel(i) for i in range(n)])  # type: ignore[misc]
        number = 200_000
        best = min(timeit.repeat(lambda p=picker: p.pick(info), number=number, repeat=5))
        out[str(n)] = best / number * 1e6
        print(f"  round_robin pick, {n:>6} endpoints: {out[str(n)]:.3f} µs")
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    cpu = result["cpu_per_rpc"]["us_cpu_per_rpc"]
    ax1.boxplot(
        [cpu["grpc_balancer"], cpu["grpcio"]], tick_labels=["grpc_balancer", "grpcio native"]
    )
    ax1.set_ylabel("client CPU µs per RPC")
    ax1.set_title(
        f"round_robin, concurrency {CONCURRENCY} (ratio {result['cpu_per_rpc']['ratio']:.2f})"
    )
    picks = result["pick_cost_us"]
    ax2.bar(list(picks), list(picks.values()))
    ax2.axhline(2.0, color="red", linestyle="--", label="target 2 µs")
    ax2.set_xlabel("READY endpoints")
    ax2.set_ylabel("µs per pick")
    ax2.set_title("round_robin pick cost")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print("pick cost:")
    picks = pick_cost()
    print("client CPU per RPC:")
    result = {"pick_cost_us": picks, "cpu_per_rpc": cpu_per_rpc(args.calls, args.rounds)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "round_robin.json").write_text(json.dumps(result, indent=2))
    plot(result, RESULTS / "round_robin.png")
    print(f"ratio (median ours / median grpcio): {result['cpu_per_rpc']['ratio']:.3f}")
    return result


if __name__ == "__main__":
    main()
