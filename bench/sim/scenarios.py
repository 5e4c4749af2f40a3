"""The simulator's scenarios (issue 16) and what each reports.

* ``ramp``: Prequal's load ramp. 10 heterogeneous servers (4 slots each, median
  service 4-20 ms), 8 clients, antagonists that slow random servers 1.5-2.5x for a few
  seconds; load stepped from 0.5x to 1.6x of the fleet's *provisioned* capacity (50 %
  of its peak throughput at nominal speed, the headroom a multi-tenant fleet keeps,
  as in the paper: its 1.0x is the CPU allocation, not the machines' limit; with the
  antagonists, 1.6x is about 91 % of what the fleet can serve).
* ``stuck``: Linkerd's benchmark. 11 backends (~5 ms), 1000 calls/s, one backend
  stuck at 2 s for 30 s, 1 s timeout: success rate per policy.
* ``one_slow`` and ``one_slow_stalls``: one of five backends 10x slow (5 vs 50 ms),
  300/s, 10 rounds (seeds) each, without and with the client's own loop stalling
  (5 stalls/s, median 30 ms); the oracle is round_robin over the four fast ones.
* ``capacity``: backends with 1, 2 and 4 slots (10 ms each) at 75 % of their total
  capacity: weighted_round_robin (ORCA trailers) against the others.
* ``fleet``: 100 clients x 100 servers (2 slots, 20 ms; 10 of them 3x slow), 70 %.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from bench.sim.fleet import Server
from bench.sim.loop import VirtualLoop
from bench.sim.run import Scenario, ServerSpec, Stalls, Step

#: weighted_round_robin learns sooner than A58's 10 s blackout allows (short runs):
#: in its favour, if anything
SIM_WRR: dict[str, Any] = {"blackoutPeriod": "2s"}

#: label -> (policy name, config): every policy with its defaults but that
POLICIES: dict[str, tuple[str, dict[str, Any]]] = {
    "round_robin": ("round_robin", {}),
    "least_request": ("least_request", {}),
    "peak_ewma": ("peak_ewma", {}),
    "prequal": ("prequal", {}),
    "prequal probesPerCall=2": ("prequal", {"probesPerCall": 2}),
    "weighted_round_robin": ("weighted_round_robin", SIM_WRR),
}

LOGNORMAL_MEAN = math.exp(0.5**2 / 2)  # mean / median of the service times (sigma 0.5)


def _capacity(specs: list[ServerSpec]) -> float:
    """Calls/s the servers complete at full load and nominal speed."""
    return sum(s.slots / (s.median_s * LOGNORMAL_MEAN) for s in specs)


# -- ramp ---------------------------------------------------------------------------------
RAMP_LEVELS = (0.5, 0.7, 0.9, 1.0, 1.1, 1.2, 1.3, 1.45, 1.6)
PROVISIONED = 0.5


def _antagonists(loop: VirtualLoop, servers: list[Server], rng: random.Random) -> None:
    """Each server is hit now and then (every ~6 s on average) by an antagonist that
    slows it 1.5-2.5x for ~2 s (exponential): about 12 % of the fleet's throughput
    is gone on average, at random places and times."""

    def hit(server: Server) -> None:
        server.slowdown = rng.uniform(1.5, 2.5)
        loop.call_later(rng.expovariate(1 / 2.0), release, server)

    def release(server: Server) -> None:
        server.slowdown = 1.0
        loop.call_later(rng.expovariate(1 / 6.0), hit, server)

    for server in servers:
        loop.call_later(rng.expovariate(1 / 6.0), hit, server)


def ramp(step_s: float = 2.0) -> Scenario:
    medians = (0.004, 0.005, 0.006, 0.008, 0.010, 0.010, 0.012, 0.014, 0.016, 0.020)
    specs = [ServerSpec(4, m, orca=True) for m in medians]
    capacity = _capacity(specs) * PROVISIONED
    warm = 4.0  # weighted_round_robin's blackout (RAMP_WRR: 2 s) and first updates
    steps = [Step("warm-up", 0.0, warm, 0.5 * capacity, measured=False)]
    for i, level in enumerate(RAMP_LEVELS):
        start = warm + i * step_s
        steps.append(Step(f"{level:g}x", start, start + step_s, level * capacity))
    return Scenario(
        "ramp",
        f"Load ramp 0.5x-1.6x of provisioned capacity ({capacity:.0f}/s), 10 heterogeneous "
        "servers with antagonists, 8 clients",
        specs,
        steps,
        clients=8,
        timeout_s=1.0,
        background=_antagonists,
        extra={"capacity_per_s": round(capacity, 1), "levels": list(RAMP_LEVELS)},
    )


# -- Linkerd's stuck backend --------------------------------------------------------------
def service_change(index: int, median_s: float, sigma: float) -> Callable[[list[Server]], None]:
    def act(servers: list[Server]) -> None:
        servers[index].set_service(median_s, sigma)

    return act


def stuck() -> Scenario:
    specs = [ServerSpec(0, 0.005) for _ in range(11)]
    return Scenario(
        "stuck",
        "11 backends, 1000/s, one stuck at 2 s for 30 s, 1 s timeout",
        specs,
        [Step("before", 0, 5, 1000.0), Step("stuck", 5, 35, 1000.0), Step("after", 35, 40, 1000.0)],
        clients=1,
        timeout_s=1.0,
        events=[(5.0, service_change(0, 2.0, 0.0)), (35.0, service_change(0, 0.005, 0.5))],
    )


# -- one slow of five, with and without client stalls ---------------------------------------
def one_slow(stalls: bool, duration_s: float = 10.0) -> Scenario:
    specs = [ServerSpec(0, 0.050)] + [ServerSpec(0, 0.005) for _ in range(4)]
    return Scenario(
        "one_slow_stalls" if stalls else "one_slow",
        "5 backends, one 10x slow, 300/s"
        + (", the client's loop stalling (5/s, median 30 ms)" if stalls else ""),
        specs,
        [Step("warm-up", 0, 2, 300.0, measured=False), Step("all", 2, duration_s, 300.0)],
        clients=1,
        timeout_s=1.0,
        stalls=Stalls(5.0, 0.030) if stalls else None,
    )


# -- capacity-weighted (ORCA) ---------------------------------------------------------------
def capacity() -> Scenario:
    specs = [ServerSpec(slots, 0.010, orca=True) for slots in (1, 2, 4)]
    rate = 0.75 * _capacity(specs)
    return Scenario(
        "capacity",
        f"Backends with 1, 2 and 4 slots (10 ms), {rate:.0f}/s (75 % of capacity), ORCA",
        specs,
        [Step("warm-up", 0, 4, rate, measured=False), Step("weighted", 4, 20, rate)],
        clients=2,
        timeout_s=1.0,
    )


# -- 100 clients x 100 servers -----------------------------------------------------------------
def fleet(duration_s: float = 6.0) -> Scenario:
    specs = [ServerSpec(2, 0.060 if i % 10 == 0 else 0.020, orca=True) for i in range(100)]
    rate = 0.7 * _capacity(specs)
    return Scenario(
        "fleet",
        f"100 clients x 100 servers (2 slots, 20 ms; every tenth 3x slow), {rate:.0f}/s (70 %)",
        specs,
        [
            Step("warm-up", 0, 2, rate, measured=False),
            Step("all", 2, duration_s, rate),
        ],
        clients=100,
        timeout_s=1.0,
    )


# -- the scenario the loopback bench runs too ---------------------------------------------
#: weighted_round_robin's config in the loopback comparison (short runs: a 1 s blackout)
LOOPBACK_WRR: dict[str, Any] = {"blackoutPeriod": "1s", "weightUpdatePeriod": "0.5s"}


def loopback(duration_s: float = 8.0) -> Scenario:
    """bench/bench_prequal.py's ``mixed`` scenario, as the loopback servers run it:
    ``--max-concurrency 2`` and median 5, 5, 10, 10, 20 ms lognormal, 45 % load (the
    five real servers share one Python process, and each probe costs it about what a
    call does)."""
    specs = [ServerSpec(2, m, orca=True) for m in (0.005, 0.005, 0.010, 0.010, 0.020)]
    rate = round(0.45 * _capacity(specs))
    return Scenario(
        "loopback",
        f"5 servers (2 slots; 5, 5, 10, 10, 20 ms), {rate}/s (45 % of capacity)",
        specs,
        [Step("warm-up", 0, 2, rate, measured=False), Step("all", 2, duration_s, rate)],
        clients=1,
        timeout_s=1.0,
    )
