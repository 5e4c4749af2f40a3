"""The value format of etcd's Go ``client/v3/naming/endpoints`` manager.

Go writes ``json.Marshal(internal.Update{Op, Addr, Metadata})`` under the key
``<prefix>/<addr>``: ``{"Op":0,"Addr":"10.0.0.1:50051","Metadata":null}``. We read and
write exactly that, so Go services and Python clients (and the reverse) interoperate.
``Metadata`` may be an object carrying ``weight`` (int ≥ 0) and ``zone`` (str); any
other fields are kept in :attr:`Endpoint.metadata` as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.errors import InvalidTargetError
from grpc_balancer.target import join_host_port, split_host_port

#: Weights are uint32 in gRPC (SRV weights are 0..65535).
MAX_WEIGHT = 2**32 - 1

#: ``endpoints.Add`` / ``endpoints.Delete`` in Go.
OP_ADD = 0
OP_DELETE = 1


class BadValueError(ValueError):
    """A registry value that is not an endpoint; the message says what is wrong."""


def encode_endpoint(address: str, metadata: Mapping[str, Any] | None = None) -> bytes:
    """The bytes Go's ``endpoints.Manager.AddEndpoint`` would store for ``address``."""
    value = {"Op": OP_ADD, "Addr": address, "Metadata": dict(metadata) if metadata else None}
    return json.dumps(value, separators=(",", ":")).encode()


def decode_endpoint(value: bytes) -> Endpoint | None:
    """An :class:`Endpoint`, ``None`` for a Go ``Delete`` record, or :class:`BadValueError`.

    Whatever is wrong with the value (deep nesting → RecursionError, a port of digits
    int() refuses, ...) comes out as BadValueError, so one bad key never stops the
    resolver: it is skipped and the others are used."""
    try:
        return _decode(value)
    except BadValueError:
        raise
    except Exception as exc:  # hostile input must never escape as anything else
        raise BadValueError(f"cannot decode ({type(exc).__name__})") from None


def _decode(value: bytes) -> Endpoint | None:
    try:
        record = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadValueError(f"not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise BadValueError(f"expected a JSON object, got {type(record).__name__}")
    op = record.get("Op", OP_ADD)
    if op == OP_DELETE and not isinstance(op, bool):
        return None
    if op != OP_ADD or isinstance(op, bool):
        raise BadValueError(f"unknown Op {op!r} (expected 0)")
    addr = record.get("Addr")
    if not isinstance(addr, str) or not addr:
        raise BadValueError("missing Addr")
    try:
        host, port = split_host_port(addr, what="Addr")
    except InvalidTargetError as exc:
        raise BadValueError(str(exc)) from None
    weight, metadata = _metadata(record.get("Metadata"))
    return Endpoint(join_host_port(host, port), weight=weight, metadata=metadata)


def _metadata(raw: Any) -> tuple[int, dict[str, Any]]:
    if raw is None:
        return 1, {}
    if not isinstance(raw, dict):
        return 1, {"metadata": raw}  # Go allows any JSON value; keep it visible
    metadata = dict(raw)
    weight = metadata.pop("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
        shown = repr(weight) if len(repr(weight)) <= 40 else f"{repr(weight)[:20]}..."
        raise BadValueError(f"Metadata.weight must be an integer in 0..{MAX_WEIGHT}, got {shown}")
    if "zone" in metadata and not isinstance(metadata["zone"], str):
        raise BadValueError(f"Metadata.zone must be a string, got {metadata['zone']!r}")
    return weight, metadata
