"""Numbers from outside have documented ranges (issue 13.2): a value too large for a
float, or beyond the range, is a ServiceConfigError naming the field (never an
OverflowError), and a registry weight out of range skips its key."""

from __future__ import annotations

from typing import Any

import pytest

from grpc_balancer import aio
from grpc_balancer._config.service_config import load_service_config
from grpc_balancer._etcd.codec import BadValueError, decode_endpoint
from grpc_balancer.errors import ServiceConfigError
from tests.etcd_helpers import go_value

HUGE = 10**400
RETRY = {
    "maxAttempts": 2,
    "initialBackoff": "0.1s",
    "maxBackoff": "1s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def _lb(policy: str, **fields: Any) -> dict[str, Any]:
    return {"loadBalancingConfig": [{policy: fields}]}


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"retryThrottling": {"maxTokens": 10, "tokenRatio": 1e306}}, "tokenRatio"),
        ({"retryThrottling": {"maxTokens": 10, "tokenRatio": HUGE}}, "tokenRatio"),
        (
            {"methodConfig": [{"name": [{}], "retryPolicy": {**RETRY, "backoffMultiplier": HUGE}}]},
            "backoffMultiplier",
        ),
        (
            {
                "methodConfig": [
                    {"name": [{}], "retryPolicy": {**RETRY, "backoffMultiplier": 1e300}}
                ]
            },
            "backoffMultiplier",
        ),
        (
            _lb("round_robin", slowStartConfig={"slowStartWindow": "5s", "aggression": HUGE}),
            "aggression",
        ),
        (
            _lb("round_robin", slowStartConfig={"slowStartWindow": "5s", "minWeightPercent": HUGE}),
            "minWeightPercent",
        ),
        (_lb("weighted_round_robin", errorUtilizationPenalty=HUGE), "errorUtilizationPenalty"),
        (_lb("weighted_round_robin", errorUtilizationPenalty=1e300), "errorUtilizationPenalty"),
    ],
)
def test_numbers_out_of_range_are_service_config_errors(config: dict[str, Any], field: str) -> None:
    with pytest.raises(ServiceConfigError, match=field) as info:
        load_service_config(config)
        aio.insecure_channel("static:///127.0.0.1:1", service_config=config)  # policy fields
    assert len(str(info.value)) < 300  # a 400-digit number is not echoed in full


@pytest.mark.parametrize("weight", [HUGE, 2**32, -1, 1e3])
def test_an_etcd_weight_out_of_range_is_a_bad_value(weight: object) -> None:
    value = go_value("127.0.0.1:1", {"weight": weight}).encode()
    with pytest.raises(
        BadValueError, match=r"Metadata\.weight must be an integer in 0\.\.4294967295"
    ):
        decode_endpoint(value)


def test_the_largest_weight_is_fine() -> None:
    endpoint = decode_endpoint(go_value("127.0.0.1:1", {"weight": 2**32 - 1}).encode())
    assert endpoint is not None and endpoint.weight == 2**32 - 1
