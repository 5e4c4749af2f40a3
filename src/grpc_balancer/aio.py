"""The asyncio API: balanced drop-ins for ``grpc.aio.insecure_channel`` / ``secure_channel``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from grpc_balancer._aio.channel import BalancedChannel
from grpc_balancer.resolvers.base import ResolverOptions
from grpc_balancer.subchannel import ChannelOptions

__all__ = ["BalancedChannel", "insecure_channel", "secure_channel"]


def insecure_channel(
    target: str,
    *,
    policy: str | None = None,
    service_config: str | Mapping[str, Any] | None = None,
    options: ChannelOptions | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    resolver_options: ResolverOptions | None = None,
) -> BalancedChannel:
    """A plaintext balanced channel, e.g.
    ``insecure_channel("static:///localhost:50051,localhost:50052", policy="round_robin")``.

    Raises a ``ValueError`` subclass (:class:`grpc_balancer.BalancerConfigError`) for a
    malformed target, an unknown scheme or policy, or a bad service config.
    """
    return BalancedChannel(
        target,
        policy=policy,
        service_config=service_config,
        options=options,
        interceptors=interceptors,
        resolver_options=resolver_options,
    )


def secure_channel(
    target: str,
    credentials: grpc.ChannelCredentials,
    *,
    policy: str | None = None,
    service_config: str | Mapping[str, Any] | None = None,
    options: ChannelOptions | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    resolver_options: ResolverOptions | None = None,
) -> BalancedChannel:
    """Like :func:`insecure_channel`, with TLS ``credentials`` on every endpoint."""
    return BalancedChannel(
        target,
        credentials=credentials,
        policy=policy,
        service_config=service_config,
        options=options,
        interceptors=interceptors,
        resolver_options=resolver_options,
    )
