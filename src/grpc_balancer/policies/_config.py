"""Typed readers for policy config fields: every error names the policy and the field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from grpc_balancer._config.method_config import is_json_number, parse_duration, short_repr
from grpc_balancer.errors import ServiceConfigError

#: Every policy number is at most this unless the field says less (README "Policies").
MAX_NUMBER = 1e6


def duration(policy: str, config: Mapping[str, Any], name: str, default_s: float) -> float:
    """A protobuf JSON duration such as ``"10s"`` (seconds as a float)."""
    if name not in config:
        return default_s
    return parse_duration(f"{policy}: {name}", config[name])


def number(
    policy: str,
    config: Mapping[str, Any],
    name: str,
    default: float,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    strict_minimum: bool = False,
) -> float:
    if name not in config:
        return default
    value = config[name]
    maximum = MAX_NUMBER if maximum is None else maximum
    if not is_json_number(value):
        raise ServiceConfigError(f"{policy}: {name} must be a number, got {short_repr(value)}")
    if minimum is not None and (value <= minimum if strict_minimum else value < minimum):
        relation = ">" if strict_minimum else ">="
        raise ServiceConfigError(f"{policy}: {name} must be {relation} {minimum}, got {value!r}")
    if value > maximum:
        raise ServiceConfigError(
            f"{policy}: {name} must be <= {maximum:g}, got {short_repr(value)}"
        )
    return float(value)


def integer(
    policy: str, config: Mapping[str, Any], name: str, default: int, *, minimum: int = 0
) -> int:
    if name not in config:
        return default
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ServiceConfigError(f"{policy}: {name} must be a whole number, got {value!r}")
    if value < minimum:
        raise ServiceConfigError(f"{policy}: {name} must be >= {minimum}, got {value!r}")
    return value


def boolean(policy: str, config: Mapping[str, Any], name: str, default: bool) -> bool:
    if name not in config:
        return default
    value = config[name]
    if not isinstance(value, bool):
        raise ServiceConfigError(f"{policy}: {name} must be true or false, got {value!r}")
    return value


def string(policy: str, config: Mapping[str, Any], name: str, default: str) -> str:
    if name not in config:
        return default
    value = config[name]
    if not isinstance(value, str):
        raise ServiceConfigError(f"{policy}: {name} must be a string, got {value!r}")
    return value
