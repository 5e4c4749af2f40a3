"""xDS resources (protobuf ``Any``) → :mod:`.model` values, validated as gRPC's client does.

A resource that breaks a rule of gRFC A27/A28 (and A31, A39, A44, A50, A52) raises
:class:`ResourceError` with the reason the client NACKs it with; the last good value
stays in use. A field that is valid but that grpc_balancer does not apply becomes a
note on the value (never silently dropped). Fields that gRPC clients ignore as well and
that only mean something to a proxy (``connect_timeout``, ``stat_prefix``, Envoy's
upstream HTTP options) are ignored without a note.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3 import (
    client_side_weighted_round_robin_pb2 as wrr_pb2,
)
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.pick_first.v3 import pick_first_pb2
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.load_balancing_policies.wrr_locality.v3 import wrr_locality_pb2
from google.protobuf import json_format
from udpa.type.v1 import typed_struct_pb2 as udpa_typed_struct_pb2
from xds.type.v3 import typed_struct_pb2

from grpc_balancer._xds_client.model import (
    CLUSTER,
    ENDPOINTS,
    LISTENER,
    ROUTE,
    Cluster,
    Endpoints,
    Listener,
    Resource,
    Route,
    RouteConfig,
    VirtualHost,
)
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.policies.base import registered_policies
from grpc_balancer.target import join_host_port
from grpc_balancer.xds.resources import POLICY_EXTENSION_PREFIX

HCM_TYPE = "type.googleapis.com/" + hcm_pb2.HttpConnectionManager.DESCRIPTOR.full_name
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
#: gRFC A44: the retry_on values gRPC clients understand → status code names.
RETRY_ON = {
    "cancelled": "CANCELLED",
    "deadline-exceeded": "DEADLINE_EXCEEDED",
    "internal": "INTERNAL",
    "resource-exhausted": "RESOURCE_EXHAUSTED",
    "unavailable": "UNAVAILABLE",
}
MAX_RETRY_ATTEMPTS = 5  # gRPC caps maxAttempts at 5
USABLE_HEALTH = (health_check_pb2.UNKNOWN, health_check_pb2.HEALTHY)
_LB_ENUM_NAMES = {v: k for k, v in cluster_pb2.Cluster.LbPolicy.items()}


class ResourceError(Exception):
    """This resource is NACKed: ``name`` (may be empty if it did not even parse), why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(reason)
        self.name = name
        self.reason = reason


def decode(type_url: str, packed: Any) -> tuple[str, Resource]:
    """The resource's name and value; :class:`ResourceError` if it cannot be used."""
    decoders: dict[str, tuple[Any, Callable[[Any], Resource]]] = {
        LISTENER: (listener_pb2.Listener, _listener),
        ROUTE: (route_pb2.RouteConfiguration, _route_config),
        CLUSTER: (cluster_pb2.Cluster, _cluster),
        ENDPOINTS: (endpoint_pb2.ClusterLoadAssignment, _endpoints),
    }
    message_type, fn = decoders[type_url]
    if packed.type_url != type_url:
        raise ResourceError("", f"resource of type {packed.type_url!r} in a {type_url} response")
    message = message_type()
    try:
        packed.Unpack(message)
    except Exception as exc:  # DecodeError: the bytes are not the message
        raise ResourceError("", f"cannot parse the resource: {exc}") from None
    name = _name_of(message)
    try:
        return name, fn(message)
    except ResourceError as exc:
        raise ResourceError(name, exc.reason) from None


def _name_of(message: Any) -> str:
    if isinstance(message, endpoint_pb2.ClusterLoadAssignment):
        return str(message.cluster_name)
    return str(message.name)


def _seconds(duration: Any) -> float:
    return float(duration.seconds) + float(duration.nanos) / 1e9


def json_duration(seconds: float) -> str:
    text = f"{seconds:.9f}".rstrip("0").rstrip(".")
    return f"{text}s"


def _unused(where: str, message: Any, handled: Iterable[str]) -> list[str]:
    """Notes for the fields set in ``message`` that are not in ``handled``."""
    known = set(handled)
    return [
        f"{where}: {fd.name} is not applied"
        for fd, _ in message.ListFields()
        if fd.name not in known
    ]


