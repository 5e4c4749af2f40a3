"""One attempt's accounting record (grpc-go's ``PickResult.Done``).

Made by the plan when it decides to send (counting the attempt in flight on its
backend at once, so a least-loaded pick sees it), closed exactly once when the
attempt ends: in-flight count, latency, failure detail, ORCA trailers and the call
observers (metrics) all follow from this one record, on every call kind of both
channels. The driver keeps its I/O object for the attempt in :attr:`call`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from grpc_balancer.subchannel import Subchannel

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class Attempt:
    __slots__ = ("call", "ended", "metadata", "number", "started", "subchannel", "timeout")

    def __init__(
        self,
        subchannel: Subchannel,
        number: int,
        metadata: Sequence[tuple[str, Any]],
        timeout: float | None,
    ) -> None:
        self.subchannel = subchannel
        #: Attempts of this call before this one (``grpc-previous-rpc-attempts``).
        self.number = number
        self.metadata = metadata
        #: Seconds left of the call's deadline when the attempt was decided.
        self.timeout = timeout
        self.started = subchannel.call_started()
        self.ended = False
        #: The driver's I/O object (a grpc call or future).
        self.call: Any = None

    @property
    def wants_trailers(self) -> bool:
        """Whether a policy reads this backend's trailing metadata (ORCA)."""
        return bool(self.subchannel.trailer_observers)

    def finish(
        self, code: grpc.StatusCode, details: str | None, trailers: Sequence[Any] | None
    ) -> None:
        """Account the end of the attempt (idempotent)."""
        if self.ended:
            return
        self.ended = True
        sc = self.subchannel
        sc.call_finished(self.started, code)
        if code is _UNAVAILABLE and details:
            sc.record_failure_detail(details)
        if trailers is not None and sc.trailer_observers:
            sc.trailers_received(trailers)

    def __repr__(self) -> str:
        return f"<Attempt #{self.number} {self.subchannel.address}>"
