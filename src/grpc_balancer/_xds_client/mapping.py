"""One target's xDS resources → the cluster to watch and a gRPC service config.

The virtual host is chosen by the target's name as gRPC does (exact domain, then the
longest ``*.suffix``, then the longest ``prefix.*``, then ``*``). Its routes become
``methodConfig`` entries — a ``path`` match ``/svc/Method`` names that method, a prefix
``/svc/`` that service, ``""`` or ``/`` the default — with the route's (or the
listener's) max_stream_duration as ``timeout`` and its (or the virtual host's) retry
policy. A grpc_balancer channel balances one cluster: routes to more than one cluster
(``weighted_clusters`` over several, or different clusters per route) are refused with a
clear error; the cluster's policy, outlier detection and circuit breakers complete the
config. What cannot be expressed is returned as notes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from grpc_balancer._xds_client.decode import json_duration
from grpc_balancer._xds_client.model import Cluster, Listener, RouteConfig, VirtualHost


class MappingError(Exception):
    """The resources are valid xDS but this channel cannot follow them (not a NACK)."""


@dataclass(frozen=True, slots=True)
class Routing:
    """What the route config says for this target."""

    cluster: str
    method_config: tuple[dict[str, Any], ...]
    hash_header: str | None
    notes: tuple[str, ...]


def match_virtual_host(hosts: Sequence[VirtualHost], authority: str) -> VirtualHost | None:
    best: tuple[int, int] | None = None
    found = None
    host = authority.lower()
    for vh in hosts:
        for domain in vh.domains:
            rank = _domain_rank(domain.lower(), host)
            if rank is not None and (best is None or rank > best):
                best, found = rank, vh
    return found


def _domain_rank(pattern: str, host: str) -> tuple[int, int] | None:
    """(kind, length): higher is a better match; None: no match."""
    if pattern == "*":
        return (0, 1)
    if pattern.startswith("*"):
        return (2, len(pattern)) if host.endswith(pattern[1:]) else None
    if pattern.endswith("*"):
        return (1, len(pattern)) if host.startswith(pattern[:-1]) else None
    return (3, len(pattern)) if pattern == host else None


def routing(listener: Listener, rc: RouteConfig, authority: str) -> Routing:
    vh = match_virtual_host(rc.virtual_hosts, authority)
    if vh is None:
        domains = sorted({d for v in rc.virtual_hosts for d in v.domains})
        raise MappingError(
            f"route config {rc.name!r}: no virtual host matches {authority!r} "
            f"(domains: {', '.join(domains) or 'none'})"
        )
    notes = list(rc.notes) + list(vh.notes)
    clusters: dict[str, None] = {}
    entries: list[dict[str, Any]] = []
    seen_default = False
    seen: set[tuple[str, str]] = set()
    hash_header = None
    for i, route in enumerate(vh.routes):
        notes += route.notes
        for cluster_name, _ in route.clusters:
            clusters.setdefault(cluster_name)
        if route.clusters and hash_header is None:
            hash_header = route.hash_header
        where = f"route {i} of virtual host {vh.name!r}"
        has_settings = route.timeout_s is not None or route.retry is not None
        if route.match == "other":
            if has_settings or not route.clusters:
                notes.append(f"{where} ({route.what}) has no method config equivalent")
            continue
        method_name = _method_name(route.match, route.value)
        if method_name is None:
            notes.append(f"{where}: {route.match} {route.value!r} is not a gRPC method name")
            continue
        key = (method_name.get("service", ""), method_name.get("method", ""))
        if seen_default or key in seen or (key[1] and (key[0], "") in seen):
            notes.append(f"{where} never matches (an earlier route takes its calls)")
            continue
        seen.add(key)
        seen_default = seen_default or key == ("", "")
        entry: dict[str, Any] = {"name": [method_name]}
        timeout = route.timeout_s if route.timeout_s is not None else listener.default_timeout_s
        if timeout:
            entry["timeout"] = json_duration(timeout)
        retry = route.retry if route.retry is not None else vh.retry
        if retry is not None:
            entry["retryPolicy"] = dict(retry)
        entries.append(entry)
    if not clusters:
        raise MappingError(f"virtual host {vh.name!r} has no route to a cluster")
    if len(clusters) > 1:
        raise MappingError(
            f"virtual host {vh.name!r} routes to clusters {', '.join(clusters)}: a "
            "grpc_balancer channel balances one cluster (route each to its own target)"
        )
    # Trailing empty entries say nothing (nothing else would match those calls).
    while entries and set(entries[-1]) == {"name"} and entries[-1]["name"] == [{}]:
        entries.pop()
    (cluster,) = clusters
    return Routing(cluster, tuple(entries), hash_header, tuple(notes))


def _method_name(match: str, value: str) -> dict[str, str] | None:
    if match == "prefix":
        if value in ("", "/"):
            return {}
        parts = value.split("/")
        if len(parts) == 3 and not parts[0] and parts[1] and not parts[2]:
            return {"service": parts[1]}
        return None
    parts = value.split("/")
    if len(parts) == 3 and not parts[0] and parts[1] and parts[2]:
        return {"service": parts[1], "method": parts[2]}
    return None


def service_config(route: Routing, cluster: Cluster) -> dict[str, Any]:
    """The gRPC service config JSON the channel applies."""
    policy_config = dict(cluster.policy_config)
    if cluster.policy == "ring_hash" and route.hash_header:
        policy_config["requestHashHeader"] = route.hash_header
    config: dict[str, Any] = {"loadBalancingConfig": [{cluster.policy: policy_config}]}
    if route.method_config:
        config["methodConfig"] = [dict(e) for e in route.method_config]
    if cluster.outlier_detection is not None:
        config["outlierDetection"] = dict(cluster.outlier_detection)
    if cluster.max_requests is not None:
        config["circuitBreakers"] = {"maxRequests": cluster.max_requests}
    return config
