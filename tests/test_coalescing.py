"""Subchannel state changes are coalesced into one picker rebuild per loop turn, and
each rebuild is counted and timed (no O(N²) connect storm)."""

from __future__ import annotations

import asyncio
from typing import cast

import grpc
import grpc.aio

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.picker import PickInfo, QueuePicker
from grpc_balancer.policies import base
from grpc_balancer.subchannel import Subchannel
from tests.test_base_policy import FakeControl, _policy, _set, control

C = grpc.ChannelConnectivity
INFO = PickInfo("/m")

__all__ = ["control"]


async def _turns(policy: base.BasePolicy, limit: int = 1000) -> int:
    """Loop turns until the pending rebuild ran."""
    for turn in range(1, limit + 1):
        await asyncio.sleep(0)
        if not policy.rebuild_pending:
            return turn
    raise AssertionError("the rebuild never ran")


async def test_many_changes_in_one_turn_rebuild_once(control: FakeControl) -> None:
    n = 200
    policy = _policy(control, [Endpoint(f"10.0.0.{i}:1") for i in range(n)])
    before = policy.rebuilds.count
    published = len(control.published)
    for sc in policy.subchannels:
        _set(sc, C.READY)
    # Nothing rebuilt yet: the changes wait for the next turn, together.
    assert policy.rebuild_pending
    assert policy.rebuilds.count == before and len(control.published) == published
    await _turns(policy)
    assert policy.rebuilds.count == before + 1
    assert len(control.published) == published + 1
    state, picker = control.published[-1]
    assert state is C.READY
    assert {picker.pick(INFO) for _ in range(n)} == set(policy.subchannels)


async def test_changes_in_separate_turns_each_rebuild(control: FakeControl) -> None:
    policy = _policy(control, [Endpoint("a:1"), Endpoint("b:1")])
    a, b = policy.subchannels
    base_count = policy.rebuilds.count
    _set(a, C.READY)
    await _turns(policy)
    _set(b, C.READY)
    await _turns(policy)
    assert policy.rebuilds.count == base_count + 2
    assert {control.published[-1][1].pick(INFO) for _ in range(6)} == {a, b}


async def test_a_costly_rebuild_delays_the_next_by_its_budget(control: FakeControl) -> None:
    policy = _policy(control, [Endpoint("a:1"), Endpoint("b:1")])
    a, b = policy.subchannels
    # As if the last rebuild had cost 50 ms: the next waits 4 x 50 ms, not one turn.
    loop = asyncio.get_running_loop()
    policy._rebuild_not_before = loop.time() + base.REBUILD_BUDGET * 0.05
    _set(a, C.READY)
    assert isinstance(policy._rebuild, asyncio.TimerHandle)
    assert policy._rebuild.when() > loop.time() + 0.1
    for _ in range(5):
        await asyncio.sleep(0)
    assert policy.rebuild_pending and isinstance(control.published[-1][1], QueuePicker)
    _set(b, C.READY)  # joins the pending rebuild
    start = policy.rebuilds.count
    await asyncio.wait_for(_wait_rebuilt(policy), 5)
    assert policy.rebuilds.count == start + 1
    assert {control.published[-1][1].pick(INFO) for _ in range(6)} == {a, b}


async def _wait_rebuilt(policy: base.BasePolicy) -> None:
    while policy.rebuild_pending:
        await asyncio.sleep(0.01)


async def test_a_new_list_rebuilds_at_once_and_cancels_the_pending_one(
    control: FakeControl,
) -> None:
    policy = _policy(control, [Endpoint("a:1"), Endpoint("b:1")])
    a, _ = policy.subchannels
    _set(a, C.READY)
    assert policy.rebuild_pending
    policy.update_endpoints([Endpoint("a:1")])
    assert not policy.rebuild_pending
    assert control.published[-1][1].pick(INFO) is a


class _NoDialControl(FakeControl):
    def create_subchannel(self, endpoint: Endpoint) -> Subchannel:
        sc = Subchannel(endpoint, cast(grpc.aio.Channel, None), self)
        sc.connect = lambda: setattr(sc, "wants_connection", True)  # type: ignore[method-assign]
        return sc


def test_without_an_event_loop_a_change_rebuilds_at_once() -> None:
    ctl = _NoDialControl()
    policy = _policy(ctl, [Endpoint("a:1")])
    (a,) = policy.subchannels
    count = policy.rebuilds.count
    a._set_connectivity(C.READY)
    assert not policy.rebuild_pending
    assert policy.rebuilds.count == count + 1
    assert ctl.published[-1][0] is C.READY


def test_rebuild_stats_keep_count_total_max_and_last() -> None:
    stats = base.RebuildStats()
    stats.add(0.002)
    stats.add(0.001)
    assert (stats.count, stats.max_s, stats.last_s) == (2, 0.002, 0.001)
    assert abs(stats.total_s - 0.003) < 1e-12


async def test_rebuild_stats_count_every_rebuild(control: FakeControl) -> None:
    policy = _policy(control, [Endpoint("a:1")])
    (a,) = policy.subchannels
    count = policy.rebuilds.count
    _set(a, C.READY)
    await _turns(policy)
    assert policy.rebuilds.count == count + 1
    assert policy.rebuilds.total_s >= policy.rebuilds.last_s > 0
    assert "count=" in repr(policy.rebuilds)
