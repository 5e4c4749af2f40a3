"""Parsing and validation of target URIs (``scheme://authority/endpoint``).

Every malformed form raises :class:`InvalidTargetError` with a message that names the
problem, so a CLI can print it as one line.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

from grpc_balancer.errors import InvalidTargetError

DEFAULT_SCHEME = "dns"


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed target: ``static:///a:1,b:2`` → scheme ``static``, authority ``""``,
    endpoint ``a:1,b:2``. ``raw`` keeps the user's text for messages."""

    scheme: str
    authority: str
    endpoint: str
    raw: str

    def __str__(self) -> str:
        return self.raw

    def __repr__(self) -> str:
        # ``raw`` is already redacted; the parsed parts may hold a query's secret
        return f"Target({self.raw!r})"


#: Query parameters whose values are shown in messages (paths and switches, no secrets).
_SHOWN_PARAMETERS = frozenset({"ca", "cert", "key", "tls"})
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/@]*)@")


def redact_target(text: str) -> str:
    """``text`` as it may appear in a message, a log line or status: a password in
    ``scheme://user:password@host`` and the value of any query parameter that is not
    a known path or switch (``?passwd=...``, a misspelt credential) become ``***``."""

    def hide_password(m: re.Match[str]) -> str:
        user, colon, _ = m.group(2).partition(":")
        return f"{m.group(1)}{user}{':***' if colon else ''}@"

    text = _USERINFO.sub(hide_password, text)
    if "?" not in text:
        return text
    head, query = text.split("?", 1)
    shown = []
    for part in query.split("&"):
        name, sep, _ = part.partition("=")
        shown.append(part if not sep or name.lower() in _SHOWN_PARAMETERS else f"{name}=***")
    return f"{head}?{'&'.join(shown)}"


def parse_target(raw: str) -> Target:
    """Split a target URI. A bare ``host:port`` means ``dns:///host:port`` as in gRPC."""
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidTargetError("target is empty")
    text = raw.strip()
    match = _USERINFO.match(text)
    if match and ":" in match.group(2) and not text.lower().startswith("etcd://"):
        scheme = match.group(1)[:-3]
        raise InvalidTargetError(
            f"target {redact_target(text)!r}: credentials in the target (user:password@) "
            f"are not accepted by {scheme}: targets"
        )
    try:
        return _parse(text, redact_target(text))
    except InvalidTargetError as err:
        raise InvalidTargetError(scrub(str(err), text)) from None


def scrub(message: str, text: str) -> str:
    """``message`` with every secret of the target ``text`` (see :func:`redact_target`)
    replaced by ``***``, wherever in the message it was echoed."""
    secrets = []
    match = _USERINFO.match(text)
    if match and ":" in match.group(2):
        secrets.append(match.group(2).split(":", 1)[1])
    if "?" in text:
        for part in text.split("?", 1)[1].split("&"):
            name, sep, value = part.partition("=")
            if sep and value and name.lower() not in _SHOWN_PARAMETERS:
                secrets.append(value)
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


def _parse(text: str, raw: str) -> Target:
    if any(c.isspace() for c in text):
        raise InvalidTargetError(f"target {raw!r} contains whitespace")
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if "/" not in rest:
            if scheme.lower() == "etcd":
                example = f"etcd://{rest}/services/greeter (the etcd address, then the key prefix)"
            else:
                example = f"{scheme}:///{rest}"
            raise InvalidTargetError(
                f"target {raw!r}: expected scheme://[authority]/endpoint, e.g. {example}"
            )
        authority, endpoint = rest.split("/", 1)
        if scheme.lower() == "unix" and not authority:
            endpoint = "/" + endpoint  # unix:///abs/path: the path is absolute
    elif _looks_like_scheme_colon(text):
        # ipv4:1.2.3.4:80,..., ipv6:[::1]:80, dns:host:port, unix:path (gRPC's short forms)
        scheme, endpoint = text.split(":", 1)
        authority = ""
    else:
        scheme, authority, endpoint = DEFAULT_SCHEME, "", text
    scheme = scheme.lower()
    if not scheme or not (scheme[0].isalpha() and all(c.isalnum() or c in "+-." for c in scheme)):
        raise InvalidTargetError(f"target {raw!r}: invalid scheme {scheme!r}")
    if not endpoint:
        raise InvalidTargetError(f"target {raw!r}: no endpoint after the scheme")
    return Target(scheme=scheme, authority=authority, endpoint=endpoint, raw=raw)


