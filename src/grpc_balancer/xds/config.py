"""The control plane's config file (JSON, or YAML when PyYAML is installed), checked.

The minimal form::

    {"services": {"greeter": {"target": "static:///127.0.0.1:50051,127.0.0.1:50052",
                              "policy": "round_robin"}}}

Each service is what a client dials as ``xds:///NAME``; ``target`` is any grpc_balancer
target URI, resolved by our own resolvers. ``policy`` is a name or a gRPC
``loadBalancingConfig`` list (the first entry a client takes wins, see
:mod:`.capabilities`); ``service_config`` is a gRPC service config whose
``methodConfig`` (timeout, retryPolicy), ``outlierDetection`` and
``circuitBreakers.maxRequests`` map to xDS fields. Every error names its JSON path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from grpc_balancer._config.method_config import parse_duration, parse_method_config
from grpc_balancer._config.service_config import load_service_config
from grpc_balancer.errors import BalancerConfigError
from grpc_balancer.resolvers.base import get_resolver_factory
from grpc_balancer.target import parse_target
from grpc_balancer.xds.model import (
    ALIASES,
    LISTENER_FLAVOURS,
    POLICIES,
    PolicySpec,
    RouteSpec,
    ServiceSpec,
    XdsConfig,
)


class XdsConfigError(BalancerConfigError):
    """The xDS control plane's config has a bad or unknown field (named by its JSON path)."""


_TOP = {"services", "listeners"}
_SERVICE = {"target", "policy", "service_config", "hash_header", "listener_port"}
#: gRPC JSON fields of each policy's config: name → (kind, minimum).
_POLICY_FIELDS: dict[str, dict[str, str]] = {
    "round_robin": {},
    "random": {},
    "maglev": {"tableSize": "int"},
    "pick_first": {"shuffleAddressList": "bool"},
    "ring_hash": {"minRingSize": "int", "maxRingSize": "int"},
    "least_request": {"choiceCount": "int"},
    "peak_ewma": {"choiceCount": "int", "decayTime": "duration", "failurePenalty": "duration"},
    "weighted_round_robin": {
        "blackoutPeriod": "duration",
        "weightExpirationPeriod": "duration",
        "weightUpdatePeriod": "duration",
        "oobReportingPeriod": "duration",
        "enableOobLoadReport": "bool",
        "errorUtilizationPenalty": "number",
    },
}


