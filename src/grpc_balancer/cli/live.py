"""A live terminal view of a balanced channel: one row per backend, refreshed a few
times a second with rich (state, health, share of calls, calls/s, p50/p99, in-flight)
and a progress bar for runs of a known length.

When the output is not a terminal (a pipe, a log file, CI) it prints plain text
snapshots instead, once per ``plain_interval_s``, so nothing is lost and no escape
codes end up in files.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from grpc_balancer._aio.channel import BalancedChannel

#: How far back calls/s and the percentiles look.
WINDOW_S = 5.0
_BAR_WIDTH = 20


@dataclass
class BackendStats:
    ok: int = 0
    failed: int = 0
    #: (finished_at, latency_s) of recent calls, for calls/s and percentiles.
    recent: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=20_000))

    @property
    def calls(self) -> int:
        return self.ok + self.failed


class CallStats:
    """What the application saw, per backend (from ``call.peer_address``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started_at = clock()
        self.backends: dict[str, BackendStats] = {}
        #: Calls that failed before reaching any backend.
        self.unrouted = 0

    def record(self, backend: str | None, latency_s: float, ok: bool) -> None:
        if backend is None:
            self.unrouted += 1
            return
        stats = self.backends.get(backend)
        if stats is None:
            stats = self.backends[backend] = BackendStats()
        if ok:
            stats.ok += 1
        else:
            stats.failed += 1
        stats.recent.append((self._clock(), latency_s))

    @property
    def done(self) -> int:
        return sum(s.calls for s in self.backends.values()) + self.unrouted

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.backends.values()) + self.unrouted

    def window(self, backend: str) -> tuple[float, float | None, float | None]:
        """(calls/s, p50 s, p99 s) over the last :data:`WINDOW_S` seconds."""
        stats = self.backends.get(backend)
        if stats is None:
            return 0.0, None, None
        now = self._clock()
        since = now - WINDOW_S
        latencies = sorted(lat for at, lat in list(stats.recent) if at >= since)
        span = min(WINDOW_S, max(now - self.started_at, 1e-3))
        if not latencies:
            return 0.0, None, None
        return len(latencies) / span, _quantile(latencies, 0.5), _quantile(latencies, 0.99)


def _quantile(ordered: list[float], q: float) -> float:
    index = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


@dataclass(frozen=True)
class Row:
    backend: str
    state: str
    health: str
    calls: int
    failed: int
    share: float
    rate: float
    p50_s: float | None
    p99_s: float | None
    in_flight: int


def rows(channel: BalancedChannel, stats: CallStats) -> list[Row]:
    """One row per backend the channel holds, plus any that served calls and left."""
    status = {sc.address: sc for sc in channel.status().subchannels}
    total = max(stats.done, 1)
    out = []
    # the channel's backends in target order, then any that served calls and left
    for backend in [*status, *(b for b in stats.backends if b not in status)]:
        sc = status.get(backend)
        seen = stats.backends.get(backend, BackendStats())
        rate, p50, p99 = stats.window(backend)
        state = "REMOVED" if sc is None else sc.connectivity
        if sc is not None and sc.ejected:
            state += " (ejected)"
        out.append(
            Row(
                backend=backend,
                state=state,
                health="-" if sc is None else sc.health,
                calls=seen.calls,
                failed=seen.failed,
                share=seen.calls / total,
                rate=rate,
                p50_s=p50,
                p99_s=p99,
                in_flight=0 if sc is None else sc.in_flight,
            )
        )
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}ms"


_STATE_STYLE = {"READY": "green", "CONNECTING": "yellow", "IDLE": "dim"}
_COLUMNS = {
    "backend": "left",
    "state": "left",
    "health": "left",
    "share": "left",
    "calls": "right",
    "failed": "right",
    "calls/s": "right",
    "p50": "right",
    "p99": "right",
    "in-flight": "right",
}


def _column_width(name: str, cells: list[RenderableType | str]) -> int:
    return max([len(name), *(len(c.plain if isinstance(c, Text) else str(c)) for c in cells)])


#: How the view narrows, step by step, until it fits the terminal: a shorter share bar
#: (int) or one column fewer (str). backend, state, share, calls and failed always stay.
_NARROWER: tuple[int | str, ...] = (15, 10, "p50", "calls/s", "health", 5, "in-flight", "p99")


