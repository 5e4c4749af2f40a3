"""Dialing in slices: connection starts queue up and run a few milliseconds' worth per
event-loop turn, so a channel over 10,000 endpoints does not block its loop (and the
calls waiting on it) for the seconds it takes to create 10,000 connections; the first
endpoints are connected, and the first call sent, while the rest are still queued.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Callable

#: How long one loop turn may spend starting connections before it yields.
SLICE_S = 0.002


class Dialer:
    """One per channel, on its event loop: :meth:`submit` a connection start; it runs
    in order, in a later turn, in slices of at most :data:`SLICE_S`."""

    def __init__(self, slice_s: float = SLICE_S) -> None:
        self._slice_s = slice_s
        self._queue: deque[Callable[[], None]] = deque()
        self._handle: asyncio.Handle | None = None
        #: The context the connectivity watchers run in: one for all of them, not a
        #: copy each (they set no context variables; one channel, one loop thread).
        self.context = contextvars.Context()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, start: Callable[[], None]) -> None:
        self._queue.append(start)
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        self._handle = None
        queue = self._queue
        deadline = time.perf_counter() + self._slice_s
        while queue:
            queue.popleft()()
            if time.perf_counter() >= deadline:
                break
        if queue:
            self._handle = asyncio.get_running_loop().call_soon(self._run)

    def close(self) -> None:
        """Drop what is still queued (the channel is closing)."""
        self._queue.clear()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
