"""ring_hash (gRFC A42, A76): consistent hashing, so one key keeps going to one backend.

Every endpoint owns points on a 64-bit ring (XXH64 of ``"<address>_<n>"``, as gRPC),
in proportion to its weight, between ``minRingSize`` and ``maxRingSize`` points in all
(see :func:`build_ring`). A call's key is, in order: :func:`hash_key` set around the call, the value of
the ``requestHashHeader`` metadata header, else a random one. The pick is the first
ring point at or after the key's hash whose backend is usable (walking past down
ones), so a backend that leaves moves only its own keys, about 1/N of them. Unlike
grpcio's ring_hash this needs no xDS and no environment flag.

Connections are lazy, as in gRPC (A42): one endpoint is dialed when a list arrives
(so the channel becomes READY); any other stays IDLE, with no grpc channel, until a
key lands on it: that pick asks it to connect and waits for it (the key keeps its
owner), while keys owned by READY backends go straight through.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import xxhash

from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.picker import HASH_KEY, Metadata, PickInfo
from grpc_balancer.policies import _config
from grpc_balancer.policies.base import BasePolicy, ChannelControl, register_builtin_policy
from grpc_balancer.subchannel import Subchannel

NAME = "ring_hash"
MAX_RING_SIZE = 8_388_608  # A42's upper bound for both fields
DEFAULT_MIN_RING_SIZE = 1024
DEFAULT_MAX_RING_SIZE = 4096

_KEY = HASH_KEY
_hash = xxhash.xxh64_intdigest


def key_hash(key: str | bytes | int) -> int:
    """The 64-bit ring position of a key (XXH64; an int hashes as its decimal text).
    ``PickInfo.hash_key`` takes such a position directly."""
    if isinstance(key, bool) or not isinstance(key, str | bytes | int):
        raise TypeError(
            f"hash_key: the key must be a str, bytes or int, got {type(key).__name__} {key!r}"
        )
    if isinstance(key, int):
        key = str(key)
    if isinstance(key, str):
        key = key.encode()
    return _hash(key)


@contextlib.contextmanager
def hash_key(key: str | bytes | int) -> Iterator[None]:
    """Calls started inside the ``with`` block hash on ``key`` (e.g. a user or session
    id) when the channel uses ring_hash. The pick happens when the call starts, so
    ``await`` an asyncio call inside the block."""
    token = _KEY.set(key_hash(key))
    try:
        yield
    finally:
        _KEY.reset(token)


def build_ring(
    subchannels: Sequence[Subchannel], min_size: int, max_size: int
) -> tuple[tuple[int, ...], tuple[Subchannel, ...]]:
    """Sorted hashes and the owner of each, between ``min_size`` and ``max_size`` points.

    Points per unit of weight are a power of two, so adding or removing one endpoint
    rarely changes how many points the others own (gRPC's exact sizing re-slices every
    endpoint and moves ~1.7/N of keys instead of ~1/N). When even one point per unit
    exceeds ``max_size`` (more endpoints than points), A42's fractional sizing is used.
    """
    weights = [max(sc.endpoint.weight, 1) for sc in subchannels]
    unit = min(weights)
    relative = [w / unit for w in weights]
    total = sum(relative)
    per_unit = 1 << max(0, math.ceil(math.log2(min_size / total))) if min_size > total else 1
    while per_unit > 1 and per_unit * total > max_size:
        per_unit >>= 1
    points: list[tuple[int, int]] = []
    if per_unit * total <= max_size:
        for index, (sc, rel) in enumerate(zip(subchannels, relative, strict=True)):
            for count in range(max(1, round(rel * per_unit))):
                points.append((_hash(f"{sc.address}_{count}".encode()), index))
    else:
        scale = max_size / total
        current, target = 0.0, 0.0
        for index, (sc, rel) in enumerate(zip(subchannels, relative, strict=True)):
            target += scale * rel
            count = 0
            while current < target:
                points.append((_hash(f"{sc.address}_{count}".encode()), index))
                count += 1
                current += 1
    points.sort()
    return tuple(h for h, _ in points), tuple(subchannels[i] for _, i in points)


class RingHashPicker:
    __slots__ = ("_connect", "_hashes", "_header", "_owners", "_rand", "_size", "_usable")

    def __init__(
        self,
        hashes: tuple[int, ...],
        owners: tuple[Subchannel, ...],
        usable: frozenset[Subchannel],
        header: str | None,
        rng: random.Random | None = None,
        connect: Callable[[Subchannel], None] | None = None,
    ) -> None:
        self._hashes = hashes
        self._owners = owners
        self._size = len(hashes)
        self._usable = usable
        self._header = header
        self._rand = (rng or random.Random()).getrandbits
        #: Asks an IDLE owner to connect (thread-safe); None: every owner is dialed.
        self._connect = connect

    def request_hash(self, info: PickInfo) -> int:
        if info.hash_key is not None:
            return info.hash_key
        key = _KEY.get()
        if key is not None:
            return key
        if self._header is not None and info.metadata:
            value = _header_value(info.metadata, self._header)
            if value is not None:
                return _hash(value)
        return self._rand(64)

    def pick(self, info: PickInfo) -> Subchannel | None:
        """The key's owner if usable; past owners that failed (or are unhealthy or
        ejected) to the next; an owner still IDLE or connecting keeps the key: the
        pick waits (None) and an IDLE one is asked to connect. An owner that became
        usable after this picker was built is taken (its picker is on the way)."""
        size = self._size
        if not size:
            return None
        i = bisect.bisect_left(self._hashes, self.request_hash(info))
        usable = self._usable
        exclude = info.exclude
        owners = self._owners
        fallback: Subchannel | None = None
        for step in range(size):
            sc = owners[(i + step) % size]
            if sc in usable or sc.usable:  # (usable since this picker was built)
                if not exclude or sc not in exclude:
                    return sc
                if fallback is None:
                    fallback = sc
            elif self._connect is not None and fallback is None and sc.still_trying:
                if not sc.wants_connection:
                    self._connect(sc)
                return None
        return fallback

    def __repr__(self) -> str:
        return f"<RingHashPicker points={self._size} usable={len(self._usable)}>"


def _header_value(metadata: Metadata, header: str) -> bytes | None:
    values = [v for k, v in metadata if k == header]
    if not values:
        return None
    parts = [v.encode() if isinstance(v, str) else v for v in values]
    return b",".join(parts)


class RingHashPolicy(BasePolicy):
    NAME = NAME
    CONFIG_FIELDS = {"minRingSize", "maxRingSize", "requestHashHeader"}

    def __init__(
        self, control: ChannelControl, config: Mapping[str, Any], rng: random.Random | None = None
    ) -> None:
        super().__init__(control, config)
        self.min_ring_size = _config.integer(
            NAME, config, "minRingSize", DEFAULT_MIN_RING_SIZE, minimum=1
        )
        self.max_ring_size = _config.integer(
            NAME, config, "maxRingSize", DEFAULT_MAX_RING_SIZE, minimum=1
        )
        for name, value in (
            ("minRingSize", self.min_ring_size),
            ("maxRingSize", self.max_ring_size),
        ):
            if value > MAX_RING_SIZE:
                raise ServiceConfigError(f"{NAME}: {name} must be <= {MAX_RING_SIZE}, got {value}")
        if self.min_ring_size > self.max_ring_size:
            raise ServiceConfigError(
                f"{NAME}: minRingSize ({self.min_ring_size}) must not exceed "
                f"maxRingSize ({self.max_ring_size})"
            )
        header = _config.string(NAME, config, "requestHashHeader", "")
        if header and (header != header.lower() or header.endswith("-bin")):
            raise ServiceConfigError(
                f"{NAME}: requestHashHeader must be a lower-case, non-binary header name, "
                f"got {header!r}"
            )
        self.request_hash_header = header or None
        self._rng = rng
        self._ring_key: tuple[tuple[str, int], ...] = ()
        self._ring: tuple[tuple[int, ...], tuple[Subchannel, ...]] = ((), ())
        self._loop: asyncio.AbstractEventLoop | None = None

    def ring(self) -> tuple[tuple[int, ...], tuple[Subchannel, ...]]:
        """Every endpoint is on the ring (usable or not), so a backend that goes down
        keeps its place and gets its keys back when it returns; rebuilt only when the
        list or a weight changes."""
        key = tuple((sc.address, sc.endpoint.weight) for sc in self._ordered)
        if key != self._ring_key:
            self._ring = build_ring(self._ordered, self.min_ring_size, self.max_ring_size)
            self._ring_key = key
        return self._ring

    # -- lazy connections ------------------------------------------------------------
    def subchannel_added(self, subchannel: Subchannel) -> None:
        """Dial lazily: a pick that lands on it connects it."""

    def endpoints_updated(self, ordered: list[Subchannel]) -> None:
        """Keep one endpoint dialing, so the channel becomes READY without a pick."""
        if ordered and not any(sc.wants_connection for sc in ordered):
            (self._rng or random).choice(ordered).connect()

    def _request_connect(self, subchannel: Subchannel) -> None:
        """From a pick, in any thread: connect ``subchannel`` on the policy's loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._connect_now(subchannel)
        else:
            loop.call_soon_threadsafe(self._connect_now, subchannel)

    def _connect_now(self, subchannel: Subchannel) -> None:
        if not self._closed and self._by_address.get(subchannel.address) is subchannel:
            subchannel.connect()
            self.rebuild_soon()

    # -- pickers ----------------------------------------------------------------------
    def build_picker(self, usable: list[Subchannel]) -> RingHashPicker:
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        hashes, owners = self.ring()
        return RingHashPicker(
            hashes,
            owners,
            frozenset(usable),
            self.request_hash_header,
            self._rng,
            self._request_connect,
        )

    def connecting_picker(self) -> RingHashPicker:
        """Nothing usable yet: picks still ask their key's owner to connect."""
        return self.build_picker([])


register_builtin_policy(NAME, RingHashPolicy)
