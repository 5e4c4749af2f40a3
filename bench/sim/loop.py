"""An asyncio event loop on a virtual clock: when nothing is ready it jumps to the next
timer instead of waiting, so simulated seconds cost only the callbacks they run.

Everything asyncio offers on timers works unchanged (``call_later``, tasks,
``asyncio.sleep``, futures); there is no I/O (the selector never reports a file
ready). Callbacks due at the same instant run in the order they were scheduled,
so a run is deterministic.

Many simulated clients share the loop, yet each may *stall* on its own: a callback
scheduled while a client's code runs (its policy's timers, probe tasks, futures)
belongs to that client and runs through its :attr:`VirtualLoop.gate`, which holds it
until the client's loop is free, as a busy real event loop would.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable
from typing import Any, Protocol


class SimulationStalled(RuntimeError):
    """Nothing is scheduled and nothing is ready: the awaited result can never come."""


class _VirtualSelector(selectors.SelectSelector):
    def __init__(self, loop: VirtualLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise SimulationStalled("nothing scheduled: the simulation cannot make progress")
        if timeout > 0:
            self._loop.advance(timeout)
        return []


class Owner(Protocol):
    """Who a callback belongs to: runs it now, or later if its loop is stalled."""

    def gate(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None: ...


class VirtualLoop(asyncio.SelectorEventLoop):
    """``time()`` is virtual; it starts at ``start`` (not 0, so "long ago" stamps of 0
    mean what they do on a real monotonic clock)."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        #: the simulated client whose code is running (None: servers, the scenario)
        self.owner: Owner | None = None
        super().__init__(_VirtualSelector(self))

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        owner = self.owner
        if owner is None:
            return super().call_at(when, callback, *args, context=context)
        return super().call_at(when, owner.gate, callback, args, context=context)

    def call_soon(self, callback: Any, *args: Any, context: Any = None) -> Any:
        owner = self.owner
        if owner is None:
            return super().call_soon(callback, *args, context=context)
        return super().call_soon(owner.gate, callback, args, context=context)

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    def call_soon_threadsafe(self, callback: Any, *args: Any, context: Any = None) -> Any:
        # One thread: no self-pipe wake-up needed.
        return self.call_soon(callback, *args, context=context)

    def call_later(self, delay: float, callback: Any, *args: Any, context: Any = None) -> Any:
        return self.call_at(self._now + delay, callback, *args, context=context)
