"""A weighted picker: gRPC's static stride scheduler, the lock-free O(1) form of the
earliest-deadline-first schedule that gRFC A58 describes.

Each backend ``i`` with scaled weight ``w_i`` (1..65535) is offered once per round of the
sequence counter and taken when ``(w_i * generation + i * offset) % 65535 >= 65535 - w_i``,
i.e. ``w_i`` times in 65535 generations, evenly spread like EDF deadlines. Weights are
clamped to [1%, 1000%] of the mean, which bounds the expected loop count by 10. One
shared counter (``itertools.count``) makes it safe from many threads without a lock.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

from grpc_balancer.picker import PickInfo, first_not_excluded
from grpc_balancer.subchannel import Subchannel

_MAX = 0xFFFF
_OFFSET = _MAX // 2
_MIN_RATIO = 0.01
_MAX_RATIO = 10.0


def scale_weights(weights: Sequence[float | None]) -> list[int] | None:
    """Weights → integers in 1..65535 (unknown/None or 0 → the mean of the known ones);
    None when they are all equal (plain round robin does)."""
    known = [w for w in weights if w is not None and w > 0]
    if not known:
        return None
    mean = sum(known) / len(known)
    clamped = [
        mean if w is None or w <= 0 else min(max(w, mean * _MIN_RATIO), mean * _MAX_RATIO)
        for w in weights
    ]
    top = max(clamped)
    if min(clamped) == top:
        return None
    return [max(1, round(w / top * _MAX)) for w in clamped]


class StridePicker:
    __slots__ = ("_n", "_next", "_subchannels", "_weights")

    def __init__(
        self,
        subchannels: Sequence[Subchannel],
        scaled: Sequence[int],
        rng: random.Random | None = None,
    ) -> None:
        self._subchannels = tuple(subchannels)
        self._weights = tuple(scaled)
        self._n = len(self._subchannels)
        start = (rng or random).randrange(self._n * 64)
        self._next = itertools.count(start).__next__

    def pick(self, info: PickInfo) -> Subchannel | None:
        n = self._n
        weights = self._weights
        while True:
            seq = self._next()
            i = seq % n
            w = weights[i]
            if (w * (seq // n) + i * _OFFSET) % _MAX >= _MAX - w:
                break
        sc = self._subchannels[i]
        if info.exclude and sc in info.exclude:
            return first_not_excluded(self._subchannels, i, info.exclude)
        return sc

    def __repr__(self) -> str:
        pairs = [
            f"{sc.address}:{w}" for sc, w in zip(self._subchannels, self._weights, strict=True)
        ]
        return f"<StridePicker {pairs}>"