def load_config_file(path: str | Path) -> XdsConfig:
    """Read and check a config file (``.yaml`` / ``.yml`` need PyYAML)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise XdsConfigError(f"config file {str(path)!r}: {exc.strerror or exc}") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise XdsConfigError(
                f"config file {str(path)!r}: YAML needs PyYAML (pip install pyyaml), or use JSON"
            ) from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise XdsConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise XdsConfigError(f"config file {str(path)!r} is not valid JSON: {exc}") from None
    return parse_config(raw)


def parse_config(raw: Any) -> XdsConfig:
    """Check a decoded config (a dict) and build the model."""
    _fields("config", raw, _TOP)
    services = raw.get("services")
    if not isinstance(services, Mapping) or not services:
        raise XdsConfigError("services must be an object with at least one service")
    specs = {}
    for name, body in services.items():
        if not isinstance(name, str) or not name or "/" in name or name == "*":
            raise XdsConfigError(f"services: {name!r} is not a usable service name")
        specs[name] = _service(f"services.{name}", name, body)
    flavours = raw.get("listeners", {})
    if not isinstance(flavours, Mapping):
        raise XdsConfigError("listeners must be an object of node id → 'api' or 'envoy'")
    for node, flavour in flavours.items():
        if flavour not in LISTENER_FLAVOURS:
            raise XdsConfigError(
                f"listeners.{node} must be one of {', '.join(LISTENER_FLAVOURS)}, got {flavour!r}"
            )
    return XdsConfig(services=specs, listener_flavours=dict(flavours))


def _service(where: str, name: str, body: Any) -> ServiceSpec:
    _fields(where, body, _SERVICE)
    target = body.get("target")
    if not isinstance(target, str) or not target:
        raise XdsConfigError(f"{where}.target is required: a target URI such as 'static:///h:p'")
    try:
        get_resolver_factory(parse_target(target))  # an unknown scheme is an error now
    except BalancerConfigError as exc:
        raise XdsConfigError(f"{where}.target: {exc}") from None
    sc = body.get("service_config", {})
    if not isinstance(sc, Mapping):
        raise XdsConfigError(f"{where}.service_config must be an object")
    sc = dict(sc)
    sc_policy = sc.pop("loadBalancingConfig", None)
    legacy = sc.pop("loadBalancingPolicy", None)
    if sc_policy is None and legacy is not None:
        sc_policy = legacy
    if "policy" in body and sc_policy is not None:
        raise XdsConfigError(
            f"{where}: give the policy once, in policy or in service_config.loadBalancingConfig"
        )
    if "policy" in body:
        policies = _policies(f"{where}.policy", body["policy"])
    elif sc_policy is not None:
        key = (
            "loadBalancingConfig"
            if "loadBalancingConfig" in body["service_config"]
            else ("loadBalancingPolicy")
        )
        policies = _policies(f"{where}.service_config.{key}", sc_policy)
    else:
        policies = (PolicySpec(),)
    try:
        parsed = load_service_config(sc)
    except BalancerConfigError as exc:
        raise XdsConfigError(f"{where}.service_config: {exc}") from None
    for key in ("healthCheckConfig", "retryThrottling"):
        if key in sc:
            raise XdsConfigError(
                f"{where}.service_config.{key} has no xDS equivalent a client takes; remove it"
            )
    hash_header = body.get("hash_header")
    if hash_header is not None and (not isinstance(hash_header, str) or not hash_header):
        raise XdsConfigError(f"{where}.hash_header must be a header name, got {hash_header!r}")
    port = body.get("listener_port", 0)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise XdsConfigError(f"{where}.listener_port must be a port number, got {port!r}")
    return ServiceSpec(
        name=name,
        target=target,
        policy=policies[0],
        alternatives=policies[1:],
        routes=_routes(f"{where}.service_config.methodConfig", sc.get("methodConfig", [])),
        hash_header=hash_header,
        outlier=parsed.outlier,
        max_requests=parsed.max_requests_per_backend,
        listener_port=port,
    )


def _policies(where: str, raw: Any) -> tuple[PolicySpec, ...]:
    if isinstance(raw, str):
        return (PolicySpec(_policy_name(where, raw)),)
    if not isinstance(raw, list) or not raw:
        raise XdsConfigError(
            f"{where} must be a policy name or a non-empty loadBalancingConfig list"
        )
    out = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping) or len(entry) != 1:
            raise XdsConfigError(
                f"{where}[{i}] must be an object with exactly one policy name, got {entry!r}"
            )
        ((key, cfg),) = entry.items()
        name = _policy_name(f"{where}[{i}]", key)
        cfg = {} if cfg is None else cfg
        _policy_config(f"{where}[{i}].{key}", name, cfg)
        out.append(PolicySpec(name, dict(cfg)))
    return tuple(out)


def _policy_name(where: str, raw: Any) -> str:
    name = ALIASES.get(raw, raw) if isinstance(raw, str) else raw
    if name not in POLICIES:
        raise XdsConfigError(f"{where}: unknown policy {raw!r} (known: {', '.join(POLICIES)})")
    return str(name)


def _policy_config(where: str, name: str, cfg: Any) -> None:
    allowed = _POLICY_FIELDS[name]
    _fields(where, cfg, set(allowed))
    for key, kind in allowed.items():
        if key not in cfg:
            continue
        value = cfg[key]
        if kind == "duration":
            try:
                parse_duration(f"{where}.{key}", value)
            except BalancerConfigError as exc:
                raise XdsConfigError(str(exc)) from None
        elif kind == "bool":
            if not isinstance(value, bool):
                raise XdsConfigError(f"{where}.{key} must be a boolean, got {value!r}")
        elif kind == "int":
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise XdsConfigError(f"{where}.{key} must be an integer >= 1, got {value!r}")
        elif (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not (math.isfinite(value) and value >= 0)
        ):
            raise XdsConfigError(f"{where}.{key} must be a number >= 0, got {value!r}")


#: The status codes a route's retry_on can name (gRFC A44).
RETRYABLE = frozenset(
    {"CANCELLED", "DEADLINE_EXCEEDED", "INTERNAL", "RESOURCE_EXHAUSTED", "UNAVAILABLE"}
)


def _routes(where: str, method_config: Any) -> tuple[RouteSpec, ...]:
    """One route per name in methodConfig (exact methods first, the default last)."""
    exact: list[RouteSpec] = []
    services: list[RouteSpec] = []
    default = RouteSpec()
    for i, entry in enumerate(method_config):
        table = parse_method_config([entry])  # checked already; the entry alone
        if entry.get("hedgingPolicy") is not None:
            raise XdsConfigError(
                f"{where}[{i}].hedgingPolicy has no xDS route equivalent; remove it"
            )
        if entry.get("waitForReady") is not None:
            raise XdsConfigError(
                f"{where}[{i}].waitForReady has no xDS route equivalent; remove it"
            )
        for name in entry["name"]:
            service, method = name.get("service", ""), name.get("method", "")
            policy = table.lookup(f"/{service}/{method or '-'}")
            if policy is not None and policy.retry is not None:
                odd = sorted(
                    c.name for c in policy.retry.retryable_codes if c.name not in RETRYABLE
                )
                if odd:
                    raise XdsConfigError(
                        f"{where}[{i}].retryPolicy.retryableStatusCodes: xDS routes retry only "
                        f"on {', '.join(sorted(RETRYABLE))}, not {', '.join(odd)}"
                    )
            spec = RouteSpec(
                service=service,
                method=method,
                timeout_s=None if policy is None else policy.timeout_s,
                retry=None if policy is None else policy.retry,
            )
            if method:
                exact.append(spec)
            elif service:
                services.append(spec)
            else:
                default = spec
    return (*exact, *services, default)


def _fields(where: str, raw: Any, allowed: set[str]) -> None:
    if not isinstance(raw, Mapping):
        raise XdsConfigError(f"{where} must be an object, got {raw!r}")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise XdsConfigError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}"
            f" (allowed: {', '.join(sorted(allowed))})"
        )
