"""The ADS server: ``StreamAggregatedResources`` (state of the world) and
``DeltaAggregatedResources`` (incremental) on grpc.aio.

Each stream runs one loop over one queue: requests (read by a reader task) and "the
world changed" wake-ups. The protocol decisions are :class:`.stream.StreamState`'s
(:class:`.delta.DeltaStreamState`'s for delta); this module decodes requests, encodes
responses and keeps the records the status view shows. Every stream of every node is
pushed a new EDS at once when a resolver reports a new list.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from grpc_balancer.xds import admin
from grpc_balancer.xds.capabilities import Capabilities, from_node
from grpc_balancer.xds.delta import DeltaRequest, DeltaResponse, DeltaStreamState
from grpc_balancer.xds.model import XdsConfig
from grpc_balancer.xds.resources import Built, Faults, Profile, build_world
from grpc_balancer.xds.snapshot import Catalog
from grpc_balancer.xds.sources import Sources
from grpc_balancer.xds.stream import SHORT, ProtocolError, Request, Response, StreamState

log = logging.getLogger("grpc_balancer.xds.server")

CONTROL_PLANE_ID = "grpc-balancer"
#: What the ``break_resource`` test hook can make invalid.
BREAKABLE = ("lds", "rds", "cds", "eds")
_WORLD = object()
_STOP = object()


@dataclass
class StreamRecord:
    """One connected ADS stream, as the status view shows it."""

    id: int
    peer: str
    node_id: str = ""
    cluster: str = ""
    user_agent: str = ""
    caps: Capabilities | None = None
    flavour: str = ""
    connected_at: float = field(default_factory=time.time)
    delta: bool = False
    state: StreamState | DeltaStreamState = field(default_factory=StreamState)
    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    woken: bool = False
    warnings: tuple[str, ...] = ()

    def wake(self) -> None:
        if not self.woken:
            self.woken = True
            self.queue.put_nowait(_WORLD)


class XdsServer:
    """An ADS control plane serving ``config``'s services. ``async with`` or start/stop.

    ``test_hooks`` enables the admin methods that change the served state (break a
    resource, replace the config): for tests and harnesses, never for production.
    """

    def __init__(
        self,
        config: XdsConfig,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        test_hooks: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.test_hooks = test_hooks
        self.catalog: Catalog[Profile, Built, Faults] = Catalog(config, build_world, Faults())
        self.catalog.on_change(self._wake_all)
        self.sources = Sources(self.catalog.set_endpoints)
        self.streams: dict[int, StreamRecord] = {}
        #: The last NACKs of every stream, kept after the stream ends.
        self.nacks: deque[dict[str, Any]] = deque(maxlen=50)
        self._ids = itertools.count(1)
        self._server: grpc.aio.Server | None = None
        self._stopping = False

    @property
    def address(self) -> str:
        """``host:port`` to dial (an IPv6 host in brackets)."""
        host = self.host.strip("[]")
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    async def __aenter__(self) -> XdsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self.port:
            _check_free(self.host, self.port)
        await self.sources.apply(self.catalog.config)
        # No SO_REUSEPORT: a second control plane on a busy port must fail, not share it.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Ads(self), server)
        server.add_generic_rpc_handlers((admin.handler(self),))
        try:
            bound = server.add_insecure_port(self.address)
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise OSError(f"cannot listen on {self.address} (is the port in use?)")
        self.port = bound
        await server.start()
        self._server = server
        log.info("xDS server on %s", self.address)

    async def stop(self, grace: float | None = 1.0) -> None:
        """End every stream (clients keep their config and reconnect), then stop."""
        self._stopping = True
        for record in list(self.streams.values()):
            record.queue.put_nowait(_STOP)
        await self.sources.close()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    # -- what changes the served state ------------------------------------------------------
    async def update_config(self, config: XdsConfig) -> None:
        self.catalog.set_config(config)
        await self.sources.apply(config)

    def break_resource(self, kind: str, service: str) -> None:
        """Test hook: serve an invalid ``kind`` for ``service``: ``lds`` (an API listener
        that is not an HttpConnectionManager), ``rds`` (a virtual host without domains),
        ``cds`` (an lb_policy no client knows), ``eds`` (priorities that skip 0)."""
        if kind not in BREAKABLE:
            raise ValueError(f"cannot break {kind!r}: one of {', '.join(BREAKABLE)}")
        faults = self.catalog.faults
        self.catalog.set_faults(Faults(faults.broken | {(kind, service)}))

    def heal(self) -> None:
        self.catalog.set_faults(Faults())

    def _wake_all(self) -> None:
        for record in self.streams.values():
            record.wake()

    # -- one stream -------------------------------------------------------------------------
    async def run_stream(
        self,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext[Any, Any],
        *,
        delta: bool = False,
    ) -> None:
        record = StreamRecord(next(self._ids), context.peer(), delta=delta)
        if delta:
            record.state = DeltaStreamState()
        self.streams[record.id] = record
        reader = asyncio.get_running_loop().create_task(self._read(requests, record.queue))
        try:
            while not self._stopping:
                item = await record.queue.get()
                if item is _STOP:
                    break
                if isinstance(item, BaseException):
                    raise item
                if item is _WORLD:
                    record.woken = False
                    if record.caps is None:
                        continue
                    responses: Sequence[Response | DeltaResponse] = record.state.on_world(
                        self._view(record).world
                    )
                else:
                    responses = self._on_request(record, item)
                for response in responses:
                    await context.write(_encode(response))
        except ProtocolError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self.streams.pop(record.id, None)

    @staticmethod
    async def _read(requests: AsyncIterator[Any], queue: asyncio.Queue[object]) -> None:
        try:
            async for request in requests:
                queue.put_nowait(request)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        except Exception as exc:
            queue.put_nowait(exc)
            return
        queue.put_nowait(_STOP)

    def _on_request(self, record: StreamRecord, message: Any) -> Sequence[Response | DeltaResponse]:
        if record.caps is None:
            node = message.node
            record.node_id, record.cluster = node.id, node.cluster
            version = node.user_agent_version or _build_version(node)
            record.user_agent = f"{node.user_agent_name} {version}".strip()
            record.caps = from_node(node.user_agent_name, version, list(node.client_features))
            flavours = self.catalog.config.listener_flavours
            record.flavour = (
                flavours.get(node.id) or flavours.get("*") or (record.caps.default_listener)
            )
            log.info(
                "stream %d: node %r (%s, %s listener)",
                record.id, node.id, record.user_agent, record.flavour,
            )  # fmt: skip
        error = message.error_detail.message if message.HasField("error_detail") else None
        type_url = message.type_url
        state = record.state.types.get(type_url)
        before = state.nack if state is not None else None
        world = self._view(record).world
        responses: Sequence[Response | DeltaResponse]
        if isinstance(record.state, DeltaStreamState):
            responses = record.state.on_request(
                DeltaRequest(
                    type_url=type_url,
                    subscribe=tuple(message.resource_names_subscribe),
                    unsubscribe=tuple(message.resource_names_unsubscribe),
                    initial_versions=dict(message.initial_resource_versions),
                    response_nonce=message.response_nonce,
                    error=error,
                ),
                world,
            )
        else:
            responses = record.state.on_request(
                Request(
                    type_url=type_url,
                    version_info=message.version_info,
                    response_nonce=message.response_nonce,
                    resource_names=tuple(message.resource_names),
                    error=error,
                ),
                world,
            )
        request_type = type_url
        nack = record.state.types[request_type].nack
        if nack is not None and nack is not before:
            kind = SHORT.get(request_type, request_type)
            log.warning("node %r NACKed %s version %s: %s", record.node_id, kind, nack.version,
                        nack.error)  # fmt: skip
            self.nacks.append(
                {"node": record.node_id, "type": kind, "version": nack.version,
                 "error": nack.error, "at": time.time()}
            )  # fmt: skip
        return responses

    def _view(self, record: StreamRecord) -> Built:
        assert record.caps is not None
        built = self.catalog.view(Profile(record.flavour, record.caps))
        for warning in set(built.warnings) - set(record.warnings):
            log.warning("node %r: %s", record.node_id, warning)
        record.warnings = built.warnings
        return built

    def status(self) -> dict[str, Any]:
        """Everything the status view shows, as JSON-ready values."""
        return admin.status(self)


def _encode(response: Response | DeltaResponse) -> Any:
    control_plane = base_pb2.ControlPlane(identifier=CONTROL_PLANE_ID)
    if isinstance(response, DeltaResponse):
        delta = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=response.system_version,
            type_url=response.type_url,
            nonce=response.nonce,
            removed_resources=list(response.removed),
            control_plane=control_plane,
        )
        for name, version, resource in response.resources:
            delta.resources.add(name=name, version=version).resource.CopyFrom(resource)
        return delta
    out = discovery_pb2.DiscoveryResponse(
        version_info=response.version,
        type_url=response.type_url,
        nonce=response.nonce,
        control_plane=control_plane,
    )
    out.resources.extend(resource for _, resource in response.resources)
    return out


def _check_free(host: str, port: int) -> None:
    """A busy port is one clear error (before grpc logs its own bind failure)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as exc:
            where = f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"
            raise OSError(f"cannot listen on {where}: {exc.strerror}") from None


def _build_version(node: Any) -> str:
    if node.HasField("user_agent_build_version"):
        v = node.user_agent_build_version.version
        return f"{v.major_number}.{v.minor_number}.{v.patch}"
    return ""


class _Ads(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, server: XdsServer) -> None:
        self._server = server

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await self._server.run_stream(request_iterator, context)

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await self._server.run_stream(request_iterator, context, delta=True)
