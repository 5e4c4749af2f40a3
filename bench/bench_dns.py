"""DNS benchmark (issue 3): a changed A record is in use within TTL + 1 s.

dnsmasq serves ``greeter.test`` (TTL 1 s, then 3 s) from a hostsdir file; greeter
servers listen on 127.0.0.11 and 127.0.0.12 (same port). A client calls through
``dns://127.0.0.1:P/greeter.test:PORT`` (round_robin, default ResolverOptions)
without pause. Each trial waits a random fraction of the TTL (so the change lands at
every phase of the refresh cycle), flips the record to the other address, and measures
the time from the file change to the first reply served by the new address.

Run: ``PYTHONPATH=src python -m bench.bench_dns [--trials 10]`` (needs dnsmasq; ~45 s).
Writes bench/results/dns.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc.aio

import grpc_balancer
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.demo.server import GreeterServer
from grpc_balancer.testing import free_port
from tests.dnsmasq import DnsmasqServer

RESULTS = Path(__file__).parent / "results"
HOSTS = ("127.0.0.11", "127.0.0.12")
NAME = "greeter.test"


async def _servers() -> list[GreeterServer]:
    for _ in range(20):
        port = free_port(HOSTS[0])
        servers: list[GreeterServer] = []
        try:
            for host in HOSTS:
                server = GreeterServer(port, host, grace_s=0.1)
                await server.start()
                servers.append(server)
            return servers
        except OSError:
            for server in servers:
                await server.stop(0)
    raise RuntimeError("no common free port on 127.0.0.11-12")


async def _trials(ttl: int, trials: int, port: int, rng: random.Random) -> list[float]:
    delays: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, DnsmasqServer(Path(tmp), ttl=ttl) as dns:
        current = 0
        dns.set_a(NAME, [HOSTS[current]])
        target = dns.target(NAME, port)
        async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as ch:
            stub = greeter_pb2_grpc.GreeterStub(ch)
            request = greeter_pb2.HelloRequest(name="bench")
            assert await ch.wait_for_settled(10)
            for _ in range(trials):
                await asyncio.sleep(rng.uniform(0, ttl))
                current = 1 - current
                wanted = f"{HOSTS[current]}:{port}"
                changed_at = time.monotonic()
                dns.set_a(NAME, [HOSTS[current]])
                deadline = changed_at + ttl + 10  # far beyond the target: a failure shows
                while time.monotonic() < deadline:
                    call = stub.SayHello(request, timeout=5)
                    try:
                        await call
                    except grpc.aio.AioRpcError:
                        await asyncio.sleep(0.001)
                        continue
                    if call.peer_address == wanted:
                        delays.append(time.monotonic() - changed_at)
                        break
                else:
                    delays.append(float("inf"))
                await asyncio.sleep(0.2)  # let the old subchannel go before the next flip
    return delays


def _summary(ttl: int, delays: list[float]) -> dict[str, Any]:
    finite = [d for d in delays if d != float("inf")]
    return {
        "ttl_s": ttl,
        "target_s": ttl + 1.0,
        "trials": len(delays),
        "delays_s": [round(d, 4) for d in delays],
        "p50_s": round(statistics.median(finite), 4) if finite else None,
        "max_s": round(max(delays), 4),
        "within_target": sum(d <= ttl + 1.0 for d in delays),
    }


def _plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, r in enumerate(results):
        xs = [i + 1 + random.uniform(-0.12, 0.12) for _ in r["delays_s"]]
        ax.scatter(xs, r["delays_s"], s=18, label=f"TTL {r['ttl_s']} s")
        ax.hlines(r["target_s"], i + 0.7, i + 1.3, colors="red", linestyles="--")
    ax.set_xticks(range(1, len(results) + 1), [f"TTL {r['ttl_s']} s" for r in results])
    ax.set_ylabel("record change → first call on new address (s)")
    ax.set_title("DNS: changed A record in use (red: target TTL + 1 s)")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main(trials: int) -> dict[str, Any]:
    rng = random.Random(7)
    servers = await _servers()
    try:
        results = [await _trials(ttl, trials, servers[0].port, rng) for ttl in (1, 3)]
    finally:
        for server in servers:
            await server.stop(0)
    summaries = [_summary(ttl, d) for ttl, d in zip((1, 3), results, strict=True)]
    return {"benchmark": "dns_record_change", "scenarios": summaries}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    report = asyncio.run(main(args.trials))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dns.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(report["scenarios"], RESULTS / "dns.png")
    for s in report["scenarios"]:
        print(
            f"TTL {s['ttl_s']} s: p50 {s['p50_s']} s, max {s['max_s']} s, "
            f"{s['within_target']}/{s['trials']} within {s['target_s']} s"
        )