def _check_ads(where: str, source: Any) -> None:
    """gRFC A27: a ConfigSource must be ``ads`` or ``self``."""
    if not (source.HasField("ads") or source.HasField("self")):
        raise ResourceError("", f"{where}: config source must be ads or self")


# -- LDS ------------------------------------------------------------------------------------
def _listener(listener: Any) -> Listener:
    name = listener.name
    if not listener.HasField("api_listener"):
        raise ResourceError(name, "listener has no api_listener (not a gRPC client listener)")
    packed = listener.api_listener.api_listener
    if packed.type_url != HCM_TYPE:
        raise ResourceError(
            name, f"api_listener is not an HttpConnectionManager (type {packed.type_url!r})"
        )
    hcm = hcm_pb2.HttpConnectionManager()
    if not packed.Unpack(hcm):
        raise ResourceError(name, "api_listener's HttpConnectionManager does not parse")
    notes = _unused(f"lds {name}", listener, {"name", "api_listener"})
    notes += _http_filters(name, hcm)
    default_timeout = None
    options = hcm.common_http_protocol_options
    if options.HasField("max_stream_duration"):
        default_timeout = _seconds(options.max_stream_duration) or None
    notes += _unused(
        f"lds {name}: http_connection_manager.common_http_protocol_options",
        options,
        {"max_stream_duration"},
    )
    notes += _unused(
        f"lds {name}: http_connection_manager",
        hcm,
        {"rds", "route_config", "http_filters", "common_http_protocol_options",
         "stat_prefix", "codec_type"},
    )  # fmt: skip
    which = hcm.WhichOneof("route_specifier")
    if which == "rds":
        _check_ads(f"listener {name}: rds", hcm.rds.config_source)
        if not hcm.rds.route_config_name:
            raise ResourceError(name, "rds.route_config_name is empty")
        return Listener(name, hcm.rds.route_config_name, None, default_timeout, tuple(notes))
    if which == "route_config":
        inline = _route_config(hcm.route_config)
        return Listener(name, None, inline, default_timeout, tuple(notes))
    raise ResourceError(
        name, f"HttpConnectionManager must have rds or route_config (has {which or 'neither'})"
    )


def _http_filters(name: str, hcm: Any) -> list[str]:
    """gRFC A39: the filter list ends with the router; others are not applied here."""
    filters = list(hcm.http_filters)
    if not filters:
        raise ResourceError(name, "http_filters is empty (the router filter must be last)")
    last = filters[-1]
    if last.typed_config.type_url != ROUTER_TYPE:
        raise ResourceError(name, f"the last http filter {last.name!r} is not the router")
    names = set()
    notes = []
    for f in filters:
        if f.name in names:
            raise ResourceError(name, f"http filter {f.name!r} appears twice")
        names.add(f.name)
        if f is not last and f.typed_config.type_url == ROUTER_TYPE:
            raise ResourceError(name, f"the router filter {f.name!r} is not the last filter")
        if f is not last:
            notes.append(f"lds {name}: http filter {f.name!r} is not applied")
    return notes


# -- RDS ------------------------------------------------------------------------------------
def _route_config(rc: Any) -> RouteConfig:
    where = f"rds {rc.name}" if rc.name else "inline route_config"
    hosts = tuple(_virtual_host(where, vh) for vh in rc.virtual_hosts)
    notes = _unused(where, rc, {"name", "virtual_hosts"})
    return RouteConfig(rc.name, hosts, tuple(notes))


def _virtual_host(where: str, vh: Any) -> VirtualHost:
    here = f"{where} virtual host {vh.name!r}"
    if not vh.domains:
        raise ResourceError("", f"{here} has no domains")
    retry = _retry(here, vh.retry_policy) if vh.HasField("retry_policy") else None
    routes = tuple(_route(here, i, r) for i, r in enumerate(vh.routes))
    notes = _unused(here, vh, {"name", "domains", "routes", "retry_policy"})
    return VirtualHost(vh.name, tuple(vh.domains), routes, retry, tuple(notes))


