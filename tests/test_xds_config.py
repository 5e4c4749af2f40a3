"""The control plane's config file: the minimal form, the richer one, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grpc_balancer.errors import BalancerConfigError
from grpc_balancer.xds import XdsConfigError, load_config_file, parse_config
from grpc_balancer.xds.model import PolicySpec, RouteSpec

MINIMAL = {
    "services": {
        "greeter": {"target": "static:///127.0.0.1:50051,127.0.0.1:50052", "policy": "round_robin"}
    }
}
RETRY = {
    "maxAttempts": 3,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def test_the_minimal_json_works_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "xds.json"
    path.write_text(json.dumps(MINIMAL))
    config = load_config_file(path)
    spec = config.services["greeter"]
    assert spec.target == "static:///127.0.0.1:50051,127.0.0.1:50052"
    assert spec.policy == PolicySpec("round_robin")
    assert spec.routes == (RouteSpec(),)
    assert spec.outlier is None and spec.max_requests == 0


def test_yaml_is_read_when_pyyaml_is_there(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    path = tmp_path / "xds.yaml"
    path.write_text(
        "services:\n  greeter:\n    target: static:///127.0.0.1:1\n    policy: ring_hash\n"
    )
    assert load_config_file(path).services["greeter"].policy.name == "ring_hash"


def test_policy_takes_a_load_balancing_config_list() -> None:
    config = parse_config(
        {
            "services": {
                "s": {
                    "target": "dns:///example.com:50051",
                    "policy": [{"least_request": {"choiceCount": 3}}, {"round_robin": {}}],
                }
            }
        }
    )
    spec = config.services["s"]
    assert spec.policy == PolicySpec("least_request", {"choiceCount": 3})
    assert spec.alternatives == (PolicySpec("round_robin"),)


def test_the_service_config_maps_to_routes_outlier_detection_and_circuit_breakers() -> None:
    config = parse_config(
        {
            "services": {
                "s": {
                    "target": "static:///127.0.0.1:1",
                    "service_config": {
                        "loadBalancingConfig": [{"ring_hash": {"minRingSize": 64}}],
                        "methodConfig": [
                            {"name": [{}], "timeout": "2s"},
                            {"name": [{"service": "greeter.Greeter"}], "retryPolicy": RETRY},
                            {
                                "name": [{"service": "greeter.Greeter", "method": "SayHello"}],
                                "timeout": "0.5s",
                            },
                        ],
                        "outlierDetection": {"failurePercentageEjection": {"threshold": 50}},
                        "circuitBreakers": {"maxRequests": 7},
                    },
                    "hash_header": "x-user",
                }
            }
        }
    )
    spec = config.services["s"]
    assert spec.policy == PolicySpec("ring_hash", {"minRingSize": 64})
    exact, service, default = spec.routes
    assert (exact.service, exact.method, exact.timeout_s) == ("greeter.Greeter", "SayHello", 0.5)
    assert (service.service, service.method) == ("greeter.Greeter", "")
    assert service.retry is not None and service.retry.max_attempts == 3
    assert (default.service, default.timeout_s) == ("", 2.0)
    assert spec.outlier is not None and spec.outlier.failure_percentage is not None
    assert spec.outlier.failure_percentage.threshold == 50
    assert spec.max_requests == 7 and spec.hash_header == "x-user"


def test_listener_flavours_per_node() -> None:
    config = parse_config({**MINIMAL, "listeners": {"envoy-1": "envoy", "*": "api"}})
    assert config.listener_flavours == {"envoy-1": "envoy", "*": "api"}


def svc(**fields: object) -> dict[str, object]:
    return {"services": {"greeter": {"target": "static:///127.0.0.1:1", **fields}}}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "services must be an object"),
        ({"services": {}, "extra": 1}, "config: unknown field(s) 'extra'"),
        (svc(polcy="round_robin"), "services.greeter: unknown field(s) 'polcy'"),
        ({"services": {"g": {}}}, "services.g.target is required"),
        (svc(target="nope:///x"), "services.greeter.target:"),
        (svc(policy="fastest"), "services.greeter.policy: unknown policy 'fastest'"),
        (svc(policy=[]), "services.greeter.policy must be a policy name or a non-empty"),
        (svc(policy=[{"ring_hash": {"minRingSize": 0}}]),
         "services.greeter.policy[0].ring_hash.minRingSize must be an integer >= 1"),
        (svc(policy=[{"ring_hash": {"ringSize": 5}}]),
         "services.greeter.policy[0].ring_hash: unknown field(s) 'ringSize'"),
        (svc(policy=[{"weighted_round_robin": {"blackoutPeriod": "soon"}}]),
         "policy[0].weighted_round_robin.blackoutPeriod must be a duration"),
        (svc(service_config={"methodConfig": [{"name": [{}], "timeout": "x"}]}),
         "services.greeter.service_config: methodConfig[0].timeout must be a duration"),
        (svc(service_config={"outlierDetection": {"interval": "0s"}}),
         "services.greeter.service_config: outlierDetection.interval must be > 0s"),
        (svc(service_config={"circuitBreakers": {"maxRequests": 0}}),
         "services.greeter.service_config: circuitBreakers.maxRequests must be an integer >= 1"),
        (svc(service_config={"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}),
         "services.greeter.service_config.retryThrottling has no xDS equivalent"),
        (svc(service_config={"methodConfig": [{"name": [{}], "retryPolicy":
                                               {**RETRY, "retryableStatusCodes": ["ABORTED"]}}]}),
         "service_config.methodConfig[0].retryPolicy.retryableStatusCodes: xDS routes retry only"),
        (svc(policy="round_robin", service_config={"loadBalancingConfig": [{"round_robin": {}}]}),
         "services.greeter: give the policy once"),
        (svc(listener_port="x"), "services.greeter.listener_port must be a port number"),
        ({**svc(), "listeners": {"n": "proxy"}}, "listeners.n must be one of api, envoy"),
    ],
)  # fmt: skip
def test_bad_fields_are_named_by_their_json_path(raw: object, message: str) -> None:
    with pytest.raises(XdsConfigError) as info:
        parse_config(raw)
    assert message in str(info.value)
    assert isinstance(info.value, BalancerConfigError)
    assert "\n" not in str(info.value)


def test_bad_files_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(XdsConfigError, match=r"bad\.json.*is not valid JSON"):
        load_config_file(bad)
    with pytest.raises(XdsConfigError, match=r"missing\.json"):
        load_config_file(tmp_path / "missing.json")
