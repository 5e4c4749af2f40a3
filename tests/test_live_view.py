"""The live view: rich rendering (recording console, a real pty) and the plain fallback."""

from __future__ import annotations

import argparse
import io
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections import Counter

import grpc
import pytest
from rich.console import Console

import grpc_balancer
from grpc_balancer.cli.live import CallStats, LiveView, plain_lines, render, rows
from grpc_balancer.cli.observe import run_load
from grpc_balancer.demo.servicer import Faults
from grpc_balancer.testing import GreeterFleet, cli_env

PLAIN_ROW = re.compile(r"^  (\S+) state=(\S+) health=(\S+) calls=(\d+) failed=(\d+) share=")


def _args(count: int, concurrency: int = 1, rate: float = 0.0) -> argparse.Namespace:
    return argparse.Namespace(
        count=count, concurrency=concurrency, rate=rate, name="live", timeout=10.0
    )


async def test_live_view_shows_one_row_per_backend_with_counts() -> None:
    faults = [Faults(), Faults(), Faults(fail_rate=1.0, fail_code=grpc.StatusCode.INTERNAL)]
    async with GreeterFleet(3, faults=faults) as fleet:
        target = fleet.target()
        async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as ch:
            assert await ch.wait_for_settled(10)
            stats = CallStats()
            console = Console(record=True, force_terminal=True, width=160, file=io.StringIO())
            async with LiveView(ch, stats, 30, console=console, refresh_per_second=20):
                await run_load(ch, stats, _args(30, concurrency=3))
            assert stats.done == 30
            table = rows(ch, stats)
            assert [r.backend for r in table] == fleet.addresses  # target order
            assert sum(r.calls for r in table) == 30
            bad = fleet.addresses[2]
            for row in table:
                assert row.calls == stats.backends[row.backend].calls > 0
                assert row.failed == (row.calls if row.backend == bad else 0)
                assert row.state == "READY" and row.in_flight == 0
            frames = console.export_text()
            assert "30/30 calls" in frames

            # the final frame, rendered alone: one line per backend with its counts
            still = Console(record=True, force_terminal=True, width=160, file=io.StringIO())
            still.print(render(ch, stats, 30))
            text = still.export_text()
            body = [ln for ln in text.splitlines() if ln.startswith("│")]
            assert len(body) == 3  # one row per backend
            for row in table:
                line = next(ln for ln in body if row.backend in ln)
                cells = [c.strip() for c in line.strip("│ ").split("│")]
                assert cells[0] == row.backend and cells[1] == "READY"
                assert int(cells[4]) == row.calls and int(cells[5]) == row.failed
            assert "30/30 calls" in text and "10 failed" in text

            lines = plain_lines(ch, stats, 30)
            assert "30/30 calls, 10 failed" in lines[0]
            assert len(lines) == 4 and all(PLAIN_ROW.match(ln) for ln in lines[1:])


async def test_rate_limited_run_counts_every_call(fleet3: GreeterFleet) -> None:
    async with grpc_balancer.aio.insecure_channel(fleet3.target(), policy="round_robin") as ch:
        stats = CallStats()
        await run_load(ch, stats, _args(12, concurrency=4, rate=200.0))
        assert stats.done == 12 and stats.failed == 0


def _final_snapshot(out: str) -> dict[str, tuple[str, int, int]]:
    """The rows of the last plain snapshot: backend → (state, calls, failed)."""
    blocks = out.split("\n[")
    rows_ = {}
    for line in blocks[-1].splitlines():
        m = PLAIN_ROW.match(line)
        if m:
            rows_[m.group(1)] = (m.group(2), int(m.group(4)), int(m.group(5)))
    return rows_


def test_demo_live_without_a_terminal_prints_plain_lines() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "grpc_balancer", "demo", "--live", "-n", "30"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout
    snapshot = _final_snapshot(result.stdout)
    assert len(snapshot) == 3
    assert sum(calls for _, calls, _ in snapshot.values()) == 30
    assert all(state == "READY" and failed == 0 for state, _, failed in snapshot.values())
    assert "30/30 calls, 0 failed" in result.stdout
    # the closing distribution table agrees with the view
    table = dict(re.findall(r"^(\S+:\d+)\s+(\d+)\s+[\d.]+%$", result.stdout, re.M))
    assert {b: int(n) for b, n in table.items()} == {b: c for b, (_, c, _) in snapshot.items()}


def test_call_live_under_a_pseudo_terminal_draws_the_table() -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "grpc_balancer", "demo", "--live", "-n", "40", "--concurrency", "4"],
        env=cli_env(COLUMNS="160", LINES="40", TERM="xterm"),
        stdin=slave,
        stdout=slave,
        stderr=subprocess.DEVNULL,
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        os.close(master)
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    assert "backend" in out and "p99" in out and "40/40 calls" in out
    final = out[out.rindex("┏") :]
    backend_rows = [ln for ln in final.splitlines() if re.match(r"│ localhost:\d+", ln)]
    assert len(backend_rows) == 3
    counts = Counter(int(ln.split("│")[5]) for ln in backend_rows)
    assert sum(n * k for n, k in counts.items()) == 40


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["call", "--rate", "-1"], "--rate"),
        (["call", "--concurrency", "0"], "--concurrency"),
        (["call", "--metrics-port", "70000"], "--metrics-port"),
        (["--log-level", "chatty", "call"], "unknown log level"),
    ],
)
def test_bad_observe_options_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "grpc_balancer", *args],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


async def test_live_view_at_80_columns_keeps_the_addresses_whole(fleet3: GreeterFleet) -> None:
    addresses = [f"localhost:{port}" for port in fleet3.ports]
    target = "static:///" + ",".join(addresses)
    async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as ch:
        assert await ch.wait_for_settled(10)
        stats = CallStats()
        console = Console(record=True, force_terminal=True, width=80, file=io.StringIO())
        async with LiveView(ch, stats, 30, console=console, refresh_per_second=20):
            await run_load(ch, stats, _args(30, concurrency=3))
        still = Console(record=True, force_terminal=True, width=80, file=io.StringIO())
        still.print(render(ch, stats, 30, console.width))
    frames = console.export_text()  # every refresh, run together
    assert all(f"│ {address} │" in frames for address in addresses), frames
    text = still.export_text()
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), text
    body = [ln for ln in lines if ln.startswith("│")]
    for address in addresses:  # one row each, the address unwrapped and uncut
        assert sum(ln.startswith(f"│ {address} │") for ln in body) == 1, text
    assert len(body) == 3 and "…" not in "".join(body), text
    title = next(ln for ln in lines if "policy round_robin" in ln)
    assert "static:///" in title  # the title is one line (cut with … if need be)
    head = next(ln for ln in lines if "backend" in ln)
    assert "state" in head and "share" in head and "calls" in head and "failed" in head