def render(
    channel: BalancedChannel, stats: CallStats, total: int | None = None, width: int | None = None
) -> RenderableType:
    """The rich renderable: a table of backends and, for a run of ``total`` calls, a bar.

    The backend address is never wrapped or cut: on a narrow terminal (``width``) the
    share bar shrinks and the least useful columns are dropped first."""
    table_rows = rows(channel, stats)
    bar_width = _BAR_WIDTH
    columns: dict[str, tuple[str, list[RenderableType | str]]] = {}

    def build() -> None:
        columns.clear()
        cells: dict[str, list[RenderableType | str]] = {name: [] for name in _COLUMNS}
        for row in table_rows:
            filled = round(row.share * bar_width)
            bar = Text("█" * filled + "·" * (bar_width - filled), style="cyan")
            bar.append(f" {row.share:6.1%}", style="default")
            cells["backend"].append(row.backend)
            cells["state"].append(Text(row.state, style=_STATE_STYLE.get(row.state, "red")))
            cells["health"].append(row.health)
            cells["share"].append(bar)
            cells["calls"].append(str(row.calls))
            cells["failed"].append(Text(str(row.failed), style="red" if row.failed else "default"))
            cells["calls/s"].append(f"{row.rate:.1f}")
            cells["p50"].append(_ms(row.p50_s))
            cells["p99"].append(_ms(row.p99_s))
            cells["in-flight"].append(str(row.in_flight))
        for name, justify in _COLUMNS.items():
            columns[name] = (justify, cells[name])

    def needed() -> int:  # a box table: "│ cell │ cell │"
        return 1 + sum(3 + _column_width(name, c) for name, (_, c) in columns.items())

    build()
    dropped: set[str] = set()
    for step in _NARROWER if width is not None else ():
        if needed() <= width:  # type: ignore[operator]
            break
        if isinstance(step, int):
            bar_width = step
        else:
            dropped.add(step)
        build()
        for name in dropped:
            del columns[name]
    title = f"policy {channel.config.policy}  {channel.target}"  # cut at the end if need be
    table = Table(
        title=Text(title, no_wrap=True, overflow="ellipsis") if width else title,
        expand=False,
    )
    longest = max([len("backend"), *(len(row.backend) for row in table_rows)])
    for name, (justify, _) in columns.items():
        if name == "backend":
            table.add_column(name, justify="left", no_wrap=True, min_width=longest)
        else:
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for i in range(len(table_rows)):
        table.add_row(*(cells[i] for _, cells in columns.values()))
    parts: list[RenderableType] = [table]
    if stats.unrouted:
        parts.append(Text(f"{stats.unrouted} call(s) reached no backend", style="red"))
    if total is not None:
        progress = Table.grid(padding=(0, 1))
        progress.add_row(
            ProgressBar(total=total, completed=stats.done, width=40),
            f"{stats.done}/{total} calls",
            f"{stats.failed} failed" if stats.failed else "",
        )
        parts.append(progress)
    return Group(*parts)


def plain_lines(channel: BalancedChannel, stats: CallStats, total: int | None = None) -> list[str]:
    """The same information as :func:`render`, as plain text lines."""
    elapsed = time.monotonic() - stats.started_at
    done = f"{stats.done}/{total}" if total is not None else str(stats.done)
    lines = [f"[{elapsed:6.1f}s] {channel.target}: {done} calls, {stats.failed} failed"]
    for row in rows(channel, stats):
        lines.append(
            f"  {row.backend} state={row.state} health={row.health} calls={row.calls}"
            f" failed={row.failed} share={row.share:.1%} rate={row.rate:.1f}/s"
            f" p50={_ms(row.p50_s)} p99={_ms(row.p99_s)} in_flight={row.in_flight}"
        )
    return lines


class LiveView:
    """Refresh the view until :meth:`stop`; use as ``async with LiveView(...)``."""

    def __init__(
        self,
        channel: BalancedChannel,
        stats: CallStats,
        total: int | None = None,
        *,
        console: Console | None = None,
        refresh_per_second: float = 4.0,
        plain_interval_s: float = 1.0,
    ) -> None:
        self.channel = channel
        self.stats = stats
        self.total = total
        self.console = console or Console()
        self._period = 1.0 / refresh_per_second
        self._plain_interval = plain_interval_s
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LiveView:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _run(self) -> None:
        if self.console.is_terminal:
            with Live(
                render(self.channel, self.stats, self.total, self.console.width),
                console=self.console,
                auto_refresh=False,  # refreshed from the event loop, not rich's thread
            ) as live:
                while not self._stop.is_set():
                    await self._sleep(self._period)
                    live.update(
                        render(self.channel, self.stats, self.total, self.console.width),
                        refresh=True,
                    )
        else:
            while not self._stop.is_set():
                await self._sleep(self._plain_interval)
                self._print_plain()

    def _print_plain(self) -> None:
        for line in plain_lines(self.channel, self.stats, self.total):
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
