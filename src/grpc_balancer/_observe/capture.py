"""Which backend served a call, for code that just writes ``await stub.Method(req)``.

A call object already says it (``call.peer_address``), but ``await stub.X(req)``
never hands the call object to the caller. :func:`capture_backend` notes every call
created inside the ``with`` block (through a context variable, so concurrent tasks
each see their own)::

    with grpc_balancer.capture_backend() as seen:
        reply = await stub.SayHello(request)
    print(seen.address)  # "10.0.0.7:50051"
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

__all__ = ["BackendCapture", "capture_backend"]


class BackendCapture:
    """The calls started inside one :func:`capture_backend` block."""

    def __init__(self, parent: BackendCapture | None = None) -> None:
        self.calls: list[Any] = []
        self._parent = parent

    def add(self, call: Any) -> None:
        self.calls.append(call)
        if self._parent is not None:  # nested blocks: the outer one sees the call too
            self._parent.add(call)

    @property
    def address(self) -> str | None:
        """``host:port`` of the backend of the last call's (last) attempt; ``None`` if
        no call was made or it never reached a backend."""
        return self.calls[-1].peer_address if self.calls else None

    @property
    def addresses(self) -> list[str | None]:
        """The backend of every call made in the block, in order."""
        return [call.peer_address for call in self.calls]

    def __repr__(self) -> str:
        return f"<BackendCapture {self.addresses}>"


#: Read by every call object at creation (one ``ContextVar.get`` per call).
CURRENT: ContextVar[BackendCapture | None] = ContextVar("grpc_balancer_capture", default=None)


@contextlib.contextmanager
def capture_backend() -> Iterator[BackendCapture]:
    """Record the calls created in this block (in this task) and their backends."""
    capture = BackendCapture(CURRENT.get())
    token = CURRENT.set(capture)
    try:
        yield capture
    finally:
        CURRENT.reset(token)