def _route(where: str, index: int, route: Any) -> Route:
    here = f"{where} route {index}"
    match = route.match
    kind = match.WhichOneof("path_specifier")
    what = ""
    value = ""
    if kind == "prefix":
        value = match.prefix
    elif kind == "path":
        value = match.path
    elif kind == "safe_regex":
        what = "a regex path match"
    elif kind is None:
        raise ResourceError("", f"{here}: match has no path specifier")
    else:
        what = f"a {kind} match"
    if match.HasField("case_sensitive") and not match.case_sensitive.value:
        what = what or "a case-insensitive match"
    extra = [f.name for f, _ in match.ListFields() if f.name not in ("prefix", "path",
             "safe_regex", "case_sensitive")]  # fmt: skip
    if extra and not what:
        what = f"a match on {', '.join(extra)}"
    notes = _unused(here, route, {"name", "match", "route"})
    action = route.WhichOneof("action")
    if action != "route":
        reason = f"action {action}" if action else "no action"
        return Route("other", value, what or f"a route with {reason}", (), notes=tuple(notes))
    ra = route.route
    clusters = _clusters(here, ra)
    timeout = None
    if ra.HasField("max_stream_duration"):
        msd = ra.max_stream_duration
        if msd.HasField("grpc_timeout_header_max"):
            timeout = _seconds(msd.grpc_timeout_header_max) or None
        elif msd.HasField("max_stream_duration"):
            timeout = _seconds(msd.max_stream_duration) or None
    retry = _retry(here, ra.retry_policy) if ra.HasField("retry_policy") else None
    hash_header = None
    for hp in ra.hash_policy:
        if hp.HasField("header") and hash_header is None:
            hash_header = hp.header.header_name
        elif not hp.HasField("header"):
            notes.append(f"{here}: hash_policy {hp.WhichOneof('policy_specifier')} is not applied")
    # ``timeout`` (Envoy's route timeout) is not what gRPC reads (A31): ignored as there.
    notes += _unused(
        f"{here}: route",
        ra,
        {"cluster", "weighted_clusters", "max_stream_duration", "retry_policy",
         "hash_policy", "timeout"},
    )  # fmt: skip
    if not clusters:
        what = what or "a route to a cluster_header or plugin"
    return Route(
        "other" if what else kind or "other",
        value,
        what,
        clusters,
        timeout,
        retry,
        hash_header,
        tuple(notes),
    )


def _clusters(where: str, ra: Any) -> tuple[tuple[str, int], ...]:
    which = ra.WhichOneof("cluster_specifier")
    if which == "cluster":
        if not ra.cluster:
            raise ResourceError("", f"{where}: route to an empty cluster name")
        return ((ra.cluster, 1),)
    if which == "weighted_clusters":
        out = []
        for wc in ra.weighted_clusters.clusters:
            if not wc.name:
                raise ResourceError("", f"{where}: weighted cluster with an empty name")
            weight = wc.weight.value if wc.HasField("weight") else 0
            if weight:
                out.append((wc.name, weight))
        if not out or sum(w for _, w in out) > 2**32 - 1:
            raise ResourceError("", f"{where}: weighted_clusters total weight must be 1..2^32-1")
        return tuple(out)
    return ()


def _retry(where: str, policy: Any) -> Mapping[str, Any] | None:
    """gRFC A44 → gRPC's retryPolicy JSON (None: no code gRPC retries on)."""
    codes = sorted(
        {RETRY_ON[c.strip()] for c in policy.retry_on.split(",") if c.strip() in RETRY_ON}
    )
    base_s, max_s = 0.025, None
    if policy.HasField("retry_back_off"):
        back_off = policy.retry_back_off
        if not back_off.HasField("base_interval"):
            raise ResourceError("", f"{where}: retry_back_off.base_interval is required")
        base_s = _seconds(back_off.base_interval)
        if base_s <= 0:
            raise ResourceError("", f"{where}: retry_back_off.base_interval must be > 0")
        if back_off.HasField("max_interval"):
            max_s = _seconds(back_off.max_interval)
            if max_s < base_s:
                raise ResourceError(
                    "", f"{where}: retry_back_off.max_interval is below base_interval"
                )
    if max_s is None:
        max_s = 10 * base_s
    if not codes:
        return None
    retries = policy.num_retries.value if policy.HasField("num_retries") else 1
    if retries == 0:
        return None
    return {
        "maxAttempts": min(retries + 1, MAX_RETRY_ATTEMPTS),
        "initialBackoff": json_duration(base_s),
        "maxBackoff": json_duration(max_s),
        "backoffMultiplier": 2,
        "retryableStatusCodes": codes,
    }


