"""Retries of streaming calls on the sync channel (``retryPolicy``), as the async calls
do them: request messages given as an iterator are buffered and replayed to the next
attempt; a response stream is retried, elsewhere, until its first message arrives —
after that the call is committed to its backend.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, cast

import grpc

from grpc_balancer._aio.calls import MAX_TRANSPARENT_RETRIES, never_reached_server
from grpc_balancer.picker import PickInfo

if TYPE_CHECKING:
    from grpc_balancer._attempts.retry import RetryPolicy
    from grpc_balancer._sync.calls import _StreamResponse
    from grpc_balancer._sync.subchannel import SyncSubchannel

_UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class RequestReplay:
    """The application's request iterator, kept until :meth:`commit` so another
    attempt can send it again. grpcio reads requests in its own thread, hence the lock."""

    def __init__(self, source: Any) -> None:
        self._source = iter(source)
        self._lock = threading.Lock()
        self._buffer: list[Any] = []
        self._base = 0  # index (in the whole stream) of self._buffer[0]
        self._ended = False
        self._committed = False

    def commit(self) -> None:
        """One attempt won: stop keeping messages for replays."""
        with self._lock:
            self._committed = True

    def replay(self) -> Iterator[Any]:
        """Every message from the start: the buffered ones, then new ones."""
        position = self._base
        while True:
            with self._lock:
                index = position - self._base
                if index < len(self._buffer):
                    item = self._buffer[index]
                elif self._ended:
                    return
                else:
                    try:
                        item = next(self._source)
                    except StopIteration:
                        self._ended = True
                        return
                    self._buffer.append(item)
                position += 1
                if self._committed and position > self._base:
                    del self._buffer[: position - self._base]
                    self._base = position
            yield item


class RetryingStream(grpc.Call):
    """A response stream with a retry policy: the first :meth:`__next__` (or ``code()``...)
    retries failed attempts until a message (or a final status) arrives."""

    def __init__(
        self,
        mc: _StreamResponse,
        request: Any,
        deadline: float | None,
        metadata: Any,
        credentials: grpc.CallCredentials | None,
        wait_for_ready: bool,
        compression: grpc.Compression | None,
        retry: RetryPolicy,
    ) -> None:
        self._mc = mc
        self._replay = RequestReplay(request) if mc._kind == "stream_stream" else None
        self._request = request
        self._deadline = deadline
        self._metadata = metadata
        self._credentials = credentials
        self._wait_for_ready = wait_for_ready
        self._compression = compression
        self._retry = retry
        self._info = PickInfo(mc._method, metadata)
        self._lock = threading.Lock()
        self._call: Any = None
        self._first: Any = None
        self._have_first = False
        self._settled = False
        self._previous = 0

    # -- the retry loop -------------------------------------------------------------------
    def _attempt(self) -> tuple[Any, SyncSubchannel]:
        from grpc_balancer._sync.calls import metadata_for, stream_done

        sc, inner, started, remaining = self._mc.start(
            self._info, self._deadline, self._wait_for_ready
        )
        request = self._request if self._replay is None else self._replay.replay()
        call = inner(
            request,
            remaining,
            metadata_for(self._metadata, self._previous),
            self._credentials,
            False,
            self._compression,
        )

        def done() -> None:
            stream_done(sc, started, call)

        if not call.add_callback(done):
            done()
        return call, sc

    def _settle(self) -> None:
        """Run attempts until one yields a first message or the call must end."""
        from grpc_balancer._sync.calls import _no_time_left, with_attempts

        with self._lock:
            if self._settled:
                return
            self._settled = True
            transparent = 0
            attempts = 0
            while True:
                picker = self._mc._channel.picker
                call, sc = self._attempt()
                self._call = call
                try:
                    self._first = next(call)
                    self._have_first = True
                except StopIteration:
                    pass  # an empty stream that ended OK
                except grpc.RpcError as err:
                    code = cast(grpc.Call, err).code()
                    if (
                        code is _UNAVAILABLE
                        and transparent < MAX_TRANSPARENT_RETRIES
                        and never_reached_server(cast(Any, err))
                    ):
                        transparent += 1
                        self._info.exclude = self._info.exclude | {sc}
                        self._mc._channel.core.emit("transparent_retry", sc, code)
                        self._mc._channel.wait_for_picker_change(picker, self._deadline, 1.0)
                        continue
                    attempts += 1
                    delay = self._mc.retry_delay(self._retry, sc, err, attempts, self._info)
                    if delay is None:
                        self._previous = attempts - 1
                        self._call = with_attempts(err, attempts - 1)
                        return
                    if self._deadline is not None and time.monotonic() + delay >= self._deadline:
                        self._call = _no_time_left(err, attempts)
                        return
                    self._previous = attempts
                    time.sleep(delay)
                    continue
                if self._replay is not None:
                    self._replay.commit()
                self._mc.succeeded()
                return

    # -- iteration -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        self._settle()
        if self._have_first:
            self._have_first = False
            first, self._first = self._first, None
            return first
        if isinstance(self._call, grpc.RpcError) and not hasattr(self._call, "__next__"):
            raise self._call
        return next(self._call)

    # -- grpc.Call: the attempt the call settled on --------------------------------------------
    def _settled_call(self) -> Any:
        self._settle()
        return self._call

    def code(self) -> grpc.StatusCode:
        return cast(grpc.StatusCode, self._settled_call().code())

    def details(self) -> str:
        return cast(str, self._settled_call().details() or "")

    def initial_metadata(self) -> Any:
        return self._settled_call().initial_metadata()

    def trailing_metadata(self) -> Any:
        from grpc_balancer._sync.calls import metadata_for

        return metadata_for(self._settled_call().trailing_metadata(), self._previous)

    def is_active(self) -> bool:
        call = self._call
        return call is None or bool(call.is_active())

    def time_remaining(self) -> float | None:  # type: ignore[override]
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.0)

    def cancel(self) -> bool:
        call = self._call
        return bool(call.cancel()) if call is not None else False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return bool(self._settled_call().add_callback(callback))

    def __repr__(self) -> str:
        return f"<RetryingStream {self._mc._method}>"
