"""Resolvers: turn a target URI into endpoint lists. See :mod:`.base`."""

from grpc_balancer.resolvers.base import (
    Resolver,
    ResolverFactory,
    ResolverListener,
    ResolverOptions,
    ServiceConfigListener,
    register_resolver,
)

__all__ = [
    "Resolver",
    "ResolverFactory",
    "ResolverListener",
    "ResolverOptions",
    "ServiceConfigListener",
    "register_resolver",
]
