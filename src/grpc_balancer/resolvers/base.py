"""The Resolver protocol and the scheme registry.

A resolver turns a target into endpoint lists and pushes each new list to its
listener (the channel). It never empties a working list on an error: it reports the
error with :meth:`ResolverListener.on_resolver_error` and keeps retrying; an empty
*valid* answer is pushed as an empty list and honoured.

A resolver whose source also configures the channel (xDS) hands that configuration to
a :class:`ServiceConfigListener` (the channels are), as gRPC's resolvers return a
service config next to the addresses. Resolvers without one never call it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.errors import InvalidTargetError
from grpc_balancer.target import Target


class ResolverListener(Protocol):
    """What a resolver reports to. Called on the channel's event loop."""

    def on_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """A complete new endpoint list (not a delta)."""

    def on_resolver_error(self, error: str) -> None:
        """Resolution failed; the last good list stays in use."""


class ServiceConfigListener(ResolverListener, Protocol):
    """A listener that also takes the service config a resolver's source gives."""

    def on_service_config(self, config: Mapping[str, Any], notes: Sequence[str] = ()) -> None:
        """gRPC service config JSON (``loadBalancingConfig``, ``methodConfig``,
        ``outlierDetection``, ``circuitBreakers``) replacing the resolver's previous one.
        ``notes`` name what the source configured that the config cannot carry (shown in
        ``channel.status()``). Call it before the first :meth:`on_endpoints` so the first
        endpoints already meet the right policy."""


def takes_service_config(listener: ResolverListener) -> bool:
    """Whether ``listener`` has :meth:`ServiceConfigListener.on_service_config`."""
    return callable(getattr(listener, "on_service_config", None))


class Resolver(Protocol):
    """One running resolution of one target."""

    def start(self) -> None:
        """Begin resolving; called once, on the event loop, after construction."""

    def resolve_now(self) -> None:
        """A hint that the list may be stale (e.g. a connection failed)."""

    async def close(self) -> None:
        """Stop all background work; no listener calls after this returns."""


@dataclass(frozen=True)
class ResolverOptions:
    """Knobs shared by resolvers; scheme-specific ones go in ``extra``."""

    min_refresh_s: float = 1.0
    max_refresh_s: float = 300.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        """Never shows a secret: ``extra`` values are shown only for keys that cannot
        hold one (a password, token, key or credential is ``'***'``)."""
        shown = {k: "***" if _secret(k) else v for k, v in self.extra.items()}
        return (
            f"ResolverOptions(min_refresh_s={self.min_refresh_s!r}, "
            f"max_refresh_s={self.max_refresh_s!r}, extra={shown!r})"
        )


_SECRET_WORDS = ("pass", "pwd", "secret", "token", "key", "cred", "auth")


def _secret(name: object) -> bool:
    text = str(name).lower()
    return any(word in text for word in _SECRET_WORDS)


ResolverFactory = Callable[[Target, ResolverListener, ResolverOptions], Resolver]

# Two tiers, so a user's registration wins whenever it happens: before or after the
# built-in module of the same scheme is imported (lazily here, or directly by anyone).
_REGISTRY: dict[str, ResolverFactory] = {}  # the user's
_BUILTIN_FACTORIES: dict[str, ResolverFactory] = {}  # what the built-in modules register

#: The built-in schemes, each module imported (and registering its schemes) on first use
#: of one: only an ``etcd://`` target loads the etcd client (aetcd and etcd's protos).
_BUILTIN = {
    "static": "grpc_balancer.resolvers.static",
    "ipv4": "grpc_balancer.resolvers.static",
    "ipv6": "grpc_balancer.resolvers.static",
    "dns": "grpc_balancer.resolvers.dns",
    "dns+srv": "grpc_balancer.resolvers.dns",
    "etcd": "grpc_balancer.resolvers.etcd",
    "xds": "grpc_balancer.resolvers.xds",
    "unix": "grpc_balancer.resolvers.passthrough",
    "unix-abstract": "grpc_balancer.resolvers.passthrough",
    "passthrough": "grpc_balancer.resolvers.passthrough",
}


def register_resolver(scheme: str, factory: ResolverFactory) -> None:
    """Make ``scheme://`` targets resolvable by ``factory``. A registration replaces an
    earlier one of the same scheme and always wins over a built-in resolver of that
    scheme (for channels created after it)."""
    _REGISTRY[_check_scheme(scheme)] = factory


def register_builtin_resolver(scheme: str, factory: ResolverFactory) -> None:
    """For grpc_balancer's own resolver modules: used only where no user registered ``scheme``."""
    _BUILTIN_FACTORIES[_check_scheme(scheme)] = factory


def _check_scheme(scheme: str) -> str:
    if not scheme or not scheme[0].isalpha():
        raise ValueError(f"invalid resolver scheme {scheme!r}")
    return scheme.lower()


def get_resolver_factory(target: Target) -> ResolverFactory:
    factory = _REGISTRY.get(target.scheme)
    if factory is not None:
        return factory
    if target.scheme not in _BUILTIN_FACTORIES:
        _load_builtin(target.scheme)
    try:
        return _BUILTIN_FACTORIES[target.scheme]
    except KeyError:
        known = ", ".join(registered_schemes())
        raise InvalidTargetError(
            f"target {target.raw!r}: unknown scheme {target.scheme!r} (known: {known})"
        ) from None


def registered_schemes() -> list[str]:
    """Every usable scheme: the registered ones and the built-ins (not imported for this)."""
    return sorted(_REGISTRY.keys() | _BUILTIN.keys() | _BUILTIN_FACTORIES.keys())


def _load_builtin(scheme: str) -> None:
    """The lazy seam: import the built-in module for ``scheme`` (it registers its schemes
    with :func:`register_builtin_resolver`, a tier below the user's registrations)."""
    module = _BUILTIN.get(scheme)
    if module is not None:
        importlib.import_module(module)
