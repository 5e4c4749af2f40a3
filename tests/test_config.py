"""Service config parsing and the policy/config reconciliation rules."""

from __future__ import annotations

import pytest

import grpc_balancer
from grpc_balancer._config.service_config import load_service_config
from grpc_balancer.errors import ServiceConfigError, UnknownPolicyError


def test_default_policy_is_pick_first() -> None:
    assert load_service_config(None).policy == "pick_first"


def test_load_balancing_config_takes_first_supported_entry() -> None:
    cfg = load_service_config(
        '{"loadBalancingConfig": [{"grpclb": {}}, {"round_robin": {}}, {"pick_first": {}}]}'
    )
    assert cfg.policy == "round_robin"


def test_legacy_load_balancing_policy() -> None:
    assert load_service_config({"loadBalancingPolicy": "ROUND_ROBIN"}).policy == "round_robin"


def test_policy_argument_and_config_agreeing_is_fine() -> None:
    cfg = load_service_config({"loadBalancingConfig": [{"round_robin": {}}]}, "round_robin")
    assert cfg.policy == "round_robin"


@pytest.mark.parametrize(
    ("config", "policy", "error", "message"),
    [
        ("{not json", None, ServiceConfigError, "not valid JSON"),
        ("[1]", None, ServiceConfigError, "must be a JSON object"),
        (
            {"loadBalancingConfg": []},
            None,
            ServiceConfigError,
            "unknown field.*'loadBalancingConfg'",
        ),
        ({"loadBalancingConfig": []}, None, ServiceConfigError, "non-empty list"),
        ({"loadBalancingConfig": [{"a": {}, "b": {}}]}, None, ServiceConfigError, "exactly one"),
        ({"loadBalancingConfig": [{"nope": {}}]}, None, ServiceConfigError, "no supported policy"),
        (
            {"loadBalancingPolicy": "nope"},
            None,
            UnknownPolicyError,
            "unknown load-balancing policy 'nope'",
        ),
        (
            {"loadBalancingConfig": [{"round_robin": {}}]},
            "pick_first",
            ServiceConfigError,
            "disagrees",
        ),
        (None, "nope", UnknownPolicyError, "known: .*round_robin"),
        (
            {"healthCheckConfig": {"service": "x"}},
            None,
            ServiceConfigError,
            "healthCheckConfig: unknown",
        ),
        ({"methodConfig": {}}, None, ServiceConfigError, "methodConfig must be a list"),
    ],
)
def test_bad_configs_name_the_problem(
    config: object, policy: str | None, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        load_service_config(config, policy)  # type: ignore[arg-type]


def test_policy_config_fields_are_validated_at_channel_creation() -> None:
    with pytest.raises(ServiceConfigError, match=r"pick_first: unknown config field.*'shuffle'"):
        grpc_balancer.aio.insecure_channel(
            "static:///a:1",
            service_config={"loadBalancingConfig": [{"pick_first": {"shuffle": True}}]},
        )
    with pytest.raises(ServiceConfigError, match="shuffleAddressList must be a boolean"):
        grpc_balancer.aio.insecure_channel(
            "static:///a:1",
            service_config={"loadBalancingConfig": [{"pick_first": {"shuffleAddressList": "yes"}}]},
        )
