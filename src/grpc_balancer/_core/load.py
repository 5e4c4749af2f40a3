"""Each backend's one latency estimate, updated in place by every attempt's record
(the event loop, or a sync subchannel's lock, is the only writer) and read by
peak_ewma, ``status()`` and the metrics alike.

Finagle's/Linkerd's peak EWMA: a slower sample replaces the estimate at once, faster
samples pull it down with time constant ``decay_s``; a failure counts as a sample of
at least ``penalty_s`` (a backend that fails fast never looks fast), a cancelled call
teaches nothing. With a :class:`~grpc_balancer._core.stalls.StallMeter` set (peak_ewma
sets one), the time this client's own loop was stalled during a call is not counted
as the backend's.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from grpc_balancer._core.stalls import StallMeter

DEFAULT_DECAY_S = 10.0
DEFAULT_PENALTY_S = 1.0
_exp = math.exp
_OK = grpc.StatusCode.OK
_CANCELLED = grpc.StatusCode.CANCELLED


class LatencyEstimate:
    """Peak EWMA of one backend's latency, with failures counted as slow samples."""

    __slots__ = ("busy_since", "decay_s", "penalty_s", "samples", "stalls", "stamp", "value_s")

    def __init__(
        self, decay_s: float = DEFAULT_DECAY_S, penalty_s: float = DEFAULT_PENALTY_S
    ) -> None:
        self.decay_s = decay_s
        self.penalty_s = penalty_s
        self.value_s = 0.0
        self.stamp = 0.0
        #: samples learnt so far, counted to 2 only (readers ask: none, one, more?)
        self.samples = 0
        #: when the backend last went from idle to busy (set by the picker)
        self.busy_since = 0.0
        #: this client's loop stalls, discounted from samples (None: not measured)
        self.stalls: StallMeter | None = None

    def at(self, now: float) -> float:
        """The estimate decayed to ``now`` (decays toward zero while nothing is learnt)."""
        elapsed = now - self.stamp
        if elapsed < 0.001:  # skip exp() when the sample is fresh (busy backends)
            return self.value_s
        return self.value_s * _exp(-elapsed / self.decay_s)

    def observe(self, rtt_s: float, now: float) -> None:
        """A reply took ``rtt_s``."""
        self.on_call(rtt_s, _OK, now)

    def on_call(self, latency_s: float, code: grpc.StatusCode, now: float) -> None:
        """One attempt's end: a failure is a slow sample, a cancelled call teaches nothing."""
        stalls = self.stalls
        if stalls is not None:  # the client's own stall is not the backend's latency
            latency_s = max(latency_s - stalls.stalled_between(now - latency_s, now), 0.0)
        if code is not _OK:
            if code is _CANCELLED:
                return
            latency_s = max(latency_s, self.penalty_s)
        samples = self.samples
        if samples < 2:
            self.value_s = latency_s  # the first reply may carry connection setup: provisional
            self.samples = samples + 1
        else:
            x = (now - self.stamp) / self.decay_s
            # exp(-x) to within x²/2 (< 5e-7) for the fresh samples of a busy backend,
            # without the calls: this runs at the end of every attempt
            w = (1.0 - x if x > 0.0 else 1.0) if x < 0.001 else _exp(-x)
            current = self.value_s * w
            self.value_s = (
                latency_s if latency_s > current else current + (latency_s - current) * (1.0 - w)
            )
        self.stamp = now

    def __repr__(self) -> str:
        learnt = ("no samples", "one sample", "two or more samples")[self.samples]
        return f"<LatencyEstimate {self.value_s * 1000:.2f}ms, {learnt}>"
