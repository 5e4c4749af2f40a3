"""One ADS stream's protocol state (state of the world), without I/O or protobuf.

The server decodes each ``DiscoveryRequest`` into a :class:`Request`, hands it to
:meth:`StreamState.on_request` together with the resources this client may see (its
:data:`World`) and sends whatever :class:`Response` comes back; when the world
changes it calls :meth:`StreamState.on_world`. Per type URL the state keeps:

- the subscription: explicit names and/or wildcard (an empty first request for a
  Listener or Cluster, or ``*``; once a client named resources, empty means none);
- the last response sent (version, nonce, names), the version the client ACKed, and
  its last NACK (the version and the client's error); a NACKed version is never sent
  again: the client keeps its last good one until the world changes;
- requests that carry an old nonce are stale and ignored (the client will answer the
  newest response too).

A response version is a digest of the resources in it, so a change that ends where it
began (or a control-plane restart) gives the same version string.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
TYPES = (LISTENER, ROUTE, CLUSTER, ENDPOINTS)
#: Types whose response is the full set: a name missing from it was removed.
FULL_STATE = frozenset({LISTENER, CLUSTER})
SHORT = {LISTENER: "lds", ROUTE: "rds", CLUSTER: "cds", ENDPOINTS: "eds"}


@dataclass(frozen=True, slots=True)
class Entry:
    """One resource: an opaque value (the server's protobuf) and its content digest."""

    resource: object
    digest: str


#: type URL → resource name → entry: what one client may be sent right now.
World = Mapping[str, Mapping[str, Entry]]


@dataclass(frozen=True, slots=True)
class Request:
    type_url: str
    version_info: str = ""
    response_nonce: str = ""
    resource_names: tuple[str, ...] = ()
    #: error_detail.message of a NACK (None: no error_detail, an ACK or a first request)
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Response:
    type_url: str
    version: str
    nonce: str
    resources: tuple[tuple[str, object], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.resources)


@dataclass(slots=True)
class Nack:
    version: str
    nonce: str
    error: str


@dataclass(slots=True)
class TypeState:
    """The protocol state of one type URL on one stream."""

    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    requests: int = 0
    sent_version: str | None = None
    sent_nonce: str = ""
    sent_names: tuple[str, ...] = ()
    acked_version: str | None = None
    nack: Nack | None = None
    stale_ignored: int = 0

    def subscribed(self, world: Mapping[str, Entry]) -> list[str]:
        names = set(self.names)
        if self.wildcard:
            names |= set(world)
        return sorted(names)


class ProtocolError(Exception):
    """The client broke the protocol (e.g. an unknown type URL): close the stream."""


class StreamState:
    """The SotW state machine of one stream. Every method returns the responses to send."""

    def __init__(self) -> None:
        self.types: dict[str, TypeState] = {}
        self._nonces = itertools.count(1)

    def on_request(self, request: Request, world: World) -> list[Response]:
        if request.type_url not in TYPES:
            raise ProtocolError(f"unsupported type URL {request.type_url!r}")
        state = self.types.get(request.type_url)
        first = state is None
        if state is None:
            state = self.types[request.type_url] = TypeState()
        elif request.response_nonce != state.sent_nonce:
            # An answer to an older response (or a nonce we never sent): stale.
            state.stale_ignored += 1
            return []
        state.requests += 1
        if request.response_nonce:
            if request.error is not None:
                state.nack = Nack(state.sent_version or "", request.response_nonce, request.error)
            else:
                state.acked_version = request.version_info
        elif request.version_info:
            # A new stream of a client that had a version from an earlier stream.
            state.acked_version = request.version_info
        changed = _subscribe(state, request, first)
        response = self._candidate(request.type_url, state, world, force=first or changed)
        return [] if response is None else [response]

    def on_world(self, world: World) -> list[Response]:
        out = []
        for type_url, state in self.types.items():
            response = self._candidate(type_url, state, world, force=False)
            if response is not None:
                out.append(response)
        return out

    def _candidate(
        self, type_url: str, state: TypeState, world: World, *, force: bool
    ) -> Response | None:
        available = world.get(type_url, {})
        names = [n for n in state.subscribed(available) if n in available]
        if not names and type_url not in FULL_STATE:
            return None  # an empty RDS/EDS response says nothing
        version = digest_version(type_url, [(n, available[n].digest) for n in names])
        if not force and version == state.sent_version:
            return None
        if not force and state.nack is not None and version == state.nack.version:
            return None
        nonce = str(next(self._nonces))
        state.sent_version, state.sent_nonce, state.sent_names = version, nonce, tuple(names)
        return Response(type_url, version, nonce, tuple((n, available[n].resource) for n in names))


def _subscribe(state: TypeState, request: Request, first: bool) -> bool:
    """Apply the request's resource names; True when the subscription changed."""
    names = set(request.resource_names)
    wildcard = "*" in names
    names.discard("*")
    if first and not names and not wildcard and request.type_url in FULL_STATE:
        wildcard = True  # legacy wildcard: an empty first request
    elif not first and not request.resource_names and state.wildcard and not state.names:
        wildcard = True  # a wildcard subscriber repeating its empty list
    changed = (wildcard, names) != (state.wildcard, state.names)
    state.wildcard, state.names = wildcard, names
    return changed


def digest_version(type_url: str, digests: list[tuple[str, str]]) -> str:
    """The version of a response: a digest of the (name, digest) pairs in it."""
    h = hashlib.sha256(type_url.encode())
    for name, digest in digests:
        h.update(b"\0" + name.encode() + b"\0" + digest.encode())
    return h.hexdigest()[:12]