# -- CDS ------------------------------------------------------------------------------------
def _cluster(cluster: Any) -> Cluster:
    name = cluster.name
    kind = cluster.WhichOneof("cluster_discovery_type")
    if kind != "type" or cluster.type != cluster_pb2.Cluster.EDS:
        what = cluster_pb2.Cluster.DiscoveryType.Name(cluster.type) if kind == "type" else kind
        raise ResourceError(name, f"cluster type {what} is not supported (only EDS)")
    eds = cluster.eds_cluster_config
    _check_ads(f"cluster {name}: eds_config", eds.eds_config)
    notes = _unused(
        f"cds {name}",
        cluster,
        {"name", "type", "eds_cluster_config", "lb_policy", "load_balancing_policy",
         "ring_hash_lb_config", "least_request_lb_config", "outlier_detection",
         "circuit_breakers", "connect_timeout", "typed_extension_protocol_options"},
    )  # fmt: skip
    policy, config, policy_notes = _lb_policy(name, cluster)
    notes += policy_notes
    outlier = None
    if cluster.HasField("outlier_detection"):
        outlier, more = _outlier(name, cluster.outlier_detection)
        notes += more
    max_requests = None
    for threshold in cluster.circuit_breakers.thresholds:
        if threshold.priority != base_pb2.DEFAULT:
            notes.append(f"cds {name}: circuit breakers for priority HIGH are not applied")
            continue
        max_requests = threshold.max_requests.value if threshold.HasField("max_requests") else 1024
        notes += _unused(f"cds {name}: circuit_breakers", threshold, {"priority", "max_requests"})
    if max_requests == 0:
        raise ResourceError(name, "circuit_breakers max_requests must be >= 1")
    return Cluster(
        name,
        eds.service_name or name,
        policy,
        config,
        outlier,
        max_requests,
        tuple(notes),
    )


def _lb_policy(name: str, cluster: Any) -> tuple[str, dict[str, Any], list[str]]:
    """``load_balancing_policy`` (A52) when set, else the ``lb_policy`` enum."""
    if cluster.HasField("load_balancing_policy"):
        tried = []
        for entry in cluster.load_balancing_policy.policies:
            ext = entry.typed_extension_config
            found = _typed_policy(name, ext.typed_config, depth=0)
            if found is not None:
                return found
            tried.append(ext.name or ext.typed_config.type_url)
        raise ResourceError(
            name, f"no supported policy in load_balancing_policy (tried: {', '.join(tried)})"
        )
    lb = cluster.lb_policy
    if lb == cluster_pb2.Cluster.ROUND_ROBIN:
        return "round_robin", {}, []
    if lb == cluster_pb2.Cluster.LEAST_REQUEST:
        config: dict[str, Any] = {}
        lr = cluster.least_request_lb_config
        if lr.HasField("choice_count"):
            config["choiceCount"] = _choice_count(name, lr.choice_count.value)
        return "least_request", config, []
    if lb == cluster_pb2.Cluster.RING_HASH:
        ring = cluster.ring_hash_lb_config
        if ring.hash_function != cluster_pb2.Cluster.RingHashLbConfig.XX_HASH:
            raise ResourceError(name, "ring_hash_lb_config.hash_function must be XX_HASH")
        return "ring_hash", _ring_sizes(name, ring), []
    what = _LB_ENUM_NAMES.get(lb, str(lb))
    raise ResourceError(name, f"lb_policy {what} is not supported")


