"""``xds:///NAME``: endpoints and configuration from an xDS control plane (extra ``[xds]``).

The bootstrap is gRPC's (``GRPC_XDS_BOOTSTRAP`` / ``GRPC_XDS_BOOTSTRAP_CONFIG``, or
``ResolverOptions(extra={"bootstrap": ...})``). The resolver watches, over the process's
one ADS stream to that server, the Listener ``NAME``, its RouteConfiguration, the one
Cluster its routes name and that cluster's ClusterLoadAssignment; once it has all four
it hands the channel a service config (policy, method config, outlier detection,
circuit breakers) and then the endpoints, and after that whatever changes.

Nothing the control plane does empties a working list: a rejected (NACKed) resource
keeps its last good value, a broken stream keeps everything (and is retried), a deleted
listener or cluster, or routes this channel cannot follow, are reported as resolver
errors while the last good endpoints stay in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from grpc_balancer._xds_client import ads
from grpc_balancer._xds_client.bootstrap import load_bootstrap
from grpc_balancer._xds_client.mapping import MappingError, routing, service_config
from grpc_balancer._xds_client.model import (
    CLUSTER,
    ENDPOINTS,
    LISTENER,
    ROUTE,
    SHORT,
    Cluster,
    Endpoints,
    Listener,
    Resource,
    RouteConfig,
)
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.errors import InvalidTargetError
from grpc_balancer.resolvers.base import (
    ResolverListener,
    ResolverOptions,
    register_builtin_resolver,
    takes_service_config,
)
from grpc_balancer.target import Target

log = logging.getLogger("grpc_balancer.resolvers.xds")

SCHEME = "xds"
#: gRPC's resource-does-not-exist timer: no full answer this long → a resolver error.
INITIAL_TIMEOUT_S = 15.0


class XdsResolver:
    """Follows one target's LDS → RDS → CDS → EDS chain."""

    def __init__(
        self, target: Target, listener: ResolverListener, options: ResolverOptions
    ) -> None:
        if target.authority:
            raise InvalidTargetError(
                f"target {target.raw!r}: xds authorities (federation, gRFC A47) are not "
                f"supported; write xds:///{target.endpoint}"
            )
        name = target.endpoint.lstrip("/")
        if not name:
            raise InvalidTargetError(f"target {target.raw!r}: name the listener: xds:///NAME")
        self._target = target
        self.bootstrap = load_bootstrap(options.extra)
        self.listener_name = self.bootstrap.listener_template.replace("%s", name)
        #: The data-plane authority (virtual host matching, and ``:authority`` on calls).
        self.authority = name
        self._listener = listener
        self._client: ads.XdsClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watches: dict[str, str] = {}  # type URL → the one name watched
        self._values: dict[tuple[str, str], Resource] = {}
        self._nacks: dict[tuple[str, str], str] = {}
        self._missing: dict[tuple[str, str], str] = {}
        self._pushed_config: tuple[dict[str, Any], tuple[str, ...]] | None = None
        self._pushed_endpoints: list[Endpoint] | None = None
        self._error: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._sink: Callable[[ads.XdsEvent], None] = self._from_stream_thread

    # -- Resolver protocol --------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._client = ads.acquire(self.bootstrap)
        self._timer = self._loop.call_later(INITIAL_TIMEOUT_S, self._initial_timeout)
        self._watch(LISTENER, self.listener_name)

    def resolve_now(self) -> None:
        pass  # the stream pushes every change

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        client, self._client = self._client, None
        if client is not None:
            for type_url, name in self._watches.items():
                client.cancel(type_url, name, self._sink)
            ads.release(client)
        self._watches.clear()

    # -- events -------------------------------------------------------------------------
    def _from_stream_thread(self, event: ads.XdsEvent) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody to tell
            loop.call_soon_threadsafe(self._on_event, event)

    def _on_event(self, event: ads.XdsEvent) -> None:
        if self._closed:
            return
        key = (event.type_url, event.name)
        if event.kind == "connection":
            self._report(event.error)
            return
        if event.kind == "connected":
            if self._error is not None and self._pushed_endpoints is not None:
                self._error = None
                self._listener.on_endpoints(list(self._pushed_endpoints))
            return
        if self._watches.get(event.type_url) != event.name:
            return  # a name this resolver no longer watches
        if event.kind == "resource" and event.value is not None:
            self._values[key] = event.value
            self._nacks.pop(key, None)
            self._missing.pop(key, None)
        elif event.kind == "nacked":
            self._nacks[key] = event.error
        elif event.kind == "missing":
            self._values.pop(key, None)
            self._missing[key] = event.error
        self._update()

    def _update(self) -> None:
        """Follow the chain as far as it goes; push what changed."""
        listener = self._value(LISTENER, self.listener_name, Listener)
        if listener is None:
            return self._waiting(LISTENER, self.listener_name)
        rc = listener.route_config
        if rc is None:
            assert listener.route_config_name is not None
            self._watch(ROUTE, listener.route_config_name)
            rc = self._value(ROUTE, listener.route_config_name, RouteConfig)
            if rc is None:
                return self._waiting(ROUTE, listener.route_config_name)
        else:
            self._unwatch(ROUTE)
        try:
            route = routing(listener, rc, self.authority)
        except MappingError as exc:
            return self._report(str(exc))
        self._watch(CLUSTER, route.cluster)
        cluster = self._value(CLUSTER, route.cluster, Cluster)
        if cluster is None:
            return self._waiting(CLUSTER, route.cluster)
        self._watch(ENDPOINTS, cluster.eds_service_name)
        eds = self._value(ENDPOINTS, cluster.eds_service_name, Endpoints)
        if eds is None:
            return self._waiting(ENDPOINTS, cluster.eds_service_name)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        notes = (*listener.notes, *route.notes, *cluster.notes, *eds.notes, *self._nack_notes())
        self._push(service_config(route, cluster), tuple(notes), list(eds.endpoints))

    def _push(self, config: dict[str, Any], notes: tuple[str, ...], eps: list[Endpoint]) -> None:
        if (config, notes) != self._pushed_config:
            self._pushed_config = (config, notes)
            if takes_service_config(self._listener):
                self._listener.on_service_config(config, notes)  # type: ignore[attr-defined]
        recovered = self._error is not None
        if eps != self._pushed_endpoints or recovered:
            self._pushed_endpoints = eps
            self._error = None
            self._listener.on_endpoints(list(eps))

    def _nack_notes(self) -> list[str]:
        return [
            f"NACKed {SHORT[t]} {n!r} (the last good one is in use): {reason}"
            for (t, n), reason in sorted(self._nacks.items())
        ]

    def _value(self, type_url: str, name: str, kind: type[Any]) -> Any:
        value = self._values.get((type_url, name))
        return value if isinstance(value, kind) else None

    def _waiting(self, type_url: str, name: str) -> None:
        missing = self._missing.get((type_url, name))
        if missing is not None:
            self._report(missing)
        elif (type_url, name) in self._nacks:
            self._report(f"{SHORT[type_url]} {name!r} was NACKed: {self._nacks[(type_url, name)]}")

    def _initial_timeout(self) -> None:
        self._timer = None
        if self._pushed_endpoints is not None or self._closed:
            return
        have = ", ".join(f"{SHORT[t]} {n!r}" for t, n in self._watches.items())
        got = {SHORT[t] for (t, _) in self._values}
        waiting = [f"{SHORT[t]} {n!r}" for t, n in self._watches.items() if SHORT[t] not in got]
        assert self._client is not None
        stream = self._client.last_error or f"xDS server {self.bootstrap.server.uri}"
        self._report(
            f"no complete answer after {INITIAL_TIMEOUT_S:g}s from {stream} "
            f"(watching {have}; waiting for {', '.join(waiting) or 'nothing'})"
        )

    def _report(self, error: str) -> None:
        if self._closed:
            return
        if error != self._error:
            log.info("%s: %s (keeping the last good list)", self._target.raw, error)
        self._error = error
        self._listener.on_resolver_error(error)

    # -- watches ------------------------------------------------------------------------
    def _watch(self, type_url: str, name: str) -> None:
        if self._watches.get(type_url) == name:
            return
        self._unwatch(type_url)
        self._watches[type_url] = name
        assert self._client is not None
        self._client.watch(type_url, name, self._sink)

    def _unwatch(self, type_url: str) -> None:
        old = self._watches.pop(type_url, None)
        if old is not None and self._client is not None:
            self._client.cancel(type_url, old, self._sink)
            self._values.pop((type_url, old), None)
            self._nacks.pop((type_url, old), None)
            self._missing.pop((type_url, old), None)

    def status(self) -> dict[str, Any]:
        """The ADS stream this target uses, and what it watches (JSON-ready)."""
        stream = self._client.status() if self._client is not None else {}
        return {
            "listener": self.listener_name,
            "watching": {SHORT[t]: n for t, n in self._watches.items()},
            "stream": stream,
        }

    def __repr__(self) -> str:
        return f"<XdsResolver {self._target.raw!r} server={self.bootstrap.server.uri}>"


register_builtin_resolver(SCHEME, XdsResolver)
