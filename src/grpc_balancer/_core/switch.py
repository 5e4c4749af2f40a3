"""Changing a channel's policy while it serves calls (grpc-go's ``gracefulswitch``).

The channel owns one :class:`PolicySwitch`. Each policy it makes gets its own control
(a :class:`_Slot`): the channel's, except that pickers go through the switch. A new
policy is built beside the current one and fed the same endpoints; its pickers are held
while it is still connecting and the current one is READY. The moment it has something
to say (READY, or TRANSIENT_FAILURE) or the current one stops being READY, it becomes
the current policy: its picker is published and the old policy is closed, its
subchannels draining the calls they still carry. No call is refused for the change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.picker import Picker
from grpc_balancer.policies.base import ChannelControl, Policy, PolicyFactory
from grpc_balancer.subchannel import Subchannel

Connectivity = grpc.ChannelConnectivity


class _Slot:
    """The ChannelControl of one policy: the channel's, pickers routed to the switch."""

    def __init__(self, switch: PolicySwitch, channel: ChannelControl) -> None:
        self._switch = switch
        self._channel = channel
        self.state: Connectivity = Connectivity.IDLE
        self.picker: Picker | None = None

    @property
    def target(self) -> str:
        return self._channel.target

    def create_subchannel(self, endpoint: Endpoint) -> Subchannel:
        return self._channel.create_subchannel(endpoint)

    def remove_subchannel(self, subchannel: Subchannel) -> None:
        self._channel.remove_subchannel(subchannel)

    def update_picker(self, state: Connectivity, picker: Picker) -> None:
        self.state, self.picker = state, picker
        self._switch.on_picker(self)

    def request_reresolution(self) -> None:
        self._channel.request_reresolution()

    def __getattr__(self, name: str) -> Any:
        # Whatever else a policy reads of its channel (parsed_target...).
        return getattr(self._channel, name)


class PolicySwitch:
    """The current policy, and the next one while it warms up."""

    def __init__(
        self, channel: ChannelControl, publish: Callable[[Connectivity, Picker], None]
    ) -> None:
        self._channel = channel
        self._publish = publish
        self._current: tuple[Policy, _Slot] | None = None
        self._pending: tuple[Policy, _Slot] | None = None
        self._endpoints: Sequence[Endpoint] | None = None
        self._closed = False
        #: Switches completed (for status and tests).
        self.switches = 0

    @property
    def policy(self) -> Policy | None:
        return None if self._current is None else self._current[0]

    @property
    def switching(self) -> bool:
        return self._pending is not None

    def build(self, factory: PolicyFactory, config: Mapping[str, Any]) -> tuple[Policy, _Slot]:
        slot = _Slot(self, self._channel)
        return factory(slot, config), slot

    def start(self, built: tuple[Policy, _Slot]) -> None:
        """The first policy (before any endpoints)."""
        self._current = built

    def switch_to(self, built: tuple[Policy, _Slot]) -> None:
        """Make ``built`` (from :meth:`build`) the policy, gracefully."""
        if self._closed:
            built[0].close()
            return
        if self._pending is not None:  # a newer config replaces the one still warming up
            self._pending[0].close()
            self._pending = None
        if self._endpoints is None or self._current is None:
            old, self._current = self._current, built
            if old is not None:
                old[0].close()
            self.switches += 1
            return
        self._pending = built
        built[0].update_endpoints(self._endpoints)  # its pickers come back to on_picker

    def on_picker(self, slot: _Slot) -> None:
        if self._closed:
            return
        current, pending = self._current, self._pending
        if current is not None and slot is current[1]:
            if pending is None:
                if slot.picker is not None:
                    self._publish(slot.state, slot.picker)
                return
            if slot.state is not Connectivity.READY:
                self._promote()
            elif slot.picker is not None:
                self._publish(slot.state, slot.picker)
        elif pending is not None and slot is pending[1]:
            if slot.picker is None:
                return
            current_ready = current is not None and current[1].state is Connectivity.READY
            if slot.state is not Connectivity.CONNECTING or not current_ready:
                self._promote()
        # else: a closed policy's late picker, dropped

    def _promote(self) -> None:
        assert self._pending is not None
        old, self._current, self._pending = self._current, self._pending, None
        self.switches += 1
        slot = self._current[1]
        if slot.picker is not None:
            self._publish(slot.state, slot.picker)
        if old is not None:
            old[0].close()

    # -- inputs the channel forwards ------------------------------------------------------
    def update_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        self._endpoints = list(endpoints)
        for entry in (self._current, self._pending):
            if entry is not None:
                entry[0].update_endpoints(self._endpoints)

    def on_subchannel_state(self, subchannel: Subchannel) -> None:
        for entry in (self._current, self._pending):
            if entry is not None:
                entry[0].on_subchannel_state(subchannel)

    def close(self) -> None:
        self._closed = True
        for entry in (self._pending, self._current):
            if entry is not None:
                entry[0].close()
        self._pending = None
