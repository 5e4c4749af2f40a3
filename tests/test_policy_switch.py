"""PolicySwitch (grpc-go's graceful switch) without a channel: which policy's pickers
are published, when the new policy takes over, and that the old one is closed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from grpc_balancer._core.switch import PolicySwitch
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.picker import PickInfo
from grpc_balancer.subchannel import Subchannel

C = grpc.ChannelConnectivity


class FakeChannel:
    target = "fake:///x"

    def __init__(self) -> None:
        self.published: list[tuple[C, Any]] = []
        self.reresolutions = 0

    def create_subchannel(self, endpoint: Endpoint) -> Subchannel:
        raise AssertionError("not used")

    def remove_subchannel(self, subchannel: Subchannel) -> None:
        raise AssertionError("not used")

    def update_picker(self, state: C, picker: Any) -> None:
        self.published.append((state, picker))

    def request_reresolution(self) -> None:
        self.reresolutions += 1


class NamedPicker:
    def __init__(self, owner: str) -> None:
        self.owner = owner

    def pick(self, info: PickInfo) -> Subchannel | None:
        return None


class FakePolicy:
    """Publishes what the test tells it to, through the control it was given."""

    def __init__(self, control: Any, config: Mapping[str, Any]) -> None:
        self.control = control
        self.name = config.get("name", "?")
        self.endpoints: list[Endpoint] | None = None
        self.states: list[Subchannel] = []
        self.closed = False
        self.state = C.CONNECTING

    def update_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = list(endpoints)
        self.publish(self.state)  # a new list: a picker again, in the state it is in

    def on_subchannel_state(self, subchannel: Subchannel) -> None:
        self.states.append(subchannel)

    def close(self) -> None:
        self.closed = True

    def publish(self, state: C) -> Any:
        self.state = state
        picker = NamedPicker(self.name)
        self.control.update_picker(state, picker)
        return picker


def make() -> tuple[FakeChannel, PolicySwitch, FakePolicy]:
    channel = FakeChannel()
    switch = PolicySwitch(channel, channel.update_picker)
    built = switch.build(FakePolicy, {"name": "old"})
    switch.start(built)
    return channel, switch, built[0]  # type: ignore[return-value]


def owners(channel: FakeChannel) -> list[tuple[str, str]]:
    return [(state.name, picker.owner) for state, picker in channel.published]


def test_before_any_endpoints_the_new_policy_replaces_the_old_at_once() -> None:
    _channel, switch, old = make()
    built = switch.build(FakePolicy, {"name": "new"})
    switch.switch_to(built)
    assert old.closed and switch.policy is built[0] and not switch.switching


def test_the_new_policy_s_pickers_wait_until_it_is_ready() -> None:
    channel, switch, old = make()
    switch.update_endpoints([Endpoint("a:1")])
    old.publish(C.READY)
    built = switch.build(FakePolicy, {"name": "new"})
    new: FakePolicy = built[0]  # type: ignore[assignment]
    switch.switch_to(built)
    assert new.endpoints == [Endpoint("a:1")] and switch.switching
    old.publish(C.READY)  # the old one still serves
    assert owners(channel)[-1] == ("READY", "old")
    new.publish(C.CONNECTING)
    assert owners(channel)[-1] == ("READY", "old") and not old.closed
    new.publish(C.READY)
    assert owners(channel)[-1] == ("READY", "new")
    assert old.closed and switch.policy is new and not switch.switching
    old.publish(C.TRANSIENT_FAILURE)  # a closed policy's late picker is dropped
    assert owners(channel)[-1] == ("READY", "new")


def test_when_the_old_policy_stops_being_ready_the_new_one_takes_over() -> None:
    channel, switch, old = make()
    switch.update_endpoints([Endpoint("a:1")])
    old.publish(C.READY)
    built = switch.build(FakePolicy, {"name": "new"})
    switch.switch_to(built)
    old.publish(C.TRANSIENT_FAILURE)
    assert old.closed and switch.policy is built[0]
    assert owners(channel)[-1] == ("CONNECTING", "new")


def test_a_new_policy_when_the_old_is_not_ready_takes_over_at_once() -> None:
    _channel, switch, old = make()
    switch.update_endpoints([Endpoint("a:1")])  # old: CONNECTING
    built = switch.build(FakePolicy, {"name": "new"})
    switch.switch_to(built)
    assert old.closed and switch.policy is built[0]


def test_a_newer_config_replaces_the_one_still_warming_up() -> None:
    channel, switch, old = make()
    switch.update_endpoints([Endpoint("a:1")])
    old.publish(C.READY)
    first = switch.build(FakePolicy, {"name": "first"})
    switch.switch_to(first)
    second = switch.build(FakePolicy, {"name": "second"})
    switch.switch_to(second)
    assert first[0].closed and not old.closed  # type: ignore[attr-defined]
    second[0].publish(C.READY)  # type: ignore[attr-defined]
    assert owners(channel)[-1] == ("READY", "second") and old.closed


def test_inputs_reach_both_policies_while_switching_and_close_closes_both() -> None:
    channel, switch, old = make()
    switch.update_endpoints([Endpoint("a:1")])
    old.publish(C.READY)
    built = switch.build(FakePolicy, {"name": "new"})
    new: FakePolicy = built[0]  # type: ignore[assignment]
    switch.switch_to(built)
    switch.update_endpoints([Endpoint("b:1")])
    sc: Any = object()
    switch.on_subchannel_state(sc)
    assert old.endpoints == new.endpoints == [Endpoint("b:1")]
    assert old.states == new.states == [sc]
    switch.close()
    assert old.closed and new.closed
    built[1].request_reresolution()
    assert channel.reresolutions == 1
