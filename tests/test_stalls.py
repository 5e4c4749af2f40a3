"""The client's own loop stalls are not backend latency (issue 16, item 5): the stall
meter's heartbeat, the discounted samples, and peak_ewma on a stalling client."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from bench.sim import scenarios
from bench.sim.loop import VirtualLoop
from bench.sim.run import Stalls, simulate
from grpc_balancer._core.load import LatencyEstimate
from grpc_balancer._core.stalls import StallMeter
from grpc_balancer.picker import PickInfo
from grpc_balancer.policies.peak_ewma import PeakEwmaPicker
from tests.policy_helpers import fake_subchannels


def run(loop: VirtualLoop, seconds: float) -> None:
    loop.run_until_complete(asyncio.sleep(seconds))


def block(loop: VirtualLoop, seconds: float) -> None:
    """A callback that keeps the loop busy for ``seconds`` (virtual)."""
    loop.advance(seconds)


@pytest.fixture
def loop() -> VirtualLoop:
    loop = VirtualLoop()
    yield loop  # type: ignore[misc]
    loop.close()


def test_a_late_heartbeat_is_recorded_as_a_stall(loop: VirtualLoop) -> None:
    meter = StallMeter(loop, loop.time)
    meter.touch(loop.time())
    run(loop, 0.1)
    assert meter.stalls == ()  # on time: no stall
    start = loop.time()
    loop.call_soon(block, loop, 0.2)
    run(loop, 0.05)
    assert len(meter.stalls) == 1
    a, b = meter.stalls[0]
    assert start <= a <= start + meter.tick_s
    assert b == pytest.approx(start + 0.2, abs=meter.tick_s)
    assert meter.stalled_between(start - 1, start + 1) == pytest.approx(0.2, abs=meter.tick_s)
    assert meter.stalled_between(start - 1, start - 0.5) == 0.0


def test_a_stall_is_known_before_the_heartbeat_catches_up(loop: VirtualLoop) -> None:
    meter = StallMeter(loop, loop.time)
    meter.touch(loop.time())
    run(loop, 0.02)
    start = loop.time()
    loop.advance(0.1)  # stalled now; replies are processed before the overdue timer
    assert meter.stalled_between(start, loop.time()) == pytest.approx(0.1, abs=meter.tick_s)


def test_the_heartbeat_stops_when_the_channel_is_idle(loop: VirtualLoop) -> None:
    meter = StallMeter(loop, loop.time, idle_s=0.5)
    meter.touch(loop.time())
    run(loop, 2.0)
    quiet = loop.time()
    run(loop, 5.0)  # long idle: no heartbeat, and no stall recorded for it
    assert meter.stalled_between(quiet, loop.time()) == 0.0
    meter.touch(loop.time())
    assert meter.stalled_between(quiet, loop.time()) == 0.0


def test_samples_do_not_count_the_clients_stall(loop: VirtualLoop) -> None:
    meter = StallMeter(loop, loop.time)
    est = LatencyEstimate()
    est.stalls = meter
    meter.touch(loop.time())
    run(loop, 0.05)
    for _ in range(3):
        est.observe(0.005, loop.time())
        run(loop, 0.01)
    started = loop.time()
    loop.call_soon(block, loop, 0.1)  # the reply (5 ms) waits out a 100 ms stall
    run(loop, 0.001)
    est.on_call(loop.time() - started, grpc.StatusCode.OK, loop.time())
    # not ~100 ms: a busy client is not a slow backend (known to within one heartbeat)
    assert est.value_s < 0.005 + meter.tick_s + 0.001


def test_the_silence_of_a_stalled_client_is_not_a_stalled_backend(loop: VirtualLoop) -> None:
    meter = StallMeter(loop, loop.time)
    subs = fake_subchannels(2)
    estimates = [LatencyEstimate(), LatencyEstimate()]
    for est in estimates:
        est.stalls = meter
        for _ in range(3):
            est.observe(0.005, loop.time())
    estimates[1].value_s = 0.010  # a bit slower, but no calls in flight
    picker = PeakEwmaPicker(subs, estimates, 2, clock=loop.time, stalls=meter)
    picker.pick(PickInfo("/m"))
    run(loop, 0.02)
    subs[0].in_flight = 1
    estimates[0].busy_since = loop.time()
    loop.advance(0.2)  # our loop stalls with a call in flight to backend 0
    assert picker.cost(0, loop.time()) < 0.02  # not 200 ms of "silence" x 2


def test_peak_ewma_on_a_stalling_client_leaves_the_slow_backend_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sim's one slow backend of five with the client's loop stalling: counting the
    stalls as latency sent the slow backend several times the calls it gets now."""
    scenario = scenarios.one_slow(True, duration_s=8.0)
    scenario.stalls = Stalls(5.0, 0.03)

    def slow_share() -> float:
        return sum(simulate(scenario, "peak_ewma", {}, seed).share({0}, 2, 8) for seed in (16, 20))

    fixed = slow_share()
    monkeypatch.setattr(StallMeter, "stalled_between", lambda self, start, end: 0.0)
    unfixed = slow_share()
    assert fixed < unfixed / 2, (fixed, unfixed)
