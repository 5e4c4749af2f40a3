"""Client CPU per RPC: grpc_balancer's channels against grpcio's own (issue 11).

Both clients talk to the same 3 greeter servers, which run in a child process
(:class:`bench.harness.Backends`), so only the client's CPU is measured: this process's
``time.process_time()`` (every thread of it: callers, grpcio's poller, our loop thread)
per completed RPC, or per message on the streaming points. grpcio's channel is
``ipv4:a,b,c`` with a ``round_robin`` service config; ours is
``grpc_balancer.aio.insecure_channel("static:///a,b,c", policy="round_robin")`` (and
``grpc_balancer.insecure_channel`` for the sync point). Only public API is used, so the
harness keeps working while the call path changes underneath it.

Points: aio closed loop at concurrency 1, 8, 32; aio open loop (Poisson arrivals, the
same seeded schedule for both clients, bounded count and time) at 1000/s and 2000/s;
the sync channel with 8 caller threads, closed loop; per message on a server stream
(``SayHelloStream``, count=1000) and a bidi stream (``Chat``, 1000 requests).

Method: every point runs in a fresh client process with both channels open. After a
warm-up (every backend answered, a second of calls each, excluded), a chunk size is
calibrated so one chunk takes about ``--chunk-s`` seconds; each round is ``--cycles``
repetitions of A B B A (A ours, B grpcio), and the round's ratio is ours' CPU per unit
over grpcio's in that round. Reported per point: the median of the per-round ratios,
their range (min-max), and the median absolute µs CPU per unit for each client.

Run: ``python -m bench.bench_cpu`` (about 5 minutes; writes bench/results/cpu.json and
cpu.png and re-renders the README and docs/benchmarks.md tables from the JSON),
``--quick`` (a smoke run of a few seconds, written to a temporary directory unless
``--out`` is given), ``--profile`` (cProfile at concurrency 8: function calls per RPC and
the top cumulative entries), ``--render`` (only re-render the tables from the JSON),
``--points aio_c8,sync_t8`` (a subset).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import platform
import pstats
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

import grpc_balancer
import grpc_balancer.aio
from bench.harness import Backends, percentile
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RENDERED = (ROOT / "README.md", ROOT / "docs" / "benchmarks.md")
BEGIN, END = "<!-- bench_cpu:begin -->", "<!-- bench_cpu:end -->"
SIDES = ("ours", "grpcio")  # A, B
AIM = 1.00
STREAM_MESSAGES = 1000
PROFILE_CONCURRENCY = 8
SCHEMA_VERSION = 1
LAG_MS = 5.0  # open loop: launch lag p99 above this = the client could not keep up


@dataclass(frozen=True)
class Point:
    name: str
    label: str
    kind: str  # closed | open | sync | server_stream | bidi
    param: int  # concurrency, arrivals/s, threads, or messages per stream
    target: float
    unit: str = "RPC"


POINTS = (
    Point("aio_c1", "aio closed loop, concurrency 1", "closed", 1, 1.03),
    Point("aio_c8", "aio closed loop, concurrency 8", "closed", 8, 1.03),
    Point("aio_c32", "aio closed loop, concurrency 32", "closed", 32, 1.03),
    Point("aio_open_1000", "aio open loop, 1000/s Poisson", "open", 1000, 1.03),
    Point("aio_open_2000", "aio open loop, 2000/s Poisson", "open", 2000, 1.03),
    Point("sync_t8", "sync channel, 8 threads closed loop", "sync", 8, 1.00),
    Point(
        "server_stream",
        "server stream, {n:,} messages (SayHelloStream)",
        "server_stream",
        STREAM_MESSAGES,
        1.00,
        "message",
    ),
    Point(
        "bidi_stream",
        "bidi stream, {n:,} messages (Chat)",
        "bidi",
        STREAM_MESSAGES,
        1.00,
        "message",
    ),
)
BY_NAME = {p.name: p for p in POINTS}


@dataclass
class Settings:
    rounds: int = 14
    cycles: int = 3  # A B B A repetitions per round
    chunk_s: float = 0.15  # wall seconds one chunk should take
    warmup_s: float = 1.0  # per client, after every backend answered
    profile_rpcs: int = 3000
    point_budget_s: float = 40.0  # rounds stop here (after min_rounds): a loaded machine
    min_rounds: int = 8  # stretches streams and the longer chunks, not the whole run
    stream_messages: int = STREAM_MESSAGES

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            rounds=2,
            cycles=1,
            chunk_s=0.03,
            warmup_s=0.1,
            profile_rpcs=300,
            stream_messages=100,
            min_rounds=2,
        )


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- clients


def _grpcio_target(addresses: Sequence[str]) -> tuple[str, list[tuple[str, str]]]:
    config = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
    return "ipv4:" + ",".join(addresses), [("grpc.service_config", config)]


def _ours_target(addresses: Sequence[str]) -> str:
    return "static:///" + ",".join(addresses)


def _port(reply: greeter_pb2.HelloReply) -> str:
    match = re.search(r"\(from :(\d+)\)", reply.message)
    return match.group(1) if match else ""


REQUEST = greeter_pb2.HelloRequest(name="bench")

# A chunk: (side, n, seed) -> (units completed, failures)
Chunk = Callable[[str, int, int], tuple[int, int]]


class AioClients:
    """Both aio channels on one event loop, driven one chunk at a time."""

    def __init__(self, addresses: Sequence[str], stream_messages: int = STREAM_MESSAGES) -> None:
        self.loop = asyncio.new_event_loop()
        self.stream_messages = stream_messages
        self.lags: dict[str, list[float]] = {s: [] for s in SIDES}  # open loop: launch - schedule
        self.n_backends = len(addresses)
        self.channels: dict[str, Any] = {}
        self.stubs: dict[str, greeter_pb2_grpc.GreeterStub] = {}

        async def open_() -> None:
            target, options = _grpcio_target(addresses)
            self.channels["grpcio"] = grpc.aio.insecure_channel(target, options=options)
            self.channels["ours"] = grpc_balancer.aio.insecure_channel(
                _ours_target(addresses), policy="round_robin"
            )
            for side, channel in self.channels.items():
                self.stubs[side] = greeter_pb2_grpc.GreeterStub(channel)

        self.loop.run_until_complete(open_())

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def until_all_backends(self, timeout_s: float = 30.0) -> None:
        async def one(side: str) -> None:
            seen: set[str] = set()
            deadline = time.monotonic() + timeout_s
            while len(seen) < self.n_backends:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{side}: only backends {seen} answered in {timeout_s} s")
                reply = await self.stubs[side].SayHello(REQUEST, timeout=10, wait_for_ready=True)
                seen.add(_port(reply))

        for side in SIDES:
            self.run(one(side))

    # -- chunks (coroutines): return (units, failures)

    async def closed(self, side: str, n: int, concurrency: int) -> tuple[int, int]:
        call = self.stubs[side].SayHello
        remaining = n
        ok = failed = 0

        async def worker() -> None:
            nonlocal remaining, ok, failed
            while remaining > 0:
                remaining -= 1
                try:
                    await call(REQUEST, timeout=10)
                    ok += 1
                except grpc.RpcError:
                    failed += 1

        await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
        return ok, failed

    async def open(self, side: str, n: int, rate: float, seed: int) -> tuple[int, int]:
        """``n`` Poisson arrivals at ``rate``/s (same ``seed`` → same schedule), each a
        task; bounded by 3x the schedule's length + 5 s; late calls count as failed."""
        call = self.stubs[side].SayHello
        loop = asyncio.get_running_loop()
        rng = random.Random(seed)
        ok = failed = 0

        async def one() -> None:
            nonlocal ok, failed
            try:
                await call(REQUEST, timeout=10)
                ok += 1
            except grpc.RpcError:
                failed += 1

        tasks = []
        start = loop.time()
        limit = start + 3 * n / rate + 5
        offset = 0.0
        for _ in range(n):
            offset += rng.expovariate(rate)
            delay = start + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one()))
            self.lags[side].append(loop.time() - (start + offset))
        _, pending = await asyncio.wait(tasks, timeout=max(0.1, limit - loop.time()))
        for task in pending:
            task.cancel()
        return ok, failed + len(pending)

    async def server_stream(self, side: str, n: int) -> tuple[int, int]:
        call = self.stubs[side].SayHelloStream
        request = greeter_pb2.HelloRequest(name="bench", count=self.stream_messages)
        messages = failed = 0
        for _ in range(n):
            try:
                async for _reply in call(request, timeout=30):
                    messages += 1
            except grpc.RpcError:
                failed += 1
        return messages, failed

    async def bidi(self, side: str, n: int) -> tuple[int, int]:
        call = self.stubs[side].Chat
        messages = failed = 0

        async def requests() -> Any:
            for _ in range(self.stream_messages):
                yield REQUEST

        for _ in range(n):
            try:
                async for _reply in call(requests(), timeout=30):
                    messages += 1
            except grpc.RpcError:
                failed += 1
        return messages, failed

    def reset_lags(self) -> None:
        for lags in self.lags.values():
            lags.clear()

    def lag_summary(self) -> dict[str, dict[str, float]]:
        """How late arrivals were launched (ms): > a few ms means the client fell behind."""
        out = {}
        for side, lags in self.lags.items():
            ordered = sorted(lags)
            out[side] = {
                k: round(percentile(ordered, q) * 1e3, 2) for k, q in (("p50", 50), ("p99", 99))
            }
            out[side]["max"] = round(ordered[-1] * 1e3, 2)
        return out

    def chunk(self, point: Point) -> Chunk:
        if point.kind == "closed":
            return lambda side, n, seed: self.run(self.closed(side, n, point.param))
        if point.kind == "open":
            return lambda side, n, seed: self.run(self.open(side, n, point.param, seed))
        if point.kind == "server_stream":
            return lambda side, n, seed: self.run(self.server_stream(side, n))
        if point.kind == "bidi":
            return lambda side, n, seed: self.run(self.bidi(side, n))
        raise ValueError(point.kind)

    def close(self) -> None:
        async def close_() -> None:
            for channel in self.channels.values():
                await channel.close()

        self.run(close_())
        # The loop is left open: grpc.aio's poller thread may still post to it, and a
        # closed loop turns that into "Event loop is closed" tracebacks at exit.


