"""Dialing a large endpoint list without a connect storm.

Two bounds, one per resource a storm exhausts:

* **the loop**: connection starts queue up and run a few milliseconds' worth per
  event-loop turn, so taking in 10,000 endpoints does not block the loop (and the calls
  waiting on it) for the seconds it takes to create 10,000 connections;
* **the handshakes**, while calls wait for the channel: at most a *window* of
  connections may be connecting at once. The window starts at :data:`INITIAL_WINDOW`
  and grows by one for every connection that settles (READY or failed), so it doubles
  with each round of handshakes, as TCP's slow start does. A call sent on the first
  READY endpoints is answered while the next few hundred handshakes run, not behind
  all 10,000 of them (with every dial at once, the first call of a 10,000-endpoint
  channel came back only with the last handshakes: ``bench/fleet.py`` measures both).
  The window holds only while the channel's owner says calls are waiting for it
  (``holding``): with none waiting, or once they are answered, the rest dial at full
  speed, so connecting everything costs no more than with every dial at once (the
  window kept for the whole storm cost it a quarter more: ``bench/fleet_cost.py``).
  Channels of up to :data:`INITIAL_WINDOW` endpoints dial everything at once.

A window full of connections that never settle (black-holed addresses wait out their
connect timeout) must not stall the rest: with the window full, it doubles every
:data:`WIDEN_AFTER_S` anyway.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Callable

#: How long one loop turn may spend starting connections before it yields.
SLICE_S = 0.002
#: Connections that may be connecting at once before the first one settles.
INITIAL_WINDOW = 64
#: With the window full for this long, it doubles whether or not anything settled.
WIDEN_AFTER_S = 0.5


class Dialer:
    """One per channel, on its event loop. :meth:`submit` a connection start (a
    callable returning whether it started a connection); starts run in order, in later
    turns, in slices of at most ``slice_s``, while fewer than the window are connecting.
    Whoever started a connection calls :meth:`settled` once when it is READY, has failed
    or is closed. ``holding()`` says whether the window applies now (by default it
    always does); when it stops applying, :meth:`released` lets the rest start."""

    def __init__(
        self,
        slice_s: float | None = None,
        *,
        window: int | None = None,
        widen_after_s: float | None = None,
        holding: Callable[[], bool] | None = None,
    ) -> None:
        self._slice_s = SLICE_S if slice_s is None else slice_s
        self._window = INITIAL_WINDOW if window is None else window
        self._widen_after_s = WIDEN_AFTER_S if widen_after_s is None else widen_after_s
        self._holding = holding
        self._connecting = 0
        self._queue: deque[Callable[[], bool]] = deque()
        self._handle: asyncio.Handle | None = None
        self._widen: asyncio.TimerHandle | None = None
        #: The context the connectivity watchers run in: one for all of them, not a
        #: copy each (they set no context variables; one channel, one loop thread).
        self.context = contextvars.Context()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def connecting(self) -> int:
        """Connections started here that have not settled yet."""
        return self._connecting

    @property
    def window(self) -> int:
        return self._window

    def submit(self, start: Callable[[], bool]) -> None:
        self._queue.append(start)
        self._schedule()

    def settled(self) -> None:
        """A connection started here is READY, failed or closed: it leaves the window,
        and the window grows by one."""
        self._connecting -= 1
        self._window += 1
        self._schedule()

    def released(self) -> None:
        """``holding()`` may have become false: start what the window held back."""
        self._schedule()

    def _held(self) -> bool:
        """The window is full and applies now."""
        if self._connecting < self._window:
            return False
        return self._holding is None or self._holding()

    def _schedule(self) -> None:
        if self._handle is None and self._queue and not self._held():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # a watcher finalized after its loop ended: nothing to run
                return
            self._handle = loop.call_soon(self._run)

    def _run(self) -> None:
        self._handle = None
        queue = self._queue
        deadline = time.perf_counter() + self._slice_s
        while queue and not self._held():
            if queue.popleft()():
                self._connecting += 1
            if time.perf_counter() >= deadline:
                break
        if not queue:
            return
        if not self._held():
            self._handle = asyncio.get_running_loop().call_soon(self._run)
        elif self._widen is None:
            self._widen = asyncio.get_running_loop().call_later(
                self._widen_after_s, self._widen_window
            )

    def _widen_window(self) -> None:
        self._widen = None
        self._window *= 2
        if self._handle is None:
            self._run()  # which arms the next widening if the window fills again

    def close(self) -> None:
        """Drop what is still queued (the channel is closing)."""
        self._queue.clear()
        for handle in (self._handle, self._widen):
            if handle is not None:
                handle.cancel()
        self._handle = self._widen = None
