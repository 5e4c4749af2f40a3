"""``methodConfig`` and ``retryThrottling`` of the gRPC service config, validated.

Every field is checked with a message that names it by its JSON path, e.g.
``methodConfig[0].retryPolicy.maxAttempts must be an integer >= 2, got 1``.
Lookup follows gRPC: an entry for ``service/method`` wins over one for ``service``,
which wins over the default entry (empty name).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from grpc_balancer._attempts.errors import CODE_OF_INT
from grpc_balancer._attempts.retry import (
    MAX_ATTEMPTS_CAP,
    HedgingPolicy,
    MethodPolicy,
    RetryPolicy,
    RetryThrottle,
)
from grpc_balancer.errors import ServiceConfigError

_METHOD_FIELDS = {
    "name",
    "timeout",
    "waitForReady",
    "retryPolicy",
    "hedgingPolicy",
}
_RETRY_FIELDS = {
    "maxAttempts",
    "initialBackoff",
    "maxBackoff",
    "backoffMultiplier",
    "retryableStatusCodes",
}
_HEDGING_FIELDS = {"maxAttempts", "hedgingDelay", "nonFatalStatusCodes"}
_THROTTLING_FIELDS = {"maxTokens", "tokenRatio"}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]{0,9})?|\.[0-9]{1,9})s\s*$")  # ASCII digits only
#: The largest integer a float holds exactly; larger JSON integers are refused as numbers.
MAX_EXACT_INT = 2**53
#: Documented ranges (README "Service config"): a bigger value means a typo.
MAX_TOKEN_RATIO = 1000.0
MAX_BACKOFF_MULTIPLIER = 1000.0
#: google.protobuf.Duration's largest value (10,000 years), in seconds.
MAX_DURATION_S = 315_576_000_000.0
#: Call timeouts are capped here (about 31 years): grpcio fails a call whose deadline
#: is further away at once, as if it had expired.
MAX_TIMEOUT_S = 1e9


class MethodTable:
    """Method name → :class:`MethodPolicy`; built once per channel."""

    def __init__(
        self,
        exact: Mapping[tuple[str, str], MethodPolicy],
        services: Mapping[str, MethodPolicy],
        default: MethodPolicy | None,
    ) -> None:
        self._exact = dict(exact)
        self._services = dict(services)
        self._default = default

    def lookup(self, method: str) -> MethodPolicy | None:
        """The policy for a full method name ``/package.Service/Method`` (None: none)."""
        service, _, name = method.lstrip("/").partition("/")
        found = self._exact.get((service, name))
        if found is None:
            found = self._services.get(service, self._default)
        return found

    def __bool__(self) -> bool:
        return bool(self._exact or self._services or self._default)


def parse_method_config(entries: Sequence[Mapping[str, Any]]) -> MethodTable:
    exact: dict[tuple[str, str], MethodPolicy] = {}
    services: dict[str, MethodPolicy] = {}
    default: MethodPolicy | None = None
    for i, entry in enumerate(entries):
        where = f"methodConfig[{i}]"
        _check_fields(where, entry, _METHOD_FIELDS)
        policy = _method_policy(where, entry)
        names = entry.get("name")
        if not isinstance(names, list) or not names:
            raise ServiceConfigError(
                f"{where}.name must be a non-empty list of {{service, method}}"
            )
        for j, name in enumerate(names):
            nwhere = f"{where}.name[{j}]"
            _check_fields(nwhere, name, {"service", "method"})
            service = _string(nwhere + ".service", name.get("service", ""))
            method = _string(nwhere + ".method", name.get("method", ""))
            if method and not service:
                raise ServiceConfigError(f"{nwhere}: a method needs its service")
            if not service:
                if default is not None:
                    raise ServiceConfigError(f"{nwhere}: a second default (empty) name")
                default = policy
            elif method:
                if (service, method) in exact:
                    raise ServiceConfigError(f"{nwhere}: {service}/{method} is named twice")
                exact[(service, method)] = policy
            else:
                if service in services:
                    raise ServiceConfigError(f"{nwhere}: service {service} is named twice")
                services[service] = policy
    return MethodTable(exact, services, default)


def parse_retry_throttling(raw: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """``(maxTokens, tokenRatio)``, validated; build a :class:`RetryThrottle` per channel."""
    if raw is None:
        return None
    where = "retryThrottling"
    _check_fields(where, raw, _THROTTLING_FIELDS)
    for key in sorted(_THROTTLING_FIELDS):
        if key not in raw:
            raise ServiceConfigError(f"{where}.{key} is required")
    max_tokens = raw["maxTokens"]
    if not _is_int(max_tokens) or not 0 < max_tokens <= 1000:
        raise ServiceConfigError(
            f"{where}.maxTokens must be an integer in 1..1000, got {max_tokens!r}"
        )
    ratio = raw["tokenRatio"]
    if not is_json_number(ratio) or not 0 < ratio <= MAX_TOKEN_RATIO:
        raise ServiceConfigError(
            f"{where}.tokenRatio must be a number in (0, {MAX_TOKEN_RATIO:g}], got {short_repr(ratio)}"
        )
    # A6: tokenRatio has at most 3 decimal places.
    return float(max_tokens), math.floor(float(ratio) * 1000) / 1000 or 0.001


def make_throttle(params: tuple[float, float] | None) -> RetryThrottle | None:
    return None if params is None else RetryThrottle(*params)


# -- pieces -----------------------------------------------------------------------------------
def _method_policy(where: str, entry: Mapping[str, Any]) -> MethodPolicy:
    timeout = entry.get("timeout")
    wfr = entry.get("waitForReady")
    if wfr is not None and not isinstance(wfr, bool):
        raise ServiceConfigError(f"{where}.waitForReady must be a boolean, got {wfr!r}")
    retry = entry.get("retryPolicy")
    hedging = entry.get("hedgingPolicy")
    if retry is not None and hedging is not None:
        raise ServiceConfigError(
            f"{where}: retryPolicy and hedgingPolicy are mutually exclusive; give one"
        )
    return MethodPolicy(
        timeout_s=None if timeout is None else _timeout(f"{where}.timeout", timeout),
        wait_for_ready=wfr,
        retry=None if retry is None else _retry_policy(f"{where}.retryPolicy", retry),
        hedging=None if hedging is None else _hedging_policy(f"{where}.hedgingPolicy", hedging),
    )


def _timeout(where: str, raw: Any) -> float:
    """A call deadline: > 0 (a zero timeout fails every call), and longer than
    MAX_TIMEOUT_S (grpcio fails such deadlines at once) means no earlier deadline."""
    return min(parse_duration(where, raw, positive=True), MAX_TIMEOUT_S)


def _retry_policy(where: str, raw: Any) -> RetryPolicy:
    _check_fields(where, raw, _RETRY_FIELDS)
    for key in sorted(_RETRY_FIELDS):
        if key not in raw:
            raise ServiceConfigError(f"{where}.{key} is required")
    initial = parse_duration(f"{where}.initialBackoff", raw["initialBackoff"], positive=True)
    maximum = parse_duration(f"{where}.maxBackoff", raw["maxBackoff"], positive=True)
    multiplier = raw["backoffMultiplier"]
    if not is_json_number(multiplier) or not 0 < multiplier <= MAX_BACKOFF_MULTIPLIER:
        raise ServiceConfigError(
            f"{where}.backoffMultiplier must be a number in (0, {MAX_BACKOFF_MULTIPLIER:g}], "
            f"got {short_repr(multiplier)}"
        )
    codes = _codes(f"{where}.retryableStatusCodes", raw["retryableStatusCodes"])
    if not codes:
        raise ServiceConfigError(f"{where}.retryableStatusCodes must not be empty")
    return RetryPolicy(
        max_attempts=_max_attempts(where, raw["maxAttempts"]),
        initial_backoff_s=initial,
        max_backoff_s=maximum,
        backoff_multiplier=float(multiplier),
        retryable_codes=codes,
    )


def _hedging_policy(where: str, raw: Any) -> HedgingPolicy:
    _check_fields(where, raw, _HEDGING_FIELDS)
    if "maxAttempts" not in raw:
        raise ServiceConfigError(f"{where}.maxAttempts is required")
    delay = raw.get("hedgingDelay", "0s")
    return HedgingPolicy(
        max_attempts=_max_attempts(where, raw["maxAttempts"]),
        delay_s=parse_duration(f"{where}.hedgingDelay", delay),
        non_fatal_codes=_codes(f"{where}.nonFatalStatusCodes", raw.get("nonFatalStatusCodes", [])),
    )


def _max_attempts(where: str, value: Any) -> int:
    if not _is_int(value) or value < 2:
        raise ServiceConfigError(f"{where}.maxAttempts must be an integer >= 2, got {value!r}")
    return min(int(value), MAX_ATTEMPTS_CAP)


def _codes(where: str, raw: Any) -> frozenset[grpc.StatusCode]:
    if not isinstance(raw, list):
        raise ServiceConfigError(f"{where} must be a list of status codes, got {raw!r}")
    codes = set()
    for item in raw:
        code: grpc.StatusCode | None
        if isinstance(item, str):
            code = grpc.StatusCode.__members__.get(item.upper())
        elif _is_int(item):
            code = CODE_OF_INT.get(item)
        else:
            code = None
        if code is None or code is grpc.StatusCode.OK:
            raise ServiceConfigError(
                f"{where}: {item!r} is not a gRPC status code name such as 'UNAVAILABLE'"
            )
        codes.add(code)
    return frozenset(codes)


def parse_duration(where: str, raw: Any, *, positive: bool = False) -> float:
    """A protobuf JSON duration (``"1.5s"``) in seconds, within a Duration's range
    (0 to 315,576,000,000 s, about 10,000 years); ``positive``: zero is refused too."""
    match = _DURATION.match(raw) if isinstance(raw, str) and len(raw) <= 64 else None
    if match is None:
        raise ServiceConfigError(
            f"{where} must be a duration string like '1.5s' or '0.1s', got {short_repr(raw)}"
        )
    seconds = float(match.group(1))
    if seconds > MAX_DURATION_S:
        raise ServiceConfigError(
            f"{where} must be at most {MAX_DURATION_S:.0f}s (a protobuf Duration), got {raw!r}"
        )
    if positive and seconds <= 0:
        raise ServiceConfigError(f"{where} must be > 0s, got {raw!r}")
    return seconds


def short_repr(raw: Any) -> str:
    text = repr(raw)
    return text if len(text) <= 80 else text[:60] + f"... ({len(text)} characters)"


def _check_fields(where: str, raw: Any, allowed: set[str]) -> None:
    if not isinstance(raw, Mapping):
        raise ServiceConfigError(f"{where} must be an object, got {raw!r}")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ServiceConfigError(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}"
            f" (allowed: {', '.join(sorted(allowed))})"
        )


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ServiceConfigError(f"{where} must be a string, got {value!r}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_json_number(value: Any) -> bool:
    """A JSON number a float holds (no bool, inf or nan; a 400-digit integer, which
    float() and math.isfinite() refuse with OverflowError, is not one)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) <= MAX_EXACT_INT
    return isinstance(value, float) and math.isfinite(value)
