"""least_request (gRFC A48): power of ``choiceCount`` random choices on in-flight calls.

Each pick samples ``choiceCount`` distinct usable backends (2 by default, 2..10; larger
values are capped at 10 as in A48) and takes the one with the fewest calls in flight,
counted on the subchannel. Reacts to load at once, needs no server support, and never
herds onto one backend the way "always the global minimum" would. With
``slowStartConfig`` a warming backend wins a comparison only with probability equal to
its slow-start factor, so its share ramps up even when nothing is queued.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.picker import PickInfo, first_not_excluded
from grpc_balancer.policies import _config
from grpc_balancer.policies.base import BasePolicy, ChannelControl, register_builtin_policy
from grpc_balancer.policies.slow_start import FIELD as SLOW_START
from grpc_balancer.policies.slow_start import SlowStart, parse_slow_start
from grpc_balancer.subchannel import Subchannel

NAME = "least_request"
MAX_CHOICES = 10
_SLOW_START_TRIES = 4


def parse_choice_count(policy: str, config: Mapping[str, Any]) -> int:
    count = _config.integer(policy, config, "choiceCount", 2, minimum=0)
    if count < 2:
        raise ServiceConfigError(f"{policy}: choiceCount must be at least 2, got {count}")
    return min(count, MAX_CHOICES)


def sample_distinct(rand: Any, n: int, k: int) -> list[int]:
    """``k`` distinct indices out of ``n`` (all of them when ``n <= k``)."""
    if n <= k:
        return list(range(n))
    first = int(rand() * n)
    second = int(rand() * (n - 1))
    if second >= first:
        second += 1
    chosen = [first, second]
    while len(chosen) < k:
        i = int(rand() * n)
        if i not in chosen:
            chosen.append(i)
    return chosen


def _fewest_in_flight(subchannels: Sequence[Subchannel], candidates: list[int], rand: Any) -> int:
    """The candidate with the fewest calls in flight; among equals, each is equally likely
    (``sample_distinct`` returns ``range(n)`` in order when ``choiceCount >= n``)."""
    best = candidates[0]
    low = subchannels[best].in_flight
    ties = 1
    for i in candidates[1:]:
        load = subchannels[i].in_flight
        if load < low:
            best, low, ties = i, load, 1
        elif load == low:
            ties += 1
            if rand() * ties < 1.0:  # reservoir sampling: keep each tie with 1/ties
                best = i
    return best


class LeastRequestPicker:
    __slots__ = ("_choices", "_factors", "_n", "_rand", "_subchannels")

    def __init__(
        self,
        subchannels: Sequence[Subchannel],
        choices: int,
        rng: random.Random | None = None,
        factors: Sequence[float] | None = None,
    ) -> None:
        self._subchannels = tuple(subchannels)
        self._n = len(self._subchannels)
        self._choices = choices
        self._rand = (rng or random.Random()).random
        self._factors = None if factors is None else tuple(factors)

    def pick(self, info: PickInfo) -> Subchannel | None:
        subchannels = self._subchannels
        n = self._n
        if n == 1:
            best = 0
        elif self._choices == 2 and self._factors is None:
            rand = self._rand
            a = int(rand() * n)
            b = int(rand() * (n - 1))
            if b >= a:
                b += 1
            best = a if subchannels[a].in_flight <= subchannels[b].in_flight else b
        else:
            best = self._best(sample_distinct(self._rand, n, self._choices))
        sc = subchannels[best]
        if info.exclude and sc in info.exclude:
            return first_not_excluded(subchannels, best, info.exclude)
        return sc

    def _best(self, candidates: list[int]) -> int:
        """Fewest in flight wins, ties broken uniformly at random (A48); a warming
        backend (slow start) is taken only with probability equal to its factor, else the
        next candidate is considered (and if all are refused, a few fresh samples are
        tried)."""
        subchannels = self._subchannels
        rand = self._rand
        factors = self._factors
        if factors is None:
            return _fewest_in_flight(subchannels, candidates, rand)
        ordered = candidates
        for _ in range(_SLOW_START_TRIES):
            ordered = sorted(candidates, key=lambda i: (subchannels[i].in_flight, rand()))
            for i in ordered:
                if factors[i] >= 1.0 or rand() < factors[i]:
                    return i
            candidates = sample_distinct(rand, self._n, self._choices)
        return ordered[0]

    def __repr__(self) -> str:
        return f"<LeastRequestPicker choices={self._choices} {[sc.address for sc in self._subchannels]}>"


class LeastRequestPolicy(BasePolicy):
    NAME = NAME
    CONFIG_FIELDS = {"choiceCount", SLOW_START}

    def __init__(
        self, control: ChannelControl, config: Mapping[str, Any], rng: random.Random | None = None
    ) -> None:
        super().__init__(control, config)
        self.choice_count = parse_choice_count(NAME, config)
        self._rng = rng
        slow = parse_slow_start(NAME, config)
        self._slow_start = None if slow is None else SlowStart(slow, self.regenerate)

    def build_picker(self, usable: list[Subchannel]) -> LeastRequestPicker:
        factors = None if self._slow_start is None else self._slow_start.factors(usable)
        return LeastRequestPicker(usable, self.choice_count, self._rng, factors)

    def endpoints_updated(self, ordered: list[Subchannel]) -> None:
        if self._slow_start is not None:
            self._slow_start.endpoints_updated(ordered)

    def close(self) -> None:
        super().close()
        if self._slow_start is not None:
            self._slow_start.close()


register_builtin_policy(NAME, LeastRequestPolicy)
