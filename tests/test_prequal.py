"""prequal: the probe pool and hot-cold rule (plain numbers), the policy's probing with
fake subchannels and a fake clock, and real servers answering probes."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from typing import Any, cast

import grpc
import pytest

from grpc_balancer import aio
from grpc_balancer._probe import METHOD, ProbeResponse
from grpc_balancer.demo.servicer import Faults
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.picker import Picker, PickInfo
from grpc_balancer.policies.prequal import PrequalPicker, PrequalPolicy, ProbePool
from grpc_balancer.subchannel import StreamError, Subchannel
from grpc_balancer.testing import GreeterFleet
from tests.channels import open_channel
from tests.helpers import counts, say_hello_ports
from tests.policy_helpers import burst, fake_subchannels

C = grpc.ChannelConnectivity
INFO = PickInfo("/m")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pool_with(entries: list[tuple[int, float, float]], **kw: Any) -> tuple[ProbePool, list[Any]]:
    """A pool of (backend index, RIF, latency) answers, all received at t=0."""
    subs = fake_subchannels(max(i for i, _, _ in entries) + 1)
    pool = ProbePool(kw.get("size", 16), kw.get("max_age", 10.0), kw.get("uses", 100), 0.84)
    for i, rif, latency in entries:
        pool.add(subs[i], rif, latency, 0.0)
    return pool, subs


# -- the pool and the rule ----------------------------------------------------------------
def test_the_coldest_is_not_the_pick_the_fastest_cold_one_is() -> None:
    # RIFs 1..7 and one at 50, latency falling with the index: the 0.84 quantile of the
    # eight (interpolated) is 6.88, so 7 and 50 are hot
    entries = [(i, float(i + 1), 0.050 - i * 0.001) for i in range(7)] + [(7, 50.0, 0.001)]
    pool, subs = pool_with(entries)
    chosen = pool.select(1.0)
    assert chosen is not None
    assert chosen.subchannel is subs[5]  # lowest latency among the cold (RIF 6, 45 ms)
    subs[5].in_flight += 44  # our calls since the probe count in: now 50, hot
    assert chosen.load() == 50
    # the quantile moved up with it (44.8): RIF 7 is cold now and the fastest cold one
    assert pool.select(1.0).subchannel is subs[6]  # type: ignore[union-attr]
    subs[5].in_flight -= 44  # those calls ended: the answer is as good as before
    assert pool.select(1.0).subchannel is subs[5]  # type: ignore[union-attr]


def test_hot_is_relative_to_the_pool_so_a_burst_does_not_spill_onto_an_idle_slow_one() -> None:
    # four fast backends (2 ms) and a slow one (50 ms), nothing in flight anywhere
    entries = [(i, 0.0, 0.002) for i in range(4)] + [(4, 0.0, 0.050)]
    pool, subs = pool_with(entries)
    picked = []
    for _ in range(12):  # a burst: nothing ends in between
        e = pool.select(1.0)
        assert e is not None
        e.subchannel.in_flight += 1
        picked.append(e.subchannel)
    assert subs[4] not in picked  # the fast ones stay cold together, evenly loaded
    assert sorted(sc.in_flight for sc in subs[:4]) == [3, 3, 3, 3]


def test_calls_sent_on_an_answer_raise_its_expected_latency_by_littles_law() -> None:
    # A: 10 ms at RIF 0, B: 15 ms at RIF 0, three busier ones keep A and B cold
    entries = [(0, 0.0, 0.010), (1, 0.0, 0.015)] + [(i, 3.0, 0.050) for i in (2, 3, 4)]
    pool, subs = pool_with(entries)
    first = pool.select(1.0)
    assert first is not None and first.subchannel is subs[0]
    subs[0].in_flight += 1  # our call on A's answer: A at RIF 1 now, still cold
    assert first.expected_latency(first.load()) == pytest.approx(0.020)
    assert pool.select(1.0).subchannel is subs[1]  # type: ignore[union-attr]  # 15 < 20 ms
    subs[0].in_flight -= 1  # it ended: A is as fast as its answer said
    assert pool.select(1.0).subchannel is subs[0]  # type: ignore[union-attr]


def test_entries_above_the_quantile_lose_to_any_at_or_below_it() -> None:
    pool, subs = pool_with([(i, float(i), 0.010 - i * 0.0005) for i in range(10)])
    pool.rif_quantile = 0.5
    assert pool.threshold(sorted(float(i) for i in range(10))) == 4.5
    assert pool.select(1.0).subchannel is subs[4]  # type: ignore[union-attr]  # fastest cold


def test_of_a_handful_of_backends_the_most_loaded_is_hot() -> None:
    pool, subs = pool_with([(0, 3.0, 0.001), (1, 1.0, 0.005), (2, 1.0, 0.009)])
    assert pool.select(1.0).subchannel is subs[1]  # type: ignore[union-attr]


def test_a_newer_answer_replaces_the_older_one_of_the_same_backend() -> None:
    subs = fake_subchannels(2)
    pool = ProbePool(size=16, max_age_s=10.0, max_uses=10, rif_quantile=0.84)
    pool.add(subs[0], 1.0, 0.010, 1.0)
    pool.add(subs[1], 1.0, 0.020, 2.0)
    pool.add(subs[0], 9.0, 0.090, 3.0)
    assert [(e.subchannel, e.rif) for e in pool.entries] == [(subs[1], 1.0), (subs[0], 9.0)]


def test_an_entry_is_used_at_most_max_reuse_times() -> None:
    pool, subs = pool_with([(0, 0.0, 0.001), (1, 0.0, 0.009)], uses=2)
    assert [pool.select(1.0).subchannel for _ in range(2)] == [subs[0], subs[0]]  # type: ignore[union-attr]
    assert [e.subchannel for e in pool.entries] == [subs[1]]
    assert pool.select(1.0).subchannel is subs[1]  # type: ignore[union-attr]


def test_old_answers_age_out_and_a_full_pool_drops_its_oldest() -> None:
    subs = fake_subchannels(4)
    pool = ProbePool(size=3, max_age_s=1.0, max_uses=10, rif_quantile=0.84)
    for t, sc in enumerate(subs):
        pool.add(sc, 1.0, 0.01, float(t))
    assert [e.subchannel for e in pool.entries] == subs[1:]  # subs[0] made room
    pool.expire(3.5)  # subs[1] (t=1) and subs[2] (t=2) are more than 1 s old
    assert [e.subchannel for e in pool.entries] == [subs[3]]
    assert pool.select(10.0) is None  # everything aged out


def test_remove_worst_takes_the_hottest_else_the_slowest() -> None:
    pool, subs = pool_with([(0, 1.0, 0.010), (1, 2.0, 0.090), (2, 3.0, 0.020)])
    pool.rif_quantile = 0.5  # the median, 2: RIF 3 is hot
    assert pool.remove_worst(1.0).subchannel is subs[2]  # type: ignore[union-attr]  # hot
    assert pool.remove_worst(1.0).subchannel is subs[1]  # type: ignore[union-attr]  # slowest


def test_unusable_and_excluded_backends_are_skipped() -> None:
    pool, subs = pool_with([(0, 0.0, 0.001), (1, 0.0, 0.002), (2, 0.0, 0.003)])
    subs[0]._usable = False
    assert pool.select(1.0, frozenset({subs[1]})).subchannel is subs[2]  # type: ignore[union-attr]


# -- the policy: probing, with fake subchannels and a fake clock ----------------------------
class ProbedSubchannel(Subchannel):
    """A subchannel whose probes are answered by ``reply`` (a response or an error)."""

    def __init__(self, i: int, control: Any) -> None:
        super().__init__(Endpoint(f"10.0.0.{i + 1}:443"), cast(Any, None), control)
        self.reply: ProbeResponse | StreamError = ProbeResponse(requests_in_flight=0)
        self.probed = 0

    def watch_connectivity(self) -> None:
        self._set_connectivity(C.READY)

    async def unary_call(self, method: str, request: Any, **kwargs: Any) -> Any:
        assert method == METHOD
        self.probed += 1
        if isinstance(self.reply, StreamError):
            raise self.reply
        return self.reply


class Control:
    target = "static:///fake"

    def __init__(self) -> None:
        self.picker: Picker | None = None

    def create_subchannel(self, endpoint: Endpoint) -> Subchannel:
        return ProbedSubchannel(int(endpoint.address.split(".")[3].split(":")[0]) - 1, self)

    def remove_subchannel(self, subchannel: Subchannel) -> None:
        pass

    def update_picker(self, state: Any, picker: Picker) -> None:
        self.picker = picker

    def request_reresolution(self) -> None:
        pass

    def on_subchannel_state(self, subchannel: Subchannel) -> None:
        self.policy.on_subchannel_state(subchannel)

    policy: PrequalPolicy


def make_policy(n: int, config: dict[str, Any]) -> tuple[PrequalPolicy, Control, list[Any], Clock]:
    control, clock = Control(), Clock()
    policy = PrequalPolicy(control, config, rng=random.Random(7), clock=clock)
    control.policy = policy
    policy.update_endpoints([Endpoint(f"10.0.0.{i + 1}:443") for i in range(n)])
    return policy, control, policy.subchannels, clock


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_each_pick_sends_probes_to_distinct_backends_later() -> None:
    policy, control, subs, _ = make_policy(6, {"probesPerCall": 3, "idleProbeInterval": "100s"})
    assert isinstance(control.picker, PrequalPicker)
    control.picker.pick(INFO)
    assert sum(sc.probed for sc in subs) == 0  # nothing on the pick path itself
    await settle()
    assert sorted(sc.probed for sc in subs) == [0, 0, 0, 1, 1, 1]  # without replacement
    assert len(policy.pool) == 3
    policy.close()


async def test_fractional_probe_rates_accumulate() -> None:
    policy, control, subs, _ = make_policy(4, {"probesPerCall": 0.25, "idleProbeInterval": "100s"})
    assert control.picker is not None
    for _ in range(8):
        control.picker.pick(INFO)
        await settle()
    assert sum(sc.probed for sc in subs) == 2
    policy.close()


async def test_picks_follow_the_answers() -> None:
    config = {"probesPerCall": 3, "idleProbeInterval": "100s", "rifQuantile": 0.5}
    policy, control, subs, _ = make_policy(3, config)
    subs[0].reply = ProbeResponse(requests_in_flight=2, latency_seconds=0.050)
    subs[1].reply = ProbeResponse(requests_in_flight=1, latency_seconds=0.002)
    subs[2].reply = ProbeResponse(requests_in_flight=30, latency_seconds=0.001)  # hot: > 2
    assert control.picker is not None
    control.picker.pick(INFO)  # empty pool: the fallback; probes go out
    await settle()
    assert control.picker.pick(INFO) is subs[1]
    policy.close()


async def test_backends_without_probes_get_one_warning_and_our_own_view(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy, control, subs, clock = make_policy(
        3, {"probesPerCall": 3, "idleProbeInterval": "100s", "maxReuse": 1}
    )
    for sc in subs:
        sc.reply = StreamError(grpc.StatusCode.UNIMPLEMENTED, "no such method")
    subs[0].latency.observe(0.200, clock.now)
    subs[0].latency.observe(0.200, clock.now)
    for sc in subs[1:]:
        sc.latency.observe(0.002, clock.now)
        sc.latency.observe(0.002, clock.now)
    assert control.picker is not None
    with caplog.at_level(logging.WARNING, logger="grpc_balancer.policies.prequal"):
        for _ in range(4):
            control.picker.pick(INFO)
            await settle()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "does not answer load probes" in warnings[0].getMessage()
    assert set(policy.unprobed) == set(subs)
    probed = [sc.probed for sc in subs]
    picks: Counter[Subchannel | None] = Counter()
    for _ in range(20):
        picks[control.picker.pick(INFO)] += 1
        await settle()
    assert [sc.probed for sc in subs] == probed  # not probed again: our own view stands in
    assert picks[subs[0]] < 5, picks  # the slow one, by our latency estimate
    policy.close()


async def test_idle_channels_probe_on_their_own() -> None:
    policy, _, subs, _ = make_policy(3, {"idleProbeInterval": "0.01s"})
    await asyncio.sleep(0.05)
    assert sum(sc.probed for sc in subs) >= 1
    policy.close()


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"probePoolSize": 0}, "probePoolSize"),
        ({"probePoolSize": 5000}, "probePoolSize"),
        ({"probesPerCall": -1}, "probesPerCall"),
        ({"probesPerCall": "1"}, "probesPerCall"),
        ({"rifQuantile": 1.5}, "rifQuantile"),
        ({"maxProbeAge": "0s"}, "maxProbeAge"),
        ({"probeTimeout": 3}, "probeTimeout"),
        ({"idleProbeInterval": "-1s"}, "idleProbeInterval"),
        ({"maxReuse": 0}, "maxReuse"),
        ({"removeWorstPerCall": -0.5}, "removeWorstPerCall"),
        ({"maxProbesInFlight": 0}, "maxProbesInFlight"),
        ({"poolSize": 16}, "poolSize"),
    ],
)
def test_config_errors_name_the_field(config: dict[str, object], field: str) -> None:
    with pytest.raises(ServiceConfigError, match=field):
        aio.insecure_channel(
            "static:///127.0.0.1:1", service_config={"loadBalancingConfig": [{"prequal": config}]}
        )


# -- real servers ---------------------------------------------------------------------------
async def test_slow_backend_gets_few_calls(channel_kind: str) -> None:
    faults = [Faults(delay_ms=60), Faults(delay_ms=2), Faults(delay_ms=2)]
    async with (
        GreeterFleet(3, faults, probes=True) as fleet,
        open_channel(channel_kind, fleet.target(), policy="prequal") as ch,
    ):
        assert await ch.wait_for_settled(10)
        by_port = counts(await say_hello_ports(ch, 150))
        answered = sum(s.probes.probes_answered for s in fleet.servers if s.probes)
    assert by_port[fleet.ports[0]] < 15, by_port  # round robin: 50
    assert answered > 50  # about one probe per call


async def test_concurrent_load_moves_to_the_backend_with_room() -> None:
    faults = [Faults(delay_ms=20, max_concurrency=1), Faults(delay_ms=20, max_concurrency=8)]
    async with (
        GreeterFleet(2, faults, probes=True) as fleet,
        aio.insecure_channel(fleet.target(), policy="prequal") as ch,
    ):
        assert await ch.wait_for_settled(10)
        by_port, errors = await burst(ch, 120, gap_s=0.004)
    assert not errors
    assert by_port[fleet.ports[0]] < by_port[fleet.ports[1]] / 2, by_port