def _typed_policy(
    name: str, packed: Any, depth: int
) -> tuple[str, dict[str, Any], list[str]] | None:
    """One load_balancing_policy entry → (policy, config, notes); None: not ours."""
    type_name = packed.type_url.rsplit("/", 1)[-1]
    notes: list[str] = []
    if type_name == round_robin_pb2.RoundRobin.DESCRIPTOR.full_name:
        rr = round_robin_pb2.RoundRobin()
        packed.Unpack(rr)
        notes += _unused(f"cds {name}: round_robin", rr, ())
        return "round_robin", {}, notes
    if type_name == ring_hash_pb2.RingHash.DESCRIPTOR.full_name:
        ring = ring_hash_pb2.RingHash()
        packed.Unpack(ring)
        if ring.hash_function not in (ring_hash_pb2.RingHash.DEFAULT_HASH,
                                      ring_hash_pb2.RingHash.XX_HASH):  # fmt: skip
            raise ResourceError(name, "ring_hash hash_function must be XX_HASH")
        notes += _unused(
            f"cds {name}: ring_hash", ring, {"hash_function", "minimum_ring_size",
                                             "maximum_ring_size"}
        )  # fmt: skip
        return "ring_hash", _ring_sizes(name, ring), notes
    if type_name == least_request_pb2.LeastRequest.DESCRIPTOR.full_name:
        lr = least_request_pb2.LeastRequest()
        packed.Unpack(lr)
        config: dict[str, Any] = {}
        if lr.HasField("choice_count"):
            config["choiceCount"] = _choice_count(name, lr.choice_count.value)
        notes += _unused(f"cds {name}: least_request", lr, {"choice_count"})
        return "least_request", config, notes
    if type_name == wrr_pb2.ClientSideWeightedRoundRobin.DESCRIPTOR.full_name:
        wrr = wrr_pb2.ClientSideWeightedRoundRobin()
        packed.Unpack(wrr)
        config = {}
        for attr, key in (
            ("blackout_period", "blackoutPeriod"),
            ("weight_expiration_period", "weightExpirationPeriod"),
            ("weight_update_period", "weightUpdatePeriod"),
            ("oob_reporting_period", "oobReportingPeriod"),
        ):
            if wrr.HasField(attr):
                config[key] = json_duration(_seconds(getattr(wrr, attr)))
        if wrr.HasField("enable_oob_load_report"):
            config["enableOobLoadReport"] = wrr.enable_oob_load_report.value
        if wrr.HasField("error_utilization_penalty"):
            penalty = wrr.error_utilization_penalty.value
            if penalty < 0:
                raise ResourceError(name, "error_utilization_penalty must be >= 0")
            config["errorUtilizationPenalty"] = penalty
        notes += _unused(
            f"cds {name}: client_side_weighted_round_robin",
            wrr,
            {"blackout_period", "weight_expiration_period", "weight_update_period",
             "oob_reporting_period", "enable_oob_load_report", "error_utilization_penalty"},
        )  # fmt: skip
        return "weighted_round_robin", config, notes
    if type_name == pick_first_pb2.PickFirst.DESCRIPTOR.full_name:
        pf = pick_first_pb2.PickFirst()
        packed.Unpack(pf)
        config = {"shuffleAddressList": True} if pf.shuffle_address_list else {}
        return "pick_first", config, notes
    if type_name == wrr_locality_pb2.WrrLocality.DESCRIPTOR.full_name and depth == 0:
        wl = wrr_locality_pb2.WrrLocality()
        packed.Unpack(wl)
        for entry in wl.endpoint_picking_policy.policies:
            found = _typed_policy(name, entry.typed_extension_config.typed_config, depth + 1)
            if found is not None:
                policy, config, inner = found
                note = f"cds {name}: wrr_locality: locality weights are not applied"
                return policy, config, [note, *inner]
        raise ResourceError(name, "wrr_locality has no supported endpoint_picking_policy")
    if type_name in (
        typed_struct_pb2.TypedStruct.DESCRIPTOR.full_name,
        udpa_typed_struct_pb2.TypedStruct.DESCRIPTOR.full_name,
    ):
        return _custom_policy(name, packed, type_name)
    return None


