"""One incremental (delta) ADS stream's protocol state, without I/O or protobuf.

The delta twin of :mod:`.stream`: the client says what it subscribes to and
unsubscribes from (``*`` or an empty first Listener/Cluster request is a wildcard) and,
on a new stream, which versions it already has; each response carries only the
resources whose version the client lacks, plus the names removed (or never there).
Per type URL the state keeps what the client has (name → version), the responses in
flight (to undo on a NACK), the last response sent, the last one ACKed and the last
NACK. A resource version whose response was NACKed is not sent again while it stays
current. Resource versions are content digests, ``system_version_info`` the same
digest of the whole set as in state of the world.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

from grpc_balancer.xds.stream import (
    FULL_STATE,
    TYPES,
    Entry,
    Nack,
    ProtocolError,
    World,
    digest_version,
)

#: Responses remembered per type for ACK/NACK bookkeeping (older ones are forgotten).
MAX_IN_FLIGHT = 16


@dataclass(frozen=True, slots=True)
class DeltaRequest:
    type_url: str
    subscribe: tuple[str, ...] = ()
    unsubscribe: tuple[str, ...] = ()
    initial_versions: Mapping[str, str] = field(default_factory=dict)
    response_nonce: str = ""
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DeltaResponse:
    type_url: str
    system_version: str
    nonce: str
    #: (name, version, resource)
    resources: tuple[tuple[str, str, object], ...]
    removed: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.resources)


@dataclass(slots=True)
class DeltaTypeState:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    #: what the client has, as far as the server knows: name → version
    known: dict[str, str] = field(default_factory=dict)
    #: nonce → {name: version it had before (None: none)} for the responses in flight
    in_flight: dict[str, dict[str, str | None]] = field(default_factory=dict)
    #: name → a version the client NACKed
    refused: dict[str, str] = field(default_factory=dict)
    sent_version: str | None = None
    sent_nonce: str = ""
    sent_names: tuple[str, ...] = ()
    acked_version: str | None = None
    nack: Nack | None = None
    requests: int = 0
    _versions: dict[str, str] = field(default_factory=dict)

    def subscribed(self, world: Mapping[str, Entry]) -> list[str]:
        names = set(self.names)
        if self.wildcard:
            names |= set(world)
        return sorted(names)


class DeltaStreamState:
    def __init__(self) -> None:
        self.types: dict[str, DeltaTypeState] = {}
        self._nonces = itertools.count(1)

    def on_request(self, request: DeltaRequest, world: World) -> list[DeltaResponse]:
        if request.type_url not in TYPES:
            raise ProtocolError(f"unsupported type URL {request.type_url!r}")
        state = self.types.get(request.type_url)
        first = state is None
        if state is None:
            state = self.types[request.type_url] = DeltaTypeState()
            state.known.update(request.initial_versions)
        state.requests += 1
        if request.response_nonce:
            undo = state.in_flight.pop(request.response_nonce, None)
            version_of = state._versions.pop(request.response_nonce, None)
            if request.error is not None:
                state.nack = Nack(version_of or "", request.response_nonce, request.error)
                for name, before in (undo or {}).items():
                    sent = state.known.get(name)
                    if sent is not None:
                        state.refused[name] = sent
                    if before is None:
                        state.known.pop(name, None)
                    else:
                        state.known[name] = before
            elif version_of is not None:
                state.acked_version = version_of
        fresh = _subscribe(state, request, first)
        response = self._diff(request.type_url, state, world, fresh)
        return [] if response is None else [response]

    def on_world(self, world: World) -> list[DeltaResponse]:
        out = []
        for type_url, state in self.types.items():
            response = self._diff(type_url, state, world, set())
            if response is not None:
                out.append(response)
        return out

    def _diff(
        self, type_url: str, state: DeltaTypeState, world: World, fresh: set[str]
    ) -> DeltaResponse | None:
        available = world.get(type_url, {})
        wanted = state.subscribed(available)
        send = []
        for name in wanted:
            entry = available.get(name)
            if entry is None:
                continue
            if state.known.get(name) == entry.digest or state.refused.get(name) == entry.digest:
                continue
            send.append((name, entry.digest, entry.resource))
        removed = sorted(
            n for n in set(wanted) | set(state.known)
            if n not in available and (n in state.known or n in fresh)
        )  # fmt: skip
        if not send and not removed:
            return None
        nonce = str(next(self._nonces))
        undo: dict[str, str | None] = {}
        for name, digest, _ in send:
            undo[name] = state.known.get(name)
            state.known[name] = digest
            state.refused.pop(name, None)
        for name in removed:
            undo[name] = state.known.pop(name, None)
        names = [n for n in wanted if n in available]
        system = digest_version(type_url, [(n, available[n].digest) for n in names])
        state.in_flight[nonce] = undo
        state._versions[nonce] = system
        while len(state.in_flight) > MAX_IN_FLIGHT:
            oldest = next(iter(state.in_flight))
            del state.in_flight[oldest]
            state._versions.pop(oldest, None)
        state.sent_version, state.sent_nonce, state.sent_names = system, nonce, tuple(names)
        return DeltaResponse(type_url, system, nonce, tuple(send), tuple(removed))


def _subscribe(state: DeltaTypeState, request: DeltaRequest, first: bool) -> set[str]:
    """Apply (un)subscriptions; the names newly subscribed (answered even if absent)."""
    subscribe = set(request.subscribe)
    unsubscribe = set(request.unsubscribe)
    if first and not subscribe and request.type_url in FULL_STATE:
        state.wildcard = True  # legacy wildcard
    if "*" in subscribe:
        state.wildcard = True
    if "*" in unsubscribe:
        state.wildcard = False
    subscribe.discard("*")
    unsubscribe.discard("*")
    fresh = subscribe - state.names
    state.names |= subscribe
    state.names -= unsubscribe
    for name in unsubscribe:
        state.known.pop(name, None)  # the client forgets it; nothing is sent
    return fresh
