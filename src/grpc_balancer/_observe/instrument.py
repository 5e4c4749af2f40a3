"""Channel instrumentation hooks: how metrics sinks (Prometheus, OpenTelemetry) see a channel.

A sink registers a factory with :func:`register`; every channel created afterwards asks
each factory for a :class:`ChannelInstrument` and calls it on the events below. With no
sink registered a channel holds ``None`` and pays one attribute test per call, which is
why metrics are opt-in (``grpc_balancer.metrics.enable()``) yet free when off.

Per-attempt timings are not here: a sink appends its own observer to each new
subchannel's ``call_observers`` in :meth:`ChannelInstrument.subchannel_added`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import grpc

if TYPE_CHECKING:
    from grpc_balancer._observe.events import Event
    from grpc_balancer.endpoint import Endpoint
    from grpc_balancer.subchannel import Subchannel


class ChannelInstrument(Protocol):
    """Called on the event loop; must be quick and never raise."""

    def call_started(self, call: Any) -> None:
        """A call object was created (``call.method`` names the method)."""

    def call_finished(self, call: Any, code: grpc.StatusCode) -> None:
        """The call is over; ``call.subchannel`` is the backend of its last attempt."""

    def subchannel_added(self, subchannel: Subchannel) -> None: ...

    def subchannel_removed(self, subchannel: Subchannel) -> None: ...

    def subchannel_state(self, subchannel: Subchannel) -> None:
        """Connectivity, health, ejection or weight changed."""

    def resolver_update(self, endpoints: Sequence[Endpoint]) -> None: ...

    def resolver_error(self, error: str) -> None: ...

    def event(
        self, event: Event, subchannel: Subchannel | None, code: grpc.StatusCode | None
    ) -> None:
        """A resilience event (``Event.RETRY``, ``Event.HEDGE``...; see :mod:`.events`)."""

    def closed(self) -> None:
        """The channel closed: drop its series."""


#: ``factory(channel) -> instrument or None`` (None: not for this channel).
InstrumentFactory = Callable[[Any], "ChannelInstrument | None"]

_FACTORIES: dict[str, InstrumentFactory] = {}


def register(name: str, factory: InstrumentFactory) -> None:
    """Instrument every channel created from now on (``name`` makes it idempotent)."""
    _FACTORIES[name] = factory


def unregister(name: str) -> None:
    _FACTORIES.pop(name, None)


def for_channel(channel: Any) -> ChannelInstrument | None:
    """The instrument for a new channel: None, the only one, or a fan-out to several."""
    if not _FACTORIES:
        return None
    found = [i for i in (f(channel) for f in list(_FACTORIES.values())) if i is not None]
    if not found:
        return None
    if len(found) == 1:
        return found[0]
    return _Tee(found)


class _Tee:
    """Several sinks at once (e.g. Prometheus and OpenTelemetry)."""

    def __init__(self, instruments: list[ChannelInstrument]) -> None:
        self._all = instruments

    def call_started(self, call: Any) -> None:
        for i in self._all:
            i.call_started(call)

    def call_finished(self, call: Any, code: grpc.StatusCode) -> None:
        for i in self._all:
            i.call_finished(call, code)

    def subchannel_added(self, subchannel: Subchannel) -> None:
        for i in self._all:
            i.subchannel_added(subchannel)

    def subchannel_removed(self, subchannel: Subchannel) -> None:
        for i in self._all:
            i.subchannel_removed(subchannel)

    def subchannel_state(self, subchannel: Subchannel) -> None:
        for i in self._all:
            i.subchannel_state(subchannel)

    def resolver_update(self, endpoints: Sequence[Endpoint]) -> None:
        for i in self._all:
            i.resolver_update(endpoints)

    def resolver_error(self, error: str) -> None:
        for i in self._all:
            i.resolver_error(error)

    def event(
        self, event: Event, subchannel: Subchannel | None, code: grpc.StatusCode | None
    ) -> None:
        for i in self._all:
            i.event(event, subchannel, code)

    def closed(self) -> None:
        for i in self._all:
            i.closed()
