"""xDS resources built from the config model and the endpoint lists (protobuf here only).

:func:`build_world` makes everything one kind of client may see: per service a
Listener (an API listener for proxyless gRPC, a socket listener for Envoy, both with an
HttpConnectionManager that names the route config over ADS and ends in the router
filter), a RouteConfiguration, an EDS Cluster and its ClusterLoadAssignment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    extension_pb2,
    health_check_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3 import (
    client_side_weighted_round_robin_pb2 as wrr_pb2,
)
from envoy.extensions.load_balancing_policies.pick_first.v3 import pick_first_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from xds.type.v3 import typed_struct_pb2

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.xds.capabilities import Capabilities, choose_policy
from grpc_balancer.xds.model import PolicySpec, RouteSpec, ServiceSpec, XdsConfig
from grpc_balancer.xds.stream import CLUSTER, ENDPOINTS, LISTENER, ROUTE, Entry, World

ROUTER_FILTER = "envoy.filters.http.router"
HCM_FILTER = "envoy.filters.network.http_connection_manager"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
#: How a grpc_balancer policy without an Envoy message is named in load_balancing_policy:
#: the typed extension name, and the TypedStruct type URL (its last part is the policy).
POLICY_EXTENSION_PREFIX = "grpc_balancer.load_balancing_policies."
POLICY_TYPE_URL = "type.googleapis.com/" + POLICY_EXTENSION_PREFIX
#: gRPC status codes a route retry policy can name (gRFC A44), as Envoy spells them.
RETRY_ON = {
    "CANCELLED": "cancelled",
    "DEADLINE_EXCEEDED": "deadline-exceeded",
    "INTERNAL": "internal",
    "RESOURCE_EXHAUSTED": "resource-exhausted",
    "UNAVAILABLE": "unavailable",
}
_ENUM_POLICIES = {
    "round_robin": cluster_pb2.Cluster.ROUND_ROBIN,
    "ring_hash": cluster_pb2.Cluster.RING_HASH,
    "least_request": cluster_pb2.Cluster.LEAST_REQUEST,
    "random": cluster_pb2.Cluster.RANDOM,
    "maglev": cluster_pb2.Cluster.MAGLEV,
}
#: A Cluster.LbPolicy value no client knows: what the ``break`` test hook sends.
INVALID_LB_POLICY = 99


@dataclass(frozen=True, slots=True)
class Profile:
    """What decides a client's view: its listener flavour and its capabilities."""

    flavour: str
    caps: Capabilities


@dataclass(frozen=True, slots=True)
class Built:
    world: World
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Faults:
    """Test hooks: (short type, service) pairs to serve a deliberately invalid resource."""

    broken: frozenset[tuple[str, str]] = field(default_factory=frozenset)


def build_world(
    config: XdsConfig,
    endpoints: Mapping[str, Sequence[Endpoint]],
    profile: Profile,
    faults: Faults = Faults(),
) -> Built:
    out: dict[str, dict[str, Entry]] = {LISTENER: {}, ROUTE: {}, CLUSTER: {}, ENDPOINTS: {}}
    warnings = []
    for name, spec in config.services.items():
        policy, warning = choose_policy(spec, profile.caps)
        if warning:
            warnings.append(warning)
        if profile.flavour == "api" or spec.listener_port:
            listener = build_listener(spec, profile.flavour)
            if ("lds", name) in faults.broken:
                listener.api_listener.api_listener.Pack(router_pb2.Router())  # not an HCM
            out[LISTENER][name] = _entry(listener)
        route_config = build_route_config(spec)
        if ("rds", name) in faults.broken:  # a virtual host that matches no domain
            del route_config.virtual_hosts[0].domains[:]
        out[ROUTE][spec.route_config_name] = _entry(route_config)
        cluster = build_cluster(spec, policy, envoy=profile.flavour == "envoy")
        if ("cds", name) in faults.broken:
            cluster.lb_policy = INVALID_LB_POLICY
            cluster.ClearField("load_balancing_policy")
        out[CLUSTER][spec.cluster_name] = _entry(cluster)
        eps = endpoints.get(name)
        if eps is not None:
            cla = build_load_assignment(spec, eps)
            if ("eds", name) in faults.broken:  # priorities with a gap
                for locality in cla.endpoints:
                    locality.priority += 1
            out[ENDPOINTS][spec.cluster_name] = _entry(cla)
    return Built(out, tuple(warnings))


def _entry(message: Any) -> Entry:
    """The resource packed once (every stream that gets it sends these bytes)."""
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return Entry(packed, hashlib.sha256(packed.value).hexdigest()[:16])


def _ads() -> Any:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def _any(message: Any) -> Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _duration(seconds: float) -> Any:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


