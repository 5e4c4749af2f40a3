"""``static:///h1:p1,h2:p2`` and gRPC's ``ipv4:``/``ipv6:`` address lists.

The list is validated when the channel is created, so a typo fails at once rather
than at the first call.
"""

from __future__ import annotations

from collections.abc import Sequence

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.errors import InvalidTargetError
from grpc_balancer.resolvers.base import (
    ResolverListener,
    ResolverOptions,
    register_builtin_resolver,
)
from grpc_balancer.target import Target, is_ip_literal, join_host_port, split_host_port, split_list

SCHEMES = ("static", "ipv4", "ipv6")


def parse_static_endpoints(target: Target) -> list[Endpoint]:
    """Validate and dedupe the list, keeping its order (pick_first relies on it)."""
    if target.authority:
        raise InvalidTargetError(
            f"target {target.raw!r}: {target.scheme} targets take no authority "
            f"(write {target.scheme}:///{target.endpoint})"
        )
    seen: dict[str, Endpoint] = {}
    for item in split_list(target):
        host, port = split_host_port(item, what="address")
        if target.scheme == "ipv4" and not _is_ipv4(host):
            raise InvalidTargetError(f"target {target.raw!r}: {host!r} is not an IPv4 address")
        if target.scheme == "ipv6" and not (is_ip_literal(host) and ":" in host):
            raise InvalidTargetError(f"target {target.raw!r}: {host!r} is not an IPv6 address")
        address = join_host_port(host, port)
        seen.setdefault(address, Endpoint(address))
    return list(seen.values())


def _is_ipv4(host: str) -> bool:
    return is_ip_literal(host) and ":" not in host


class StaticResolver:
    """Pushes its fixed list once; nothing to refresh."""

    def __init__(self, target: Target, listener: ResolverListener, options: ResolverOptions):
        self._endpoints: Sequence[Endpoint] = parse_static_endpoints(target)
        self._listener = listener

    def start(self) -> None:
        self._listener.on_endpoints(self._endpoints)

    def resolve_now(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<StaticResolver {[e.address for e in self._endpoints]}>"


for _scheme in SCHEMES:
    register_builtin_resolver(_scheme, StaticResolver)
