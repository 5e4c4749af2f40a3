"""BasePolicy and pickers as internals: aggregate state, sticky failure, priority
groups, exclusion. Subchannels are real objects whose state the test sets."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.picker import FailPicker, Picker, PickError, PickInfo, QueuePicker
from grpc_balancer.policies.round_robin import RoundRobinPicker, RoundRobinPolicy
from grpc_balancer.subchannel import HEALTH_UNKNOWN, Subchannel

C = grpc.ChannelConnectivity
INFO = PickInfo("/m")


class FakeControl:
    """Records what the policy publishes; subchannels never dial (connect is a no-op)."""

    target = "test:///x"

    def __init__(self) -> None:
        self.published: list[tuple[C, Picker]] = []
        self.removed: list[Subchannel] = []
        self.channels: list[grpc.aio.Channel] = []

    def create_subchannel(self, endpoint: Endpoint) -> Subchannel:
        channel = grpc.aio.insecure_channel(endpoint.address)
        self.channels.append(channel)
        sc = Subchannel(endpoint, channel, self)  # type: ignore[arg-type]
        sc.connect = lambda: setattr(sc, "wants_connection", True)  # type: ignore[method-assign]
        return sc

    def remove_subchannel(self, subchannel: Subchannel) -> None:
        self.removed.append(subchannel)

    def update_picker(self, state: C, picker: Picker) -> None:
        self.published.append((state, picker))

    def request_reresolution(self) -> None:
        pass

    def on_subchannel_state(self, sc: Subchannel) -> None:
        self.policy.on_subchannel_state(sc)

    def latest(self) -> tuple[C, Picker]:
        """The last publication, after the rebuild a loop turn would run (the policy
        coalesces state changes into one rebuild per turn)."""
        policy = getattr(self, "policy", None)
        if policy is not None and policy.rebuild_pending:
            policy.rebuild_now()
        return self.published[-1]

    @property
    def state(self) -> C:
        return self.latest()[0]

    @property
    def picker(self) -> Picker:
        return self.latest()[1]


@pytest.fixture
async def control() -> AsyncIterator[FakeControl]:
    ctl = FakeControl()
    yield ctl
    for channel in ctl.channels:
        await channel.close()


def _set(sc: Subchannel, state: C) -> None:
    sc._set_connectivity(state)
    if state is C.TRANSIENT_FAILURE:  # skip the why-probe: publish at once
        sc._probe_pending = False
        sc._changed()


def _policy(control: FakeControl, endpoints: list[Endpoint]) -> RoundRobinPolicy:
    policy = RoundRobinPolicy(control, {}, rng=random.Random(1))  # type: ignore[arg-type]
    control.policy = policy  # type: ignore[attr-defined]
    policy.update_endpoints(endpoints)
    return policy


async def test_connecting_then_ready_then_sticky_failure(control: FakeControl) -> None:
    policy = _policy(control, [Endpoint("a:1"), Endpoint("b:1")])
    a, b = policy.subchannels
    assert control.state is C.CONNECTING and isinstance(control.picker, QueuePicker)
    _set(a, C.READY)
    assert control.state is C.READY and control.picker.pick(INFO) is a
    _set(a, C.TRANSIENT_FAILURE)
    assert control.state is C.CONNECTING  # b has not failed yet
    _set(b, C.TRANSIENT_FAILURE)
    assert control.state is C.TRANSIENT_FAILURE
    # Retrying a connection does not leave TRANSIENT_FAILURE (sticky, like gRPC).
    _set(a, C.CONNECTING)
    assert control.state is C.TRANSIENT_FAILURE
    with pytest.raises(PickError) as info:
        control.picker.pick(INFO)
    assert info.value.code is grpc.StatusCode.UNAVAILABLE
    assert "a:1: TRANSIENT_FAILURE" in info.value.message
    _set(b, C.READY)
    assert control.state is C.READY and control.picker.pick(INFO) is b


async def test_health_and_ejection_remove_from_rotation(control: FakeControl) -> None:
    policy = _policy(control, [Endpoint("a:1"), Endpoint("b:1")])
    a, b = policy.subchannels
    _set(a, C.READY)
    _set(b, C.READY)
    a.set_health("NOT_SERVING")
    assert {control.picker.pick(INFO) for _ in range(6)} == {b}
    b.set_ejected(True)
    assert control.state is C.TRANSIENT_FAILURE
    message = control.picker.error.message  # type: ignore[attr-defined]
    assert (
        "health check reports NOT_SERVING" in message and "ejected by outlier detection" in message
    )
    a.set_health(HEALTH_UNKNOWN)  # waiting for the first health answer counts as connecting
    assert control.state is C.CONNECTING


async def test_lowest_priority_group_wins_while_usable(control: FakeControl) -> None:
    policy = _policy(
        control,
        [Endpoint("p0:1", priority=0), Endpoint("p1:1", priority=1), Endpoint("p1:2", priority=1)],
    )
    p0, p1a, p1b = policy.subchannels
    for sc in (p0, p1a, p1b):
        _set(sc, C.READY)
    assert {control.picker.pick(INFO) for _ in range(6)} == {p0}
    _set(p0, C.IDLE)
    assert {control.picker.pick(INFO) for _ in range(6)} == {p1a, p1b}


async def test_update_reuses_and_removes(control: FakeControl) -> None:
    policy = _policy(control, [Endpoint("a:1"), Endpoint("b:1")])
    a, b = policy.subchannels
    policy.update_endpoints([Endpoint("b:1", weight=5), Endpoint("c:1")])
    b2, c = policy.subchannels
    assert c.address == "c:1"
    assert b2 is b and b.endpoint.weight == 5
    assert control.removed == [a]
    policy.update_endpoints([])
    assert control.state is C.TRANSIENT_FAILURE
    assert "resolver returned an empty list" in control.picker.error.message  # type: ignore[attr-defined]


def test_round_robin_picker_rotates_and_honours_exclusion() -> None:
    subs = ["a", "b", "c"]
    picker = RoundRobinPicker(subs, random.Random(7))  # type: ignore[arg-type]
    picks = [picker.pick(INFO) for _ in range(9)]
    assert sorted(picks) == sorted(subs * 3)
    assert all(picks[i] != picks[i + 1] for i in range(8))
    excluded = PickInfo("/m", exclude=frozenset({"a", "b"}))  # type: ignore[arg-type]
    assert {picker.pick(excluded) for _ in range(5)} == {"c"}
    everything = PickInfo("/m", exclude=frozenset(subs))  # type: ignore[arg-type]
    assert picker.pick(everything) in subs  # all tried: still goes somewhere


def test_fail_picker_raises_its_error() -> None:
    picker = FailPicker(grpc.StatusCode.UNAVAILABLE, "nope")
    with pytest.raises(PickError, match="nope"):
        picker.pick(INFO)