def _custom_policy(
    name: str, packed: Any, type_name: str
) -> tuple[str, dict[str, Any], list[str]] | None:
    """gRFC A52 custom policy: a TypedStruct whose type URL ends in a policy name."""
    if type_name.startswith("xds."):
        ts: Any = typed_struct_pb2.TypedStruct()
    else:
        ts = udpa_typed_struct_pb2.TypedStruct()
    packed.Unpack(ts)
    policy = ts.type_url.rsplit("/", 1)[-1]
    policy = policy.removeprefix(POLICY_EXTENSION_PREFIX)
    if policy not in registered_policies():
        return None
    config = json_format.MessageToDict(ts.value)
    return policy, config, []


def _choice_count(name: str, value: int) -> int:
    if value < 2:
        raise ResourceError(name, f"least_request choice_count must be >= 2, got {value}")
    return min(value, 10)  # gRPC clamps to 10


def _ring_sizes(name: str, ring: Any) -> dict[str, Any]:
    config: dict[str, Any] = {}
    low = ring.minimum_ring_size.value if ring.HasField("minimum_ring_size") else 1024
    high = ring.maximum_ring_size.value if ring.HasField("maximum_ring_size") else 8_388_608
    if not 1 <= low <= high <= 8_388_608:
        raise ResourceError(name, f"ring_hash ring sizes {low}..{high} out of range 1..8388608")
    if ring.HasField("minimum_ring_size"):
        config["minRingSize"] = low
    if ring.HasField("maximum_ring_size"):
        config["maxRingSize"] = high
    return config


def _outlier(name: str, od: Any) -> tuple[dict[str, Any], list[str]]:
    """gRFC A50 → gRPC's outlierDetection JSON (plus our consecutiveFailures)."""
    out: dict[str, Any] = {}
    for attr, key in (
        ("interval", "interval"),
        ("base_ejection_time", "baseEjectionTime"),
        ("max_ejection_time", "maxEjectionTime"),
    ):
        if od.HasField(attr):
            seconds = _seconds(getattr(od, attr))
            if seconds <= 0:
                raise ResourceError(name, f"outlier_detection.{attr} must be > 0")
            out[key] = json_duration(seconds)

    def value(attr: str, default: int, percent: bool = False) -> int:
        v = int(getattr(od, attr).value) if od.HasField(attr) else default
        if percent and v > 100:
            raise ResourceError(name, f"outlier_detection.{attr} must be <= 100, got {v}")
        return v

    out["maxEjectionPercent"] = value("max_ejection_percent", 10, percent=True)
    enforcing_sr = value("enforcing_success_rate", 100, percent=True)
    if enforcing_sr:
        out["successRateEjection"] = {
            "stdevFactor": value("success_rate_stdev_factor", 1900),
            "enforcementPercentage": enforcing_sr,
            "minimumHosts": value("success_rate_minimum_hosts", 5),
            "requestVolume": value("success_rate_request_volume", 100),
        }
    enforcing_fp = value("enforcing_failure_percentage", 0, percent=True)
    if enforcing_fp:
        out["failurePercentageEjection"] = {
            "threshold": value("failure_percentage_threshold", 85, percent=True),
            "enforcementPercentage": enforcing_fp,
            "minimumHosts": value("failure_percentage_minimum_hosts", 5),
            "requestVolume": value("failure_percentage_request_volume", 50),
        }
    # gRPC ignores consecutive_5xx; grpc_balancer applies it when enforcement is set.
    enforcing_cf = value("enforcing_consecutive_5xx", 0, percent=True)
    if od.HasField("enforcing_consecutive_5xx") and enforcing_cf:
        out["consecutiveFailures"] = {
            "threshold": max(1, value("consecutive_5xx", 5)),
            "enforcementPercentage": enforcing_cf,
        }
    handled = {
        "interval", "base_ejection_time", "max_ejection_time", "max_ejection_percent",
        "enforcing_success_rate", "success_rate_stdev_factor", "success_rate_minimum_hosts",
        "success_rate_request_volume", "enforcing_failure_percentage",
        "failure_percentage_threshold", "failure_percentage_minimum_hosts",
        "failure_percentage_request_volume", "enforcing_consecutive_5xx", "consecutive_5xx",
    }  # fmt: skip
    notes = [
        n
        for n in _unused(f"cds {name}: outlier_detection", od, handled)
        # an explicit 0 says "off", which is what not applying it does
        if not (n.endswith("enforcing_consecutive_gateway_failure is not applied")
                and od.enforcing_consecutive_gateway_failure.value == 0)
    ]  # fmt: skip
    return out, notes


