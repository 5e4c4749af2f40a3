"""Sync channel benchmark (issue 7): client CPU per RPC, 8 caller threads.

Compares, over the same 3 greeter server processes, interleaved runs of:

* ``grpc_balancer``: :func:`grpc_balancer.insecure_channel` (round_robin), picks in the
  caller thread, per-call counters under a per-subchannel lock (what ships);
* ``loop_handoff``: the same channel, but each call's completion is handed to the
  loop thread (``call_soon_threadsafe``) instead of being counted under the lock —
  the alternative design, measured to justify the choice;
* ``grpcio``: grpcio's own sync channel, ``ipv4:`` target + ``round_robin`` service config.

CPU is ``time.process_time()`` of this process (every thread: callers, the loop
thread, grpcio's own). Target: grpc_balancer / grpcio ≤ 1.05.

Run: ``python -m bench.bench_sync [--calls 16000] [--rounds 5]``.
Writes bench/results/sync.json and .png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

import grpc_balancer
from grpc_balancer._sync.subchannel import SyncSubchannel
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.subchannel import Subchannel
from grpc_balancer.testing import ServerProcesses

RESULTS = Path(__file__).parent / "results"
THREADS = 8
KINDS = ("grpc_balancer", "loop_handoff", "grpcio")


def _drive(channel: grpc.Channel, calls: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of ``calls`` SayHello calls from THREADS threads."""
    stub = greeter_pb2_grpc.GreeterStub(channel)
    request = greeter_pb2.HelloRequest(name="bench")
    for _ in range(200):  # warm up connections and code paths
        stub.SayHello(request, timeout=10)
    per_thread = calls // THREADS
    start = threading.Barrier(THREADS + 1)

    def worker() -> None:
        start.wait()
        for _ in range(per_thread):
            stub.SayHello(request, timeout=10)

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    return time.process_time() - cpu0, time.perf_counter() - wall0


@contextmanager
def _loop_handoff() -> Iterator[None]:
    """Patch SyncSubchannel so call completion is applied on the loop thread."""
    original: Callable[..., None] = SyncSubchannel.call_finished

    def handoff(self: SyncSubchannel, started_at: float, code: grpc.StatusCode) -> None:
        self._call_soon(Subchannel.call_finished, self, started_at, code)

    SyncSubchannel.call_finished = handoff  # type: ignore[method-assign]
    try:
        yield
    finally:
        SyncSubchannel.call_finished = original  # type: ignore[method-assign]


def _one_run(kind: str, addresses: list[str], calls: int) -> tuple[float, float]:
    if kind == "grpcio":
        config = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
        with grpc.insecure_channel(
            "ipv4:" + ",".join(addresses), options=[("grpc.service_config", config)]
        ) as native:
            grpc.channel_ready_future(native).result(10)
            return _drive(native, calls)
    with grpc_balancer.insecure_channel(
        "static:///" + ",".join(addresses), policy="round_robin"
    ) as ours:
        ours.wait_for_settled(10)
        if kind == "loop_handoff":
            with _loop_handoff():
                return _drive(ours, calls)
        return _drive(ours, calls)


def cpu_per_rpc(calls: int, rounds: int) -> dict[str, Any]:
    cpu: dict[str, list[float]] = {k: [] for k in KINDS}
    rps: dict[str, list[float]] = {k: [] for k in KINDS}
    with ServerProcesses(3) as fleet:
        for r in range(rounds):
            order = KINDS if r % 2 == 0 else tuple(reversed(KINDS))  # interleaved
            for kind in order:
                cpu_s, wall_s = _one_run(kind, fleet.addresses, calls)
                cpu[kind].append(cpu_s / calls * 1e6)
                rps[kind].append(calls / wall_s)
                print(
                    f"  round {r + 1} {kind:14s} {cpu[kind][-1]:7.1f} µs CPU/RPC {rps[kind][-1]:7.0f} RPC/s"
                )
    median = {k: statistics.median(v) for k, v in cpu.items()}
    # Ratio per round (same conditions), then its median and spread.
    ratios = [a / b for a, b in zip(cpu["grpc_balancer"], cpu["grpcio"], strict=True)]
    handoff = [a / b for a, b in zip(cpu["loop_handoff"], cpu["grpcio"], strict=True)]
    return {
        "calls_per_run": calls,
        "rounds": rounds,
        "threads": THREADS,
        "us_cpu_per_rpc": cpu,
        "rpc_per_s": rps,
        "median_us": median,
        "ratio": median["grpc_balancer"] / median["grpcio"],
        "ratio_per_round": ratios,
        "ratio_spread": [min(ratios), max(ratios)],
        "loop_handoff_ratio": median["loop_handoff"] / median["grpcio"],
        "loop_handoff_ratio_per_round": handoff,
        "target_ratio": 1.05,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    cpu = result["us_cpu_per_rpc"]
    ax1.boxplot([cpu[k] for k in KINDS], tick_labels=list(KINDS))
    ax1.set_ylabel("client CPU µs per RPC")
    ax1.set_title(f"sync, {THREADS} caller threads, 3 servers (ratio {result['ratio']:.2f})")
    rounds = range(1, len(result["ratio_per_round"]) + 1)
    ax2.plot(rounds, result["ratio_per_round"], "o-", label="grpc_balancer / grpcio")
    ax2.plot(rounds, result["loop_handoff_ratio_per_round"], "s--", label="loop hand-off / grpcio")
    ax2.axhline(1.05, color="red", linestyle=":", label="target 1.05")
    ax2.set_xlabel("round (interleaved)")
    ax2.set_ylabel("CPU ratio")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=16_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print("client CPU per RPC:")
    result = cpu_per_rpc(args.calls, args.rounds)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sync.json").write_text(json.dumps(result, indent=2))
    plot(result, RESULTS / "sync.png")
    print(
        f"ratio (median ours / median grpcio): {result['ratio']:.3f} "
        f"(per round {min(result['ratio_per_round']):.2f}–{max(result['ratio_per_round']):.2f}); "
        f"loop hand-off {result['loop_handoff_ratio']:.3f}"
    )
    return result


if __name__ == "__main__":
    main()
