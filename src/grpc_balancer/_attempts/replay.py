"""Request messages of a client-streaming call, kept until the call commits so another
attempt can send them again (gRFC A6; grpc-go bounds the buffer the same way).

Each attempt reads the stream through ``replay()``: first what earlier attempts
already took, then new messages. Every new message's size is reported to the plan
(``on_size``), which commits the call once the buffer passes its limit; after
:meth:`commit` nothing is kept. :class:`AsyncRequests` pulls from the application's
(async or plain) iterator in a task of its own, so an attempt that dies mid-pull
never loses a message, or takes ``write()`` / ``done_writing()`` pushes;
:class:`SyncRequests` is the thread-safe variant grpcio's sync channel reads from
its own thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

SizeCallback = Callable[[int], None]


def message_size(message: Any) -> int:
    """Serialized size of a request (protobuf's ``ByteSize``; 0 if unknown)."""
    size = getattr(message, "ByteSize", None)
    return int(size()) if size is not None else 0


class _Buffer:
    """The kept messages, and where in the whole stream the first of them is."""

    def __init__(self, on_size: SizeCallback | None) -> None:
        self.items: list[Any] = []
        self.base = 0
        self.ended = False
        self.committed = False
        self.error: BaseException | None = None
        self._on_size = on_size

    def add(self, item: Any) -> None:
        self.items.append(item)
        if self._on_size is not None and not self.committed:
            self._on_size(message_size(item))

    def get(self, position: int) -> tuple[bool, Any]:
        """(True, message) at ``position``, or (False, None) if it is not there yet."""
        index = position - self.base
        if index < len(self.items):
            item = self.items[index]
            if self.committed:
                del self.items[: index + 1]
                self.base = position + 1
            return True, item
        return False, None

    def commit(self) -> None:
        self.committed = True


class AsyncRequests:
    def __init__(self, source: Any, on_size: SizeCallback | None = None) -> None:
        self._aiter: AsyncIterator[Any] | None = None
        self._iter: Iterator[Any] | None = None
        if source is not None and hasattr(source, "__aiter__"):
            self._aiter = source.__aiter__()
        elif source is not None:
            self._iter = iter(source)
        self.pushed = source is None  # write() / done_writing() mode
        self._buffer = _Buffer(on_size)
        self._pull: asyncio.Task[None] | None = None
        self._arrived: asyncio.Event | None = None

    def commit(self) -> None:
        self._buffer.commit()

    def release(self) -> None:
        """The call is over: keep nothing, call back nobody."""
        self._buffer.commit()
        self._buffer.items.clear()
        self._buffer._on_size = None

    # -- write mode --------------------------------------------------------------------
    def write(self, message: Any) -> None:
        if self._buffer.ended:
            raise RuntimeError("write() after done_writing()")
        self._buffer.add(message)
        self._wake()

    def done_writing(self) -> None:
        self._buffer.ended = True
        self._wake()

    def _wake(self) -> None:
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None

    # -- attempts read here --------------------------------------------------------------
    def replay(self) -> _Replay:
        """An attempt's request iterator (what grpc.aio's call consumes)."""
        return _Replay(self)

    async def _replay(self, reader: _Replay) -> AsyncIterator[Any]:
        buffer = self._buffer
        position = buffer.base
        while True:
            have, item = buffer.get(position)
            if have:
                position += 1
                yield item
                continue
            if buffer.error is not None:
                raise buffer.error  # the application's iterator raised: fail this attempt
            if buffer.ended:
                return
            if self.pushed:
                if self._arrived is None:
                    self._arrived = asyncio.Event()
                await self._arrived.wait()
                continue
            if buffer.committed and not buffer.items:
                # one attempt left and nothing kept: read the source straight through
                # (here, not in a nested generator: one layer per message, not two)
                if self._pull is not None and not self._pull.done():
                    await asyncio.shield(self._pull)  # a message being pulled belongs to us
                    continue
                if self._iter is not None:
                    for item in self._iter:
                        yield item
                elif self._aiter is not None:
                    # hand the attempt's reader the application's iterator itself: no
                    # layer of ours per message from here on
                    reader.direct = self._aiter.__anext__
                    return
                buffer.ended = True
                return
            if self._iter is not None:  # next() cannot be interrupted: no task needed
                self._pull_sync()
                continue
            if self._pull is None or self._pull.done():
                self._pull = asyncio.get_running_loop().create_task(self._pull_one())
            await asyncio.shield(self._pull)

    def _pull_sync(self) -> None:
        assert self._iter is not None
        try:
            item = next(self._iter)
        except StopIteration:
            self._buffer.ended = True
            return
        except Exception as exc:
            self._buffer.error = exc
            return
        self._buffer.add(item)

    async def _pull_one(self) -> None:
        try:
            if self._aiter is not None:
                item = await self._aiter.__anext__()
            else:
                assert self._iter is not None
                item = next(self._iter)
        except (StopAsyncIteration, StopIteration):
            self._buffer.ended = True
            return
        except Exception as exc:
            self._buffer.error = exc
            return
        self._buffer.add(item)


class _Replay:
    """One attempt's reader of the requests: through :meth:`AsyncRequests._replay` until
    the call has committed and the buffer is drained, then straight from the
    application's async iterator (``direct``), as the response side does."""

    __slots__ = ("_gen", "direct")

    def __init__(self, requests: AsyncRequests) -> None:
        self.direct: Callable[[], Any] | None = None
        self._gen: Any = requests._replay(self)

    def __aiter__(self) -> _Replay:
        return self

    def __anext__(self) -> Any:
        direct = self.direct
        return self._through_buffer() if direct is None else direct()

    async def _through_buffer(self) -> Any:
        try:
            return await self._gen.__anext__()
        except StopAsyncIteration:
            direct = self.direct
            if direct is None:
                raise
            self._gen = None  # handed over: ended, and no cycle through it
            return await direct()

    async def aclose(self) -> None:
        if self._gen is not None:
            await self._gen.aclose()


class SyncRequests:
    """grpcio's sync channel consumes a request iterator in its own thread."""

    def __init__(self, source: Any, on_size: SizeCallback | None = None) -> None:
        self._source = iter(source)
        self._lock = threading.Lock()
        self._buffer = _Buffer(None)  # sizes are reported outside the lock
        self._on_size = on_size

    def commit(self) -> None:
        with self._lock:
            self._buffer.commit()

    def replay(self) -> Iterator[Any]:
        position = self._buffer.base
        while True:
            new = False
            with self._lock:
                have, item = self._buffer.get(position)
                if not have:
                    if self._buffer.ended:
                        return
                    try:
                        item = next(self._source)
                    except StopIteration:
                        self._buffer.ended = True
                        return
                    self._buffer.add(item)
                    new = not self._buffer.committed
                    have, item = self._buffer.get(position)
            if new and self._on_size is not None:
                self._on_size(message_size(item))
            position += 1
            yield item
