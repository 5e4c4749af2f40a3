"""pick_first: the first reachable endpoint in resolver order, sticky.

Connections are opened one at a time, in order, like gRPC: the next endpoint is dialed
only when every earlier one has failed. Once a subchannel is selected the policy stays
on it while it is usable, even if an earlier endpoint comes back; when it fails, the
first usable endpoint in order takes over. ``shuffleAddressList`` (gRFC A62) shuffles
each new list first, so many clients spread over a fleet.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import grpc

from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.picker import FailPicker, PickInfo, QueuePicker
from grpc_balancer.policies.base import (
    BasePolicy,
    ChannelControl,
    describe_unreachable,
    register_builtin_policy,
)
from grpc_balancer.subchannel import Subchannel

NAME = "pick_first"
Connectivity = grpc.ChannelConnectivity


class PickFirstPicker:
    __slots__ = ("_fallback", "_selected")

    def __init__(self, selected: Subchannel, fallback: tuple[Subchannel, ...]) -> None:
        self._selected = selected
        self._fallback = fallback

    def pick(self, info: PickInfo) -> Subchannel | None:
        if info.exclude and self._selected in info.exclude:
            for sc in self._fallback:
                if sc not in info.exclude:
                    return sc
        return self._selected

    def __repr__(self) -> str:
        return f"<PickFirstPicker {self._selected.address}>"


class PickFirstPolicy(BasePolicy):
    NAME = NAME
    CONFIG_FIELDS = {"shuffleAddressList"}

    def __init__(
        self, control: ChannelControl, config: Mapping[str, Any], rng: random.Random | None = None
    ) -> None:
        super().__init__(control, config)
        shuffle = config.get("shuffleAddressList", False)
        if not isinstance(shuffle, bool):
            raise ServiceConfigError(
                f"pick_first: shuffleAddressList must be a boolean, got {shuffle!r}"
            )
        self._shuffle = shuffle
        self._rng = rng or random.Random()
        self._selected: Subchannel | None = None

    def subchannel_added(self, subchannel: Subchannel) -> None:
        """Dial lazily: :meth:`regenerate` connects in order."""

    def subchannel_removed(self, subchannel: Subchannel) -> None:
        if subchannel is self._selected:
            self._selected = None

    def endpoints_updated(self, ordered: list[Subchannel]) -> None:
        if self._shuffle:
            self._rng.shuffle(ordered)

    def regenerate(self) -> None:
        if self._closed:
            return
        ordered = self._ordered
        if self._selected is None or not self._selected.usable:
            self._selected = next((sc for sc in ordered if sc.usable), None)
        if self._selected is not None:
            others = tuple(sc for sc in ordered if sc.usable and sc is not self._selected)
            self._control.update_picker(Connectivity.READY, PickFirstPicker(self._selected, others))
            return
        # Nothing usable: dial in order up to the first endpoint that has not failed yet.
        for sc in ordered:
            if not sc.wants_connection:
                sc.connect()
            if sc.still_trying:
                break
        if not self._resolved or any(sc.still_trying for sc in ordered):
            self._control.update_picker(Connectivity.CONNECTING, QueuePicker())
        else:
            message = describe_unreachable(self._control.target, ordered)
            self._control.update_picker(
                Connectivity.TRANSIENT_FAILURE, FailPicker(grpc.StatusCode.UNAVAILABLE, message)
            )

    def build_picker(self, usable: list[Subchannel]) -> PickFirstPicker:  # pragma: no cover
        return PickFirstPicker(usable[0], tuple(usable[1:]))


register_builtin_policy(NAME, PickFirstPolicy)
