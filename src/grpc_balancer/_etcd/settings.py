"""Parsing ``etcd://`` targets and their options into :class:`EtcdSettings`.

Form: ``etcd://host1:2379,host2:2379/services/greeter[?ca=/ca.pem&cert=/c.pem&key=/k.pem]``.
The path (as in etcd's Go resolver, without its leading ``/``) is the key prefix;
``etcd:///x`` (no hosts) means ``127.0.0.1:2379``, like etcdctl.

TLS file paths may come from the query (``ca``, ``cert``, ``key``, ``tls=true`` for the
system roots) or from ``ResolverOptions.extra`` (``ca_file``, ``cert_file``,
``key_file``, ``tls``); the extra wins. Credentials (``username``/``password``) are
accepted only through ``extra``: targets end up in logs and error messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from grpc_balancer.errors import BalancerConfigError, InvalidTargetError
from grpc_balancer.target import Target, join_host_port, parse_target, split_host_port

DEFAULT_ENDPOINT = "127.0.0.1:2379"
DEFAULT_REQUEST_TIMEOUT_S = 5.0
#: Reconnect backoff after an error: doubles from this, jittered, capped by ``max_backoff_s``.
BACKOFF_BASE_S = 0.1
DEFAULT_MAX_BACKOFF_S = 5.0

_QUERY_KEYS = {"ca": "ca_file", "cert": "cert_file", "key": "key_file", "tls": "tls"}
_SECRET_QUERY_KEYS = {"user", "username", "password", "pass", "token"}
_EXTRA_KEYS = (
    "ca_file",
    "cert_file",
    "key_file",
    "tls",
    "username",
    "password",
    "request_timeout_s",
    "max_backoff_s",
)


@dataclass(frozen=True)
class EtcdSettings:
    """Where etcd is, which prefix to read, and how to talk to it."""

    endpoints: tuple[str, ...]
    prefix: str
    tls: bool = False
    ca_pem: bytes | None = field(default=None, repr=False)
    cert_pem: bytes | None = field(default=None, repr=False)
    key_pem: bytes | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    max_backoff_s: float = DEFAULT_MAX_BACKOFF_S

    @property
    def key_prefix(self) -> str:
        """What every registered key starts with (Go's ``target + "/"``)."""
        return self.prefix + "/"

    def key_for(self, address: str) -> str:
        return f"{self.prefix}/{address}"


def settings_from_target(raw: str, extra: Mapping[str, Any] | None = None) -> EtcdSettings:
    """Parse an ``etcd://`` target string (the registration side's entry point)."""
    target = parse_target(raw)
    if target.scheme != "etcd":
        raise InvalidTargetError(
            f"target {raw!r}: expected an etcd:// target (e.g. etcd://127.0.0.1:2379/services/greeter)"
        )
    return parse_etcd_target(target, extra)


def parse_etcd_target(target: Target, extra: Mapping[str, Any] | None = None) -> EtcdSettings:
    """Validate an ``etcd://`` target plus options; errors name the problem."""
    if "@" in target.authority:
        # Never echo the target: the part before '@' is probably a password.
        raise InvalidTargetError(
            "etcd target: credentials in the target (user:password@) are not accepted; "
            "pass username/password in ResolverOptions.extra (or ETCDCTL_USER for the CLI)"
        )
    endpoints = _parse_endpoints(target)
    path, _, query = target.endpoint.partition("?")
    prefix = path.rstrip("/")
    if not prefix:
        raise InvalidTargetError(
            f"target {target.raw!r}: no key prefix (e.g. etcd://127.0.0.1:2379/services/greeter)"
        )
    options = _query_options(target, query)
    options.update({k: v for k, v in (extra or {}).items() if k in _EXTRA_KEYS})
    return _build(endpoints, prefix, options, target)


def _parse_endpoints(target: Target) -> tuple[str, ...]:
    if not target.authority:
        return (DEFAULT_ENDPOINT,)
    found: dict[str, None] = {}
    for item in target.authority.split(","):
        if not item.strip():
            raise InvalidTargetError(f"target {target.raw!r}: empty etcd endpoint in the list")
        try:
            host, port = split_host_port(item, what="etcd endpoint")
        except InvalidTargetError as exc:
            raise InvalidTargetError(f"target {target.raw!r}: {exc}") from None
        found[join_host_port(host, port)] = None
    return tuple(found)


def _query_options(target: Target, query: str) -> dict[str, Any]:
    if not query:
        return {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        raise InvalidTargetError(f"target {target.raw!r}: malformed query {query!r}") from None
    options: dict[str, Any] = {}
    for name, value in pairs:
        if name.lower() in _SECRET_QUERY_KEYS:
            raise InvalidTargetError(
                f"etcd target: {name!r} is not accepted in the target (it would be logged); "
                "pass credentials in ResolverOptions.extra"
            )
        if name not in _QUERY_KEYS:
            known = ", ".join(sorted(_QUERY_KEYS))
            raise InvalidTargetError(
                f"target {target.raw!r}: unknown query parameter {name!r} (known: {known})"
            )
        options[_QUERY_KEYS[name]] = value
    return options


def _build(
    endpoints: tuple[str, ...], prefix: str, options: Mapping[str, Any], target: Target
) -> EtcdSettings:
    ca = _read_pem(options.get("ca_file"), "ca_file")
    cert = _read_pem(options.get("cert_file"), "cert_file")
    key = _read_pem(options.get("key_file"), "key_file")
    if (cert is None) != (key is None):
        raise BalancerConfigError("etcd options: cert_file and key_file must be given together")
    tls = _flag(options.get("tls", False), "tls") or ca is not None or cert is not None
    username, password = options.get("username"), options.get("password")
    if (username is None) != (password is None):
        raise BalancerConfigError("etcd options: username and password must be given together")
    for name, value in (("username", username), ("password", password)):
        if value is not None and (not isinstance(value, str) or not value):
            raise BalancerConfigError(f"etcd options: {name} must be a non-empty string")
    return EtcdSettings(
        endpoints=endpoints,
        prefix=prefix,
        tls=tls,
        ca_pem=ca,
        cert_pem=cert,
        key_pem=key,
        username=username,
        password=password,
        request_timeout_s=_positive(options, "request_timeout_s", DEFAULT_REQUEST_TIMEOUT_S),
        max_backoff_s=_positive(options, "max_backoff_s", DEFAULT_MAX_BACKOFF_S),
    )


def _read_pem(path: Any, name: str) -> bytes | None:
    if path is None or path == "":
        return None
    try:
        return Path(str(path)).read_bytes()
    except OSError as exc:
        raise BalancerConfigError(
            f"etcd options: cannot read {name} {path!r}: {exc.strerror}"
        ) from None


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise BalancerConfigError(f"etcd options: {name} must be true or false, got {value!r}")


def _positive(options: Mapping[str, Any], name: str, default: float) -> float:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise BalancerConfigError(f"etcd options: {name} must be a positive number, got {value!r}")
    return float(value)
