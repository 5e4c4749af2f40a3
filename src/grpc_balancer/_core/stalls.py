"""How long this client's event loop could not run: a busy client is not a slow backend.

A call's latency is measured on the client, so when the client's loop is stalled (CPU
work in the same thread, the GIL held by other threads, a blocking call) every reply
that arrived meanwhile waits, and each backend with calls in flight looks slower by
the stall. A peak-sensitive estimate keeps such a peak for about its decay time, so
after a stall the *fast* backends (which always have calls in flight) look slow while
a rarely used slow one does not: issue 16 measured peak_ewma sending 4-21 calls/s to
a 10x slower backend for seconds at a time on a busy client.

:class:`StallMeter` is a heartbeat on the loop: a timer every ``tick_s`` that fires
more than ``slack_s`` late means the loop was stalled from when it was due. It runs
only while the channel is used (a pick in the last ``idle_s``), and it knows a stall
that is still being caught up on (the heartbeat overdue now, before it has run):
replies are processed before timers when a stalled loop wakes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable

#: How many recent stalls are kept (the longest call a correction can span is the
#: time they cover).
_HISTORY = 32


class StallMeter:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float] = time.monotonic,
        *,
        tick_s: float = 0.01,
        slack_s: float = 0.005,
        idle_s: float = 1.0,
    ) -> None:
        self._loop = loop
        self._clock = clock
        self.tick_s = tick_s
        self.slack_s = slack_s
        self.idle_s = idle_s
        self._running = False
        self._last_beat = clock()
        self._last_use = -math.inf
        #: (start, end) of recent stalls, oldest first; replaced, never mutated, so
        #: other threads (a sync channel's callers) can read it while the loop writes
        self.stalls: tuple[tuple[float, float], ...] = ()
        self._timer: asyncio.TimerHandle | None = None

    def touch(self, now: float) -> None:
        """The channel is in use (a pick, on any thread): keep the heartbeat going."""
        self._last_use = now
        if not self._running:
            self._running = True
            self._last_beat = now  # not stalled since the last stop: it just was not running
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to measure
                self._loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        self._last_beat = self._clock()
        self._schedule()

    def _schedule(self) -> None:
        self._timer = self._loop.call_later(self.tick_s, self._beat)

    def _beat(self) -> None:
        now = self._clock()
        due = self._last_beat + self.tick_s
        if now - due > self.slack_s:
            self.stalls = (*self.stalls[-(_HISTORY - 1) :], (due, now))
        self._last_beat = now
        if now - self._last_use > self.idle_s:
            self._running = False
            self._timer = None
            return
        self._schedule()

    def stalled_between(self, start: float, end: float) -> float:
        """Seconds of ``[start, end]`` during which the loop was stalled (recorded
        stalls, and one still being caught up on)."""
        total = 0.0
        if self._running:
            due = self._last_beat + self.tick_s
            now = self._clock()
            if now - due > self.slack_s and min(now, end) > max(due, start):
                total += min(now, end) - max(due, start)  # overdue: stalled since due
        for a, b in reversed(self.stalls):
            if b <= start:
                break
            if a < end:
                total += min(b, end) - max(a, start)
        return total

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._running = False

    def __repr__(self) -> str:
        return f"<StallMeter {len(self.stalls)} recent stalls>"
