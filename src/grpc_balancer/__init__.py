"""grpc-balancer: client-side load balancing and service discovery for Python gRPC.

:func:`insecure_channel` / :func:`secure_channel` return a ``grpc.Channel`` for sync
stubs; the asyncio channel lives in :mod:`grpc_balancer.aio`; extension points are
:func:`register_resolver` and :func:`register_policy`.
"""

from grpc_balancer import aio
from grpc_balancer._core.status import ChannelStatus, SubchannelStatus
from grpc_balancer._observe.capture import BackendCapture, capture_backend
from grpc_balancer._observe.events import Event
from grpc_balancer._sync.channel import SyncBalancedChannel, insecure_channel, secure_channel
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.errors import (
    BalancerConfigError,
    ChannelClosedError,
    ChannelUsedAfterForkError,
    InvalidTargetError,
    ServiceConfigError,
    UnknownPolicyError,
    WrongEventLoopError,
)
from grpc_balancer.picker import Picker, PickInfo
from grpc_balancer.policies.base import BasePolicy, ChannelControl, Policy, register_policy
from grpc_balancer.policies.ring_hash import hash_key
from grpc_balancer.resolvers.base import (
    Resolver,
    ResolverListener,
    ResolverOptions,
    ServiceConfigListener,
    register_resolver,
)
from grpc_balancer.server.registration import Registration, RegistrationError, registration
from grpc_balancer.subchannel import Subchannel
from grpc_balancer.target import Target, parse_target

__version__ = "0.1.0"

#: Every public name (tests/test_exported_members.py): the API above, plus the public
#: modules that importing it binds here (``aio``, ``policies``, ``errors``...).
__all__ = [
    "BackendCapture",
    "BalancerConfigError",
    "BasePolicy",
    "ChannelClosedError",
    "ChannelControl",
    "ChannelStatus",
    "ChannelUsedAfterForkError",
    "Endpoint",
    "Event",
    "InvalidTargetError",
    "PickInfo",
    "Picker",
    "Policy",
    "Registration",
    "RegistrationError",
    "Resolver",
    "ResolverListener",
    "ResolverOptions",
    "ServiceConfigError",
    "ServiceConfigListener",
    "Subchannel",
    "SubchannelStatus",
    "SyncBalancedChannel",
    "Target",
    "UnknownPolicyError",
    "WrongEventLoopError",
    "__version__",
    "aio",
    "capture_backend",
    "endpoint",
    "errors",
    "hash_key",
    "insecure_channel",
    "parse_target",
    "picker",
    "policies",
    "register_policy",
    "register_resolver",
    "registration",
    "resolvers",
    "secure_channel",
    "server",
    "subchannel",
    "target",
]
