"""The fleet simulator (bench/sim): virtual time, determinism for a seed, and the real
policies reacting to simulated servers as they do to real ones."""

from __future__ import annotations

import asyncio

import pytest

from bench.sim import scenarios
from bench.sim.loop import SimulationStalled, VirtualLoop
from bench.sim.run import Scenario, ServerSpec, Stalls, Step, simulate


def small(stalls: bool = False, orca: bool = False) -> Scenario:
    specs = [ServerSpec(0, 0.050, orca=orca)] + [ServerSpec(2, 0.005, orca=orca) for _ in range(3)]
    return Scenario(
        "small",
        "small",
        specs,
        [Step("warm-up", 0, 1, 200.0, measured=False), Step("all", 1, 4, 200.0)],
        clients=2,
        timeout_s=0.5,
        stalls=Stalls(5.0, 0.02) if stalls else None,
    )


def test_virtual_time_jumps_instead_of_sleeping() -> None:
    loop = VirtualLoop()
    seen: list[float] = []

    async def main() -> None:
        start = loop.time()
        await asyncio.sleep(3600)
        seen.append(loop.time() - start)

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert seen == [3600.0]


def test_waiting_for_nothing_is_an_error_not_a_hang() -> None:
    loop = VirtualLoop()
    try:
        with pytest.raises(SimulationStalled):
            loop.run_until_complete(loop.create_future())
    finally:
        loop.close()


@pytest.mark.parametrize("policy", ["prequal", "weighted_round_robin", "peak_ewma"])
def test_the_same_seed_gives_the_same_run(policy: str) -> None:
    scenario = small(stalls=True, orca=True)
    first = simulate(scenario, policy, {}, seed=3)
    second = simulate(scenario, policy, {}, seed=3)
    other = simulate(scenario, policy, {}, seed=4)
    assert first.scheduled == second.scheduled
    assert first.latency == second.latency
    assert first.server == second.server
    assert first.probes_answered == second.probes_answered
    assert len(first.latency) > 500
    assert first.latency != other.latency


@pytest.mark.parametrize(
    ("policy", "bound"), [("prequal", 0.25), ("peak_ewma", 0.25), ("least_request", 0.75)]
)
def test_the_real_policies_avoid_the_slow_server(policy: str, bound: float) -> None:
    scenario = small()
    rr = simulate(scenario, "round_robin", {}, seed=1).share({0}, 1, 4)
    share = simulate(scenario, policy, {}, seed=1).share({0}, 1, 4)
    assert rr == pytest.approx(0.25, abs=0.03)
    assert share < rr * bound


def test_prequal_probes_the_simulated_servers_and_others_do_not() -> None:
    scenario = small()
    assert simulate(scenario, "prequal", {}, seed=1).probes_answered > 300
    assert simulate(scenario, "round_robin", {}, seed=1).probes_answered == 0


def test_a_stuck_backend_fails_calls_at_the_timeout() -> None:
    scenario = scenarios.stuck()
    scenario.steps = [Step("s", 0, 8, 300.0)]
    scenario.events = [(1.0, scenarios.service_change(0, 2.0, 0.0))]
    result = simulate(scenario, "round_robin", {}, seed=1)
    window = result.window(2, 7, scenario.timeout_s)
    assert window["error_rate"] == pytest.approx(1 / 11, abs=0.02)  # every call there
    assert window["p999_ms"] == 1000.0  # failures count at the timeout