# -- EDS ------------------------------------------------------------------------------------
def _endpoints(cla: Any) -> Endpoints:
    name = cla.cluster_name
    notes = _unused(f"eds {name}", cla, {"cluster_name", "endpoints", "policy"})
    if cla.HasField("policy"):
        if cla.policy.drop_overloads:
            notes.append(f"eds {name}: drop_overloads are not applied")
        notes += _unused(
            f"eds {name}: policy", cla.policy, {"drop_overloads", "overprovisioning_factor"}
        )
    priorities: set[int] = set()
    out: list[Endpoint] = []
    seen: set[str] = set()
    unhealthy = 0
    proportional = True
    unused: set[str] = set()  # one note per field, not per endpoint
    for locality in cla.endpoints:
        weight = locality.load_balancing_weight.value
        if not weight:
            notes.append(f"eds {name}: a locality without load_balancing_weight is left out")
            continue
        priorities.add(locality.priority)
        meta = {
            key: value
            for key, value in (
                ("zone", locality.locality.zone),
                ("region", locality.locality.region),
                ("sub_zone", locality.locality.sub_zone),
            )
            if value
        }
        members = 0
        unused.update(
            f"locality {fd.name}" for fd, _ in locality.ListFields()
            if fd.name not in ("locality", "lb_endpoints", "load_balancing_weight", "priority")
        )  # fmt: skip
        for lb in locality.lb_endpoints:
            unused.update(
                f"endpoint {fd.name}" for fd, _ in lb.ListFields()
                if fd.name not in ("endpoint", "health_status", "load_balancing_weight")
            )  # fmt: skip
            unused.update(
                f"endpoint {fd.name}" for fd, _ in lb.endpoint.ListFields() if fd.name != "address"
            )
            address = _address(name, lb)
            if address in seen:
                raise ResourceError(name, f"endpoint {address} appears twice")
            seen.add(address)
            ep_weight = (
                lb.load_balancing_weight.value if lb.HasField("load_balancing_weight") else 1
            )
            if ep_weight < 1:
                raise ResourceError(name, f"endpoint {address}: load_balancing_weight must be >= 1")
            if lb.health_status not in USABLE_HEALTH:
                unhealthy += 1
                continue
            members += ep_weight
            out.append(Endpoint(address, ep_weight, locality.priority, meta))
        proportional = proportional and members in (0, weight)
    if priorities and priorities != set(range(len(priorities))):
        raise ResourceError(name, f"priorities {sorted(priorities)} are not dense from 0")
    if not proportional:
        notes.append(f"eds {name}: locality weights are not applied (endpoint weights are)")
    notes += [f"eds {name}: {field} is not applied" for field in sorted(unused)]
    return Endpoints(name, tuple(out), unhealthy, tuple(notes))


def _address(name: str, lb: Any) -> str:
    endpoint = lb.endpoint
    if not endpoint.address.HasField("socket_address"):
        raise ResourceError(name, "an endpoint address is not a socket_address")
    socket = endpoint.address.socket_address
    if socket.WhichOneof("port_specifier") != "port_value" or not 0 < socket.port_value < 65536:
        raise ResourceError(name, f"endpoint {socket.address}: port_value must be 1..65535")
    if not socket.address:
        raise ResourceError(name, "an endpoint has an empty address")
    return join_host_port(socket.address, socket.port_value)


#: The status a NACK's error_detail carries (gRPC sends INVALID_ARGUMENT).
NACK_CODE = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def describe(errors: Mapping[str, str]) -> str:
    """One error_detail message for every rejected resource of a response."""
    return "; ".join(f"{name or '(unnamed)'}: {reason}" for name, reason in errors.items())
