"""gRPC service config (the JSON grpc-go and grpcio read), parsed and validated.

Only the parts a client balancer uses are accepted; an unknown field anywhere we parse
is an error that names it, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from grpc_balancer._config.method_config import (
    MethodTable,
    parse_method_config,
    parse_retry_throttling,
)
from grpc_balancer._core.limits import parse_circuit_breakers
from grpc_balancer._core.outlier import OutlierConfig, parse_outlier_detection
from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.policies.base import get_policy_factory, select_policy

DEFAULT_POLICY = "pick_first"

_TOP_LEVEL = {
    "loadBalancingConfig",
    "loadBalancingPolicy",
    "methodConfig",
    "retryThrottling",
    "healthCheckConfig",
    "outlierDetection",
    "circuitBreakers",
}


@dataclass(frozen=True)
class ServiceConfig:
    policy: str = DEFAULT_POLICY
    policy_config: Mapping[str, Any] = field(default_factory=dict)
    method_config: tuple[Mapping[str, Any], ...] = ()
    retry_throttling: Mapping[str, Any] | None = None
    health_check_service: str | None = None
    outlier_detection: Mapping[str, Any] | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)
    #: Parsed forms (validated at load time; see method_config.py and limits.py).
    methods: MethodTable = field(default_factory=lambda: MethodTable({}, {}, None))
    throttling: tuple[float, float] | None = None
    max_requests_per_backend: int = 0
    outlier: OutlierConfig | None = None


def load_service_config(
    service_config: str | Mapping[str, Any] | None, policy: str | None = None
) -> ServiceConfig:
    """Parse ``service_config`` (dict or JSON text) and reconcile it with ``policy=``."""
    raw = _as_mapping(service_config)
    unknown = sorted(set(raw) - _TOP_LEVEL)
    if unknown:
        raise ServiceConfigError(
            f"service config: unknown field(s) {', '.join(map(repr, unknown))}"
            f" (allowed: {', '.join(sorted(_TOP_LEVEL))})"
        )
    config_policy, policy_config = _lb_policy(raw)
    if policy is not None:
        if not isinstance(policy, str) or not policy:
            raise ServiceConfigError(f"policy must be a policy name, got {policy!r}")
        get_policy_factory(policy)  # unknown name → UnknownPolicyError
        if config_policy is not None and config_policy != policy:
            raise ServiceConfigError(
                f"policy={policy!r} disagrees with the service config's {config_policy!r}; "
                "give one of them"
            )
    chosen = policy or config_policy or DEFAULT_POLICY
    method_config = raw.get("methodConfig", [])
    if not isinstance(method_config, list) or not all(isinstance(m, dict) for m in method_config):
        raise ServiceConfigError("service config: methodConfig must be a list of objects")
    throttling = raw.get("retryThrottling")
    if throttling is not None and not isinstance(throttling, dict):
        raise ServiceConfigError("service config: retryThrottling must be an object")
    outlier = raw.get("outlierDetection")
    if outlier is not None and not isinstance(outlier, dict):
        raise ServiceConfigError("service config: outlierDetection must be an object")
    return ServiceConfig(
        policy=chosen,
        policy_config=policy_config if chosen == config_policy else {},
        method_config=tuple(method_config),
        retry_throttling=throttling,
        health_check_service=_health_service(raw),
        outlier_detection=outlier,
        raw=raw,
        methods=parse_method_config(method_config),
        throttling=parse_retry_throttling(throttling),
        max_requests_per_backend=parse_circuit_breakers(raw.get("circuitBreakers")),
        outlier=parse_outlier_detection(outlier),
    )


def _as_mapping(service_config: str | Mapping[str, Any] | None) -> dict[str, Any]:
    if service_config is None:
        return {}
    if isinstance(service_config, str):
        try:
            parsed = json.loads(service_config)
        except json.JSONDecodeError as exc:
            raise ServiceConfigError(f"service config is not valid JSON: {exc}") from None
    else:
        parsed = service_config
    if not isinstance(parsed, Mapping):
        raise ServiceConfigError(
            f"service config must be a JSON object, got {type(parsed).__name__}"
        )
    return dict(parsed)


def _lb_policy(raw: Mapping[str, Any]) -> tuple[str | None, Mapping[str, Any]]:
    """The first supported entry of loadBalancingConfig, else loadBalancingPolicy."""
    if "loadBalancingConfig" in raw:
        return select_policy(raw["loadBalancingConfig"], "service config: loadBalancingConfig")
    legacy = raw.get("loadBalancingPolicy")
    if legacy is None:
        return None, {}
    if not isinstance(legacy, str):
        raise ServiceConfigError("service config: loadBalancingPolicy must be a string")
    name = legacy.lower()
    get_policy_factory(name)
    return name, {}


def _health_service(raw: Mapping[str, Any]) -> str | None:
    hc = raw.get("healthCheckConfig")
    if hc is None:
        return None
    if not isinstance(hc, dict):
        raise ServiceConfigError("service config: healthCheckConfig must be an object")
    extra = set(hc) - {"serviceName"}
    if extra:
        raise ServiceConfigError(
            f"service config: healthCheckConfig: unknown field(s) {sorted(extra)}"
        )
    name = hc.get("serviceName", "")
    if not isinstance(name, str):
        raise ServiceConfigError("service config: healthCheckConfig.serviceName must be a string")
    return name


#: grpcio channel options that choose the policy and service config. The balancer reads
#: them itself; the per-endpoint channels never see them (each balances one address).
SERVICE_CONFIG_OPTION = "grpc.service_config"
LB_POLICY_OPTION = "grpc.lb_policy_name"


def split_channel_options(
    options: Sequence[tuple[str, Any]] | None,
    service_config: str | Mapping[str, Any] | None,
    policy: str | None,
) -> tuple[list[tuple[str, Any]], str | Mapping[str, Any] | None, str | None]:
    """``(options for the endpoint channels, service config, policy)``: grpcio's
    ``("grpc.service_config", json)`` and ``("grpc.lb_policy_name", name)`` options are
    taken out and read as ``service_config=`` / ``policy=``. Giving one both ways with
    different values is a :class:`ServiceConfigError`."""
    rest: list[tuple[str, Any]] = []
    for item in options or ():
        key, value = item
        if key == SERVICE_CONFIG_OPTION:
            text = value.decode() if isinstance(value, bytes) else value
            if not isinstance(text, str):
                raise ServiceConfigError(
                    f"channel option {SERVICE_CONFIG_OPTION!r} must be a JSON string, "
                    f"got {type(value).__name__}"
                )
            if service_config is not None and _as_mapping(service_config) != _as_mapping(text):
                raise ServiceConfigError(
                    f"service_config= and the {SERVICE_CONFIG_OPTION!r} channel option give "
                    "different service configs; give one of them"
                )
            service_config = text
        elif key == LB_POLICY_OPTION:
            if policy is not None and policy != value:
                raise ServiceConfigError(
                    f"policy={policy!r} disagrees with the {LB_POLICY_OPTION!r} channel "
                    f"option {value!r}; give one of them"
                )
            policy = value
        else:
            rest.append((key, value))
    return rest, service_config, policy
