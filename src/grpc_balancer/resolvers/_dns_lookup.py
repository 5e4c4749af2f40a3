"""One round of DNS queries with dnspython's async resolver: A+AAAA for a host, SRV
plus the targets' A/AAAA for a service.

No state and no retries here (the refresh loop in :mod:`.dns` owns those). The split
that matters is between an *answer* and an *error*: NXDOMAIN and an empty answer
(NODATA) are answers (no addresses, honoured by the caller), while a timeout, SERVFAIL,
REFUSED or an unreachable server is a :class:`DnsLookupError`, whose message is
stable (no measured durations) so "log once per state change" can compare texts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.target import join_host_port

log = logging.getLogger("grpc_balancer.resolvers.dns")


class DnsLookupError(Exception):
    """The DNS could not answer (as opposed to answering "no such name")."""


@dataclass(frozen=True)
class Lookup:
    """Endpoints found and the TTL (s) after which they should be asked again;
    ``ttl`` is ``None`` when no answer carried one (a negative answer without SOA)."""

    endpoints: list[Endpoint]
    ttl: float | None


@dataclass(frozen=True)
class _Addresses:
    ips: list[str]
    ttl: float | None


def make_resolver(server: tuple[str, int] | None, timeout_s: float) -> dns.asyncresolver.Resolver:
    """A dnspython resolver asking ``server`` (or the system's, from /etc/resolv.conf).

    Raises :class:`DnsLookupError` when there is no system configuration.
    """
    try:
        resolver = dns.asyncresolver.Resolver(configure=server is None)
    except dns.exception.DNSException as exc:  # NoResolverConfiguration
        raise DnsLookupError(
            f"no DNS server configured in /etc/resolv.conf ({exc}); name one in the "
            "target, e.g. dns://8.8.8.8/name:port"
        ) from None
    if server is not None:
        resolver.nameservers = [server[0]]
        resolver.port = server[1]
    resolver.lifetime = timeout_s
    resolver.timeout = min(2.0, timeout_s)
    resolver.cache = None
    return resolver


def server_label(server: tuple[str, int] | None) -> str:
    return "the system resolver" if server is None else join_host_port(*server)


async def lookup_host(
    resolver: dns.asyncresolver.Resolver,
    host: str,
    port: int,
    *,
    search: bool,
    label: str,
) -> Lookup:
    """``host``'s A and AAAA records as endpoints on ``port`` (IPv4 first, sorted)."""
    found = await _addresses(resolver, host, search=search, label=label)
    endpoints = [Endpoint(join_host_port(ip, port), metadata={"host": host}) for ip in found.ips]
    return Lookup(endpoints, found.ttl)


async def lookup_srv(
    resolver: dns.asyncresolver.Resolver, name: str, *, search: bool, label: str
) -> Lookup:
    """The SRV records of ``name``; each target resolved to A/AAAA, keeping the record's
    port, weight and priority. Ordered by priority, then weight (heaviest first)."""
    try:
        answer = await resolver.resolve(name, "SRV", search=search)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
        return Lookup([], _negative_ttl(exc))
    except (dns.exception.DNSException, OSError) as exc:
        raise DnsLookupError(_describe(name, "SRV", label, exc, resolver.lifetime)) from None
    records = sorted(answer, key=lambda r: (r.priority, -r.weight, str(r.target), r.port))
    ttl: float | None = float(answer.rrset.ttl)
    targets = sorted({_target_name(r.target) for r in records} - {""})
    found = await asyncio.gather(
        *(_addresses(resolver, t, search=search, label=label) for t in targets),
        return_exceptions=True,
    )
    by_target: dict[str, _Addresses] = {}
    failed: list[DnsLookupError] = []
    for target, result in zip(targets, found, strict=True):
        if isinstance(result, DnsLookupError):
            failed.append(result)
            log.warning("skipping SRV target %s of %s: %s", target, name, result)
        elif isinstance(result, BaseException):
            raise result
        else:
            by_target[target] = result
    if failed and not by_target:
        raise failed[0]  # every target failed: an error (the last good list is kept)
    endpoints: list[Endpoint] = []
    seen: set[str] = set()
    for record in records:
        target = _target_name(record.target)
        if not target:  # "." means "no service here" (RFC 2782)
            continue
        addresses = by_target.get(target)
        if addresses is None:  # its lookup failed (logged above)
            continue
        ttl = _min_ttl(ttl, addresses.ttl)
        for ip in addresses.ips:
            address = join_host_port(ip, record.port)
            if address in seen:
                continue
            seen.add(address)
            endpoints.append(
                Endpoint(
                    address,
                    weight=record.weight,
                    priority=record.priority,
                    metadata={"host": target},
                )
            )
    return Lookup(endpoints, ttl)


def _target_name(name: dns.name.Name) -> str:
    text: str = name.to_text(omit_final_dot=True)
    return "" if text in ("", ".") else text


async def _addresses(
    resolver: dns.asyncresolver.Resolver, host: str, *, search: bool, label: str
) -> _Addresses:
    """A and AAAA; a family whose query failed (REFUSED, SERVFAIL, timeout: some servers
    and middleboxes do that to AAAA alone) is left out, as grpcio does. An error only
    when both failed."""
    answers = await asyncio.gather(
        _one_type(resolver, host, "A", search=search, label=label),
        _one_type(resolver, host, "AAAA", search=search, label=label),
        return_exceptions=True,
    )
    found: list[_Addresses] = []
    errors: list[DnsLookupError] = []
    for answer in answers:
        if isinstance(answer, _Addresses):
            found.append(answer)
        elif isinstance(answer, DnsLookupError):
            errors.append(answer)
        else:
            raise answer
    if not found:
        raise errors[0]  # both failed: the A query's error
    for error in errors:
        log.debug("%s (using the other address family)", error)
    return _Addresses([ip for a in found for ip in a.ips], _min_ttl(*(a.ttl for a in found)))


async def _one_type(
    resolver: dns.asyncresolver.Resolver, host: str, rdtype: str, *, search: bool, label: str
) -> _Addresses:
    try:
        answer = await resolver.resolve(host, rdtype, search=search)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
        return _Addresses([], _negative_ttl(exc))
    except (dns.exception.DNSException, OSError) as exc:
        raise DnsLookupError(_describe(host, rdtype, label, exc, resolver.lifetime)) from None
    ips = sorted({rr.address for rr in answer}, key=ipaddress.ip_address)
    return _Addresses(ips, float(answer.rrset.ttl))


def _min_ttl(*ttls: float | None) -> float | None:
    known = [t for t in ttls if t is not None]
    return min(known) if known else None


def _negative_ttl(exc: dns.exception.DNSException) -> float | None:
    """RFC 2308: a negative answer may be cached for min(SOA TTL, SOA MINIMUM)."""
    responses: Sequence[Any]
    if isinstance(exc, dns.resolver.NXDOMAIN):
        responses = list(exc.responses().values())
    else:
        try:
            responses = [exc.response()]
        except (AttributeError, KeyError, TypeError):
            responses = []
    for response in responses:
        if not isinstance(response, dns.message.Message):
            continue
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                return float(min(rrset.ttl, rrset[0].minimum))
    return None


def _describe(name: str, rdtype: str, label: str, exc: BaseException, lifetime: float) -> str:
    """'DNS lookup of a.test (A) at 127.0.0.1:53 failed: timed out after 5s'."""
    if isinstance(exc, dns.exception.Timeout):
        reason = f"timed out after {lifetime:g}s (server down or unreachable?)"
    elif isinstance(exc, dns.resolver.NoNameservers):
        reason = _nameserver_errors(exc)
    elif isinstance(exc, dns.resolver.NoResolverConfiguration):
        reason = "no DNS server configured"
    elif isinstance(exc, OSError):
        reason = exc.strerror or type(exc).__name__
    else:
        reason = f"{type(exc).__name__}: {exc}"
    return f"DNS lookup of {name} ({rdtype}) at {label} failed: {reason}"


def _nameserver_errors(exc: dns.resolver.NoNameservers) -> str:
    """Each server's rcode (SERVFAIL, REFUSED) or transport error, without timings."""
    parts = []
    for entry in exc.kwargs.get("errors") or []:
        error, response = entry[3], entry[4]
        if isinstance(response, dns.message.Message):
            parts.append(f"server answered {dns.rcode.to_text(response.rcode())}")
        elif isinstance(error, OSError):
            parts.append(error.strerror or type(error).__name__)
        else:
            parts.append(type(error).__name__)
    return "; ".join(dict.fromkeys(parts)) or "all nameservers failed"
