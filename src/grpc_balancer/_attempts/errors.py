"""Status errors the application sees, made the same way for every call kind.

grpcio reports a finished call as a code, details and metadata; the drivers turn
the plan's :class:`~grpc_balancer._attempts.plan.Finish` into grpcio's own error
types (``grpc.aio.AioRpcError`` for the asyncio channel; an error that is also a
``grpc.Call`` and ``grpc.Future`` for the sync one, as grpcio's ``_InactiveRpcError``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from grpc.aio import Metadata

#: cygrpc's integer status codes to grpc.StatusCode.
CODE_OF_INT: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def with_extra(
    metadata: Sequence[tuple[str, Any]] | None, extra: Sequence[tuple[str, Any]]
) -> tuple[tuple[str, Any], ...]:
    """``metadata`` plus ``extra`` (``grpc-previous-rpc-attempts``), replacing its keys."""
    items = tuple(metadata or ())
    if not extra:
        return items
    keys = {k for k, _ in extra}
    return (*(kv for kv in items if kv[0] not in keys), *extra)


def aio_error(
    code: grpc.StatusCode,
    details: str,
    initial: Sequence[tuple[str, Any]] = (),
    trailing: Sequence[tuple[str, Any]] = (),
    debug: str | None = None,
) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, Metadata(*initial), Metadata(*trailing), details, debug)


if TYPE_CHECKING:

    class _CallFuture(grpc.CallFuture[Any]): ...

else:  # grpc-stubs makes CallFuture generic; grpcio has no such runtime class

    class _CallFuture(grpc.Call, grpc.Future): ...


class FinishedCall(_CallFuture):
    """A finished sync call, as ``with_call()`` returns it: a ``grpc.Call`` and a
    ``grpc.Future`` whose result is the response (grpcio's rendezvous, done)."""

    def __init__(
        self,
        code: grpc.StatusCode,
        details: str,
        initial: Sequence[tuple[str, Any]] = (),
        trailing: Sequence[tuple[str, Any]] = (),
        debug: str | None = None,
        response: Any = None,
    ) -> None:
        self._code = code
        self._details = details
        self._initial = tuple(initial)
        self._trailing = tuple(trailing)
        self._debug = debug
        self._response = response

    # grpc.Call
    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> Any:
        return self._initial

    def trailing_metadata(self) -> Any:
        return self._trailing

    def debug_error_string(self) -> str | None:
        return self._debug

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:  # type: ignore[override]
        return None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    # grpc.Future
    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return True

    def result(self, timeout: float | None = None) -> Any:
        return self._response

    def exception(self, timeout: float | None = None) -> Any:
        return None

    def traceback(self, timeout: float | None = None) -> Any:
        return None

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)


class SyncRpcError(FinishedCall, grpc.RpcError):
    """A finished sync call's error: a ``grpc.RpcError`` that is also a ``grpc.Call``
    and a ``grpc.Future``, like grpcio's own (made with FinishedCall's arguments, no
    response)."""

    def result(self, timeout: float | None = None) -> Any:
        raise self

    def exception(self, timeout: float | None = None) -> Any:
        return self

    def __str__(self) -> str:
        debug = "" if self._debug is None else f'\tdebug_error_string = "{self._debug}"\n'
        return (
            f"<{type(self).__name__} of RPC that terminated with:\n\tstatus = {self._code}\n"
            f'\tdetails = "{self._details}"\n{debug}>'
        )

    __repr__ = __str__
