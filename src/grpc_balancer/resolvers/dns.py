"""``dns:`` (A/AAAA) and ``dns+srv:`` (SRV) targets, re-resolved as their TTL runs out.

Forms::

    dns:///name:port                  /etc/hosts, then the system's DNS servers
    dns://10.0.0.2:5353/name:port     ask this server (port defaults to 53)
    dns:///h1:p1,h2:p2                each item resolved, the results merged
    dns+srv:///_grpc._tcp.name        SRV: ports, weights, priorities from the records
    dns+srv://10.0.0.2/_grpc._tcp.name

IP literals and ``localhost`` are not queried: ``localhost:port`` stays one endpoint
and grpcio's own connect logic tries 127.0.0.1 and ::1 for it.

Refresh (grpcio's resolver never polls; this one must, so a scaled-up service is
seen without waiting for a failure): when the answer's TTL runs out, clamped to
``[min_refresh_s, max_refresh_s]``; at once on ``resolve_now()`` (the channel calls it
when a subchannel fails), but never twice within ``min_refresh_s``. A lookup error
keeps the last good list, is reported to the listener and retried with capped
exponential backoff; NXDOMAIN/NODATA is a real empty list and is pushed as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.errors import BalancerConfigError, InvalidTargetError
from grpc_balancer.resolvers._dns_lookup import (
    DnsLookupError,
    Lookup,
    lookup_host,
    lookup_srv,
    make_resolver,
    server_label,
)
from grpc_balancer.resolvers._hosts_file import HostsFile
from grpc_balancer.resolvers.base import (
    ResolverListener,
    ResolverOptions,
    register_builtin_resolver,
)
from grpc_balancer.target import (
    Target,
    is_ip_literal,
    join_host_port,
    split_host_port,
    split_list,
)

log = logging.getLogger("grpc_balancer.resolvers.dns")

SCHEMES = ("dns", "dns+srv")
DEFAULT_DNS_PORT = 53
#: Per-lookup time limit (dnspython's ``lifetime``); ``ResolverOptions.extra["query_timeout_s"]``.
DEFAULT_QUERY_TIMEOUT_S = 5.0
#: Re-ask after a negative answer that carried no SOA (so no negative TTL).
NEGATIVE_TTL_S = 5.0
#: Error backoff: min_refresh_s, doubling, capped here (and by max_refresh_s).
BACKOFF_CAP_S = 120.0

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"^{_LABEL}(?:\.{_LABEL})*\.?$")


@dataclass(frozen=True)
class DnsTarget:
    """A validated ``dns:``/``dns+srv:`` target."""

    server: tuple[str, int] | None
    items: tuple[tuple[str, int], ...] = ()  # dns: (host, port) per list item
    srv_name: str | None = None  # dns+srv: the SRV owner name

    @property
    def authority(self) -> str | None:
        """The name TLS should verify, for single-name targets (see :class:`DnsResolver`)."""
        if self.srv_name is not None:
            labels = self.srv_name.rstrip(".").split(".")
            while len(labels) > 1 and labels[0].startswith("_"):
                labels.pop(0)
            return ".".join(labels)
        if len(self.items) == 1:
            host, port = self.items[0]
            if not _needs_no_query(host):
                return join_host_port(host.rstrip("."), port)
        return None


#: gRPC's port when a dns: target names none (dns:///greeter.example.com).
DEFAULT_GRPC_PORT = 443


def parse_dns_target(target: Target) -> DnsTarget:
    """Validate a ``dns:``/``dns+srv:`` target; :class:`InvalidTargetError` names the problem."""
    server = _parse_server(target)
    if target.scheme == "dns+srv":
        name = target.endpoint.strip()
        if "," in name:
            raise InvalidTargetError(
                f"target {target.raw!r}: dns+srv takes one SRV name (e.g. _grpc._tcp.example.com)"
            )
        if ":" in name:
            raise InvalidTargetError(
                f"target {target.raw!r}: an SRV name carries no port (the records give the "
                f"ports); write dns+srv:///{name.split(':', 1)[0]}"
            )
        _check_hostname(name, target)
        return DnsTarget(server=server, srv_name=name)
    items = []
    for item in split_list(target):
        try:
            host, port = split_host_port(item, default_port=DEFAULT_GRPC_PORT, what="address")
        except InvalidTargetError as exc:
            raise InvalidTargetError(f"target {target.raw!r}: {exc}") from None
        if not is_ip_literal(host):
            _check_hostname(host, target)
        items.append((host, port))
    return DnsTarget(server=server, items=tuple(items))


def _parse_server(target: Target) -> tuple[str, int] | None:
    if not target.authority:
        return None
    try:
        host, port = split_host_port(
            target.authority, default_port=DEFAULT_DNS_PORT, what="DNS server"
        )
    except InvalidTargetError as exc:
        raise InvalidTargetError(f"target {target.raw!r}: {exc}") from None
    if not is_ip_literal(host):
        raise InvalidTargetError(
            f"target {target.raw!r}: DNS server {host!r} must be an IP address "
            f"(e.g. {target.scheme}://8.8.8.8:53/{target.endpoint})"
        )
    return host, port


def _check_hostname(host: str, target: Target) -> None:
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):  # fullmatch: "$" lets "\n" in
        raise InvalidTargetError(f"target {target.raw!r}: {host!r} is not a valid DNS name")


def _needs_no_query(host: str) -> bool:
    return is_ip_literal(host) or host.lower().rstrip(".") == "localhost"


def _fixed_endpoint(host: str, port: int) -> Endpoint:
    if is_ip_literal(host):
        return Endpoint(join_host_port(host, port))
    return Endpoint(f"localhost:{port}")


class DnsResolver:
    """Resolves one ``dns:``/``dns+srv:`` target in a background task.

    ``authority`` (``name:port`` for a single-name ``dns:`` target, the service domain
    for ``dns+srv:``) is read by the channel and set as ``grpc.default_authority`` on the
    per-endpoint channels, so TLS verifies the name rather than the resolved IP.
    """

    def __init__(
        self, target: Target, listener: ResolverListener, options: ResolverOptions
    ) -> None:
        self._target = target
        self._spec = parse_dns_target(target)
        self.authority = self._spec.authority
        self._listener = listener
        self._options = options
        self._timeout_s = _positive_float(options.extra, "query_timeout_s", DEFAULT_QUERY_TIMEOUT_S)
        self._label = server_label(self._spec.server)
        # Like getaddrinfo: without a named DNS server, /etc/hosts is read first.
        hosts_path = (options.extra or {}).get("hosts_file", "/etc/hosts")
        self._hosts = HostsFile(str(hosts_path)) if self._spec.server is None else None
        self._dns: dns.asyncresolver.Resolver | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._rng = random.Random()
        self._last_pushed: list[Endpoint] | None = None
        self._last_good: dict[int, list[Endpoint]] = {}
        self._error: str | None = None
        self._closed = False
        #: Lookup rounds done so far (introspection for tests and ``__repr__``).
        self.resolutions = 0

    # -- Resolver protocol ----------------------------------------------------------------
    def start(self) -> None:
        if self._spec.srv_name is None and all(_needs_no_query(h) for h, _ in self._spec.items):
            self._deliver([_fixed_endpoint(h, p) for h, p in self._spec.items], None)
            return
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"grpc_balancer.dns[{self._target.raw}]"
        )

    def resolve_now(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- the refresh loop ---------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._closed:
            started = loop.time()
            self._wake.clear()
            endpoints, ttl, error = await self._resolve_once()
            self._deliver(endpoints, error)
            if error is None:
                failures = 0
                delay = self._clamp(NEGATIVE_TTL_S if ttl is None else ttl)
                await self._sleep(started, delay)
            else:
                # Like grpc-go: an error waits out its backoff; resolve_now cannot shorten it.
                failures += 1
                await asyncio.sleep(self._backoff(failures))

    async def _sleep(self, started: float, delay: float) -> None:
        """Until ``started + delay``, or earlier on resolve_now — but never earlier than
        ``started + min_refresh_s`` (the rate limit)."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), max(0.0, started + delay - loop.time()))
        rest = started + self._options.min_refresh_s - loop.time()
        if rest > 0:
            await asyncio.sleep(rest)

    def _clamp(self, ttl: float) -> float:
        return min(max(ttl, self._options.min_refresh_s), self._options.max_refresh_s)

    def _backoff(self, failures: int) -> float:
        base = max(self._options.min_refresh_s, 0.05)
        cap = max(base, min(BACKOFF_CAP_S, self._options.max_refresh_s))
        return float(min(cap, base * 2 ** (failures - 1)) * self._rng.uniform(0.8, 1.2))

    async def _resolve_once(self) -> tuple[list[Endpoint] | None, float | None, str | None]:
        """(merged endpoints or None if nothing is known, TTL, error text or None)."""
        self.resolutions += 1
        if self._spec.srv_name is not None:
            jobs = [self._lookup_srv(self._spec.srv_name)]
        else:
            jobs = [self._lookup_item(host, port) for host, port in self._spec.items]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        lookups: list[Lookup | None] = []
        errors: list[str] = []
        for result in results:
            if isinstance(result, DnsLookupError):
                lookups.append(None)
                errors.append(str(result))
            elif isinstance(result, asyncio.CancelledError):
                raise result
            elif isinstance(result, BaseException):  # a bug, not a DNS answer: keep going
                log.error("%s: unexpected lookup failure", self._target, exc_info=result)
                lookups.append(None)
                errors.append(f"DNS lookup failed unexpectedly: {type(result).__name__}: {result}")
            else:
                lookups.append(result)
        return self._merge(lookups, errors)

    def _resolver(self) -> dns.asyncresolver.Resolver:
        """dnspython's resolver, made on first need (a missing resolv.conf is a lookup
        error, retried, not a crash; names from /etc/hosts work without it)."""
        if self._dns is None:
            self._dns = make_resolver(self._spec.server, self._timeout_s)
        return self._dns

    async def _lookup_srv(self, name: str) -> Lookup:
        search = self._spec.server is None
        return await lookup_srv(self._resolver(), name, search=search, label=self._label)

    async def _lookup_item(self, host: str, port: int) -> Lookup:
        if _needs_no_query(host):
            return Lookup([_fixed_endpoint(host, port)], None)
        listed = self._hosts.lookup(host) if self._hosts is not None else []
        if listed:
            meta = {"host": host, "source": "hosts file"}
            return Lookup(
                [Endpoint(join_host_port(ip, port), metadata=meta) for ip in listed], None
            )
        search = self._spec.server is None
        return await lookup_host(self._resolver(), host, port, search=search, label=self._label)

    def _merge(
        self, lookups: Sequence[Lookup | None], errors: list[str]
    ) -> tuple[list[Endpoint] | None, float | None, str | None]:
        """Fresh answers where we have them, the last good answer where a lookup failed."""
        known = False
        merged: dict[str, Endpoint] = {}
        ttls = []
        for index, lookup in enumerate(lookups):
            if lookup is None:
                endpoints = self._last_good.get(index)
                if endpoints is None:
                    continue
            else:
                endpoints = lookup.endpoints
                self._last_good[index] = endpoints
                if lookup.ttl is not None:
                    ttls.append(lookup.ttl)
            known = True
            for endpoint in endpoints:
                merged.setdefault(endpoint.address, endpoint)
        error = "; ".join(dict.fromkeys(errors)) or None
        result = list(merged.values()) if known else None
        if error is not None and not result:
            result = None  # never push an empty list because of an error
        return result, (min(ttls) if ttls else None), error

    def _deliver(self, endpoints: list[Endpoint] | None, error: str | None) -> None:
        if self._closed:
            return
        recovered = error is None and self._error is not None
        if endpoints is not None and (endpoints != self._last_pushed or recovered):
            self._last_pushed = endpoints
            self._listener.on_endpoints(list(endpoints))
        if error is not None:
            if error != self._error:
                log.info("%s: %s (keeping the last good list, retrying)", self._target, error)
            self._error = error
            self._listener.on_resolver_error(error)
        elif recovered:
            log.info("%s: DNS resolution recovered", self._target)
            self._error = None

    def __repr__(self) -> str:
        state = f"error={self._error!r}" if self._error else f"endpoints={self._last_pushed}"
        return f"<DnsResolver {self._target.raw!r} {state}>"


def _positive_float(extra: Any, key: str, default: float) -> float:
    value = extra.get(key, default) if extra else default
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise BalancerConfigError(f"resolver option {key} must be a positive number, got {value!r}")
    return float(value)


for _scheme in SCHEMES:
    register_builtin_resolver(_scheme, DnsResolver)