def _looks_like_scheme_colon(text: str) -> bool:
    head = text.split(":", 1)[0].lower()
    return head in ("ipv4", "ipv6", "unix", "unix-abstract", "static", "dns")


def split_host_port(
    item: str, *, default_port: int | None = None, what: str = "address"
) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` / ``v4`` (with a default port) → ``(host, port)``.

    The host comes back without brackets. Ports must lie in 1..65535.
    """
    item = item.strip()
    if not item:
        raise InvalidTargetError(f"empty {what}")
    host: str
    port_text: str | None
    if item.startswith("["):
        end = item.find("]")
        if end < 0:
            raise InvalidTargetError(f"{what} {item!r}: missing ']' after IPv6 address")
        host = item[1:end]
        rest = item[end + 1 :]
        if rest and not rest.startswith(":"):
            raise InvalidTargetError(f"{what} {item!r}: expected ':port' after ']'")
        port_text = rest[1:] if rest else None
        _check_ipv6(host, item, what)
    elif item.count(":") > 1:
        raise InvalidTargetError(f"{what} {item!r}: IPv6 addresses need brackets, e.g. [::1]:50051")
    elif ":" in item:
        host, port_text = item.rsplit(":", 1)
    else:
        host, port_text = item, None
    if not host:
        raise InvalidTargetError(f"{what} {item!r}: missing host")
    if not is_valid_host(host):  # no newline, NUL or space ever reaches a log line
        raise InvalidTargetError(f"{what} {item!r}: {host!r} is not a host name or IP address")
    if port_text is None:
        if default_port is None:
            raise InvalidTargetError(f"{what} {item!r}: missing port (expected host:port)")
        return host, default_port
    return host, parse_port(port_text, f"{what} {item!r}")


def parse_port(text: str, context: str) -> int:
    if not (text.isascii() and text.isdigit()):  # "²" and "٣٣" are digits to str.isdigit
        raise InvalidTargetError(f"{context}: port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise InvalidTargetError(f"{context}: port {port} is out of range 1-65535")
    return port


def _check_ipv6(host: str, item: str, what: str) -> None:
    try:
        ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        raise InvalidTargetError(f"{what} {item!r}: {host!r} is not an IPv6 address") from None


def join_host_port(host: str, port: int) -> str:
    """The dialable form: IPv6 literals get brackets back."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")


def is_valid_host(host: str) -> bool:
    """An IP literal or a DNS name of ASCII letters, digits, ``-`` and ``_`` labels."""
    if is_ip_literal(host):
        return True
    return len(host) <= 253 and host.isascii() and _HOSTNAME.fullmatch(host) is not None


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def grpc_target_for(address: str) -> str:
    """The grpcio target for one endpoint's channel: an IP literal as an ``ipv4:`` /
    ``ipv6:`` target, so that channel runs no DNS resolver of its own (a cost paid
    once per endpoint; its authority is the same ``host:port``); names stay as given."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return address
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        if "%" not in inner and is_ip_literal(inner) and ":" in inner:
            return f"ipv6:{address}"
        return address
    try:  # the C parser: what ipaddress.IPv4Address accepts, at a tenth of its cost
        socket.inet_pton(socket.AF_INET, host)
    except (OSError, ValueError):
        return address
    return f"ipv4:{address}"


def split_list(target: Target) -> list[str]:
    """The comma-separated items of a list target, refusing empty items."""
    items = [i.strip() for i in target.endpoint.split(",")]
    if not any(items):
        raise InvalidTargetError(f"target {target.raw!r}: empty address list")
    if not all(items):
        raise InvalidTargetError(f"target {target.raw!r}: empty item in the address list")
    return items
