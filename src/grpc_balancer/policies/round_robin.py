"""round_robin: usable subchannels in turn, from a random start.

A subchannel that drops leaves the rotation as soon as its state changes (the policy
publishes a new picker) and rejoins when it is READY again. With ``slowStartConfig`` a
backend that just became READY gets a growing share (see :mod:`.slow_start`).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from typing import Any

from grpc_balancer.picker import Picker, PickInfo, first_not_excluded
from grpc_balancer.policies._stride import StridePicker, scale_weights
from grpc_balancer.policies.base import BasePolicy, ChannelControl, register_builtin_policy
from grpc_balancer.policies.slow_start import FIELD as SLOW_START
from grpc_balancer.policies.slow_start import SlowStart, parse_slow_start
from grpc_balancer.subchannel import Subchannel

NAME = "round_robin"


class RoundRobinPicker:
    __slots__ = ("_n", "_next", "_subchannels")

    def __init__(self, subchannels: Sequence[Subchannel], rng: random.Random | None = None) -> None:
        self._subchannels = tuple(subchannels)
        self._n = len(self._subchannels)
        start = (rng or random).randrange(self._n)
        self._next = itertools.count(start).__next__

    def pick(self, info: PickInfo) -> Subchannel | None:
        i = self._next() % self._n
        sc = self._subchannels[i]
        if info.exclude and sc in info.exclude:
            return first_not_excluded(self._subchannels, i, info.exclude)
        return sc

    def __repr__(self) -> str:
        return f"<RoundRobinPicker {[sc.address for sc in self._subchannels]}>"


class RoundRobinPolicy(BasePolicy):
    NAME = NAME
    CONFIG_FIELDS = {SLOW_START}

    def __init__(
        self, control: ChannelControl, config: Mapping[str, Any], rng: random.Random | None = None
    ) -> None:
        super().__init__(control, config)
        self._rng = rng
        slow = parse_slow_start(NAME, config)
        self._slow_start = None if slow is None else SlowStart(slow, self.regenerate)

    def build_picker(self, usable: list[Subchannel]) -> Picker:
        if self._slow_start is not None:
            factors = self._slow_start.factors(usable)
            scaled = None if factors is None else scale_weights(factors)
            if scaled is not None:
                return StridePicker(usable, scaled, self._rng)
        return RoundRobinPicker(usable, self._rng)

    def endpoints_updated(self, ordered: list[Subchannel]) -> None:
        if self._slow_start is not None:
            self._slow_start.endpoints_updated(ordered)

    def close(self) -> None:
        super().close()
        if self._slow_start is not None:
            self._slow_start.close()


register_builtin_policy(NAME, RoundRobinPolicy)