# -- LDS --------------------------------------------------------------------------------------
def build_listener(spec: ServiceSpec, flavour: str) -> Any:
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix=spec.name,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=spec.route_config_name),
        http_filters=[
            hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=_any(router_pb2.Router()))
        ],
    )
    if flavour == "api":
        return listener_pb2.Listener(
            name=spec.name, api_listener=api_listener_pb2.ApiListener(api_listener=_any(hcm))
        )
    return listener_pb2.Listener(
        name=spec.name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                address="127.0.0.1", port_value=spec.listener_port
            )
        ),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name=HCM_FILTER, typed_config=_any(hcm))]
            )
        ],
    )


# -- RDS --------------------------------------------------------------------------------------
def build_route_config(spec: ServiceSpec) -> Any:
    routes = [_route(spec, r) for r in spec.routes]
    return route_pb2.RouteConfiguration(
        name=spec.route_config_name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(name=spec.name, domains=["*"], routes=routes)
        ],
    )


def _route(spec: ServiceSpec, route: RouteSpec) -> Any:
    if route.method:
        match = route_components_pb2.RouteMatch(path=f"/{route.service}/{route.method}")
    elif route.service:
        match = route_components_pb2.RouteMatch(prefix=f"/{route.service}/")
    else:
        match = route_components_pb2.RouteMatch(prefix="")
    action = route_components_pb2.RouteAction(cluster=spec.cluster_name)
    # Envoy's default route timeout is 15s, wrong for streams: 0 is none.
    action.timeout.CopyFrom(_duration(route.timeout_s or 0.0))
    if route.timeout_s:
        # What gRPC reads (gRFC A31); Envoy reads ``timeout`` above.
        action.max_stream_duration.max_stream_duration.CopyFrom(_duration(route.timeout_s))
    if route.retry is not None:
        retry = route.retry
        action.retry_policy.CopyFrom(
            route_components_pb2.RetryPolicy(
                retry_on=",".join(sorted(RETRY_ON[c.name] for c in retry.retryable_codes)),
                num_retries=wrappers_pb2.UInt32Value(value=retry.max_attempts - 1),
                retry_back_off=route_components_pb2.RetryPolicy.RetryBackOff(
                    base_interval=_duration(retry.initial_backoff_s),
                    max_interval=_duration(retry.max_backoff_s),
                ),
            )
        )
    if spec.hash_header:
        action.hash_policy.append(
            route_components_pb2.RouteAction.HashPolicy(
                header=route_components_pb2.RouteAction.HashPolicy.Header(
                    header_name=spec.hash_header
                )
            )
        )
    return route_components_pb2.Route(match=match, route=action)


# -- CDS --------------------------------------------------------------------------------------
def build_cluster(spec: ServiceSpec, policy: PolicySpec, *, envoy: bool = False) -> Any:
    cluster = cluster_pb2.Cluster(
        name=spec.cluster_name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=_ads(), service_name=spec.cluster_name
        ),
        connect_timeout=_duration(1.0),
    )
    _set_policy(cluster, policy)
    if spec.outlier is not None:
        cluster.outlier_detection.CopyFrom(_outlier(spec))
    if spec.max_requests:
        cluster.circuit_breakers.CopyFrom(
            circuit_breaker_pb2.CircuitBreakers(
                thresholds=[
                    circuit_breaker_pb2.CircuitBreakers.Thresholds(
                        priority=base_pb2.DEFAULT,
                        max_requests=wrappers_pb2.UInt32Value(value=spec.max_requests),
                    )
                ]
            )
        )
    if envoy:  # Envoy speaks HTTP/1.1 upstream unless told; gRPC needs HTTP/2
        options = http_protocol_options_pb2.HttpProtocolOptions()
        options.explicit_http_config.http2_protocol_options.SetInParent()
        cluster.typed_extension_protocol_options[HTTP_OPTIONS].Pack(options)
    return cluster


def _set_policy(cluster: Any, policy: PolicySpec) -> None:
    cfg = policy.config
    if policy.name in _ENUM_POLICIES:
        cluster.lb_policy = _ENUM_POLICIES[policy.name]
    if policy.name == "ring_hash":
        ring = cluster.ring_hash_lb_config
        ring.hash_function = cluster_pb2.Cluster.RingHashLbConfig.XX_HASH
        if "minRingSize" in cfg:
            ring.minimum_ring_size.value = cfg["minRingSize"]
        if "maxRingSize" in cfg:
            ring.maximum_ring_size.value = cfg["maxRingSize"]
    elif policy.name == "least_request" and "choiceCount" in cfg:
        cluster.least_request_lb_config.choice_count.value = cfg["choiceCount"]
    elif policy.name == "maglev" and "tableSize" in cfg:
        cluster.maglev_lb_config.table_size.value = cfg["tableSize"]
    elif policy.name == "pick_first":
        pf = pick_first_pb2.PickFirst(shuffle_address_list=bool(cfg.get("shuffleAddressList")))
        _typed_policy(cluster, "envoy.load_balancing_policies.pick_first", pf)
    elif policy.name == "weighted_round_robin":
        wrr = wrr_pb2.ClientSideWeightedRoundRobin()
        for key, attr in (
            ("blackoutPeriod", "blackout_period"),
            ("weightExpirationPeriod", "weight_expiration_period"),
            ("weightUpdatePeriod", "weight_update_period"),
            ("oobReportingPeriod", "oob_reporting_period"),
        ):
            if key in cfg:
                getattr(wrr, attr).CopyFrom(_duration(float(cfg[key].rstrip("s"))))
        if "enableOobLoadReport" in cfg:
            wrr.enable_oob_load_report.value = cfg["enableOobLoadReport"]
        if "errorUtilizationPenalty" in cfg:
            wrr.error_utilization_penalty.value = cfg["errorUtilizationPenalty"]
        _typed_policy(
            cluster, "envoy.load_balancing_policies.client_side_weighted_round_robin", wrr
        )
    elif policy.name == "peak_ewma":
        _custom_policy(cluster, policy)


