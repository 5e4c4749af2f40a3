"""xDS resources as plain values: what :mod:`.decode` keeps of each one.

No protobuf here. Each value carries ``notes``: the fields it had that grpc_balancer
does not apply, so the channel can show them (``channel.status().xds_notes``) instead
of dropping them silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from grpc_balancer.endpoint import Endpoint

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
TYPES = (LISTENER, ROUTE, CLUSTER, ENDPOINTS)
SHORT = {LISTENER: "lds", ROUTE: "rds", CLUSTER: "cds", ENDPOINTS: "eds"}
#: Types whose every response is the full set (a subscribed name missing: deleted).
FULL_STATE = frozenset({LISTENER, CLUSTER})


@dataclass(frozen=True, slots=True)
class Route:
    """One route: how it matches, where it goes, and its per-route call settings."""

    #: ``path`` (exact), ``prefix``, or ``other`` (a match grpc_balancer cannot express
    #: as a method config name: regex, headers, case-insensitive...; ``what`` says which).
    match: str
    value: str
    what: str = ""
    #: (cluster, weight) pairs; empty when the route does not forward (``what`` says why).
    clusters: tuple[tuple[str, int], ...] = ()
    timeout_s: float | None = None
    #: gRPC's ``retryPolicy`` JSON (gRFC A44), or None.
    retry: Mapping[str, Any] | None = None
    hash_header: str | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class VirtualHost:
    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]
    retry: Mapping[str, Any] | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteConfig:
    name: str
    virtual_hosts: tuple[VirtualHost, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    #: RDS name to watch, or the inline route config (exactly one is set).
    route_config_name: str | None
    route_config: RouteConfig | None
    #: HttpConnectionManager's default max_stream_duration (gRFC A31), seconds.
    default_timeout_s: float | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str
    eds_service_name: str
    #: The policy as a gRPC ``loadBalancingConfig`` entry: name and JSON config.
    policy: str
    policy_config: Mapping[str, Any] = field(default_factory=dict)
    #: gRPC's ``outlierDetection`` JSON (gRFC A50), or None.
    outlier_detection: Mapping[str, Any] | None = None
    #: circuit_breakers DEFAULT max_requests (None: not set).
    max_requests: int | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Endpoints:
    name: str
    #: HEALTHY / UNKNOWN endpoints only, with weight, priority and locality metadata.
    endpoints: tuple[Endpoint, ...]
    #: Endpoints left out for their health status (DRAINING, UNHEALTHY, ...).
    unhealthy: int = 0
    notes: tuple[str, ...] = ()


Resource = Listener | RouteConfig | Cluster | Endpoints
