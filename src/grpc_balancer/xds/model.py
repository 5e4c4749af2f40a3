"""The control plane's config model: what each service is and how it balances.

Plain values, no protobuf: :mod:`.config` builds them from the config file, the
resource builders (:mod:`.resources`) turn them into xDS resources, and
:mod:`.capabilities` may lower a policy for a client that cannot take it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from grpc_balancer._attempts.retry import RetryPolicy
from grpc_balancer._core.outlier import OutlierConfig

#: The policies a service may name, as gRPC spells them in ``loadBalancingConfig``.
POLICIES = (
    "round_robin",
    "pick_first",
    "ring_hash",
    "least_request",
    "weighted_round_robin",  # gRPC's client_side_weighted_round_robin (ORCA)
    "random",
    "maglev",
    # grpc_balancer's own, sent only to grpc_balancer clients (a gRFC A52 TypedStruct).
    "peak_ewma",
)
ALIASES = {
    "client_side_weighted_round_robin": "weighted_round_robin",
    "ring_hash_experimental": "ring_hash",
    "least_request_experimental": "least_request",
}

#: Listener flavours: ``api`` for proxyless gRPC (an API listener), ``envoy`` for a
#: proxy (a real socket listener with the same HttpConnectionManager).
LISTENER_FLAVOURS = ("api", "envoy")


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """One load-balancing policy and its settings (gRPC's JSON names, e.g.
    ``{"minRingSize": 1024}`` for ring_hash, ``{"choiceCount": 2}`` for least_request)."""

    name: str = "round_robin"
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One route of a service: which calls it matches and what the method config says.

    ``service`` / ``method`` empty mean any; an exact method becomes a ``path`` match,
    a service a ``prefix`` ``/service/``, the default ``prefix ""``."""

    service: str = ""
    method: str = ""
    timeout_s: float | None = None
    retry: RetryPolicy | None = None


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    name: str
    target: str
    policy: PolicySpec = field(default_factory=PolicySpec)
    #: Fallbacks in the order given (a ``loadBalancingConfig`` list), for clients
    #: that do not take the first.
    alternatives: tuple[PolicySpec, ...] = ()
    routes: tuple[RouteSpec, ...] = (RouteSpec(),)
    hash_header: str | None = None
    outlier: OutlierConfig | None = None
    max_requests: int = 0
    #: Envoy flavour: the port its listener binds (0: no listener for this service).
    listener_port: int = 0

    @property
    def cluster_name(self) -> str:
        return self.name

    @property
    def route_config_name(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class XdsConfig:
    services: Mapping[str, ServiceSpec]
    #: node id (or ``*``) → listener flavour; default ``api`` unless the node is Envoy.
    listener_flavours: Mapping[str, str] = field(default_factory=dict)


def is_ip_address(address: str) -> bool:
    """``host:port`` with an IP literal host (IPv6 in brackets)."""
    import ipaddress

    host = address.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
