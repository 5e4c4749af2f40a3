"""One ADS stream (state of the world) per bootstrap server, shared by the whole process.

:func:`acquire` gives the process's :class:`XdsClient` for a bootstrap (made on first
use, closed when the last channel releases it). The stream runs on grpcio's blocking
API in one daemon thread, so it belongs to no event loop: every asyncio channel, on
any loop, and every sync channel (each on its own loop thread) share it. Watchers get
:class:`XdsEvent` values through their sink, called on that thread (the resolver hops
to its own loop with ``call_soon_threadsafe``).

Protocol (xDS SotW, gRFC A27): per type URL one request naming every watched resource;
each response is ACKed (its version and nonce) when every resource in it is usable, else
NACKed (the last ACKed version, the nonce, ``error_detail`` naming each rejected resource
and why). The usable resources of a NACKed response are still applied and the rejected
ones keep their last good value, as gRPC does. For LDS and CDS, a watched name missing
from a response was deleted (unless the server has ``ignore_resource_deletion``). A broken
stream is retried with jittered exponential backoff; watchers keep what they had and hear
a connection error; the new stream re-sends every subscription with the versions held.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2  # type: ignore[import-untyped]

from grpc_balancer import __version__
from grpc_balancer._xds_client.bootstrap import Bootstrap
from grpc_balancer._xds_client.decode import NACK_CODE, ResourceError, decode, describe
from grpc_balancer._xds_client.model import FULL_STATE, SHORT, TYPES, Resource

log = logging.getLogger("grpc_balancer.xds_client")

ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
USER_AGENT = "grpc-balancer"
CLIENT_FEATURES = ("xds.config.resource-in-sotw",)
#: Reconnect backoff (gRPC's connection backoff, with a lower cap).
BACKOFF_INITIAL_S, BACKOFF_MULTIPLIER, BACKOFF_JITTER, BACKOFF_MAX_S = 1.0, 1.6, 0.2, 30.0
#: NACKs kept for status().
NACKS_KEPT = 20


@dataclass(frozen=True, slots=True)
class XdsEvent:
    """What a watcher hears: ``resource`` (a new value), ``nacked`` (a new value was
    rejected; the last good one stays), ``missing`` (the server says it does not exist),
    ``connection`` (the stream broke; values stay, it is being retried), ``connected``
    (a stream answered again)."""

    kind: str
    type_url: str = ""
    name: str = ""
    value: Resource | None = None
    error: str = ""


Sink = Callable[[XdsEvent], None]


@dataclass(slots=True)
class _Watched:
    sinks: list[Sink] = field(default_factory=list)
    value: Resource | None = None
    error: str | None = None
    missing: bool = False


@dataclass(slots=True)
class _TypeState:
    watched: dict[str, _Watched] = field(default_factory=dict)
    version: str = ""  # the last ACKed
    nonce: str = ""  # the last received
    acks: int = 0


class XdsClient:
    """The process's client for one ADS server (see :func:`acquire`)."""

    def __init__(self, bootstrap: Bootstrap, key: tuple[Any, ...]) -> None:
        self.bootstrap = bootstrap
        self._key = key
        self._lock = threading.Lock()
        self._types: dict[str, _TypeState] = {t: _TypeState() for t in TYPES}
        self._queue: queue.SimpleQueue[Any] | None = None
        self._call: Any = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False
        self._rng = random.Random()
        self.refs = 0
        #: For status() and tests: streams opened, connected now, the last error, NACKs.
        self.streams = 0
        self.connected = False
        self.last_error: str | None = None
        self.nacks: list[dict[str, str]] = []
        self._node_sent = False

    # -- watching (any thread) ------------------------------------------------------------------
    def watch(self, type_url: str, name: str, sink: Sink) -> None:
        """Subscribe ``sink`` to ``name``; it hears the cached value at once if there is one."""
        with self._lock:
            state = self._types[type_url]
            watched = state.watched.get(name)
            new = watched is None
            if watched is None:
                watched = state.watched[name] = _Watched()
            watched.sinks.append(sink)
            cached = _cached_event(type_url, name, watched)
            if new and self._queue is not None:
                self._queue.put(self._request(type_url))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"grpc_balancer.xds[{self.bootstrap.server.uri}]",
                    daemon=True,
                )  # fmt: skip
                self._thread.start()
        if cached is not None:
            sink(cached)

    def cancel(self, type_url: str, name: str, sink: Sink) -> None:
        with self._lock:
            state = self._types[type_url]
            watched = state.watched.get(name)
            if watched is None or sink not in watched.sinks:
                return
            watched.sinks.remove(sink)
            if not watched.sinks:
                del state.watched[name]
                if self._queue is not None:
                    self._queue.put(self._request(type_url))

    def close(self) -> None:
        """End the stream and its thread (does not wait for the thread)."""
        with self._lock:
            self._closed = True
            call, q = self._call, self._queue
        self._wake.set()
        if q is not None:
            q.put(None)
        if call is not None:
            call.cancel()

    # -- the stream (its thread) ------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while not self._closed:
            got_response = self._one_stream()
            if self._closed:
                break
            failures = 1 if got_response else failures + 1
            delay = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * BACKOFF_MULTIPLIER ** (failures - 1))
            delay *= 1 + self._rng.uniform(-BACKOFF_JITTER, BACKOFF_JITTER)
            log.info(
                "xDS server %s: %s; retrying in %.1fs",
                self.bootstrap.server.uri, self.last_error, delay,
            )  # fmt: skip
            self._wake.wait(delay)

    def _one_stream(self) -> bool:
        """Run one stream to its end; whether it received any response."""
        server = self.bootstrap.server
        channel = _make_channel(server.uri, server.creds)
        requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        got_response = False
        try:
            with self._lock:
                if self._closed:
                    return False
                self._node_sent = False
                self._queue = requests
                for type_url in TYPES:
                    if self._types[type_url].watched:
                        requests.put(self._request(type_url))
                mc = channel.stream_stream(
                    ADS_METHOD,
                    request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                    response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
                    _registered_method=True,  # type: ignore[call-arg]
                )
                call = self._call = mc(_drain(requests))
                self.streams += 1
            for response in call:
                self._on_response(response)
                if not got_response:
                    got_response = True
                    self.connected = True
                    log.info("xDS server %s: stream up", server.uri)
                    self._broadcast(XdsEvent("connected"))
            error = "the control plane ended the stream"
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            error = f"{getattr(code, 'name', code)}: {details}"
        finally:
            with self._lock:
                self._queue = None
                self._call = None
            requests.put(None)
            channel.close()
        self.connected = False
        self.last_error = f"xDS server {server.uri}: {error}"
        if not self._closed:
            self._broadcast(XdsEvent("connection", error=self.last_error))
        return got_response

    def _on_response(self, response: Any) -> None:
        type_url = response.type_url
        events: list[tuple[list[Sink], XdsEvent]] = []
        with self._lock:
            state = self._types.get(type_url)
            if state is None or self._queue is None:
                return  # a type we never asked for: nothing to ACK
            state.nonce = response.nonce
            accepted: dict[str, Resource] = {}
            errors: dict[str, str] = {}
            for packed in response.resources:
                try:
                    name, value = decode(type_url, packed)
                except ResourceError as exc:
                    errors[exc.name] = exc.reason
                    continue
                if name in accepted:
                    errors[name] = "the response has it twice"
                accepted[name] = value
            # A resource too broken to name could be any of ours: infer no deletion.
            full = type_url in FULL_STATE and "" not in errors
            for name, watched in state.watched.items():
                event = self._apply(type_url, name, watched, accepted, errors, full)
                if event is not None:
                    events.append((list(watched.sinks), event))
            if errors:
                detail = describe(errors)
                self.nacks = [*self.nacks, {"type": SHORT[type_url],
                              "version": response.version_info, "error": detail}][-NACKS_KEPT:]  # fmt: skip
                log.warning(
                    "xDS server %s: NACK %s version %s: %s",
                    self.bootstrap.server.uri, SHORT[type_url], response.version_info, detail,
                )  # fmt: skip
                self._queue.put(self._request(type_url, error=detail))
            else:
                state.version = response.version_info
                state.acks += 1
                self._queue.put(self._request(type_url))
        for sinks, event in events:
            for sink in sinks:
                sink(event)

    def _apply(
        self,
        type_url: str,
        name: str,
        watched: _Watched,
        accepted: dict[str, Resource],
        errors: dict[str, str],
        full: bool,
    ) -> XdsEvent | None:
        if name in errors:
            watched.error = errors[name]
            return XdsEvent("nacked", type_url, name, watched.value, errors[name])
        if name in accepted:
            value = accepted[name]
            changed = value != watched.value or watched.missing or watched.error is not None
            watched.value, watched.missing, watched.error = value, False, None
            return XdsEvent("resource", type_url, name, value) if changed else None
        if full and not self.bootstrap.server.ignore_resource_deletion:
            if watched.missing:
                return None
            watched.value, watched.missing = None, True
            return XdsEvent("missing", type_url, name, error=f"{SHORT[type_url]} {name!r}: "
                            "the control plane says it does not exist")  # fmt: skip
        return None

    def _request(self, type_url: str, error: str | None = None) -> Any:
        """The request for ``type_url`` now (call with the lock held)."""
        state = self._types[type_url]
        request = discovery_pb2.DiscoveryRequest(
            version_info=state.version,
            resource_names=sorted(state.watched),
            type_url=type_url,
            response_nonce=state.nonce,
        )
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=NACK_CODE, message=error))
        if not self._node_sent:
            request.node.CopyFrom(_node_proto(self.bootstrap))
            self._node_sent = True
        return request

    def _broadcast(self, event: XdsEvent) -> None:
        with self._lock:
            sinks = {
                id(s): s
                for st in self._types.values()
                for w in st.watched.values()
                for s in w.sinks
            }
        for sink in sinks.values():
            sink(event)

    def status(self) -> dict[str, Any]:
        """The stream as the channel's status shows it (JSON-ready)."""
        with self._lock:
            types = {
                SHORT[t]: {"names": sorted(s.watched), "version": s.version, "acks": s.acks}
                for t, s in self._types.items()
                if s.watched
            }
        return {
            "server": self.bootstrap.server.uri,
            "connected": self.connected,
            "streams": self.streams,
            "last_error": self.last_error,
            "types": types,
            "nacks": list(self.nacks),
        }


