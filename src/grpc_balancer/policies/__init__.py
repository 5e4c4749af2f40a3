"""Load-balancing policies; each module registers itself by NAME. See :mod:`.base`."""

from grpc_balancer.policies.base import (
    BasePolicy,
    ChannelControl,
    Policy,
    PolicyFactory,
    register_policy,
)

__all__ = ["BasePolicy", "ChannelControl", "Policy", "PolicyFactory", "register_policy"]
