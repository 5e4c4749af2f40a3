"""Request messages of a client-streaming call, kept until the call commits so a retry
can send them again (gRFC A6 buffers them the same way).

Each attempt reads the stream through :meth:`ReplayableRequests.replay`: first what
earlier attempts already took, then new messages from the application's iterator.
Messages are pulled in a task of their own, so an attempt that dies mid-pull never
loses one (nor cancels the application's generator). After :meth:`commit` nothing is
kept any more.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any


class ReplayableRequests:
    def __init__(self, source: Any) -> None:
        self._aiter: AsyncIterator[Any] | None = None
        self._iter: Iterator[Any] | None = None
        if hasattr(source, "__aiter__"):
            self._aiter = source.__aiter__()
        else:
            self._iter = iter(source)
        self._buffer: list[Any] = []
        self._base = 0  # index (in the whole stream) of self._buffer[0]
        self._ended = False
        self._committed = False
        self._pull: asyncio.Task[None] | None = None

    def commit(self) -> None:
        """The call is committed to one attempt: stop keeping messages for replays."""
        self._committed = True

    async def replay(self) -> AsyncIterator[Any]:
        position = self._base
        while True:
            index = position - self._base
            if index < len(self._buffer):
                item = self._buffer[index]
                position += 1
                if self._committed:
                    self._drop_before(position)
                yield item
                continue
            if self._ended:
                return
            if self._pull is None or self._pull.done():
                self._pull = asyncio.get_running_loop().create_task(self._pull_one())
            pull = self._pull
            await asyncio.shield(pull)
            pull.result()  # the application's iterator raised: fail this attempt with it

    def _drop_before(self, position: int) -> None:
        drop = position - self._base
        if drop > 0:
            del self._buffer[:drop]
            self._base = position

    async def _pull_one(self) -> None:
        try:
            if self._aiter is not None:
                item = await self._aiter.__anext__()
            else:
                assert self._iter is not None
                item = next(self._iter)
        except (StopAsyncIteration, StopIteration):
            self._ended = True
            return
        self._buffer.append(item)
