"""peak_ewma (Finagle, Linkerd): power of two choices on ``latency x (in-flight + 1)``.

The latency estimate is peak-sensitive: a slower sample replaces it at once, faster
samples pull it down with time constant ``decayTime`` (10 s), and while a backend is not
picked its estimate decays too, so an avoided backend is tried again later. Rules that
keep it safe:

* a failure counts as a slow sample (at least ``failurePenalty``, 1 s), so a backend
  that fails fast never looks attractive; a cancelled call teaches nothing;
* a new backend, or one whose last sample is older than ``decayTime``, is probed with
  one call at a time until replies tell how fast it is (no flood on an unknown server;
  the first reply may include connection setup, so it is provisional);
* a backend with calls in flight is at least as slow as the time since it last
  answered (or since it got busy): a backend that stalls stops attracting calls within
  milliseconds, long before the first stuck call times out and reports;
* a stall of this *client's* event loop is not the backends' latency: a heartbeat
  (:class:`~grpc_balancer._core.stalls.StallMeter`, while the channel is in use)
  measures it, and it is taken out of every sample and of the silence above. Without
  that, a busy client inflated the estimates of the fast backends (they always have
  calls in flight), the peak stuck for about ``decayTime``, and the rarely used slow
  backend won comparisons for seconds at a time (issue 16).

Config: ``choiceCount`` (2..10), ``decayTime``, ``failurePenalty``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from grpc_balancer._core.load import LatencyEstimate
from grpc_balancer._core.stalls import StallMeter
from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.picker import PickInfo, first_not_excluded
from grpc_balancer.policies import _config
from grpc_balancer.policies.base import BasePolicy, ChannelControl, register_builtin_policy
from grpc_balancer.policies.least_request import parse_choice_count, sample_distinct
from grpc_balancer.subchannel import Subchannel

NAME = "peak_ewma"
_ATTR = "peak_ewma"
_INF = math.inf
_exp = math.exp
#: No reply for this many times the estimate while busy means "stalled"; smaller gaps
#: are ordinary jitter or a busy client event loop, not the backend.
_SILENT_FACTOR = 8.0
_CANCELLED = grpc.StatusCode.CANCELLED
_OK = grpc.StatusCode.OK


class PeakEwmaPicker:
    __slots__ = ("_choices", "_clock", "_estimates", "_n", "_rand", "_stalls", "_subchannels")

    def __init__(
        self,
        subchannels: Sequence[Subchannel],
        estimates: Sequence[LatencyEstimate],
        choices: int,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        stalls: StallMeter | None = None,
    ) -> None:
        self._subchannels = tuple(subchannels)
        self._estimates = tuple(estimates)
        self._n = len(self._subchannels)
        self._choices = choices
        self._rand = (rng or random.Random()).random
        self._clock = clock
        self._stalls = stalls

    def cost(self, i: int, now: float) -> float:
        est = self._estimates[i]
        in_flight = self._subchannels[i].in_flight
        if est.samples < 2 or now - est.stamp > est.decay_s:
            # unknown (two replies needed) or stale: one probe at a time
            return (est.at(now) if est.samples else 0.0) if in_flight == 0 else _INF
        if in_flight == 0:
            return est.at(now)
        silent = now - (est.stamp if est.stamp > est.busy_since else est.busy_since)
        latency = est.at(now)
        if silent > _SILENT_FACTOR * latency:  # far slower than usual: stalled?
            stalls = self._stalls
            if stalls is not None:  # not if it was our own loop that could not listen
                silent -= stalls.stalled_between(now - silent, now)
            if silent > latency:
                latency = silent
        return latency * (in_flight + 1)

    def pick(self, info: PickInfo) -> Subchannel | None:
        n = self._n
        if n == 1:
            best = 0
        else:
            now = self._clock()
            if self._stalls is not None:
                self._stalls.touch(now)
            cost = self.cost
            if self._choices == 2:
                rand = self._rand
                a = int(rand() * n)
                b = int(rand() * (n - 1))
                if b >= a:
                    b += 1
                best = a if cost(a, now) <= cost(b, now) else b
            else:
                best, best_cost = -1, _INF
                for i in sample_distinct(self._rand, n, self._choices):
                    c = cost(i, now)
                    if best < 0 or c < best_cost:
                        best, best_cost = i, c
            if self._subchannels[best].in_flight == 0:
                self._estimates[best].busy_since = now
        sc = self._subchannels[best]
        if info.exclude and sc in info.exclude:
            return first_not_excluded(self._subchannels, best, info.exclude)
        return sc

    def __repr__(self) -> str:
        pairs = [
            f"{sc.address}={est!r}"
            for sc, est in zip(self._subchannels, self._estimates, strict=True)
        ]
        return f"<PeakEwmaPicker {pairs}>"


class PeakEwmaPolicy(BasePolicy):
    NAME = NAME
    CONFIG_FIELDS = {"choiceCount", "decayTime", "failurePenalty"}

    def __init__(
        self,
        control: ChannelControl,
        config: Mapping[str, Any],
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(control, config)
        self.choice_count = parse_choice_count(NAME, config)
        self.decay_s = _config.duration(NAME, config, "decayTime", 10.0)
        if self.decay_s <= 0:
            raise ServiceConfigError(f"{NAME}: decayTime must be greater than 0s")
        self.penalty_s = _config.duration(NAME, config, "failurePenalty", 1.0)
        self._rng = rng
        self._clock = clock
        self._stalls: StallMeter | None = None

    def estimate(self, sc: Subchannel) -> LatencyEstimate:
        """The backend's one latency estimate (the one status() and metrics show),
        tuned to this policy's decayTime and failurePenalty."""
        est = sc.latency
        est.decay_s = self.decay_s
        est.penalty_s = self.penalty_s
        est.stalls = self._stalls
        return est

    def subchannel_added(self, subchannel: Subchannel) -> None:
        self.estimate(subchannel)
        super().subchannel_added(subchannel)

    def build_picker(self, usable: list[Subchannel]) -> PeakEwmaPicker:
        if self._stalls is None:
            with contextlib.suppress(RuntimeError):  # no running loop: not measured
                self._stalls = StallMeter(asyncio.get_running_loop(), self._clock)
        estimates = [self.estimate(sc) for sc in usable]
        return PeakEwmaPicker(
            usable, estimates, self.choice_count, self._rng, self._clock, self._stalls
        )

    def subchannel_removed(self, subchannel: Subchannel) -> None:
        subchannel.latency.stalls = None

    def close(self) -> None:
        for sc in self._ordered:
            sc.latency.stalls = None
        super().close()
        if self._stalls is not None:
            self._stalls.close()


register_builtin_policy(NAME, PeakEwmaPolicy)
