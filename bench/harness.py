"""Open-loop load for the policy benchmarks.

Calls arrive as a Poisson process at a fixed rate whatever the backends do, and each
latency is measured from the call's *scheduled* arrival time, so a stalled client or
backend shows up in the numbers instead of slowing the load down (no coordinated
omission). Backends live in a child process (:mod:`bench.backends`); the client is
either a grpc_balancer channel or grpcio's own channel with a native policy.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

import grpc_balancer
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.testing import cli_env, manual_resolver

MAX_RATE = 2000.0


class Backends:
    """Greeter servers in a child process; ``set(i, delay_ms=...)`` changes faults live."""

    def __init__(self, specs: Sequence[dict[str, Any]]) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.backends", json.dumps(list(specs))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=cli_env(),
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("bench backends did not start")
        self.addresses = [f"127.0.0.1:{p}" for p in json.loads(line)["ports"]]
        self.pid = self._proc.pid

    def set(self, i: int, **faults: Any) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"i": i, **faults}) + "\n")
        self._proc.stdin.flush()

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)

    def __enter__(self) -> Backends:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Result:
    name: str
    #: (scheduled offset s, latency s or None if failed, backend address or "")
    calls: list[tuple[float, float | None, str]] = field(default_factory=list)
    #: every backend address of the scenario, in spec order
    backends: list[str] = field(default_factory=list)

    def latencies(
        self, start: float = 0.0, end: float = math.inf, fail_as: float = math.inf
    ) -> list[float]:
        return sorted(
            fail_as if lat is None else lat for t, lat, _ in self.calls if start <= t < end
        )

    def success(self, start: float = 0.0, end: float = math.inf) -> float:
        window = [lat for t, lat, _ in self.calls if start <= t < end]
        return sum(lat is not None for lat in window) / max(len(window), 1)

    def share(self, addresses: Sequence[str], start: float = 0.0, end: float = math.inf) -> float:
        window = [a for t, _, a in self.calls if start <= t < end]
        return sum(a in addresses for a in window) / max(len(window), 1)

    def summary(self, start: float = 0.0, end: float = math.inf) -> dict[str, float]:
        lats = self.latencies(start, end)
        return {
            "calls": len(lats),
            "success": round(self.success(start, end), 5),
            "p50_ms": round(percentile(lats, 50) * 1000, 2),
            "p90_ms": round(percentile(lats, 90) * 1000, 2),
            "p99_ms": round(percentile(lats, 99) * 1000, 2),
            "p999_ms": round(percentile(lats, 99.9) * 1000, 2),
        }


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def open_channel(addresses: Sequence[str], client: str, config: dict[str, Any] | None) -> Any:
    """``client``: "ours" (grpc_balancer over a manual resolver) or "grpcio" (native)."""
    service_config = config or {"loadBalancingConfig": [{"round_robin": {}}]}
    if client == "grpcio":
        return grpc.aio.insecure_channel(
            "ipv4:" + ",".join(addresses),
            options=[("grpc.service_config", json.dumps(service_config))],
        )
    resolver = manual_resolver(addresses)
    channel = grpc_balancer.aio.insecure_channel(resolver.target, service_config=service_config)
    channel.resolver = resolver  # type: ignore[attr-defined]
    return channel


async def run_load(
    name: str,
    channel: Any,
    rate: float,
    duration_s: float,
    deadline_s: float,
    events: Sequence[tuple[float, Callable[[], None]]] = (),
    seed: int = 1,
) -> Result:
    """Offer ``rate`` calls/s for ``duration_s`` s; ``events`` run at their offsets."""
    if rate > MAX_RATE:
        raise ValueError(f"offered load {rate}/s is above the {MAX_RATE}/s bound")
    rng = random.Random(seed)
    stub = greeter_pb2_grpc.GreeterStub(channel)
    request = greeter_pb2.HelloRequest(name="bench")
    loop = asyncio.get_running_loop()
    result = Result(name)
    for offset, action in events:
        loop.call_later(offset, action)
    start = loop.time()

    async def one(offset: float) -> None:
        scheduled = start + offset
        try:
            reply = await stub.SayHello(request, timeout=deadline_s)
        except grpc.aio.AioRpcError:
            result.calls.append((offset, None, ""))
            return
        port = reply.message.rsplit(":", 1)[1].rstrip(")")
        result.calls.append((offset, loop.time() - scheduled, f"127.0.0.1:{port}"))

    tasks: set[asyncio.Task[None]] = set()
    offset = 0.0
    while True:
        offset += rng.expovariate(rate)
        if offset >= duration_s:
            break
        delay = start + offset - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(one(offset))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=deadline_s + 5)
    result.calls.sort()
    return result


async def warm_up(channel: Any, n: int = 50) -> None:
    stub = greeter_pb2_grpc.GreeterStub(channel)
    for _ in range(n):
        await stub.SayHello(greeter_pb2.HelloRequest(name="warm"), timeout=5)
