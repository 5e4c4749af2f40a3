"""The Endpoint value type: one address a resolver found, with what it knows about it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An address to dial (``host:port``, IPv6 in brackets) plus discovery hints.

    ``weight`` feeds the weighted policies (SRV weights, etcd metadata), ``priority``
    groups endpoints (SRV priority: lower is preferred), ``metadata`` carries the rest
    (zone, version). Equality ignores nothing, so a changed weight is a changed endpoint;
    subchannels are keyed by ``address`` alone and survive such changes.
    """

    address: str
    weight: int = 1
    priority: int = 0
    metadata: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, hash=False)

    def __post_init__(self) -> None:
        if not 0 <= self.weight <= 2**32 - 1:  # gRPC weights are uint32
            raise ValueError(
                f"endpoint {self.address}: weight must be in 0..4294967295, "
                f"got {str(self.weight)[:20]}"
            )

    def __repr__(self) -> str:
        extra = ""
        if self.weight != 1:
            extra += f" weight={self.weight}"
        if self.priority:
            extra += f" priority={self.priority}"
        if self.metadata:
            extra += f" metadata={dict(self.metadata)}"
        return f"<Endpoint {self.address}{extra}>"
