"""weighted_round_robin (gRFC A58): round robin in proportion to backend weights.

Weights come from ORCA load reports when servers send them (the
``endpoint-load-metrics-bin`` trailer of each call, or an out-of-band stream with
``enableOobLoadReport``), as ``qps / (utilization + eps / qps * errorUtilizationPenalty)``;
otherwise from discovery (``Endpoint.weight``: SRV weights, etcd metadata). A backend
whose reports started less than ``blackoutPeriod`` ago, or stopped more than
``weightExpirationPeriod`` ago, gets the mean weight. The schedule is rebuilt every
``weightUpdatePeriod``; picks use the stride scheduler (:mod:`._stride`), O(1) and
lock-free. ``slowStartConfig`` multiplies the weight of a warming backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from grpc_balancer._orca import OrcaLoadReport, report_from_trailers, weight_from_report
from grpc_balancer._orca.oob import start_oob_stream
from grpc_balancer.picker import Picker
from grpc_balancer.policies import _config
from grpc_balancer.policies._stride import StridePicker, scale_weights
from grpc_balancer.policies.base import BasePolicy, ChannelControl, register_builtin_policy
from grpc_balancer.policies.round_robin import RoundRobinPicker
from grpc_balancer.policies.slow_start import FIELD as SLOW_START
from grpc_balancer.policies.slow_start import SlowStart, parse_slow_start
from grpc_balancer.subchannel import Subchannel

NAME = "weighted_round_robin"
MIN_UPDATE_PERIOD_S = 0.1


class BackendWeight:
    """One backend's ORCA-derived weight and when it started and last changed."""

    __slots__ = ("last_updated", "non_empty_since", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.non_empty_since: float | None = None
        self.last_updated = 0.0

    def update(self, weight: float, now: float) -> None:
        if self.non_empty_since is None:
            self.non_empty_since = now
        self.last_updated = now
        self.value = weight

    def current(self, now: float, blackout_s: float, expiration_s: float) -> float | None:
        """The weight to use now, or None (unknown: in blackout, expired, or never seen)."""
        if self.non_empty_since is None:
            return None
        if now - self.last_updated >= expiration_s:
            self.non_empty_since = None  # a fresh blackout when reports resume
            return None
        if blackout_s > 0 and now - self.non_empty_since < blackout_s:
            return None
        return self.value

    def __repr__(self) -> str:
        return f"<BackendWeight {self.value:.1f}>"


class WeightedRoundRobinPolicy(BasePolicy):
    NAME = NAME
    CONFIG_FIELDS = {
        "enableOobLoadReport",
        "oobReportingPeriod",
        "blackoutPeriod",
        "weightExpirationPeriod",
        "weightUpdatePeriod",
        "errorUtilizationPenalty",
        SLOW_START,
    }

    def __init__(
        self,
        control: ChannelControl,
        config: Mapping[str, Any],
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(control, config)
        self.oob = _config.boolean(NAME, config, "enableOobLoadReport", False)
        self.oob_period_s = _config.duration(NAME, config, "oobReportingPeriod", 10.0)
        self.blackout_s = _config.duration(NAME, config, "blackoutPeriod", 10.0)
        self.expiration_s = _config.duration(NAME, config, "weightExpirationPeriod", 180.0)
        self.update_period_s = max(
            _config.duration(NAME, config, "weightUpdatePeriod", 1.0), MIN_UPDATE_PERIOD_S
        )
        self.error_penalty = _config.number(
            NAME, config, "errorUtilizationPenalty", 1.0, minimum=0.0
        )
        slow = parse_slow_start(NAME, config)
        self._slow_start = None if slow is None else SlowStart(slow, self.regenerate, clock)
        self._rng = rng
        self._clock = clock
        self.weights: dict[Subchannel, BackendWeight] = {}
        self._oob_tasks: dict[Subchannel, asyncio.Task[None]] = {}
        self._timer: asyncio.TimerHandle | None = None

    # -- load reports ------------------------------------------------------------------
    def on_report(self, sc: Subchannel, report: OrcaLoadReport) -> None:
        weight = weight_from_report(report, self.error_penalty)
        state = self.weights.get(sc)
        if weight is not None and state is not None:
            state.update(weight, self._clock())

    def _on_trailers(self, sc: Subchannel, trailers: Any) -> None:
        report = report_from_trailers(trailers)
        if report is not None:
            self.on_report(sc, report)

    # -- subchannels -------------------------------------------------------------------
    def subchannel_added(self, subchannel: Subchannel) -> None:
        self.weights[subchannel] = BackendWeight()
        if self.oob:  # A58: with OOB reports, per-call reports are not used
            with contextlib.suppress(RuntimeError):
                self._oob_tasks[subchannel] = start_oob_stream(
                    subchannel, self.oob_period_s, self.on_report
                )
        else:
            subchannel.trailer_observers.append(self._on_trailers)
        super().subchannel_added(subchannel)

    def subchannel_removed(self, subchannel: Subchannel) -> None:
        self.weights.pop(subchannel, None)
        if self._on_trailers in subchannel.trailer_observers:
            subchannel.trailer_observers.remove(self._on_trailers)
        task = self._oob_tasks.pop(subchannel, None)
        if task is not None:
            task.cancel()

    def endpoints_updated(self, ordered: list[Subchannel]) -> None:
        if self._slow_start is not None:
            self._slow_start.endpoints_updated(ordered)

    def on_subchannel_state(self, subchannel: Subchannel) -> None:
        state = self.weights.get(subchannel)
        if state is not None and not subchannel.usable:
            state.non_empty_since = None  # back from a failure: a new blackout period
        super().on_subchannel_state(subchannel)

    # -- pickers -----------------------------------------------------------------------
    def current_weights(self, usable: Sequence[Subchannel]) -> list[float | None]:
        """ORCA weights if any backend has one (None: unknown → the mean), else the
        discovery weights (a weight of 0 means "rarely", as in SRV)."""
        now = self._clock()
        orca = [
            self.weights[sc].current(now, self.blackout_s, self.expiration_s)
            if sc in self.weights
            else None
            for sc in usable
        ]
        if any(w for w in orca):
            return orca
        return [float(sc.endpoint.weight) or 1e-9 for sc in usable]

    def build_picker(self, usable: list[Subchannel]) -> Picker:
        self._schedule_update()
        weights = self.current_weights(usable)
        if self._slow_start is not None:
            factors = self._slow_start.factors(usable)
            if factors is not None:
                known = [w for w in weights if w]
                mean = sum(known) / len(known) if known else 1.0
                weights = [(w or mean) * f for w, f in zip(weights, factors, strict=True)]
        scaled = scale_weights(weights)
        if scaled is None:
            return RoundRobinPicker(usable, self._rng)
        return StridePicker(usable, scaled, self._rng)

    def _schedule_update(self) -> None:
        if self._timer is not None or self._closed:
            return
        with contextlib.suppress(RuntimeError):
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.update_period_s, self._update_tick)

    def _update_tick(self) -> None:
        self._timer = None
        if self._ordered:
            self.regenerate()

    def close(self) -> None:
        super().close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._slow_start is not None:
            self._slow_start.close()
        for task in self._oob_tasks.values():
            task.cancel()
        self._oob_tasks.clear()


register_builtin_policy(NAME, WeightedRoundRobinPolicy)
