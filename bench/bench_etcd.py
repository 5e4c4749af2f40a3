"""etcd benchmark (issue 3): how fast registry changes reach the calls.

One etcd node (Debian's, started like the tests do), two in-process greeter servers
A and B on 127.0.0.1, and a round_robin channel on ``etcd://.../services/bench``.
A is always registered. Client tasks call SayHello without pause, recording for every
call the time it was sent and the backend that served it.

* put → first call: each trial puts B's key (Go ``endpoints`` format, one ``Put`` RPC)
  and measures from just before the put to the first reply served by B — this
  includes the watch event, the new subchannel's connect and the next pick. Then B's
  key is deleted and the client is left to drop B before the next trial.
  Targets: p50 ≤ 50 ms, p99 ≤ 200 ms over 50 trials.
* deregister → last call: B registers with :func:`grpc_balancer.registration`; once
  calls reach it, ``deregister()`` runs and we measure from its start to the send time
  of the last call that went to B. Target ≤ 100 ms.

Run: ``PYTHONPATH=src:. python -m bench.bench_etcd [--trials 50] [--dereg-trials 20]``
(needs etcd; ~30 s). Writes bench/results/etcd.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import grpc.aio

import grpc_balancer
from grpc_balancer._etcd.client import EtcdClient
from grpc_balancer._etcd.codec import encode_endpoint
from grpc_balancer._etcd.settings import settings_from_target
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.demo.server import GreeterServer
from tests.etcd_cluster import EtcdCluster

RESULTS = Path(__file__).parent / "results"
PREFIX = "services/bench"
CALLERS = 4


class Traffic:
    """``CALLERS`` tasks calling without pause; every call's (sent at, port) is kept."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = greeter_pb2_grpc.GreeterStub(channel)
        self.calls: list[tuple[float, str]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = False
        self._want: str | None = None
        self._arrived = asyncio.Event()
        self._arrived_at: float | None = None

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._loop()) for _ in range(CALLERS)]

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)

    async def _loop(self) -> None:
        request = greeter_pb2.HelloRequest(name="bench")
        while not self._stop:
            sent = time.monotonic()
            call = self._stub.SayHello(request, timeout=5)
            try:
                await call
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.001)
                continue
            peer = call.peer_address or "?"
            self.calls.append((sent, peer))
            if peer == self._want and self._arrived_at is None:
                self._arrived_at = time.monotonic()
                self._arrived.set()

    def expect(self, peer: str) -> None:
        """Watch for the next reply from ``peer`` (call before causing it)."""
        self._want, self._arrived, self._arrived_at = peer, asyncio.Event(), None

    async def arrival(self, timeout: float = 10.0) -> float | None:
        """When the expected reply arrived (monotonic), or None after ``timeout``."""
        try:
            await asyncio.wait_for(self._arrived.wait(), timeout)
        except TimeoutError:
            return None
        finally:
            self._want = None
        return self._arrived_at

    async def wait_for(self, peer: str) -> float | None:
        self.expect(peer)
        return await self.arrival()

    async def wait_gone(self, peer: str, quiet_s: float = 0.2, timeout: float = 10.0) -> None:
        """Until no call has gone to ``peer`` for ``quiet_s``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = max((s for s, who in self.calls[-2000:] if who == peer), default=0.0)
            if time.monotonic() - last > quiet_s:
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"calls still reach {peer}")

    def last_sent_to(self, peer: str) -> float | None:
        return max((s for s, who in self.calls if who == peer), default=None)


async def _put_trials(
    traffic: Traffic, client: EtcdClient, b: GreeterServer, trials: int
) -> list[float]:
    delays = []
    key = f"{PREFIX}/{b.address}"
    value = encode_endpoint(b.address)
    for _ in range(trials):
        traffic.expect(b.address)
        start = time.monotonic()
        await client.put(key, value)
        arrived = await traffic.arrival()
        delays.append((arrived - start) if arrived is not None else float("inf"))
        await client.delete(key)
        await traffic.wait_gone(b.address)
    return delays


async def _deregister_trials(
    traffic: Traffic, target: str, b: GreeterServer, trials: int
) -> list[float]:
    delays = []
    for _ in range(trials):
        reg = grpc_balancer.registration(target, b.address, ttl=10)
        await reg.start()
        await traffic.wait_for(b.address)
        await asyncio.sleep(0.05)
        start = time.monotonic()
        await reg.deregister()
        await traffic.wait_gone(b.address, quiet_s=0.3)
        last = traffic.last_sent_to(b.address) or start
        delays.append(max(0.0, last - start))
    return delays


def _summary(delays: list[float], targets: dict[str, float]) -> dict[str, Any]:
    ms = sorted(d * 1000 for d in delays)
    q = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return {
        "trials": len(ms),
        "delays_ms": [round(d * 1000, 2) for d in delays],
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(q[98], 2),
        "max_ms": round(ms[-1], 2),
        **targets,
    }


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    put, dereg = report["put_to_first_call"], report["deregister_to_last_call"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ms = sorted(put["delays_ms"])
    ax1.plot(ms, [(i + 1) / len(ms) for i in range(len(ms))], marker=".")
    ax1.axvline(put["target_p50_ms"], color="orange", ls="--", label="target p50 50 ms")
    ax1.axvline(put["target_p99_ms"], color="red", ls="--", label="target p99 200 ms")
    ax1.set_xlabel("etcd put → first call on the new backend (ms)")
    ax1.set_ylabel("fraction of trials")
    ax1.set_title(f"put → first call ({put['trials']} trials)")
    ax1.legend()
    ax2.scatter(range(1, dereg["trials"] + 1), dereg["delays_ms"], s=18)
    ax2.axhline(dereg["target_max_ms"], color="red", ls="--", label="target 100 ms")
    ax2.set_xlabel("trial")
    ax2.set_ylabel("deregister → last call sent there (ms)")
    ax2.set_title("graceful deregistration")
    ax2.set_ylim(bottom=0)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main(trials: int, dereg_trials: int) -> dict[str, Any]:
    with EtcdCluster(1) as etcd:
        target = etcd.target(PREFIX)
        a = GreeterServer(0, "127.0.0.1", grace_s=0.1)
        b = GreeterServer(0, "127.0.0.1", grace_s=0.1)
        await a.start()
        await b.start()
        client = EtcdClient(settings_from_target(target))
        await client.connect()
        try:
            await client.put(f"{PREFIX}/{a.address}", encode_endpoint(a.address))
            async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as ch:
                await ch.wait_for_settled(10)
                traffic = Traffic(ch)
                traffic.start()
                try:
                    await traffic.wait_for(a.address)
                    put = await _put_trials(traffic, client, b, trials)
                    dereg = await _deregister_trials(traffic, target, b, dereg_trials)
                finally:
                    await traffic.stop()
                calls = len(traffic.calls)
        finally:
            await client.disconnect()
            await a.stop(0)
            await b.stop(0)
    return {
        "benchmark": "etcd_registry_changes",
        "etcd": "single node, Debian etcd 3.4, heartbeat 50 ms, election 500 ms, tmpfs",
        "callers": CALLERS,
        "calls_made": calls,
        "put_to_first_call": _summary(put, {"target_p50_ms": 50, "target_p99_ms": 200}),
        "deregister_to_last_call": _summary(dereg, {"target_max_ms": 100}),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--dereg-trials", type=int, default=20)
    args = parser.parse_args()
    report = asyncio.run(main(args.trials, args.dereg_trials))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "etcd.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, RESULTS / "etcd.png")
    put, dereg = report["put_to_first_call"], report["deregister_to_last_call"]
    print(
        f"put → first call: p50 {put['p50_ms']} ms, p99 {put['p99_ms']} ms, "
        f"max {put['max_ms']} ms ({put['trials']} trials; targets 50/200 ms)"
    )
    print(
        f"deregister → last call: p50 {dereg['p50_ms']} ms, max {dereg['max_ms']} ms "
        f"({dereg['trials']} trials; target 100 ms)"
    )
