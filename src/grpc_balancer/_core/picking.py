"""The one pick seam (grpc-go's ``picker_wrapper.go``): the current picker and the
signal that fires when it is replaced, swapped as one value, plus what a picker may
not know (backends this call already tried, per-backend limits).

Every call kind of both channels picks through :meth:`Picking.pick`; waiting for a
better picker is the driver's business (an asyncio callback, a thread waiting on an
event), so this module does no I/O and takes no lock on the pick path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

import grpc

from grpc_balancer._core.limits import SATURATED_CODE, saturated_message
from grpc_balancer._observe.events import Event
from grpc_balancer.picker import FailPicker, Picker, PickError, PickInfo, QueuePicker

if TYPE_CHECKING:
    from grpc_balancer.subchannel import Subchannel

Connectivity = grpc.ChannelConnectivity
Emit = Callable[[Event, "Subchannel | None", "grpc.StatusCode | None"], None]


class ChangeSignal:
    """Fires once, when the picker it belongs to is replaced. Callbacks run in the
    thread that publishes the next picker (the channel's event loop); a callback added
    after firing runs at once in the caller's thread."""

    __slots__ = ("_callbacks", "_fired", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self._fired = False

    @property
    def fired(self) -> bool:
        return self._fired

    def add_callback(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._fired:
                self._callbacks.append(callback)
                return
        callback()

    def remove_callback(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

    def fire(self) -> None:
        with self._lock:
            if self._fired:
                return
            self._fired = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def wait(self, timeout: float | None) -> bool:
        """Block this thread until fired (or ``timeout`` s); for caller threads only."""
        if self._fired:
            return True
        event = threading.Event()
        self.add_callback(event.set)
        try:
            return event.wait(timeout)
        finally:
            self.remove_callback(event.set)


class PickerGeneration:
    """A picker, the channel state it came with, and the signal of its replacement."""

    __slots__ = ("changed", "picker", "state")

    def __init__(self, picker: Picker, state: Connectivity) -> None:
        self.picker = picker
        self.state = state
        self.changed = ChangeSignal()

    def __repr__(self) -> str:
        return f"<PickerGeneration {self.state.name} {self.picker!r}>"


class Picking:
    """Owned by the channel core; read by every call's attempt plan."""

    def __init__(
        self,
        target: str,
        subchannels: Collection[Subchannel],
        max_requests: int,
        emit: Emit,
        describe: Callable[[], str],
    ) -> None:
        self.target = target
        self._subchannels = subchannels
        #: circuitBreakers.maxRequests (0: no per-backend limit).
        self.max_requests = max_requests
        self._emit = emit
        self._describe = describe
        #: Read without a lock: replaced as one value by :meth:`publish`.
        self.generation = PickerGeneration(QueuePicker(), Connectivity.IDLE)

    def publish(self, state: Connectivity, picker: Picker) -> PickerGeneration:
        """Swap in ``picker``; wake everything waiting on the previous one."""
        old, self.generation = self.generation, PickerGeneration(picker, state)
        old.changed.fire()
        return old

    def pick(self, info: PickInfo, wait_for_ready: bool) -> Subchannel | None:
        """The backend for one attempt, or None to wait for the next picker.

        Raises :class:`PickError` when the call must fail now (the picker says so, or
        every usable backend is at ``maxRequests``)."""
        picker = self.generation.picker
        try:
            sc = picker.pick(info)
        except PickError as err:
            if wait_for_ready and err.code is grpc.StatusCode.UNAVAILABLE:
                return None
            raise
        if sc is None:
            return None
        if info.exclude and sc in info.exclude:
            sc = self._untried(info, sc)
        if self.max_requests and sc.in_flight >= self.max_requests:
            sc = self._unsaturated(info, sc, picker)
        return sc

    def pick_now(self, info: PickInfo) -> Subchannel | None:
        """A pick that never waits and never fails (hedges): None if nothing fits."""
        try:
            return self.pick(info, False)
        except PickError:
            return None

    def _untried(self, info: PickInfo, picked: Subchannel) -> Subchannel:
        """The picker chose a backend this call already tried (a policy that ignores
        ``PickInfo.exclude``): the least loaded untried usable one of the same priority,
        if any."""
        others = [
            sc
            for sc in self._snapshot()
            if sc.usable
            and sc not in info.exclude
            and sc.endpoint.priority == picked.endpoint.priority
        ]
        return min(others, key=lambda sc: sc.in_flight) if others else picked

    def _unsaturated(self, info: PickInfo, first: Subchannel, picker: Picker) -> Subchannel:
        """``first`` is at ``maxRequests``: ask the picker again without the saturated
        ones; failing that the least loaded usable backend under the limit; if there is
        none, fail fast with RESOURCE_EXHAUSTED."""
        limit = self.max_requests
        skipped = {first}
        self._emit(Event.SATURATED, first, None)
        subchannels = self._snapshot()
        for _ in range(len(subchannels)):
            try:
                sc = picker.pick(
                    PickInfo(info.method, info.metadata, info.hash_key, info.exclude | skipped)
                )
            except PickError:
                break
            if sc is None or sc in skipped:
                break
            if sc.in_flight < limit:
                return sc
            skipped.add(sc)
            self._emit(Event.SATURATED, sc, None)
        spare = [sc for sc in subchannels if sc.usable and sc.in_flight < limit]
        if spare:
            return min(spare, key=lambda sc: sc.in_flight)
        self._emit(Event.REJECTED, None, SATURATED_CODE)
        busy = [sc.address for sc in subchannels if sc.usable]
        raise PickError(SATURATED_CODE, saturated_message(self.target, limit, busy))

    def _snapshot(self) -> list[Subchannel]:
        """The subchannels now; the sync channel's caller threads read the set while
        the loop thread may change it, so a copy that raced is simply taken again."""
        for _ in range(10):
            try:
                return list(self._subchannels)
            except RuntimeError:  # "Set changed size during iteration"
                continue
        return list(self._subchannels)

    def why_waiting(self) -> str:
        """Why no backend could be picked, for a call whose deadline ran out waiting."""
        picker = self.generation.picker
        if isinstance(picker, FailPicker):
            return picker.error.message
        return f"no backend of {self.target!r} was ready ({self._describe()})"