class SyncClients:
    """Both sync channels; a chunk is ``n`` calls split over the pool's threads."""

    def __init__(self, addresses: Sequence[str], threads: int) -> None:
        target, options = _grpcio_target(addresses)
        self.n_backends = len(addresses)
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads)
        self.channels: dict[str, Any] = {
            "grpcio": grpc.insecure_channel(target, options=options),
            "ours": grpc_balancer.insecure_channel(_ours_target(addresses), policy="round_robin"),
        }
        self.stubs = {s: greeter_pb2_grpc.GreeterStub(c) for s, c in self.channels.items()}

    def until_all_backends(self, timeout_s: float = 30.0) -> None:
        for side in SIDES:
            seen: set[str] = set()
            deadline = time.monotonic() + timeout_s
            while len(seen) < self.n_backends:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{side}: only backends {seen} answered in {timeout_s} s")
                seen.add(_port(self.stubs[side].SayHello(REQUEST, timeout=10, wait_for_ready=True)))

    def _calls(self, side: str, n: int) -> tuple[int, int]:
        call = self.stubs[side].SayHello
        ok = failed = 0
        for _ in range(n):
            try:
                call(REQUEST, timeout=10)
                ok += 1
            except grpc.RpcError:
                failed += 1
        return ok, failed

    def chunk(self, point: Point) -> Chunk:
        def run(side: str, n: int, seed: int) -> tuple[int, int]:
            per_thread = max(1, n // self.threads)
            futures = [self.pool.submit(self._calls, side, per_thread) for _ in range(self.threads)]
            results = [f.result() for f in futures]
            return sum(r[0] for r in results), sum(r[1] for r in results)

        return run

    def close(self) -> None:
        self.pool.shutdown()
        for channel in self.channels.values():
            channel.close()


# --------------------------------------------------------------------------- measuring


@dataclass
class Side:
    cpu_s: float = 0.0
    wall_s: float = 0.0
    units: int = 0
    failed: int = 0

    def add(self, cpu_s: float, wall_s: float, units: int, failed: int) -> None:
        self.cpu_s += cpu_s
        self.wall_s += wall_s
        self.units += units
        self.failed += failed

    @property
    def us_per_unit(self) -> float:
        return self.cpu_s / max(self.units, 1) * 1e6


def _timed(chunk: Chunk, side: str, n: int, seed: int) -> tuple[float, float, int, int]:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    units, failed = chunk(side, n, seed)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return cpu, wall, units, failed


def _chunk_size(point: Point, chunk: Chunk, settings: Settings) -> int:
    """Units of work (calls, arrivals or streams) so one chunk takes ~chunk_s."""
    if point.kind == "open":
        return max(10, round(point.param * settings.chunk_s))
    n = 16 if point.kind in ("closed", "sync") else 1
    while True:  # grow until a chunk is long enough to time, then scale
        walls = [_timed(chunk, side, n, 0)[1] for side in SIDES]
        wall = statistics.mean(walls)
        if wall >= min(0.05, settings.chunk_s / 2) or n > 100_000:
            break
        n *= 4
    multiple = point.param if point.kind == "sync" else 1
    size = max(1, round(n * settings.chunk_s / max(wall, 1e-6)))
    if point.kind in ("closed", "sync"):  # ramp-up and drain stay a small part of a chunk
        size = max(size, 8 * point.param)
    return max(multiple, size // multiple * multiple)


def measure_point(
    point: Point, chunk: Chunk, settings: Settings, on_start: Callable[[], None] | None = None
) -> dict[str, Any]:
    # Warm-up, excluded: a second (warmup_s) of calls on each client, twice over.
    for side in (*SIDES, *SIDES):
        end = time.perf_counter() + settings.warmup_s / 2
        while time.perf_counter() < end:
            chunk(side, 1 if point.kind in ("server_stream", "bidi") else 32, 0)
    n = _chunk_size(point, chunk, settings)
    if on_start is not None:
        on_start()
    _log(f"[{point.name}] chunk = {n} {'streams' if point.unit == 'message' else 'calls'}")
    rounds: list[dict[str, Side]] = []
    seed = 1
    stop = time.perf_counter() + settings.point_budget_s
    for r in range(settings.rounds):
        if r >= settings.min_rounds and time.perf_counter() > stop:
            _log(f"[{point.name}] {settings.point_budget_s} s budget spent after {r} rounds")
            break
        gc.collect()
        sides = {s: Side() for s in SIDES}
        for _ in range(settings.cycles):
            seed += 1  # one arrival schedule per A B B A, so both clients get the same ones
            for side in ("ours", "grpcio", "grpcio", "ours"):
                sides[side].add(*_timed(chunk, side, n, seed))
        rounds.append(sides)
        ours, theirs = sides["ours"].us_per_unit, sides["grpcio"].us_per_unit
        _log(
            f"[{point.name}] round {r + 1:2d}/{settings.rounds}: ours {ours:7.2f} µs, "
            f"grpcio {theirs:7.2f} µs per {point.unit}, ratio {ours / theirs:.3f}"
        )
    return summarize(point, settings, n, rounds)


def summarize(
    point: Point, settings: Settings, n: int, rounds: list[dict[str, Side]]
) -> dict[str, Any]:
    ratios = [r["ours"].us_per_unit / r["grpcio"].us_per_unit for r in rounds]
    us = {s: [r[s].us_per_unit for r in rounds] for s in SIDES}
    rate = {s: [r[s].units / r[s].wall_s for r in rounds] for s in SIDES}
    median = statistics.median(ratios)
    return {
        **asdict(point),
        "label": point.label.format(n=point.param),
        "rounds": len(rounds),
        "cycles_per_round": settings.cycles,
        "chunk": n,
        "ratio_median": round(median, 4),
        "ratio_min": round(min(ratios), 4),
        "ratio_max": round(max(ratios), 4),
        "ratios": [round(x, 4) for x in ratios],
        # all rounds pooled: total CPU per unit, ours over grpcio (a cross-check)
        "ratio_pooled": round(
            sum(r["ours"].cpu_s for r in rounds)
            / sum(r["ours"].units for r in rounds)
            / (sum(r["grpcio"].cpu_s for r in rounds) / sum(r["grpcio"].units for r in rounds)),
            4,
        ),
        "rounds_above_1": sum(x > 1.0 for x in ratios),
        "us_per_unit_median": {s: round(statistics.median(v), 2) for s, v in us.items()},
        "us_per_unit": {s: [round(x, 2) for x in v] for s, v in us.items()},
        "units_per_s_median": {s: round(statistics.median(v), 1) for s, v in rate.items()},
        "units": {s: sum(r[s].units for r in rounds) for s in SIDES},
        "failed": {s: sum(r[s].failed for r in rounds) for s in SIDES},
        "met": median <= point.target,
    }


# --------------------------------------------------------------------------- profile


def _where(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    parts = Path(filename).parts
    for anchor in ("site-packages", "src", "lib"):
        if anchor in parts:
            parts = parts[len(parts) - parts[::-1].index(anchor) :]
            break
    return f"{'/'.join(parts[-3:])}:{line}({name})"


def profile_clients(addresses: Sequence[str], settings: Settings, top: int = 25) -> dict[str, Any]:
    """cProfile of ``profile_rpcs`` unary calls at concurrency 8 on each client."""
    clients = AioClients(addresses)
    out: dict[str, Any] = {"rpcs": settings.profile_rpcs, "concurrency": PROFILE_CONCURRENCY}
    try:
        clients.until_all_backends()
        for side in SIDES:
            clients.run(clients.closed(side, 500, PROFILE_CONCURRENCY))  # warm-up, excluded
        for side in SIDES:
            prof = cProfile.Profile()
            prof.enable()
            ok, _ = clients.run(clients.closed(side, settings.profile_rpcs, PROFILE_CONCURRENCY))
            prof.disable()
            stats = pstats.Stats(prof)
            raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
            python_calls = sum(nc for f, (_, nc, *_r) in raw.items() if f[0] != "~")
            ranked = sorted(raw.items(), key=lambda kv: kv[1][3], reverse=True)
            out[side] = {
                "calls_per_rpc": round(stats.total_calls / ok, 1),  # type: ignore[attr-defined]
                "python_calls_per_rpc": round(python_calls / ok, 1),
                "top_cumulative": [
                    {
                        "function": _where(func),
                        "calls_per_rpc": round(nc / ok, 2),
                        "cum_us_per_rpc": round(ct / ok * 1e6, 2),
                        "own_us_per_rpc": round(tt / ok * 1e6, 2),
                    }
                    for func, (_cc, nc, tt, ct, _callers) in ranked[:top]
                ],
            }
    finally:
        clients.close()
    return out


def print_profile(profile: dict[str, Any]) -> None:
    print(
        f"\ncProfile, {profile['rpcs']} unary RPCs at concurrency {profile['concurrency']} "
        "(main thread; warm-up excluded)"
    )
    for side in SIDES:
        p = profile[side]
        print(
            f"  {side:7s} {p['calls_per_rpc']:6.1f} function calls per RPC "
            f"({p['python_calls_per_rpc']:.1f} Python, the rest C built-ins)"
        )
    for side in SIDES:
        print(f"\ntop cumulative, {side} (per RPC):")
        print(f"  {'calls':>7} {'cum µs':>8} {'own µs':>8}  function")
        for e in profile[side]["top_cumulative"]:
            print(
                f"  {e['calls_per_rpc']:7.2f} {e['cum_us_per_rpc']:8.2f} "
                f"{e['own_us_per_rpc']:8.2f}  {e['function']}"
            )


# --------------------------------------------------------------------------- child process


def child(spec: dict[str, Any]) -> None:
    """One client process: measure ``spec["points"]`` (or profile) and print JSON."""
    settings = Settings(**spec["settings"])
    addresses = spec["addresses"]
    if spec.get("profile"):
        print(json.dumps({"profile": profile_clients(addresses, settings)}), flush=True)
        return
    points = [
        replace(p, param=settings.stream_messages) if p.unit == "message" else p
        for p in (BY_NAME[name] for name in spec["points"])
    ]
    results = []
    aio = [p for p in points if p.kind != "sync"]
    if aio:
        clients = AioClients(addresses, settings.stream_messages)
        try:
            clients.until_all_backends()
            for p in aio:
                results.append(measure_point(p, clients.chunk(p), settings, clients.reset_lags))
                if p.kind == "open":
                    results[-1]["launch_lag_ms"] = clients.lag_summary()
        finally:
            clients.close()
    for p in points:
        if p.kind == "sync":
            sync = SyncClients(addresses, p.param)
            try:
                sync.until_all_backends()
                results.append(measure_point(p, sync.chunk(p), settings))
            finally:
                sync.close()
    print(json.dumps({"points": results}), flush=True)


def _run_child(spec: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.bench_cpu", "--child", json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"client process failed ({proc.returncode}) for {spec}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------- report


def render_markdown(result: dict[str, Any]) -> str:
    """The README / docs table, from cpu.json only."""
    lines = [
        "| point | target | ours ÷ grpcio, median of rounds (range) | rounds above 1 | "
        "µs CPU ours | µs CPU grpcio | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in result["points"]:
        unit = "" if p["unit"] == "RPC" else f" per {p['unit']}"
        us = p["us_per_unit_median"]
        lines.append(
            f"| {p['label']} | ≤ {p['target']:.2f} | **{p['ratio_median']:.3f}** "
            f"({p['ratio_min']:.3f}–{p['ratio_max']:.3f}) | {p['rounds_above_1']}/{p['rounds']} | "
            f"{us['ours']:.1f}{unit} | {us['grpcio']:.1f}{unit} | "
            f"{'yes' if p['met'] else '**no**'} |"
        )
    met = [p["label"] for p in result["points"] if p["met"]]
    missed = [p["label"] for p in result["points"] if not p["met"]]
    m, settings = result["machine"], result["settings"]
    lines += [
        "",
        f"Targets met at {len(met)} of {len(result['points'])} points"
        + (f"; not met: {', '.join(missed)}" if missed else "")
        + ". "
        f"`{result['command']}`, {result['started_utc']} ({result['duration_s']:.0f} s), "
        f"{m['cpus']} cores, load average {m['loadavg_start'][0]:.2f} at start and "
        f"{m['loadavg_end'][0]:.2f} at the end, Python {m['python']}, grpcio {m['grpcio']}; "
        f"per point up to {settings['rounds']} rounds"
        + (
            f" (fewer if {settings['point_budget_s']:.0f} s were spent)"
            if "point_budget_s" in settings
            else ""
        )
        + f" of {settings['cycles']}× A B B A chunks of ~{settings['chunk_s']} s.",
    ]
    for p in result["points"]:
        lag = p.get("launch_lag_ms")
        if lag and max(v["p99"] for v in lag.values()) > LAG_MS:
            lines += [
                "",
                f"{p['label']}: the client fell behind the schedule (launch lag p99 "
                f"{lag['ours']['p99']:.1f} ms ours, {lag['grpcio']['p99']:.1f} ms grpcio; "
                "arrivals queued, the ratio still compares the same work).",
            ]
    prof = result.get("profile")
    if prof:
        lines += [
            "",
            f"Function calls per unary RPC (cProfile, concurrency {prof['concurrency']}, "
            f"main thread): ours {prof['ours']['calls_per_rpc']:.0f} "
            f"({prof['ours']['python_calls_per_rpc']:.0f} Python), grpcio "
            f"{prof['grpcio']['calls_per_rpc']:.0f} ({prof['grpcio']['python_calls_per_rpc']:.0f} "
            "Python); `python -m bench.bench_cpu --profile` prints where they go.",
        ]
    return "\n".join(lines)


def render_files(result: dict[str, Any], files: Sequence[Path] = RENDERED) -> None:
    """Replace the text between the bench_cpu markers of each file with the table."""
    block = f"{BEGIN}\n{render_markdown(result)}\n{END}"
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
    for path in files:
        text = path.read_text()
        if not pattern.search(text):
            raise RuntimeError(f"{path} has no {BEGIN} ... {END} block")
        path.write_text(pattern.sub(lambda _m: block, text))


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    points = result["points"]
    labels = [p["name"] for p in points]
    xs = list(range(len(points)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    med = [p["ratio_median"] for p in points]
    lo = [p["ratio_median"] - p["ratio_min"] for p in points]
    hi = [p["ratio_max"] - p["ratio_median"] for p in points]
    colors = ["tab:green" if p["met"] else "tab:red" for p in points]
    ax1.errorbar(xs, med, yerr=[lo, hi], fmt="none", ecolor="gray", capsize=4)
    ax1.scatter(xs, med, c=colors, zorder=3, label="median of rounds (bar: min–max)")
    for x, p in zip(xs, points, strict=True):
        ax1.hlines(p["target"], x - 0.35, x + 0.35, colors="red", linestyles="--", label="target")
    ax1.axhline(AIM, color="black", linewidth=0.8, linestyle=":", label=f"aim {AIM:.2f}")
    handles, names = ax1.get_legend_handles_labels()
    unique = dict(zip(names, handles, strict=True))
    ax1.legend(unique.values(), unique.keys(), fontsize=8)
    ax1.set_xticks(xs, labels, rotation=30, ha="right")
    ax1.set_ylabel("client CPU, grpc_balancer ÷ grpcio")
    ax1.set_title("CPU per RPC (per message on streams), ratio per round")
    width = 0.38
    for i, side in enumerate(SIDES):
        ax2.bar(
            [x + (i - 0.5) * width for x in xs],
            [p["us_per_unit_median"][side] for p in points],
            width,
            label="grpc_balancer" if side == "ours" else "grpcio",
        )
    ax2.set_xticks(xs, labels, rotation=30, ha="right")
    ax2.set_ylabel("µs client CPU per RPC / per message (log)")
    ax2.set_yscale("log")
    ax2.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax2.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax2.set_title("absolute, median of rounds")
    ax2.legend(fontsize=8)
    m = result["machine"]
    fig.suptitle(
        f"{result['started_utc']}, {m['cpus']} cores, load average "
        f"{m['loadavg_start'][0]:.2f} → {m['loadavg_end'][0]:.2f}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------- main


def _commit() -> str:
    """The measured source tree: HEAD, marked "+dirty" with uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "src"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return ""
    return head + ("+dirty" if dirty else "")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--profile", action="store_true", help="cProfile at concurrency 8")
    parser.add_argument("--render", action="store_true", help="only re-render the tables")
    parser.add_argument("--points", help=f"comma-separated subset of {','.join(BY_NAME)}")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--cycles", type=int)
    parser.add_argument("--chunk-s", type=float)
    parser.add_argument("--out", type=Path, help="directory for cpu.json and cpu.png")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return {}
    if args.render:
        result = json.loads((RESULTS / "cpu.json").read_text())
        render_files(result)
        print(render_markdown(result))
        return result

    settings = Settings.quick() if args.quick else Settings()
    for name in ("rounds", "cycles", "chunk_s"):
        if getattr(args, name) is not None:
            setattr(settings, name, getattr(args, name))
    names = args.points.split(",") if args.points else list(BY_NAME)
    if unknown := [n for n in names if n not in BY_NAME]:
        parser.error(f"unknown points {unknown}; known: {','.join(BY_NAME)}")
    out = args.out or (
        Path(tempfile.gettempdir()) / "grpc_balancer_bench_cpu" if args.quick else RESULTS
    )
    full_run = not args.quick and not args.points and args.out is None and not args.profile

    command = "python -m bench.bench_cpu" + (" " + " ".join(argv or sys.argv[1:])).rstrip()
    started, t0 = datetime.now(UTC), time.perf_counter()
    loadavg_start = os.getloadavg()
    with Backends([{}, {}, {}]) as backends:
        if args.profile:
            profile = _run_child(
                {"profile": True, "addresses": backends.addresses, "settings": asdict(settings)}
            )["profile"]
            print_profile(profile)
            return profile
        points: list[dict[str, Any]] = []
        # A fresh client process per point (one for all of them in a quick run).
        groups = [names] if args.quick else [[n] for n in names]
        for group in groups:
            spec = {"points": group, "addresses": backends.addresses, "settings": asdict(settings)}
            points += _run_child(spec)["points"]
        points.sort(key=lambda p: names.index(p["name"]))
        profile = _run_child(
            {"profile": True, "addresses": backends.addresses, "settings": asdict(settings)}
        )["profile"]
    result: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "benchmark": "client CPU per RPC, grpc_balancer vs grpcio (issue 11)",
        "command": command,
        "commit": _commit(),
        "quick": args.quick,
        "started_utc": started.strftime("%Y-%m-%d %H:%M UTC"),
        "duration_s": round(time.perf_counter() - t0, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "grpcio": grpc.__version__,
            "loadavg_start": [round(x, 2) for x in loadavg_start],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": asdict(settings),
        "method": (
            "client process CPU (time.process_time, all its threads) per completed RPC or "
            "per stream message; servers in another process; both channels open in one "
            "client process per point; rounds of A B B A chunks (A ours, B grpcio), "
            "warm-up excluded; ratio per round = ours / grpcio; median and min-max of rounds"
        ),
        "aim": AIM,
        "points": points,
        "profile": profile,
        "summary": {
            "met": [p["name"] for p in points if p["met"]],
            "not_met": [p["name"] for p in points if not p["met"]],
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "cpu.png")
    print(render_markdown(result))
    print(f"\nwrote {out / 'cpu.json'} and {out / 'cpu.png'}")
    if full_run:
        render_files(result)
        print(f"re-rendered {', '.join(str(p.relative_to(ROOT)) for p in RENDERED)}")
    return result


if __name__ == "__main__":
    main()
