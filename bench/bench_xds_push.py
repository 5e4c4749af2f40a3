"""EDS push → first call on the new endpoint: grpc_balancer's ``xds:///`` vs grpcio's (issue 15).

Our control plane (:class:`grpc_balancer.xds.XdsServer`) and the greeter backends run in
this process; each client is a child process making SayHello calls back to back (one in
flight, no pause) through tests/xds_grpcio_client.py — ``grpcio``: grpcio's native
``xds:///`` channel; ``balancer``: the same program on ``grpc_balancer.insecure_channel``
(the sync channel, our xds resolver); ``balancer-aio``: on
``grpc_balancer.aio.insecure_channel`` — all bootstrapped by ``GRPC_XDS_BOOTSTRAP_CONFIG``
to the same server. Backend A is always served; each trial changes the config to add a
*fresh* backend (one ``update_config``: the control plane resolves the static target and
pushes EDS to every stream) and measures from just before the change to the reply of the
first call that backend served (wall clock; the client stamps each reply): EDS push →
the client's new endpoint list → connect → pick. Then the backend is removed again and
the client is left to drop it.

Interleaved: blocks of 5 trials in the order A B C C B A, twice (A grpcio, B balancer,
C balancer-aio), each block a new client process warmed with 200 calls, so each client
gets 20 changes; a round is three consecutive blocks (one of each), and a per-round
ratio is one of our blocks' median over grpcio's in that round. Targets for our
channels: p50 ≤ 50 ms, p99 ≤ 150 ms (with 20 trials, p99 is the slowest).

Run: ``python -m bench.bench_xds_push`` (about two minutes; writes bench/results/xds_push.json
and xds_push.png; ``python -m bench.figures --write`` renders the README / docs/xds.md
block), ``--quick`` (3 blocks of 2 trials, to a temporary directory unless ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from bench.bench_xds_clients import _dropped, _first_call_on
from bench.harness import percentile
from grpc_balancer.demo.server import GreeterServer
from grpc_balancer.xds import parse_config
from grpc_balancer.xds.server import XdsServer
from tests.xds_clients import CallClient, grpc_bootstrap

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGET_P50_MS, TARGET_P99_MS = 50.0, 150.0
CLIENTS = ("grpcio", "balancer", "balancer-aio")
OURS = ("balancer", "balancer-aio")
ORDER = ("grpcio", "balancer", "balancer-aio", "balancer-aio", "balancer", "grpcio")


def _config(*servers: GreeterServer) -> Any:
    target = "static:///" + ",".join(s.address for s in servers)
    return parse_config({"services": {"greeter": {"target": target}}})


async def _block(
    kind: str, xds: XdsServer, a: GreeterServer, fresh: list[GreeterServer], log_dir: Path
) -> list[float]:
    """One client process, one trial per fresh backend: the delays in ms."""
    await xds.update_config(_config(a))
    bootstrap = grpc_bootstrap(xds.address, f"bench-push-{kind}-{time.monotonic_ns()}")
    client = CallClient(kind, "xds:///greeter", bootstrap, log_dir, interval_ms=0)
    delays = []
    try:
        await client.wait_ports({a.port}, since=0, timeout=30)
        await client.wait_calls(200, since=0)  # warm: past the first connections
        for b in fresh:
            start_ms = time.time() * 1000
            await xds.update_config(_config(a, b))
            arrived = await _first_call_on(client, b.port, start_ms, timeout=10)
            delays.append(arrived - start_ms)
            await xds.update_config(_config(a))
            await _dropped(client, b.port)
    finally:
        client.stop()
    return delays


async def measure(blocks: int, per_block: int, log_dir: Path) -> dict[str, Any]:
    order = [ORDER[i % len(ORDER)] for i in range(blocks)]
    a = GreeterServer(0, "127.0.0.1", grace_s=0.1)
    fresh = [GreeterServer(0, "127.0.0.1", grace_s=0.1) for _ in range(blocks * per_block)]
    for server in (a, *fresh):
        await server.start()
    xds = XdsServer(_config(a))
    await xds.start()
    runs: list[dict[str, Any]] = []
    try:
        for i, kind in enumerate(order):
            mine = fresh[i * per_block : (i + 1) * per_block]
            delays = await _block(kind, xds, a, mine, log_dir)
            runs.append({"client": kind, "delays_ms": [round(d, 2) for d in delays]})
            print(f"block {i} {kind}: {runs[-1]['delays_ms']}", flush=True)
    finally:
        await xds.stop(0)
        for server in (a, *fresh):
            await server.stop(0)
        del a, fresh, xds
        gc.collect()  # grpc.aio servers are freed while their loop still runs
    clients = {}
    for kind in CLIENTS:
        ms = sorted(d for r in runs if r["client"] == kind for d in r["delays_ms"])
        clients[kind] = {
            "trials": len(ms),
            "p50_ms": round(statistics.median(ms), 2),
            "p99_ms": round(percentile(ms, 99), 2),
            "max_ms": round(ms[-1], 2),
            "delays_ms": ms,
        }
    ratios: dict[str, list[float]] = {kind: [] for kind in OURS}
    for start in range(0, len(runs) - len(CLIENTS) + 1, len(CLIENTS)):
        medians = {r["client"]: statistics.median(r["delays_ms"])
                   for r in runs[start : start + len(CLIENTS)]}  # fmt: skip
        for kind in OURS:
            ratios[kind].append(round(medians[kind] / medians["grpcio"], 3))
    letters = dict(zip(CLIENTS, "ABC", strict=True))
    return {
        "order": " ".join(letters[k] for k in order)
        + " (A grpcio native, B grpc_balancer sync, C grpc_balancer asyncio)",
        "per_block": per_block,
        "clients": clients,
        "round_ratios": ratios,
        "ratio_median": {k: round(statistics.median(v), 3) for k, v in ratios.items() if v},
        "target_p50_ms": TARGET_P50_MS,
        "target_p99_ms": TARGET_P99_MS,
        "met": {
            k: clients[k]["p50_ms"] <= TARGET_P50_MS and clients[k]["p99_ms"] <= TARGET_P99_MS
            for k in OURS
        },
        "runs": runs,
    }


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    labels = {
        "grpcio": "grpcio native xds:///",
        "balancer": "grpc_balancer xds:/// (sync channel)",
        "balancer-aio": "grpc_balancer xds:/// (asyncio channel)",
    }
    for kind in CLIENTS:
        ms = result["clients"][kind]["delays_ms"]
        ax.plot(ms, [(i + 1) / len(ms) for i in range(len(ms))], marker=".", label=labels[kind])
    ax.axvline(TARGET_P50_MS, color="orange", ls="--", label=f"target p50 {TARGET_P50_MS:g} ms")
    ax.axvline(TARGET_P99_MS, color="red", ls="--", label=f"target p99 {TARGET_P99_MS:g} ms")
    ax.set_xlabel("EDS push → first call on the new backend (ms)")
    ax.set_ylabel("fraction of changes")
    ax.set_title("xDS endpoint propagation, same control plane, interleaved")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "xds_push.png", dpi=110)
    plt.close(fig)


def _commit() -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return proc.stdout.strip() or "?"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--per-block", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.blocks, args.per_block = 3, 2
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-xds-push-")) if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load0 = os.getloadavg()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-xds-push-logs-"))
    result = asyncio.run(measure(args.blocks, args.per_block, log_dir))
    result.update(
        command="python -m bench.bench_xds_push" + (" --quick" if args.quick else ""),
        quick=bool(args.quick),
        commit=_commit(),
        started_utc=datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%d %H:%M UTC"),
        duration_s=round(time.time() - started, 1),
        machine={
            "cpus": os.cpu_count(),
            "loadavg_start": [round(v, 2) for v in load0],
            "loadavg_end": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
        },
    )
    (out / "xds_push.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out)
    for kind, v in result["clients"].items():
        print(f"{kind}: p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms")
    print(f"per-round ratios (balancer / grpcio): {result['round_ratios']}")
    print(f"wrote {out / 'xds_push.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
