"""Capabilities and resource builders: the field mapping, and never what a client NACKs."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("envoy")

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.xds import from_node, parse_config
from grpc_balancer.xds.capabilities import choose_policy
from grpc_balancer.xds.resources import Faults, Profile, build_world
from grpc_balancer.xds.stream import CLUSTER, ENDPOINTS, LISTENER, ROUTE

CORE = from_node("gRPC C-core linux Python", "C-core 58.0.0 Python 1.85.3", ["envoy.lb.x"])
ENVOY = from_node("envoy", "1.36.0")
JS = from_node("gRPC Node Pure JS", "1.14.0")
RETRY = {
    "maxAttempts": 3,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE", "cancelled"],
}


def unpack(world: Any, type_url: str, name: str, cls: Any) -> Any:
    message = cls()
    assert world[type_url][name].resource.Unpack(message)
    return message


def build(service: dict[str, Any], caps: Any = CORE, flavour: str = "api",
          endpoints: list[Endpoint] | None = None, faults: Faults | None = None) -> Any:  # fmt: skip
    config = parse_config({"services": {"greeter": {"target": "static:///127.0.0.1:1", **service}}})
    eps = {"greeter": endpoints} if endpoints is not None else {}
    return build_world(config, eps, Profile(flavour, caps), faults or Faults())


@pytest.mark.parametrize(
    ("name", "version", "family"),
    [
        ("gRPC C-core linux Python", "C-core 58.0.0 Python 1.85.3", "grpc-core"),
        ("gRPC Node Pure JS", "1.14.0", "grpc-js"),
        ("gRPC Go", "1.70.0", "grpc-go"),
        ("gRPC Java", "1.70.0", "grpc-java"),
        ("envoy", "1.36.0", "envoy"),
        ("something else", "", "unknown"),
    ],
)
def test_the_client_family_comes_from_the_user_agent(name: str, version: str, family: str) -> None:
    assert from_node(name, version).family == family


def test_least_request_falls_back_to_round_robin_for_c_core_with_a_warning() -> None:
    built = build({"policy": "least_request"})
    cluster = unpack(built.world, CLUSTER, "greeter", cluster_pb2.Cluster)
    assert cluster.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN
    assert len(built.warnings) == 1
    assert "does not accept least_request" in built.warnings[0]
    assert "sending round_robin" in built.warnings[0]
    # Envoy takes least_request as it is.
    envoy = build({"policy": [{"least_request": {"choiceCount": 3}}]}, ENVOY, "envoy")
    cluster = unpack(envoy.world, CLUSTER, "greeter", cluster_pb2.Cluster)
    assert cluster.lb_policy == cluster_pb2.Cluster.LEAST_REQUEST
    assert cluster.least_request_lb_config.choice_count.value == 3
    assert envoy.warnings == ()


def test_the_next_policy_of_the_list_a_client_takes_is_used_without_warning() -> None:
    service = {"policy": [{"maglev": {}}, {"ring_hash": {"maxRingSize": 4096}}]}
    built = build(service, CORE)
    cluster = unpack(built.world, CLUSTER, "greeter", cluster_pb2.Cluster)
    assert cluster.lb_policy == cluster_pb2.Cluster.RING_HASH
    assert cluster.ring_hash_lb_config.maximum_ring_size.value == 4096
    assert built.warnings == ()
    spec = parse_config({"services": {"g": {"target": "static:///a:1", **service}}}).services["g"]
    assert choose_policy(spec, ENVOY)[0].name == "maglev"


@pytest.mark.parametrize(
    ("policy", "extension"),
    [
        ("pick_first", "envoy.load_balancing_policies.pick_first"),
        ("weighted_round_robin", "envoy.load_balancing_policies.client_side_weighted_round_robin"),
    ],
)
def test_policies_without_an_enum_go_in_load_balancing_policy(policy: str, extension: str) -> None:
    cluster = unpack(build({"policy": policy}).world, CLUSTER, "greeter", cluster_pb2.Cluster)
    (entry,) = cluster.load_balancing_policy.policies
    assert entry.typed_extension_config.name == extension


def test_an_api_listener_names_its_route_config_over_ads_and_ends_in_the_router() -> None:
    listener = unpack(build({}).world, LISTENER, "greeter", listener_pb2.Listener)
    hcm = hcm_pb2.HttpConnectionManager()
    assert listener.api_listener.api_listener.Unpack(hcm)
    assert hcm.rds.route_config_name == "greeter"
    assert hcm.rds.config_source.HasField("ads")
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.router"]
    assert not listener.HasField("address")


def test_an_envoy_listener_is_a_socket_with_the_same_connection_manager() -> None:
    world = build({"listener_port": 10000}, ENVOY, "envoy").world
    listener = unpack(world, LISTENER, "greeter", listener_pb2.Listener)
    assert listener.address.socket_address.port_value == 10000
    (chain,) = listener.filter_chains
    hcm = hcm_pb2.HttpConnectionManager()
    assert chain.filters[0].typed_config.Unpack(hcm)
    assert hcm.rds.route_config_name == "greeter"
    cluster = unpack(world, CLUSTER, "greeter", cluster_pb2.Cluster)
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in (
        cluster.typed_extension_protocol_options
    )
    # Without a port an Envoy gets no listener for the service (the rest it gets).
    assert build({}, ENVOY, "envoy").world[LISTENER] == {}


def test_route_timeout_retry_and_hash_policy() -> None:
    service = {
        "service_config": {
            "methodConfig": [
                {
                    "name": [{"service": "greeter.Greeter", "method": "SayHello"}],
                    "timeout": "1.5s",
                    "retryPolicy": RETRY,
                },
            ]
        },
        "hash_header": "x-user",
    }
    rc = unpack(build(service).world, ROUTE, "greeter", route_pb2.RouteConfiguration)
    (vhost,) = rc.virtual_hosts
    assert list(vhost.domains) == ["*"]
    exact, default = vhost.routes
    assert exact.match.path == "/greeter.Greeter/SayHello"
    assert exact.route.max_stream_duration.max_stream_duration.ToMilliseconds() == 1500
    assert exact.route.timeout.ToMilliseconds() == 1500
    retry = exact.route.retry_policy
    assert retry.retry_on == "cancelled,unavailable"
    assert retry.num_retries.value == 2
    assert retry.retry_back_off.base_interval.ToMilliseconds() == 100
    assert exact.route.hash_policy[0].header.header_name == "x-user"
    assert default.match.prefix == "" and default.route.cluster == "greeter"
    assert not default.route.HasField("retry_policy")


def test_outlier_detection_and_circuit_breakers() -> None:
    service = {
        "service_config": {
            "outlierDetection": {
                "interval": "2s",
                "maxEjectionPercent": 50,
                "failurePercentageEjection": {"threshold": 60, "requestVolume": 10},
            },
            "circuitBreakers": {"maxRequests": 100},
        }
    }
    cluster = unpack(build(service).world, CLUSTER, "greeter", cluster_pb2.Cluster)
    od = cluster.outlier_detection
    assert od.interval.seconds == 2 and od.max_ejection_percent.value == 50
    assert od.failure_percentage_threshold.value == 60
    assert od.failure_percentage_request_volume.value == 10
    assert od.enforcing_failure_percentage.value == 100
    # Not configured: switched off explicitly (the proto defaults would turn them on).
    assert od.enforcing_success_rate.value == 0 and od.enforcing_consecutive_5xx.value == 0
    assert cluster.circuit_breakers.thresholds[0].max_requests.value == 100
    assert cluster.type == cluster_pb2.Cluster.EDS
    assert cluster.eds_cluster_config.service_name == "greeter"


def test_endpoints_with_weights_localities_from_zone_and_dense_priorities() -> None:
    eps = [
        Endpoint("10.0.0.1:80", weight=3, metadata={"zone": "eu-1"}),
        Endpoint("10.0.0.2:80", metadata={"zone": "eu-1"}),
        Endpoint("10.0.0.3:80", metadata={"zone": "eu-2"}),
        Endpoint("[::1]:81", priority=5),
        Endpoint("10.0.0.9:80", weight=0),  # draining: left out
    ]
    built = build({}, endpoints=eps)
    cla = unpack(built.world, ENDPOINTS, "greeter", endpoint_pb2.ClusterLoadAssignment)
    got = [
        (loc.locality.zone, loc.priority, loc.load_balancing_weight.value,
         [(e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value,
           e.load_balancing_weight.value) for e in loc.lb_endpoints])
        for loc in cla.endpoints
    ]  # fmt: skip
    assert got == [
        ("eu-1", 0, 4, [("10.0.0.1", 80, 3), ("10.0.0.2", 80, 1)]),
        ("eu-2", 0, 1, [("10.0.0.3", 80, 1)]),
        ("", 1, 1, [("::1", 81, 1)]),
    ]
    # No list yet: no ClusterLoadAssignment (the client waits for one).
    assert build({}).world[ENDPOINTS] == {}


def test_the_break_hook_serves_an_invalid_cluster() -> None:
    world = build({}, faults=Faults(frozenset({("cds", "greeter")}))).world
    cluster = unpack(world, CLUSTER, "greeter", cluster_pb2.Cluster)
    assert cluster.lb_policy == 99
    assert world[CLUSTER]["greeter"].digest != build({}).world[CLUSTER]["greeter"].digest


def test_digests_are_stable_across_builds() -> None:
    a, b = (
        build({}, endpoints=[Endpoint("10.0.0.1:80")]),
        build({}, endpoints=[Endpoint("10.0.0.1:80")]),
    )
    for t in (LISTENER, ROUTE, CLUSTER, ENDPOINTS):
        assert a.world[t]["greeter"].digest == b.world[t]["greeter"].digest
    assert JS.family == "grpc-js"
