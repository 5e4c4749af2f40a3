"""The Resolver protocol and the scheme registry.

A resolver turns a target into endpoint lists and pushes each new list to its
listener (the channel). It never empties a working list on an error: it reports the
error with :meth:`ResolverListener.on_resolver_error` and keeps retrying; an empty
*valid* answer is pushed as an empty list and honoured.
"""

from __future__ import annotations

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


ResolverFactory = Callable[[Target, ResolverListener, ResolverOptions], Resolver]

_REGISTRY: dict[str, ResolverFactory] = {}


def register_resolver(scheme: str, factory: ResolverFactory) -> None:
    """Make ``scheme://`` targets resolvable by ``factory`` (replaces an earlier one)."""
    if not scheme or not scheme[0].isalpha():
        raise ValueError(f"invalid resolver scheme {scheme!r}")
    _REGISTRY[scheme.lower()] = factory


def get_resolver_factory(target: Target) -> ResolverFactory:
    _load_builtin()
    try:
        return _REGISTRY[target.scheme]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise InvalidTargetError(
            f"target {target.raw!r}: unknown scheme {target.scheme!r} (known: {known})"
        ) from None


def registered_schemes() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    # Imported lazily: each module registers its own schemes.
    import importlib

    for module in ("static", "dns", "etcd"):
        try:
            importlib.import_module(f"grpc_balancer.resolvers.{module}")
        except ModuleNotFoundError as exc:  # a resolver module not written yet
            if exc.name != f"grpc_balancer.resolvers.{module}":
                raise
