"""One simulated run: a scenario (servers, clients, load over time, faults, client
stalls) under one policy and one seed, and its per-step latency and error figures."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.sim.fleet import Call, Client, Server
from bench.sim.loop import VirtualLoop


@dataclass(frozen=True)
class ServerSpec:
    slots: int  # 0: unlimited
    median_s: float
    sigma: float = 0.5
    probes: bool = True
    orca: bool = False


@dataclass(frozen=True)
class Step:
    """From ``start_s`` to ``end_s`` the fleet is offered ``rate`` calls/s in total;
    ``measured`` steps are reported (warm-up is not)."""

    label: str
    start_s: float
    end_s: float
    rate: float
    measured: bool = True


@dataclass(frozen=True)
class Stalls:
    """Each client's loop stalls as a Poisson process (``per_s``), each stall lasting
    a lognormal time of median ``median_s`` (sigma 0.5)."""

    per_s: float
    median_s: float


@dataclass
class Scenario:
    name: str
    title: str
    servers: Sequence[ServerSpec]
    steps: Sequence[Step]
    clients: int = 1
    timeout_s: float = 1.0
    #: (offset s, action(servers)) run at that offset: faults, antagonists
    events: Sequence[tuple[float, Callable[[list[Server]], None]]] = ()
    #: a callable(loop, servers, rng) that schedules its own changes (antagonists)
    background: Callable[[VirtualLoop, list[Server], random.Random], None] | None = None
    stalls: Stalls | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return max(s.end_s for s in self.steps)


@dataclass
class RunResult:
    scheduled: list[float] = field(default_factory=list)
    latency: list[float | None] = field(default_factory=list)
    server: list[int] = field(default_factory=list)
    probes_answered: int = 0
    calls_to: list[int] = field(default_factory=list)

    def window(self, start: float, end: float, timeout_s: float) -> dict[str, float]:
        lats = sorted(
            timeout_s if lat is None else lat
            for t, lat in zip(self.scheduled, self.latency, strict=True)
            if start <= t < end
        )
        failed = sum(
            1
            for t, lat in zip(self.scheduled, self.latency, strict=True)
            if start <= t < end and lat is None
        )
        n = len(lats)
        return {
            "calls": n,
            "error_rate": round(failed / n, 6) if n else math.nan,
            "p50_ms": round(percentile(lats, 50) * 1000, 3),
            "p99_ms": round(percentile(lats, 99) * 1000, 3),
            "p999_ms": round(percentile(lats, 99.9) * 1000, 3),
        }

    def share(self, servers: set[int], start: float, end: float) -> float:
        window = [s for t, s in zip(self.scheduled, self.server, strict=True) if start <= t < end]
        return sum(s in servers for s in window) / max(len(window), 1)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return math.nan
    index = min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def simulate(
    scenario: Scenario,
    policy: str,
    config: dict[str, Any] | Callable[[int], dict[str, Any]],
    seed: int,
    servers_used: Sequence[int] | None = None,
) -> RunResult:
    """Run ``scenario`` once. ``servers_used``: the clients see only these servers (an
    oracle that knows which backends are bad); the others still exist."""
    loop = VirtualLoop()
    asyncio.set_event_loop(loop)
    master = random.Random(seed)
    servers = [
        Server(
            loop,
            i,
            slots=spec.slots,
            median_s=spec.median_s,
            sigma=spec.sigma,
            rng=random.Random(master.random()),
            probes=spec.probes,
            orca=spec.orca,
        )
        for i, spec in enumerate(scenario.servers)
    ]
    visible = [servers[i] for i in servers_used] if servers_used is not None else servers
    result = RunResult()
    t0 = loop.time()

    def record(call: Call, server: Server | None) -> None:
        result.scheduled.append(call.scheduled - t0)
        result.latency.append(call.latency)
        result.server.append(-1 if server is None else server.index)

    clients = [
        Client(
            loop,
            i,
            policy,
            config(i) if callable(config) else config,  # per client: e.g. its index
            visible,
            random.Random(master.random()),
            timeout_s=scenario.timeout_s,
            record=record,
        )
        for i in range(scenario.clients)
    ]
    arrivals = [random.Random(master.random()) for _ in clients]
    stall_rngs = [random.Random(master.random()) for _ in clients]
    steps = sorted(scenario.steps, key=lambda s: s.start_s)
    end = t0 + scenario.duration_s
    per_client = 1.0 / scenario.clients

    def rate_at(t: float) -> float:
        offset = t - t0
        for step in steps:
            if step.start_s <= offset < step.end_s:
                return step.rate * per_client
        return 0.0

    def next_arrival(client: Client, rng: random.Random, t: float) -> None:
        while t < end:
            rate = rate_at(t)
            if rate > 0:
                t += rng.expovariate(rate)
                if t < end:
                    client.at(t, arrive, client, rng, t)
                return
            later = [t0 + s.start_s for s in steps if t0 + s.start_s > t]
            if not later:
                return
            t = min(later)

    def arrive(client: Client, rng: random.Random, t: float) -> None:
        client.arrive(t)
        next_arrival(client, rng, t)

    def stall_process(client: Client, rng: random.Random, t: float) -> None:
        stalls = scenario.stalls
        assert stalls is not None
        client.stall(rng.lognormvariate(math.log(stalls.median_s), 0.5))
        t += rng.expovariate(stalls.per_s)
        if t < end:
            loop.call_at(t, stall_process, client, rng, t)

    async def main() -> None:
        for client in clients:
            client.start()
        for client, rng in zip(clients, arrivals, strict=True):
            next_arrival(client, rng, t0)
        if scenario.stalls is not None:
            for client, rng in zip(clients, stall_rngs, strict=True):
                first = t0 + rng.expovariate(scenario.stalls.per_s)
                loop.call_at(first, stall_process, client, rng, first)
        for offset, action in scenario.events:
            loop.call_at(t0 + offset, action, servers)
        if scenario.background is not None:
            scenario.background(loop, servers, random.Random(master.random()))
        await asyncio.sleep(scenario.duration_s + scenario.timeout_s + 0.5)
        for client in clients:
            client.run(client.policy.close)
        for _ in range(3):  # let cancelled probe tasks finish
            await asyncio.sleep(0)

    try:
        loop.run_until_complete(main())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    result.probes_answered = sum(s.probes.probes_answered for s in servers if s.probes)
    result.calls_to = [s.completed for s in servers]
    return result
