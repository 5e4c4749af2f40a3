"""prequal (Wydrowski et al., "Load is not what you should balance", NSDI '24): pick
by requests in flight (RIF) and latency learned from asynchronous probes.

Each channel keeps a small **probe pool** (``probePoolSize``, 16; one entry per backend,
its newest answer) of answers from ``grpc_balancer.probe.v1.LoadProbe/Probe``
(:mod:`grpc_balancer.server.probes`): the server's RIF (every client's calls) and the
latency of its recent calls at about that RIF. Probes never delay a call: each pick asks
for ``probesPerCall`` probes (a fraction accumulates), sent from the event loop
afterwards to targets sampled without replacement, and an idle channel probes one
backend every ``idleProbeInterval``.

The **hot-cold lexicographic rule** picks from the pool: an entry is *hot* when its
RIF is above the ``rifQuantile`` (0.84) quantile of the pool's RIFs, and the cold entry
with the lowest expected latency wins. An entry's RIF follows this client's own calls to
that backend since the probe: those sent after it count in (the probe could not see
them, so one answer is not stampeded), those it counted that have ended count out; and
its expected latency grows with them by Little's law (latency x (RIF + 1) / (probed RIF
+ 1), the server's own rule for a RIF it has no sample of), so a server probed idle no
longer looks idle to the tenth call a busy client sends on that answer. The quantile
(interpolated) is over these current RIFs, so a burst of picks that loads every backend
moves the threshold too instead of spilling onto a slow backend that merely has nothing
in flight; there is always a cold entry, so the paper's "every entry hot: the lowest
RIF" fallback never applies.

Maintenance keeps the pool fresh and useful: an entry is used at most ``maxReuse``
times, dropped at ``maxProbeAge``, the **oldest** entry makes room when a probe of a new
backend arrives at a full pool, and the **worst** (the hottest, else the slowest) is
removed ``removeWorstPerCall`` times per call. The default reuse budget keeps the pool
up with the calls: hot answers are not taken, so each cold one serves ``1 /
(probesPerCall x (1 - rifQuantile))`` picks (7 by default). With an empty pool
(start-up, probes failing) the pick is a power of two choices on this client's in-flight
calls.

A backend that does not serve the probe (UNIMPLEMENTED) is logged once and then
balanced by this client's own view: its in-flight calls and its latency estimate
stand in for probe answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from grpc_balancer._probe import METHOD, ProbeRequest, ProbeResponse
from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.picker import PickInfo, first_not_excluded
from grpc_balancer.policies import _config
from grpc_balancer.policies.base import BasePolicy, ChannelControl, register_builtin_policy
from grpc_balancer.subchannel import StreamError, Subchannel

log = logging.getLogger("grpc_balancer.policies.prequal")

NAME = "prequal"
#: A backend that answered UNIMPLEMENTED is probed again after this long (it may
#: have been upgraded meanwhile).
UNPROBED_RETRY_S = 60.0
_REQUEST = ProbeRequest()
_serialize = ProbeRequest.SerializeToString
_deserialize = ProbeResponse.FromString


class ProbeEntry:
    """One probe answer in the pool. Its load is the server's RIF at the probe plus
    this client's calls to that backend since: those sent after it (the probe could
    not count them; a fresh answer is not stampeded) less those it counted that have
    ended (a backend is not hot for calls of ours that are over)."""

    __slots__ = ("base_in_flight", "latency_s", "received", "rif", "subchannel", "uses")

    def __init__(self, subchannel: Subchannel, rif: float, latency_s: float, now: float) -> None:
        self.subchannel = subchannel
        self.rif = rif
        self.latency_s = latency_s
        self.received = now
        self.uses = 0
        self.base_in_flight = subchannel.in_flight

    def load(self) -> float:
        """The RIF the rule compares: the answer's, plus our own calls sent since, less
        ours it counted that have ended since."""
        load = self.rif + self.subchannel.in_flight - self.base_in_flight
        return load if load > 0.0 else 0.0

    def expected_latency(self, load: float) -> float:
        """The answer's latency at ``load``: scaled up by Little's law for the calls this
        client added since the probe (never down: fewer calls than the server counted
        do not make it faster than it said)."""
        if load > self.rif:
            return self.latency_s * (load + 1.0) / (self.rif + 1.0)
        return self.latency_s

    def __repr__(self) -> str:
        return (
            f"<ProbeEntry {self.subchannel.address} rif={self.load():g} "
            f"latency={self.latency_s * 1000:.2f}ms uses={self.uses}>"
        )


class ProbePool:
    """The pool and the hot-cold rule: no I/O, no clock of its own (``now`` is passed),
    so every rule is testable with plain numbers. Not thread-safe: the policy holds
    its lock around every call.

    *Hot* is relative to the pool itself: the threshold is the ``rif_quantile`` of the
    live entries' current RIFs (this client's calls since each probe included), so a
    burst of picks that raises every backend's RIF together moves the threshold with
    it instead of spilling onto a slow backend that merely has nothing in flight.
    """

    def __init__(self, size: int, max_age_s: float, max_uses: int, rif_quantile: float) -> None:
        self.size = size
        self.max_age_s = max_age_s
        self.max_uses = max_uses
        self.rif_quantile = rif_quantile
        self.entries: list[ProbeEntry] = []

    def add(self, subchannel: Subchannel, rif: float, latency_s: float, now: float) -> None:
        """A probe answered: it replaces an older answer of the same backend (one entry
        per backend, so a few backends cannot crowd the quantile), else a full pool
        drops its oldest entry for it."""
        entries = self.entries
        for i, e in enumerate(entries):
            if e.subchannel is subchannel:
                del entries[i]
                break
        else:
            if len(entries) >= self.size:
                del entries[0]  # the oldest: entries are kept in arrival order
        entries.append(ProbeEntry(subchannel, rif, latency_s, now))

    def expire(self, now: float) -> None:
        limit = now - self.max_age_s
        if any(e.received < limit for e in self.entries):
            self.entries = [e for e in self.entries if e.received >= limit]

    def threshold(self, loads: list[float]) -> float:
        """The RIF above which an entry is hot: the ``rif_quantile`` of ``loads``
        (sorted), interpolated between neighbours, so that of a handful of backends the
        most loaded one is hot too."""
        position = self.rif_quantile * (len(loads) - 1)
        below = int(position)
        if below + 1 >= len(loads):
            return loads[-1]
        return loads[below] + (loads[below + 1] - loads[below]) * (position - below)

    def _live(
        self, now: float, exclude: frozenset[Subchannel]
    ) -> tuple[list[tuple[float, ProbeEntry]], float]:
        """(load, entry) of every live entry of a usable backend, and the hot threshold.
        (The hot loop of prequal's pick: ``ProbeEntry.load`` is inlined.)"""
        entries = self.entries
        if entries and entries[0].received < now - self.max_age_s:
            self.expire(now)  # entries are in arrival order: only then can any be old
            entries = self.entries
        live: list[tuple[float, ProbeEntry]] = []
        for e in entries:
            sc = e.subchannel
            if not sc.usable or (exclude and sc in exclude):
                continue
            load = e.rif + sc.in_flight - e.base_in_flight
            live.append((load if load > 0.0 else 0.0, e))
        if not live:
            return live, math.inf
        return live, self.threshold(sorted([load for load, _ in live]))

    def select(self, now: float, exclude: frozenset[Subchannel] = frozenset()) -> ProbeEntry | None:
        """The hot-cold rule: the cold entry with the lowest expected latency (then the
        lowest RIF). The paper's other case, "every entry hot: the lowest RIF", cannot arise
        with a threshold taken over the entries themselves (at least one is at or below
        any quantile of them). Counts one use into the winner; None when no live entry
        qualifies."""
        live, hot_above = self._live(now, exclude)
        chosen: ProbeEntry | None = None
        best_latency = best_load = math.inf
        for load, e in live:
            if load <= hot_above:
                latency = e.latency_s  # ProbeEntry.expected_latency, inlined
                if load > e.rif:
                    latency = latency * (load + 1.0) / (e.rif + 1.0)
                if latency < best_latency or (latency == best_latency and load < best_load):
                    chosen, best_latency, best_load = e, latency, load
        if chosen is None:
            return None
        chosen.uses += 1
        if chosen.uses >= self.max_uses:
            self.entries.remove(chosen)
        return chosen

    def remove_worst(self, now: float) -> ProbeEntry | None:
        """Drop the entry the rule would take last: the hottest, else the slowest."""
        live, hot_above = self._live(now, frozenset())
        if not live:
            return None

        def badness(item: tuple[float, ProbeEntry]) -> tuple[bool, float]:
            load, e = item
            return (load > hot_above, load if load > hot_above else e.expected_latency(load))

        worst = max(live, key=badness)[1]
        self.entries.remove(worst)
        return worst

    def forget(self, subchannel: Subchannel) -> None:
        self.entries = [e for e in self.entries if e.subchannel is not subchannel]

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"<ProbePool {self.entries!r}>"


class PrequalPicker:
    """Picks from the policy's shared pool (it outlives pickers); the one lock of this
    pick path guards that pool, since sync channels pick on their callers' threads."""

    __slots__ = ("_n", "_policy", "_rand", "_subchannels")

    def __init__(self, policy: PrequalPolicy, subchannels: Sequence[Subchannel]) -> None:
        self._policy = policy
        self._subchannels = tuple(subchannels)
        self._n = len(self._subchannels)
        self._rand = policy.rng.random

    def pick(self, info: PickInfo) -> Subchannel | None:
        policy = self._policy
        entry = policy.select(info.exclude)
        if entry is not None:
            return entry.subchannel
        # no usable probe answer: power of two choices on this client's own view
        subchannels, n = self._subchannels, self._n
        if n == 1:
            best = 0
        else:
            rand = self._rand
            a = int(rand() * n)
            b = int(rand() * (n - 1))
            if b >= a:
                b += 1
            best = a if subchannels[a].in_flight <= subchannels[b].in_flight else b
        sc = subchannels[best]
        if info.exclude and sc in info.exclude:
            return first_not_excluded(subchannels, best, info.exclude)
        return sc

    def __repr__(self) -> str:
        return f"<PrequalPicker {[sc.address for sc in self._subchannels]} {self._policy.pool!r}>"


class PrequalPolicy(BasePolicy):
    NAME = NAME
    CONFIG_FIELDS = {
        "probePoolSize",
        "probesPerCall",
        "idleProbeInterval",
        "probeTimeout",
        "maxProbeAge",
        "maxReuse",
        "removeWorstPerCall",
        "rifQuantile",
        "maxProbesInFlight",
    }

    def __init__(
        self,
        control: ChannelControl,
        config: Mapping[str, Any],
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(control, config)
        size = _config.integer(NAME, config, "probePoolSize", 16, minimum=1)
        if size > 1024:
            raise ServiceConfigError(f"{NAME}: probePoolSize must be <= 1024, got {size}")
        self.probes_per_call = _config.number(
            NAME, config, "probesPerCall", 1.0, minimum=0.0, maximum=16.0
        )
        self.idle_interval_s = _positive_duration(config, "idleProbeInterval", 0.5)
        self.probe_timeout_s = _positive_duration(config, "probeTimeout", 1.0)
        max_age_s = _positive_duration(config, "maxProbeAge", 1.0)
        quantile = _config.number(NAME, config, "rifQuantile", 0.84, minimum=0.0, maximum=1.0)
        # Reuse budget: hot answers (1 - quantile of them) are not taken, so each cold
        # one must serve 1 / (probes per call x (1 - quantile)) picks for the pool to
        # keep up with the calls.
        rate = self.probes_per_call
        cold = max(1.0 - quantile, 0.01)
        default_reuse = max(1, math.ceil(1.0 / (rate * cold))) if rate else 1_000_000
        max_uses = _config.integer(NAME, config, "maxReuse", default_reuse, minimum=1)
        self.remove_worst_per_call = _config.number(
            NAME, config, "removeWorstPerCall", self.probes_per_call / 4, minimum=0.0, maximum=16.0
        )
        self.max_probes_in_flight = _config.integer(
            NAME, config, "maxProbesInFlight", 2 * size, minimum=1
        )
        self.pool = ProbePool(size, max_age_s, max_uses, quantile)
        self.rng = rng or random.Random()
        self._clock = clock
        self._lock = threading.Lock()
        self._probes_due = 0.0
        self._removals_due = 0.0
        self._flush_scheduled = False
        self._probes_in_flight = 0
        self._probed_at = -math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: backends that answered UNIMPLEMENTED, and when: balanced by our own view
        self.unprobed: dict[Subchannel, float] = {}
        self._warned = False

    # -- the pick (any thread) -------------------------------------------------------------
    def select(self, exclude: frozenset[Subchannel]) -> ProbeEntry | None:
        with self._lock:
            now = self._clock()
            entry = self.pool.select(now, exclude)
            self._removals_due += self.remove_worst_per_call
            while self._removals_due >= 1.0:
                self._removals_due -= 1.0
                if len(self.pool) > 1:
                    self.pool.remove_worst(now)
            self._probes_due += self.probes_per_call
            schedule = self._probes_due >= 1.0 and not self._flush_scheduled
            if schedule:
                self._flush_scheduled = True
        if schedule and self._loop is not None:
            if threading.get_ident() == self._loop_thread:
                self._loop.call_soon(self._flush)  # aio picks: no self-pipe wake-up needed
            else:
                with contextlib.suppress(RuntimeError):  # the loop closed: no more probes
                    self._loop.call_soon_threadsafe(self._flush)
        return entry

    # -- probing (the event loop) -------------------------------------------------------------
    def _flush(self) -> None:
        with self._lock:
            self._flush_scheduled = False
            due = int(self._probes_due)
            self._probes_due -= due
        self.send_probes(due)

    def send_probes(self, count: int) -> None:
        """Probe ``count`` usable backends, sampled without replacement."""
        if self._closed:
            return
        usable = self.usable_subchannels()
        count = min(count, len(usable), self.max_probes_in_flight - self._probes_in_flight)
        if count <= 0:
            return
        self._probed_at = self._clock()
        loop = self._loop or asyncio.get_running_loop()
        for sc in self.rng.sample(usable, count):
            since = self.unprobed.get(sc)
            if since is not None and self._probed_at - since < UNPROBED_RETRY_S:
                self._own_view(sc)
                continue
            self._probes_in_flight += 1
            task = loop.create_task(self._probe(sc))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _probe(self, sc: Subchannel) -> None:
        try:
            reply = await sc.unary_call(
                METHOD,
                _REQUEST,
                request_serializer=_serialize,
                response_deserializer=_deserialize,
                timeout=self.probe_timeout_s,
            )
        except StreamError as err:
            if err.code is grpc.StatusCode.UNIMPLEMENTED:
                self._no_probes(sc)
            return  # an unanswered probe teaches nothing: the backend is left out
        except Exception as err:  # pragma: no cover - a transport closing under the call
            log.debug("%s: probe failed: %r", sc.address, err)
            return
        finally:
            self._probes_in_flight -= 1
        if self._closed or not self._member(sc):
            return
        latency = reply.latency_seconds
        now = self._clock()
        if latency <= 0.0 and sc.latency.samples:  # the server has no sample yet
            latency = sc.latency.at(now)
        with self._lock:
            self.pool.add(sc, float(reply.requests_in_flight), latency, now)

    def _no_probes(self, sc: Subchannel) -> None:
        if not self._member(sc):
            return
        self.unprobed[sc] = self._clock()
        if not self._warned:
            self._warned = True
            log.warning(
                "%s: backend %s does not answer load probes (%s); prequal balances it "
                "by this client's own in-flight calls and latency (serve the probes with "
                "grpc_balancer.server.probes.LoadProbes, or grpc-balancer serve --probes)",
                self._control.target,
                sc.address,
                METHOD,
            )
        self._own_view(sc)

    def _own_view(self, sc: Subchannel) -> None:
        """A stand-in answer for a backend without probes: our in-flight calls and
        latency estimate."""
        now = self._clock()
        latency = sc.latency.at(now) if sc.latency.samples else 0.0
        with self._lock:
            self.pool.add(sc, float(sc.in_flight), latency, now)

    def _member(self, sc: Subchannel) -> bool:
        return self._by_address.get(sc.address) is sc

    def _idle_tick(self) -> None:
        self._idle_timer = None
        if self._closed:
            return
        if self._clock() - self._probed_at >= self.idle_interval_s:
            self.send_probes(1)
        self._schedule_idle()

    def _schedule_idle(self) -> None:
        if self._idle_timer is None and not self._closed and self._loop is not None:
            self._idle_timer = self._loop.call_later(self.idle_interval_s, self._idle_tick)

    # -- BasePolicy hooks (the event loop) -------------------------------------------------------
    def build_picker(self, usable: list[Subchannel]) -> PrequalPicker:
        if self._loop is None:
            with contextlib.suppress(RuntimeError):
                self._loop = asyncio.get_running_loop()
                self._loop_thread = threading.get_ident()
            self._schedule_idle()
        return PrequalPicker(self, usable)

    def subchannel_removed(self, subchannel: Subchannel) -> None:
        self.unprobed.pop(subchannel, None)
        with self._lock:
            self.pool.forget(subchannel)

    def close(self) -> None:
        super().close()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()


def _positive_duration(config: Mapping[str, Any], name: str, default_s: float) -> float:
    value = _config.duration(NAME, config, name, default_s)
    if value <= 0:
        raise ServiceConfigError(f"{NAME}: {name} must be greater than 0s")
    return value


register_builtin_policy(NAME, PrequalPolicy)
