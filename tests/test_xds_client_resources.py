"""grpc_balancer's xDS client without a server: bootstrap, decoding (what is NACKed and
why), and the mapping of one target's resources to endpoints and a service config.

Resources come from the control plane's own builders (what our server sends) and are
then bent into the shapes other control planes send, or into invalid ones.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("envoy")

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.load_balancing_policies.wrr_locality.v3 import wrr_locality_pb2
from google.protobuf import any_pb2

from grpc_balancer._config.service_config import load_service_config
from grpc_balancer._xds_client.bootstrap import BootstrapError, load_bootstrap, parse_bootstrap
from grpc_balancer._xds_client.decode import ResourceError, decode
from grpc_balancer._xds_client.mapping import MappingError, routing, service_config
from grpc_balancer._xds_client.model import CLUSTER, ENDPOINTS, LISTENER, ROUTE
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.xds import bootstrap, from_node, parse_config
from grpc_balancer.xds.resources import Profile, build_world

OURS = from_node("grpc-balancer", "0.1.0")
RETRY = {
    "maxAttempts": 3,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def world(service: dict[str, Any], endpoints: list[Endpoint] | None = None) -> Any:
    config = parse_config({"services": {"greeter": {"target": "static:///127.0.0.1:1", **service}}})
    eps = {"greeter": endpoints if endpoints is not None else [Endpoint("127.0.0.1:1")]}
    return build_world(config, eps, Profile("api", OURS)).world


def message(w: Any, type_url: str, cls: Any, name: str = "greeter") -> Any:
    out = cls()
    assert w[type_url][name].resource.Unpack(out)
    return out


def packed(msg: Any) -> Any:
    out = any_pb2.Any()
    out.Pack(msg)
    return out


def value(type_url: str, msg: Any) -> Any:
    return decode(type_url, packed(msg))[1]


def nack_reason(type_url: str, msg: Any) -> str:
    with pytest.raises(ResourceError) as info:
        decode(type_url, packed(msg))
    return info.value.reason


def resolved(service: dict[str, Any], endpoints: list[Endpoint] | None = None) -> Any:
    """(service config, notes, endpoints) as the resolver would push them."""
    w = world(service, endpoints)
    listener = decode(LISTENER, w[LISTENER]["greeter"].resource)[1]
    rc = decode(ROUTE, w[ROUTE]["greeter"].resource)[1]
    cluster = decode(CLUSTER, w[CLUSTER]["greeter"].resource)[1]
    eds = decode(ENDPOINTS, w[ENDPOINTS]["greeter"].resource)[1]
    route = routing(listener, rc, "greeter")
    return service_config(route, cluster), route.notes + cluster.notes + eds.notes, eds


# -- bootstrap -------------------------------------------------------------------------------
def test_bootstrap_from_extra_then_the_file_then_the_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GRPC_XDS_BOOTSTRAP", raising=False)
    monkeypatch.setenv("GRPC_XDS_BOOTSTRAP_CONFIG", json.dumps(bootstrap("h:3", "from-env")))
    assert load_bootstrap().node.id == "from-env"
    path = tmp_path / "b.json"
    path.write_text(json.dumps(bootstrap("h:2", "from-file")))
    monkeypatch.setenv("GRPC_XDS_BOOTSTRAP", str(path))
    got = load_bootstrap()
    assert (got.node.id, got.server.uri, got.server.creds) == ("from-file", "h:2", "insecure")
    assert load_bootstrap({"bootstrap": bootstrap("h:1", "given")}).node.id == "given"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{", "not valid JSON"),
        ({}, "xds_servers must be a non-empty list"),
        ({"xds_servers": [{"server_uri": "h:1"}]}, "channel_creds must be a non-empty list"),
        ({"xds_servers": [{"server_uri": "h:1", "channel_creds": [{"type": "alts"}]}]},
         "none of ['alts'] is supported"),
        ({"xds_servers": [{"channel_creds": [{"type": "insecure"}]}]}, "server_uri"),
        ({**bootstrap("h:1"), "client_default_listener_resource_name_template": "xdstp://a/%s"},
         "federation"),
    ],
)  # fmt: skip
def test_a_bad_bootstrap_is_one_clear_error(raw: Any, message: str) -> None:
    with pytest.raises(BootstrapError, match="^where: .*" + message.replace("[", r"\[")):
        parse_bootstrap(raw, "where")


def test_no_bootstrap_says_how_to_give_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRPC_XDS_BOOTSTRAP", raising=False)
    monkeypatch.delenv("GRPC_XDS_BOOTSTRAP_CONFIG", raising=False)
    with pytest.raises(BootstrapError, match="GRPC_XDS_BOOTSTRAP"):
        load_bootstrap()


# -- what our control plane sends, mapped back ---------------------------------------------------
def test_our_control_plane_s_resources_map_back_to_the_service_config() -> None:
    config, notes, eds = resolved(
        {
            "policy": [{"ring_hash": {"minRingSize": 64}}],
            "hash_header": "x-user",
            "service_config": {
                "methodConfig": [
                    {"name": [{"service": "greeter.Greeter", "method": "SayHello"}],
                     "timeout": "5s", "retryPolicy": RETRY},
                    {"name": [{}], "timeout": "10s"},
                ],
                "outlierDetection": {"interval": "1s",
                                     "failurePercentageEjection": {"threshold": 90}},
                "circuitBreakers": {"maxRequests": 50},
            },
        },
        [Endpoint("10.0.0.1:80", weight=3, metadata={"zone": "z1"}),
         Endpoint("10.0.0.2:80", priority=5)],
    )  # fmt: skip
    assert config["loadBalancingConfig"] == [
        {"ring_hash": {"minRingSize": 64, "requestHashHeader": "x-user"}}
    ]
    assert config["methodConfig"] == [
        {"name": [{"service": "greeter.Greeter", "method": "SayHello"}], "timeout": "5s",
         "retryPolicy": RETRY},
        {"name": [{}], "timeout": "10s"},
    ]  # fmt: skip
    assert config["outlierDetection"] == {
        "interval": "1s",
        "baseEjectionTime": "30s",
        "maxEjectionTime": "300s",
        "maxEjectionPercent": 10,
        "failurePercentageEjection": {
            "threshold": 90, "enforcementPercentage": 100, "minimumHosts": 5, "requestVolume": 50,
        },
    }  # fmt: skip
    assert config["circuitBreakers"] == {"maxRequests": 50}
    assert notes == ()
    load_service_config(config)  # the channel takes it
    assert sorted(eds.endpoints, key=lambda e: e.address) == [
        Endpoint("10.0.0.1:80", 3, 0, {"zone": "z1"}),
        Endpoint("10.0.0.2:80", 1, 1),  # priorities made dense by the server
    ]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("round_robin", {"round_robin": {}}),
        ("pick_first", {"pick_first": {}}),
        ([{"least_request": {"choiceCount": 3}}], {"least_request": {"choiceCount": 3}}),
        ([{"weighted_round_robin": {"blackoutPeriod": "2s", "enableOobLoadReport": True}}],
         {"weighted_round_robin": {"blackoutPeriod": "2s", "enableOobLoadReport": True}}),
        ([{"peak_ewma": {"decayTime": "5s"}}], {"peak_ewma": {"decayTime": "5s"}}),
    ],
)  # fmt: skip
def test_each_policy_comes_back_as_our_policy(policy: Any, expected: dict[str, Any]) -> None:
    config, notes, _ = resolved({"policy": policy})
    assert config["loadBalancingConfig"] == [expected]
    assert notes == ()


# -- other control planes' shapes --------------------------------------------------------------
def test_wrr_locality_around_round_robin_is_round_robin_with_a_note() -> None:
    cluster = message(world({}), CLUSTER, cluster_pb2.Cluster)
    cluster.ClearField("load_balancing_policy")
    inner = cluster_pb2.LoadBalancingPolicy()
    inner.policies.add().typed_extension_config.typed_config.Pack(round_robin_pb2.RoundRobin())
    wl = wrr_locality_pb2.WrrLocality(endpoint_picking_policy=inner)
    entry = cluster.load_balancing_policy.policies.add()
    entry.typed_extension_config.typed_config.Pack(wl)
    got = value(CLUSTER, cluster)
    assert (got.policy, got.policy_config) == ("round_robin", {})
    assert any("locality weights are not applied" in n for n in got.notes)


def test_an_unknown_typed_policy_is_skipped_for_the_next_one() -> None:
    cluster = message(world({}), CLUSTER, cluster_pb2.Cluster)
    first = cluster.load_balancing_policy.policies.add().typed_extension_config
    first.name = "some.vendor.policy"
    first.typed_config.type_url = "type.googleapis.com/some.vendor.Policy"
    cluster.load_balancing_policy.policies.add().typed_extension_config.typed_config.Pack(
        round_robin_pb2.RoundRobin()
    )
    assert value(CLUSTER, cluster).policy == "round_robin"


def test_unused_fields_are_notes_not_silence() -> None:
    cluster = message(world({}), CLUSTER, cluster_pb2.Cluster)
    cluster.lrs_server.self.SetInParent()
    cluster.outlier_detection.consecutive_gateway_failure.value = 3
    notes = value(CLUSTER, cluster).notes
    assert "cds greeter: lrs_server is not applied" in notes
    assert "cds greeter: outlier_detection: consecutive_gateway_failure is not applied" in notes


def test_eds_health_weights_and_localities() -> None:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="c")
    for priority, zone, ports in ((0, "z1", (1, 2)), (1, "z2", (3,))):
        locality = cla.endpoints.add(priority=priority)
        locality.locality.zone = zone
        locality.load_balancing_weight.value = len(ports) * 2
        for port in ports:
            lb = locality.lb_endpoints.add()
            lb.endpoint.address.socket_address.address = "10.0.0.1"
            lb.endpoint.address.socket_address.port_value = port
            lb.load_balancing_weight.value = 2
    cla.endpoints[0].lb_endpoints[1].health_status = health_check_pb2.DRAINING
    got = value(ENDPOINTS, cla)
    assert got.endpoints == (
        Endpoint("10.0.0.1:1", 2, 0, {"zone": "z1"}),
        Endpoint("10.0.0.1:3", 2, 1, {"zone": "z2"}),
    )
    assert got.unhealthy == 1


# -- NACKed, with the reason ---------------------------------------------------------------------
def _listener_not_hcm() -> Any:
    listener = message(world({}), LISTENER, listener_pb2.Listener)
    listener.api_listener.api_listener.Pack(route_pb2.RouteConfiguration())
    return listener


def _listener_without_router() -> Any:
    listener = message(world({}), LISTENER, listener_pb2.Listener)
    hcm = hcm_pb2.HttpConnectionManager()
    listener.api_listener.api_listener.Unpack(hcm)
    del hcm.http_filters[:]
    listener.api_listener.api_listener.Pack(hcm)
    return listener


def _cluster(**changes: Any) -> Any:
    cluster = message(world({}), CLUSTER, cluster_pb2.Cluster)
    cluster.ClearField("load_balancing_policy")
    for key, v in changes.items():
        setattr(cluster, key, v)
    return cluster


def _cla_gap() -> Any:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="c")
    locality = cla.endpoints.add(priority=1)
    locality.load_balancing_weight.value = 1
    lb = locality.lb_endpoints.add()
    lb.endpoint.address.socket_address.address = "10.0.0.1"
    lb.endpoint.address.socket_address.port_value = 1
    return cla


def _cla_duplicate() -> Any:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="c")
    locality = cla.endpoints.add()
    locality.load_balancing_weight.value = 2
    for _ in range(2):
        lb = locality.lb_endpoints.add()
        lb.endpoint.address.socket_address.address = "10.0.0.1"
        lb.endpoint.address.socket_address.port_value = 1
    return cla


def _route_zero_backoff() -> Any:
    rc = message(world({"service_config": {"methodConfig": [{"name": [{}],
                 "retryPolicy": RETRY}]}}), ROUTE, route_pb2.RouteConfiguration)  # fmt: skip
    rc.virtual_hosts[0].routes[0].route.retry_policy.retry_back_off.base_interval.nanos = 0
    rc.virtual_hosts[0].routes[0].route.retry_policy.retry_back_off.base_interval.seconds = 0
    return rc


@pytest.mark.parametrize(
    ("type_url", "build", "reason"),
    [
        (LISTENER, _listener_not_hcm, "api_listener is not an HttpConnectionManager"),
        (LISTENER, _listener_without_router, "http_filters is empty"),
        (LISTENER, lambda: listener_pb2.Listener(name="x"), "no api_listener"),
        (CLUSTER, lambda: _cluster(lb_policy=99), "lb_policy 99 is not supported"),
        (CLUSTER, lambda: _cluster(lb_policy=cluster_pb2.Cluster.MAGLEV),
         "lb_policy MAGLEV is not supported"),
        (CLUSTER, lambda: _cluster(type=cluster_pb2.Cluster.STRICT_DNS),
         "cluster type STRICT_DNS is not supported"),
        (ENDPOINTS, _cla_gap, "priorities [1] are not dense"),
        (ENDPOINTS, _cla_duplicate, "appears twice"),
        (ROUTE, _route_zero_backoff, "base_interval must be > 0"),
    ],
)  # fmt: skip
def test_an_unusable_resource_is_nacked_with_a_reason(type_url: str, build: Any,
                                                      reason: str) -> None:  # fmt: skip
    assert reason in nack_reason(type_url, build())


def test_a_resource_of_the_wrong_type_is_nacked() -> None:
    with pytest.raises(ResourceError, match="resource of type"):
        decode(LISTENER, packed(cluster_pb2.Cluster(name="x")))


# -- routing ---------------------------------------------------------------------------------------
def _rc(*hosts: tuple[str, list[str], str]) -> Any:
    rc = route_pb2.RouteConfiguration(name="rc")
    for name, domains, cluster in hosts:
        vh = rc.virtual_hosts.add(name=name, domains=domains)
        vh.routes.add(match=route_components_pb2.RouteMatch(prefix=""),
                      route=route_components_pb2.RouteAction(cluster=cluster))  # fmt: skip
    return value(ROUTE, rc)


def _listener() -> Any:
    return value(LISTENER, message(world({}), LISTENER, listener_pb2.Listener))


def test_the_virtual_host_is_the_best_domain_match() -> None:
    rc = _rc(("any", ["*"], "a"), ("suffix", ["*.example.com"], "b"),
             ("exact", ["svc.example.com"], "c"), ("prefix", ["svc.*"], "d"))  # fmt: skip
    assert routing(_listener(), rc, "svc.example.com").cluster == "c"
    assert routing(_listener(), rc, "other.example.com").cluster == "b"
    assert routing(_listener(), rc, "svc.other").cluster == "d"
    assert routing(_listener(), rc, "x").cluster == "a"
    with pytest.raises(MappingError, match="no virtual host matches 'x'"):
        routing(_listener(), _rc(("one", ["y"], "a")), "x")


def test_routes_to_two_clusters_are_refused_not_half_followed() -> None:
    rc = route_pb2.RouteConfiguration(name="rc")
    vh = rc.virtual_hosts.add(name="vh", domains=["*"])
    action = route_components_pb2.RouteAction()
    action.weighted_clusters.clusters.add(name="a").weight.value = 1
    action.weighted_clusters.clusters.add(name="b").weight.value = 1
    vh.routes.add(match=route_components_pb2.RouteMatch(prefix=""), route=action)
    with pytest.raises(MappingError, match="routes to clusters a, b"):
        routing(_listener(), value(ROUTE, rc), "greeter")


def test_routes_without_a_method_config_equivalent_are_noted() -> None:
    rc = route_pb2.RouteConfiguration(name="rc")
    vh = rc.virtual_hosts.add(name="vh", domains=["*"])
    header = route_components_pb2.RouteMatch(prefix="/greeter.Greeter/")
    header.headers.add(name="x-canary", present_match=True)
    action = route_components_pb2.RouteAction(cluster="c")
    action.max_stream_duration.max_stream_duration.seconds = 1
    vh.routes.add(match=header, route=action)
    vh.routes.add(match=route_components_pb2.RouteMatch(prefix=""),
                  route=route_components_pb2.RouteAction(cluster="c"))  # fmt: skip
    vh.routes.add(match=route_components_pb2.RouteMatch(path="/a.B/C"),
                  route=route_components_pb2.RouteAction(cluster="c"))  # fmt: skip
    got = routing(_listener(), value(ROUTE, rc), "greeter")
    assert got.method_config == ()
    assert any("a match on headers" in n for n in got.notes)
    assert any("route 2 of virtual host 'vh' never matches" in n for n in got.notes)


def test_circuit_breaker_thresholds_without_max_requests_default_like_grpc() -> None:
    cluster = _cluster()
    cluster.circuit_breakers.thresholds.add(priority=base_pb2.DEFAULT)
    assert value(CLUSTER, cluster).max_requests == 1024


def test_peak_ewma_goes_only_to_grpc_balancer_clients() -> None:
    from grpc_balancer.xds.capabilities import choose_policy

    spec = parse_config(
        {"services": {"greeter": {"target": "static:///127.0.0.1:1",
                                  "policy": [{"peak_ewma": {}}, {"round_robin": {}}]}}}
    ).services["greeter"]  # fmt: skip
    assert choose_policy(spec, OURS)[0].name == "peak_ewma"
    grpcio = from_node("gRPC C-core linux Python", "C-core 58.0.0 Python 1.85.3")
    assert choose_policy(spec, grpcio) == (spec.alternatives[0], None)


def test_unused_endpoint_fields_are_one_note_each_not_one_per_endpoint() -> None:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name="c")
    locality = cla.endpoints.add()
    locality.load_balancing_weight.value = 3
    for port in (1, 2, 3):
        lb = locality.lb_endpoints.add()
        lb.endpoint.address.socket_address.address = "10.0.0.1"
        lb.endpoint.address.socket_address.port_value = port
        lb.endpoint.hostname = f"h{port}"
    assert value(ENDPOINTS, cla).notes == ("eds c: endpoint hostname is not applied",)
