"""Failover and retry amplification (issue 4).

1. Failover: 3 greeter servers in child processes, an open-loop client at ~500 calls/s
   (a call starts every 2 ms whatever the others do), round_robin with a retryPolicy on
   UNAVAILABLE; one server is SIGKILLed midway. Reports failed calls (target 0), p99
   latency of calls started in the second around the kill vs the steady state before it
   (target ≤ 3x), and how long after the kill the last attempt was sent to the dead
   backend (target ≤ 100 ms).
2. Retry amplification: one of 3 servers fails 100% of calls (``--fail-rate 1``);
   attempts per call with retries + retryThrottling, and with outlier ejection added
   (target ≤ 1.1).

Run: ``python -m bench.bench_failover [--rate 500] [--seconds 10] [--trials 3]``.
Writes bench/results/failover.json and failover.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

import grpc_balancer
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.subchannel import Subchannel
from grpc_balancer.testing import ServerProcesses

RESULTS = Path(__file__).parent / "results"

RETRY = {
    "name": [{"service": "greeter.Greeter"}],
    "retryPolicy": {
        "maxAttempts": 5,
        "initialBackoff": "0.01s",
        "maxBackoff": "0.1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    },
}
THROTTLING = {"maxTokens": 100, "tokenRatio": 0.1}
OUTLIER = {
    "interval": "1s",
    "baseEjectionTime": "30s",
    "consecutiveFailures": {"threshold": 5},
}


def service_config(*, throttling: bool = False, outlier: bool = False) -> dict[str, Any]:
    config: dict[str, Any] = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [RETRY],
    }
    if throttling:
        config["retryThrottling"] = THROTTLING
    if outlier:
        config["outlierDetection"] = OUTLIER
    return config


class OpenLoop:
    """Start a call every ``1/rate`` s for ``seconds``; record (start, latency, ok)."""

    def __init__(self, channel: grpc.aio.Channel, rate: float, seconds: float) -> None:
        self._stub = greeter_pb2_grpc.GreeterStub(channel)
        self._rate = rate
        self._seconds = seconds
        self.records: list[tuple[float, float, bool]] = []
        self.errors: dict[str, int] = {}
        self.t0 = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.t0 = loop.time()
        n = int(self._rate * self._seconds)
        tasks = []
        request = greeter_pb2.HelloRequest(name="bench")
        for i in range(n):
            due = self.t0 + i / self._rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(self._one(request)))
        await asyncio.gather(*tasks)

    async def _one(self, request: greeter_pb2.HelloRequest) -> None:
        start = time.monotonic()
        ok = True
        try:
            await self._stub.SayHello(request, timeout=5)
        except grpc.aio.AioRpcError as err:
            ok = False
            key = f"{err.code().name}: {err.details()}"
            self.errors[key] = self.errors.get(key, 0) + 1
        self.records.append((start, time.monotonic() - start, ok))


def p99(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


async def failover_trial(rate: float, seconds: float) -> dict[str, Any]:
    kill_at = seconds / 2
    with ServerProcesses(3) as procs:
        victim = procs.servers[0]
        async with grpc_balancer.aio.insecure_channel(
            procs.target(), service_config=service_config()
        ) as ch:
            await ch.wait_for_settled(15)
            dead = next(sc for sc in ch.subchannels if sc.address == victim.address)
            attempt_starts: list[float] = []

            def observe(sc: Subchannel, latency: float, code: grpc.StatusCode) -> None:
                attempt_starts.append(time.monotonic() - latency)

            dead.call_observers.append(observe)
            load = OpenLoop(ch, rate, seconds)
            runner = asyncio.get_running_loop().create_task(load.run())
            await asyncio.sleep(kill_at)
            killed = time.monotonic()
            victim.kill()
            await runner
    steady = [lat for s, lat, _ in load.records if killed - kill_at + 1.0 <= s < killed - 1.0]
    around = [lat for s, lat, _ in load.records if killed - 0.5 <= s < killed + 0.5]
    after = [s for s in attempt_starts if s >= killed]
    last_ms = (max(after) - killed) * 1000 if after else 0.0
    failed = sum(1 for *_, ok in load.records if not ok)
    result = {
        "calls": len(load.records),
        "failed": failed,
        "errors": load.errors,
        "achieved_rate": len(load.records) / seconds,
        "p99_steady_ms": p99(steady) * 1000,
        "p99_around_kill_ms": p99(around) * 1000,
        "p99_ratio": p99(around) / p99(steady),
        "attempts_to_dead_after_kill": len(after),
        "last_attempt_to_dead_after_kill_ms": last_ms,
        "timeline": [
            (round(s - (killed - kill_at), 4), round(lat * 1000, 3), ok)
            for s, lat, ok in load.records
        ],
        "kill_at_s": kill_at,
    }
    print(
        f"  failover: {result['calls']} calls, {failed} failed, p99 steady "
        f"{result['p99_steady_ms']:.2f} ms, around kill {result['p99_around_kill_ms']:.2f} ms "
        f"({result['p99_ratio']:.2f}x), last attempt to dead backend {last_ms:.1f} ms after kill"
    )
    return result


async def amplification_trial(rate: float, seconds: float, outlier: bool) -> dict[str, Any]:
    with ServerProcesses(1, args=["--fail-rate", "1"]) as bad, ServerProcesses(2) as good:
        target = "static:///" + ",".join(bad.addresses + good.addresses)
        async with grpc_balancer.aio.insecure_channel(
            target, service_config=service_config(throttling=True, outlier=outlier)
        ) as ch:
            await ch.wait_for_settled(15)
            before = sum(sc.calls_started for sc in ch.subchannels)
            load = OpenLoop(ch, rate, seconds)
            await load.run()
            attempts = sum(sc.calls_started for sc in ch.subchannels) - before
    calls = len(load.records)
    failed = sum(1 for *_, ok in load.records if not ok)
    name = "retries+throttling+ejection" if outlier else "retries+throttling"
    print(
        f"  amplification ({name}): {attempts} attempts / {calls} calls = "
        f"{attempts / calls:.3f}, {failed} failed"
    )
    return {
        "mode": name,
        "calls": calls,
        "attempts": attempts,
        "amplification": attempts / calls,
        "failed": failed,
    }


def _p99_per_second(timeline: list[tuple[float, float, bool]]) -> list[float]:
    """p99 latency (ms) of the calls started in each second of the trial (kill at the middle)."""
    seconds: dict[int, list[float]] = {}
    for start, latency_ms, _ in timeline:
        seconds.setdefault(int(start), []).append(latency_ms)
    return [round(p99(seconds[s]), 3) for s in sorted(seconds)]


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    trial = result["failover"]["trials"][0]
    xs = [t for t, _, _ in trial["timeline"]]
    ys = [lat for _, lat, _ in trial["timeline"]]
    bad = [(t, lat) for t, lat, ok in trial["timeline"] if not ok]
    ax1.scatter(xs, ys, s=2, alpha=0.4, label="call latency")
    if bad:
        ax1.scatter(*zip(*bad, strict=True), s=8, color="red", label="failed")
    ax1.axvline(trial["kill_at_s"], color="red", linestyle="--", label="SIGKILL")
    ax1.set_yscale("log")
    ax1.set_xlabel("seconds")
    ax1.set_ylabel("latency ms (log)")
    ax1.set_title(
        f"~{result['rate']:.0f} calls/s, 3 backends, one SIGKILLed: {trial['failed']} failed, "
        f"p99 x{trial['p99_ratio']:.2f}"
    )
    ax1.legend(loc="upper left")
    modes = result["amplification"]
    ax2.bar([m["mode"].replace("+", "\n+") for m in modes], [m["amplification"] for m in modes])
    ax2.axhline(1.1, color="red", linestyle="--", label="target 1.1")
    ax2.set_ylim(0.9, max(1.2, *(m["amplification"] for m in modes)))
    ax2.set_ylabel("attempts per call")
    ax2.set_title("one backend failing 100%")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


async def run(rate: float, seconds: float, trials: int) -> dict[str, Any]:
    print("failover:")
    failovers = [await failover_trial(rate, seconds) for _ in range(trials)]
    print("retry amplification:")
    amplification = [
        await amplification_trial(rate, seconds / 2, outlier=False),
        await amplification_trial(rate, seconds / 2, outlier=True),
    ]
    return {
        "rate": rate,
        "seconds": seconds,
        "failover": {
            "trials": failovers,
            "failed_total": sum(t["failed"] for t in failovers),
            "calls_total": sum(t["calls"] for t in failovers),
            "p99_ratio_max": max(t["p99_ratio"] for t in failovers),
            "p99_ratio_median": statistics.median(t["p99_ratio"] for t in failovers),
            "last_attempt_to_dead_ms": [t["last_attempt_to_dead_after_kill_ms"] for t in failovers],
            "targets": {"failed": 0, "p99_ratio": 3.0, "last_attempt_to_dead_ms": 100},
        },
        "amplification": amplification,
        "amplification_target": 1.1,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=500.0, help="calls started per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of a failover trial")
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.rate, args.seconds, args.trials))
    RESULTS.mkdir(exist_ok=True)
    plot(result, RESULTS / "failover.png")
    for trial in result["failover"]["trials"]:
        trial["p99_ms_per_second"] = _p99_per_second(trial.pop("timeline"))
    (RESULTS / "failover.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