def _custom_policy(cluster: Any, policy: PolicySpec) -> None:
    """A grpc_balancer policy with no Envoy message (peak_ewma): gRFC A52's custom-policy
    form, a TypedStruct whose type URL ends in the policy's name, its JSON config as the
    Struct. Only grpc_balancer clients are sent it (see capabilities.ACCEPTS)."""
    config = typed_struct_pb2.TypedStruct(type_url=f"{POLICY_TYPE_URL}{policy.name}")
    config.value.update(dict(policy.config))
    _typed_policy(cluster, f"{POLICY_EXTENSION_PREFIX}{policy.name}", config)


def _typed_policy(cluster: Any, name: str, message: Any) -> None:
    cluster.load_balancing_policy.policies.append(
        cluster_pb2.LoadBalancingPolicy.Policy(
            typed_extension_config=extension_pb2.TypedExtensionConfig(
                name=name, typed_config=_any(message)
            )
        )
    )


def _outlier(spec: ServiceSpec) -> Any:
    o = spec.outlier
    assert o is not None
    out = outlier_detection_pb2.OutlierDetection(
        interval=_duration(o.interval_s),
        base_ejection_time=_duration(o.base_ejection_s),
        max_ejection_time=_duration(o.max_ejection_s),
    )
    out.max_ejection_percent.value = o.max_ejection_percent
    # Unset enforcing_* fields default to "on" in Envoy (success rate, consecutive 5xx)
    # and for success rate in gRPC too: every algorithm is set explicitly.
    sr = o.success_rate
    out.enforcing_success_rate.value = sr.enforcement_percentage if sr else 0
    if sr:
        out.success_rate_stdev_factor.value = sr.stdev_factor
        out.success_rate_minimum_hosts.value = sr.minimum_hosts
        out.success_rate_request_volume.value = sr.request_volume
    fp = o.failure_percentage
    out.enforcing_failure_percentage.value = fp.enforcement_percentage if fp else 0
    if fp:
        out.failure_percentage_threshold.value = fp.threshold
        out.failure_percentage_minimum_hosts.value = fp.minimum_hosts
        out.failure_percentage_request_volume.value = fp.request_volume
    cf = o.consecutive_failures
    out.enforcing_consecutive_5xx.value = cf.enforcement_percentage if cf else 0
    out.enforcing_consecutive_gateway_failure.value = 0
    if cf:
        out.consecutive_5xx.value = cf.threshold
    return out


# -- EDS --------------------------------------------------------------------------------------
def build_load_assignment(spec: ServiceSpec, endpoints: Sequence[Endpoint]) -> Any:
    """Localities from each endpoint's ``zone`` metadata, priorities made dense from 0
    (gRPC requires it); a weight-0 endpoint (draining) is left out."""
    groups: dict[tuple[int, str], list[Endpoint]] = {}
    for ep in endpoints:
        if ep.weight <= 0:
            continue
        zone = str(ep.metadata.get("zone", "")) if ep.metadata else ""
        groups.setdefault((ep.priority, zone), []).append(ep)
    ranks = {p: i for i, p in enumerate(sorted({p for p, _ in groups}))}
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=spec.cluster_name)
    for (priority, zone), members in sorted(groups.items()):
        locality = endpoint_components_pb2.LocalityLbEndpoints(
            locality=base_pb2.Locality(zone=zone),
            priority=ranks[priority],
            load_balancing_weight=wrappers_pb2.UInt32Value(value=sum(e.weight for e in members)),
        )
        for ep in sorted(members, key=lambda e: e.address):
            host, port = split_address(ep.address)
            locality.lb_endpoints.append(
                endpoint_components_pb2.LbEndpoint(
                    endpoint=endpoint_components_pb2.Endpoint(
                        address=address_pb2.Address(
                            socket_address=address_pb2.SocketAddress(address=host, port_value=port)
                        )
                    ),
                    health_status=health_check_pb2.HEALTHY,
                    load_balancing_weight=wrappers_pb2.UInt32Value(value=ep.weight),
                )
            )
        cla.endpoints.append(locality)
    return cla


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
