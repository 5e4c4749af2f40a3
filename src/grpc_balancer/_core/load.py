"""Per-subchannel load measures, updated in place on every call (no locks: the
event loop is the only writer).

``PeakEwma`` is Finagle's/Linkerd's latency estimate: an exponentially weighted
moving average that jumps to any *slower* sample at once (peak-sensitive) and decays
back toward faster samples with time constant ``decay_s``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

DEFAULT_DECAY_S = 10.0


class PeakEwma:
    __slots__ = ("_clock", "_decay_s", "_stamp", "samples", "value_s")

    def __init__(
        self,
        decay_s: float = DEFAULT_DECAY_S,
        clock: Callable[[], float] = time.monotonic,
        initial_s: float = 0.0,
    ) -> None:
        self._decay_s = decay_s
        self._clock = clock
        self._stamp = clock()
        self.value_s = initial_s
        self.samples = 0

    def observe(self, rtt_s: float) -> None:
        now = self._clock()
        if self.samples == 0 or rtt_s > self.value_s:
            self.value_s = rtt_s
        else:
            elapsed = max(now - self._stamp, 0.0)
            w = math.exp(-elapsed / self._decay_s)
            self.value_s = self.value_s * w + rtt_s * (1.0 - w)
        self._stamp = now
        self.samples += 1

    def __repr__(self) -> str:
        return f"<PeakEwma {self.value_s * 1000:.2f}ms n={self.samples}>"
