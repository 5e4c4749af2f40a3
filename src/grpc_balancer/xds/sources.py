"""Each service's endpoints, from the project's own resolvers, into the catalog.

One resolver per service target (``static:``, ``dns:``, ``etcd:``... or a registered
scheme). Host names are turned into IP addresses here, because xDS clients take only
IPs in EDS; a resolver error keeps the last good list and is shown in status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.resolvers.base import Resolver, ResolverOptions, get_resolver_factory
from grpc_balancer.target import parse_target
from grpc_balancer.xds.model import XdsConfig
from grpc_balancer.xds.model import is_ip_address as _is_ip

log = logging.getLogger("grpc_balancer.xds.sources")

SetEndpoints = Callable[[str, Sequence[Endpoint]], None]


@dataclass
class SourceStatus:
    target: str
    endpoints: tuple[Endpoint, ...] | None = None
    error: str | None = None
    updates: int = 0


@dataclass
class _Source:
    target: str
    resolver: Resolver | None = None
    status: SourceStatus = field(default_factory=lambda: SourceStatus(""))
    seq: int = 0


class Sources:
    """Runs one resolver per service and reports each list to ``set_endpoints``."""

    def __init__(self, set_endpoints: SetEndpoints) -> None:
        self._set = set_endpoints
        self._sources: dict[str, _Source] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def status(self) -> dict[str, SourceStatus]:
        return {name: s.status for name, s in self._sources.items()}

    async def apply(self, config: XdsConfig) -> None:
        """Start resolvers for new services or changed targets, stop the rest."""
        for name in list(self._sources):
            spec = config.services.get(name)
            if spec is None or spec.target != self._sources[name].target:
                await self._stop(name)
        for name, spec in config.services.items():
            if name not in self._sources:
                self._start(name, spec.target)

    def _start(self, name: str, target_uri: str) -> None:
        target = parse_target(target_uri)
        source = _Source(target_uri, status=SourceStatus(target_uri))
        self._sources[name] = source
        listener = _Listener(self, name, source)
        source.resolver = get_resolver_factory(target)(target, listener, ResolverOptions())
        source.resolver.start()

    async def _stop(self, name: str) -> None:
        source = self._sources.pop(name)
        source.seq += 1  # results still in flight are dropped
        if source.resolver is not None:
            await source.resolver.close()

    async def close(self) -> None:
        for name in list(self._sources):
            await self._stop(name)
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _deliver(self, name: str, source: _Source, endpoints: Sequence[Endpoint]) -> None:
        source.seq += 1
        if all(_is_ip(e.address) for e in endpoints):
            self._publish(name, source, tuple(endpoints))
            return
        task = asyncio.get_running_loop().create_task(
            self._resolve_hosts(name, source, source.seq, tuple(endpoints))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve_hosts(
        self, name: str, source: _Source, seq: int, endpoints: tuple[Endpoint, ...]
    ) -> None:
        loop = asyncio.get_running_loop()
        out: list[Endpoint] = []
        for ep in endpoints:
            if _is_ip(ep.address):
                out.append(ep)
                continue
            host, _, port = ep.address.rpartition(":")
            try:
                infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
            except OSError as exc:
                source.status.error = f"{ep.address}: {exc}"
                continue
            ip = str(infos[0][4][0])
            out.append(replace(ep, address=f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"))
        if seq == source.seq and self._sources.get(name) is source:
            self._publish(name, source, tuple(out))

    def _publish(self, name: str, source: _Source, endpoints: tuple[Endpoint, ...]) -> None:
        source.status.endpoints = endpoints
        source.status.updates += 1
        source.status.error = None
        log.info("service %s: %d endpoint(s)", name, len(endpoints))
        self._set(name, endpoints)


class _Listener:
    def __init__(self, owner: Sources, name: str, source: _Source) -> None:
        self._owner, self._name, self._source = owner, name, source

    def on_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        if self._owner._sources.get(self._name) is self._source:
            self._owner._deliver(self._name, self._source, endpoints)

    def on_resolver_error(self, error: str) -> None:
        self._source.status.error = error
        log.warning("service %s: resolver error: %s", self._name, error)