def _cached_event(type_url: str, name: str, watched: _Watched) -> XdsEvent | None:
    if watched.value is not None:
        return XdsEvent("resource", type_url, name, watched.value)
    if watched.missing:
        return XdsEvent("missing", type_url, name, error=f"{SHORT[type_url]} {name!r}: "
                        "the control plane says it does not exist")  # fmt: skip
    return None


def _drain(requests: queue.SimpleQueue[Any]) -> Iterator[Any]:
    while True:
        item = requests.get()
        if item is None:
            return
        yield item


def _make_channel(uri: str, creds: str) -> grpc.Channel:
    if creds == "insecure":
        return grpc.insecure_channel(uri)
    if creds == "google_default":
        google: Any = grpc.google_default_channel_credentials  # type: ignore[attr-defined]
        return grpc.secure_channel(uri, google())
    return grpc.secure_channel(uri, grpc.ssl_channel_credentials())


def _node_proto(bootstrap: Bootstrap) -> Any:
    node = bootstrap.node
    proto = base_pb2.Node(
        id=node.id,
        cluster=node.cluster,
        locality=base_pb2.Locality(region=node.region, zone=node.zone, sub_zone=node.sub_zone),
        user_agent_name=USER_AGENT,
        user_agent_version=__version__,
        client_features=list(CLIENT_FEATURES),
    )
    metadata = struct_pb2.Struct()
    metadata.update(node.metadata)
    proto.metadata.CopyFrom(metadata)
    return proto


# -- the process-wide pool ----------------------------------------------------------------------
_POOL: dict[tuple[Any, ...], XdsClient] = {}
_POOL_LOCK = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child has none of the parent's stream threads: it starts its own."""
    global _POOL_LOCK
    _POOL.clear()
    _POOL_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def acquire(bootstrap: Bootstrap) -> XdsClient:
    """The shared client for this server and node (one ADS stream); :func:`release` it."""
    key = (bootstrap.server, bootstrap.node)
    with _POOL_LOCK:
        client = _POOL.get(key)
        if client is None:
            client = _POOL[key] = XdsClient(bootstrap, key)
        client.refs += 1
        return client


def release(client: XdsClient) -> None:
    with _POOL_LOCK:
        client.refs -= 1
        if client.refs > 0:
            return
        if _POOL.get(client._key) is client:
            del _POOL[client._key]
    client.close()


def clients() -> list[XdsClient]:
    """Every live client (for tests and status)."""
    with _POOL_LOCK:
        return list(_POOL.values())
