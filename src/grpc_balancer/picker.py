"""Pickers: immutable snapshots that choose a subchannel for one call.

A policy publishes a new picker whenever anything it depends on changes; the channel
swaps it in atomically. ``pick`` takes no lock, does no I/O and never blocks:

* it returns a :class:`Subchannel` to send on,
* ``None`` when nothing is ready *yet* (the call waits for the next picker), or
* raises :class:`PickError` when the call must fail (unless it is wait-for-ready and
  the code is UNAVAILABLE, in which case it too waits).
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import grpc

if TYPE_CHECKING:
    from grpc_balancer.subchannel import Subchannel

Metadata = Sequence[tuple[str, str | bytes]]

#: The hash key of the calls started in this context (``grpc_balancer.hash_key``), as a
#: 64-bit ring position; read by ring_hash's picker when ``PickInfo.hash_key`` is None.
HASH_KEY: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "grpc_balancer_hash_key", default=None
)


class PickInfo:
    """What a picker may look at: the method, request metadata, a hash key for
    ring_hash, and subchannels already tried by earlier attempts of this call."""

    __slots__ = ("exclude", "hash_key", "metadata", "method")

    def __init__(
        self,
        method: str,
        metadata: Metadata | None = None,
        hash_key: int | None = None,
        exclude: frozenset[Subchannel] = frozenset(),
    ) -> None:
        self.method = method
        self.metadata = metadata
        self.hash_key = hash_key
        self.exclude = exclude


class PickError(Exception):
    """The call cannot be sent: it fails with ``code`` and ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Picker(Protocol):
    def pick(self, info: PickInfo) -> Subchannel | None: ...


class QueuePicker:
    """Nothing ready yet (resolving or connecting): every call waits."""

    __slots__ = ()

    def pick(self, info: PickInfo) -> Subchannel | None:
        return None

    def __repr__(self) -> str:
        return "<QueuePicker>"


class FailPicker:
    """Every endpoint failed (or there are none): calls fail with a message that says why."""

    __slots__ = ("error",)

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.error = PickError(code, message)

    def pick(self, info: PickInfo) -> Subchannel | None:
        raise self.error

    def __repr__(self) -> str:
        return f"<FailPicker {self.error.code.name}: {self.error.message}>"


def first_not_excluded(
    candidates: Sequence[Subchannel], start: int, exclude: frozenset[Subchannel]
) -> Subchannel:
    """From ``start`` onwards (wrapping), the first candidate not in ``exclude``;
    if every candidate was tried already, ``candidates[start]`` (a retry still goes somewhere)."""
    n = len(candidates)
    for offset in range(n):
        sc = candidates[(start + offset) % n]
        if sc not in exclude:
            return sc
    return candidates[start % n]
