"""xDS control-plane benchmarks (issue 14).

* **etcd put → first call (grpcio native xds client).** One etcd node, two greeter
  servers A and B, our control plane on ``etcd://.../services/xbench`` and grpcio's own
  ``xds:///`` client in a child process calling without pause. A is always
  registered; each trial puts B's key and measures from just before the put to the
  first call B serves (the etcd watch event, our EDS push, the client's new
  subchannel and pick). Then B's key is deleted and the client left to drop B.
  Targets: p50 ≤ 100 ms, p99 ≤ 300 ms over 20 trials.
* **Fan-out.** 1,000 endpoints in one cluster, 100 ADS streams (a light ADS client in
  this process: envoy's generated stub on grpc.aio, each stream ACKing), the control
  plane in a child process (``grpc-balancer xds serve --test-hooks``). Each update
  replaces the service's target (one endpoint changes) over the admin service; we
  measure the time until every stream has the new version (target ≤ 200 ms) and the
  control plane's CPU for the update (from /proc: its user + system time).

Run: ``PYTHONPATH=src:. python -m bench.bench_xds [--trials 20] [--updates 20]``
(needs etcd; about a minute). Writes bench/results/xds.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from grpc_balancer._etcd.client import EtcdClient
from grpc_balancer._etcd.codec import encode_endpoint
from grpc_balancer._etcd.settings import settings_from_target
from grpc_balancer.demo.server import GreeterServer
from grpc_balancer.testing import cli_env
from grpc_balancer.xds import admin, bootstrap_json, parse_config
from grpc_balancer.xds.server import XdsServer
from grpc_balancer.xds.stream import ENDPOINTS
from tests.etcd_cluster import EtcdCluster

RESULTS = Path(__file__).resolve().parent / "results"
PREFIX = "services/xbench"
TICK = os.sysconf("SC_CLK_TCK")
ROOT = str(Path(__file__).resolve().parent.parent)


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def _summary(ms: list[float]) -> dict[str, Any]:
    return {
        "trials": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(_pct(ms, 99), 1),
        "max_ms": round(max(ms), 1),
        "values_ms": [round(v, 1) for v in ms],
    }


# -- etcd put → first call ---------------------------------------------------------------------
class Caller:
    """bench/xds_caller.py in a child process; its lines read as they come."""

    def __init__(self, server: str) -> None:
        self.server = server
        self.calls: list[tuple[float, int]] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, seconds: float) -> None:
        env = cli_env(GRPC_XDS_BOOTSTRAP_CONFIG=bootstrap_json(self.server, "bench-caller"))
        env["PYTHONPATH"] += os.pathsep + ROOT
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.xds_caller", "xds:///greeter", str(seconds),
            stdout=subprocess.PIPE, env=env,
        )  # fmt: skip
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            t, port = line.split()
            self.calls.append((float(t), int(port)))

    async def first_after(self, port: int, since: float, timeout: float = 10.0) -> float:
        deadline = time.monotonic() + timeout
        index = 0
        while time.monotonic() < deadline:
            for t, p in self.calls[index:]:
                if p == port and t >= since:
                    return t
            index = max(0, len(self.calls) - 1)
            await asyncio.sleep(0.002)
        raise TimeoutError(f"no call reached :{port}")

    async def gone(self, port: int, quiet: int = 300, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tail = self.calls[-quiet:]
            if len(tail) == quiet and all(p != port for _, p in tail):
                return
            await asyncio.sleep(0.02)
        raise TimeoutError(f"calls still reach :{port}")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._task is not None:
            await self._task


async def put_to_first_call(trials: int) -> dict[str, Any]:
    with EtcdCluster(1) as etcd:
        target = etcd.target(PREFIX)
        a, b = (
            GreeterServer(0, "127.0.0.1", grace_s=0.1),
            GreeterServer(0, "127.0.0.1", grace_s=0.1),
        )
        await a.start()
        await b.start()
        client = EtcdClient(settings_from_target(target))
        await client.connect()
        config = parse_config({"services": {"greeter": {"target": target}}})
        caller: Caller | None = None
        delays = []
        try:
            await client.put(f"{PREFIX}/{a.address}", encode_endpoint(a.address))
            async with XdsServer(config) as server:
                caller = Caller(server.address)
                await caller.start(600)
                await caller.first_after(a.port, 0, timeout=30)
                key = f"{PREFIX}/{b.address}"
                for _ in range(trials):
                    t0 = time.time()
                    await client.put(key, encode_endpoint(b.address))
                    delays.append((await caller.first_after(b.port, t0) - t0) * 1000)
                    await client.delete(key)
                    await caller.gone(b.port)
                calls = len(caller.calls)
        finally:
            if caller is not None:
                await caller.stop()
            await client.disconnect()
            await a.stop(0)
            await b.stop(0)
    return {**_summary(delays), "calls_made": calls, "target_p50_ms": 100, "target_p99_ms": 300}


# -- fan-out -----------------------------------------------------------------------------------
def _target(n: int, generation: int) -> str:
    ports = [20000 + i for i in range(n)]
    ports[0] = 40000 + generation  # one endpoint changes per update
    return "static:///" + ",".join(f"127.0.0.{1 + i % 200}:{p}" for i, p in enumerate(ports))


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class Stream:
    def __init__(self, channel: grpc.aio.Channel, i: int) -> None:
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        self.node = base_pb2.Node(id=f"fan-{i}", user_agent_name="gRPC Go")
        self.versions: dict[str, float] = {}
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.call.write(discovery_pb2.DiscoveryRequest(
            node=self.node, type_url=ENDPOINTS, resource_names=["greeter"]))  # fmt: skip
        self.task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            reply = await self.call.read()
            if reply is grpc.aio.EOF:
                return
            self.versions[reply.version_info] = time.time()
            await self.call.write(discovery_pb2.DiscoveryRequest(
                type_url=ENDPOINTS, resource_names=["greeter"],
                version_info=reply.version_info, response_nonce=reply.nonce))  # fmt: skip


async def fanout(n_endpoints: int, n_streams: int, updates: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "xds.json"
        path.write_text(json.dumps({"services": {"greeter": {"target": _target(n_endpoints, 0)}}}))
        proc = subprocess.Popen(  # noqa: ASYNC220 - read line by line before the loop runs
            [sys.executable, "-m", "grpc_balancer", "xds", "serve", "--config", str(path),
             "--port", "0", "--test-hooks"],
            env=cli_env(), stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            address = re.search(r"on (\S+) \(", proc.stdout.readline()).group(1)  # type: ignore[union-attr]
            channels = [grpc.aio.insecure_channel(address) for _ in range(10)]
            streams = [Stream(channels[i % 10], i) for i in range(n_streams)]
            for s in streams:
                await s.start()
            await _all_have(streams, lambda s: bool(s.versions))
            latencies, cpu = [], []
            for g in range(1, updates + 1):
                body = {"services": {"greeter": {"target": _target(n_endpoints, g)}}}
                known = [set(s.versions) for s in streams]
                c0, t0 = _cpu_s(proc.pid), time.time()
                await asyncio.to_thread(admin.call, address, admin.SET_CONFIG, body)
                await _all_have(
                    streams, lambda s, k=known: len(s.versions) > len(k[streams.index(s)])
                )
                done = max(max(s.versions.values()) for s in streams)
                await asyncio.sleep(0.3)  # the ACKs are part of the update's cost
                cpu.append((_cpu_s(proc.pid) - c0) * 1000)
                latencies.append((done - t0) * 1000)
            for s in streams:
                await s.call.done_writing()
            for c in channels:
                await c.close()
        finally:
            proc.terminate()
            proc.wait(10)
    return {
        "endpoints": n_endpoints,
        "streams": n_streams,
        "all_streams_updated": {**_summary(latencies), "target_max_ms": 200},
        "control_plane_cpu_ms_per_update": {
            "p50": round(statistics.median(cpu), 1),
            "max": round(max(cpu), 1),
            "values": [round(v, 1) for v in cpu],
            "note": "includes SetConfig parsing a 1,000-address target and restarting its resolver",
        },
    }


async def _all_have(streams: list[Stream], predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(predicate(s) for s in streams):
        if time.monotonic() > deadline:
            raise TimeoutError("not every stream got the update")
        await asyncio.sleep(0.001)


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    put = report["grpcio_put_to_first_call"]
    ax1.plot(sorted(put["values_ms"]), range(1, put["trials"] + 1), marker="o")
    ax1.axvline(100, color="orange", ls="--", label="target p50 100 ms")
    ax1.axvline(300, color="red", ls="--", label="target p99 300 ms")
    ax1.set_xlabel("etcd put → first call, grpcio xds client (ms)")
    ax1.set_ylabel("trials (cumulative)")
    ax1.legend()
    fan = report["fanout"]
    ax2.plot(fan["all_streams_updated"]["values_ms"], marker="o", label="all streams updated (ms)")
    ax2.plot(
        fan["control_plane_cpu_ms_per_update"]["values"], marker="x", label="CPU per update (ms)"
    )
    ax2.axhline(200, color="red", ls="--", label="target 200 ms")
    ax2.set_xlabel(f"update ({fan['endpoints']} endpoints, {fan['streams']} streams)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main(trials: int, updates: int) -> dict[str, Any]:
    return {
        "benchmark": "xds_control_plane",
        "grpcio_put_to_first_call": await put_to_first_call(trials),
        "fanout": await fanout(1000, 100, updates),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--updates", type=int, default=20)
    args = parser.parse_args()
    report = asyncio.run(main(args.trials, args.updates))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "xds.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, RESULTS / "xds.png")
    put, fan = report["grpcio_put_to_first_call"], report["fanout"]
    print(f"etcd put → first call (grpcio xds): p50 {put['p50_ms']} ms, p99 {put['p99_ms']} ms")
    upd, cpu = fan["all_streams_updated"], fan["control_plane_cpu_ms_per_update"]
    print(f"fan-out: all {fan['streams']} streams updated p50 {upd['p50_ms']} ms, "
          f"max {upd['max_ms']} ms; CPU per update p50 {cpu['p50']} ms")  # fmt: skip
