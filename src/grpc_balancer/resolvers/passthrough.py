"""Targets grpcio dials as they are: ``unix:path``, ``unix:///abs/path``,
``unix-abstract:name`` (one Unix domain socket each) and ``passthrough:///address``
(handed to grpcio unchanged, e.g. for a proxy or a name grpcio resolves itself).
"""

from __future__ import annotations

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.errors import InvalidTargetError
from grpc_balancer.resolvers.base import (
    ResolverListener,
    ResolverOptions,
    register_builtin_resolver,
)
from grpc_balancer.target import Target

SCHEMES = ("unix", "unix-abstract", "passthrough")


def passthrough_address(target: Target) -> str:
    """The address grpcio dials for ``target``."""
    if target.scheme == "passthrough":
        return target.endpoint
    if target.authority:
        raise InvalidTargetError(
            f"target {target.raw!r}: {target.scheme} targets take no authority "
            f"(write {target.scheme}:{target.endpoint} or unix:///absolute/path)"
        )
    if target.scheme == "unix":
        return f"unix:{target.endpoint}"
    return f"unix-abstract:{target.endpoint}"


class PassthroughResolver:
    """One endpoint, pushed once; nothing to refresh."""

    def __init__(self, target: Target, listener: ResolverListener, options: ResolverOptions):
        self._endpoint = Endpoint(passthrough_address(target))
        self._listener = listener

    def start(self) -> None:
        self._listener.on_endpoints([self._endpoint])

    def resolve_now(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<PassthroughResolver {self._endpoint.address}>"


for _scheme in SCHEMES:
    register_builtin_resolver(_scheme, PassthroughResolver)
