"""What every subsetting policy shares: a parent policy that hands a subset of the
resolver's list to a child policy, which does the balancing.

The child is any registered policy, named by ``childPolicy`` (a ``loadBalancingConfig``
list; ``round_robin`` when absent) and built on a :class:`ChildControl`: the channel's
:class:`~grpc_balancer.policies.base.ChannelControl` seen through the parent. The
parent keeps no subchannels of its own; endpoints outside the subset are never given
to the child, so they cost no subchannel, connection or task (gRFC A68).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.picker import Picker
from grpc_balancer.policies import _config
from grpc_balancer.policies.base import (
    ChannelControl,
    Connectivity,
    Policy,
    check_config_fields,
    get_policy_factory,
    select_policy,
)
from grpc_balancer.subchannel import Subchannel

DEFAULT_SUBSET_SIZE = 20
#: gRPC's subset_size is a uint32.
MAX_SUBSET_SIZE = 2**32 - 1
DEFAULT_CHILD: list[dict[str, Any]] = [{"round_robin": {}}]


class ChildControl:
    """A child policy's ChannelControl: the channel's, through its parent. Everything
    passes straight through today; the seam is where a parent would filter or wrap."""

    def __init__(self, parent: ChannelControl) -> None:
        self._parent = parent

    @property
    def target(self) -> str:
        return self._parent.target

    def create_subchannel(self, endpoint: Endpoint) -> Subchannel:
        return self._parent.create_subchannel(endpoint)

    def remove_subchannel(self, subchannel: Subchannel) -> None:
        self._parent.remove_subchannel(subchannel)

    def update_picker(self, state: Connectivity, picker: Picker) -> None:
        self._parent.update_picker(state, picker)

    def request_reresolution(self) -> None:
        self._parent.request_reresolution()


class SubsetPolicy:
    """A parent policy: :meth:`subset` chooses, the child balances over the choice."""

    NAME: ClassVar[str] = ""
    CONFIG_FIELDS: ClassVar[set[str]] = {"subsetSize", "childPolicy"}

    def __init__(self, control: ChannelControl, config: Mapping[str, Any]) -> None:
        check_config_fields(self.NAME, config, self.CONFIG_FIELDS)
        self.subset_size = _config.integer(
            self.NAME, config, "subsetSize", DEFAULT_SUBSET_SIZE, minimum=1
        )
        if self.subset_size > MAX_SUBSET_SIZE:
            raise ServiceConfigError(
                f"{self.NAME}: subsetSize must be <= {MAX_SUBSET_SIZE}, got {self.subset_size}"
            )
        child_name, child_config = select_policy(
            config.get("childPolicy", DEFAULT_CHILD), f"{self.NAME}: childPolicy"
        )
        self.child_name = child_name
        self.child: Policy = get_policy_factory(child_name)(ChildControl(control), child_config)
        #: The addresses handed to the child by the latest update, in resolver order.
        self.chosen: list[str] = []

    def subset(self, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        """The endpoints to hand to the child (in the resolver's order)."""
        raise NotImplementedError

    def update_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        unique: dict[str, Endpoint] = {}
        for endpoint in endpoints:
            unique.setdefault(endpoint.address, endpoint)
        chosen = self.subset(list(unique.values()))
        self.chosen = [e.address for e in chosen]
        self.child.update_endpoints(chosen)

    def on_subchannel_state(self, subchannel: Subchannel) -> None:
        self.child.on_subchannel_state(subchannel)

    def close(self) -> None:
        self.child.close()

    @property
    def rebuild_pending(self) -> bool:
        """The child's picker is waiting for a coalesced rebuild."""
        return bool(getattr(self.child, "rebuild_pending", False))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self.chosen)} of the list -> {self.child!r}>"
