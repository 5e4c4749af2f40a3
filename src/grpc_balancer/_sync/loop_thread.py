"""One background thread running one asyncio event loop (the sync channel's engine).

The sync channel runs the whole async machinery — resolver, policy, subchannel
connectivity watchers, health checks, timers — on this loop, so there is exactly one
implementation of balancing; caller threads only read the published picker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _Loop(asyncio.SelectorEventLoop):
    """grpc.aio's process-wide poller may deliver a completion for one of this loop's
    (finished, abandoned) operations after the loop closed, via
    ``call_soon_threadsafe``; drop it instead of logging "Event loop is closed"."""

    def call_soon_threadsafe(  # type: ignore[override]
        self, callback: Any, *args: Any, context: Any = None
    ) -> Any:
        if self.is_closed():
            return None
        return super().call_soon_threadsafe(callback, *args, context=context)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        # The same poller, running on this loop, hands a completion of another loop
        # that is already closed (an asyncio.run() that used grpc.aio and ended) back
        # to that loop, which raises "Event loop is closed": nothing could run it.
        error = context.get("exception")
        if (
            isinstance(error, RuntimeError)
            and str(error) == "Event loop is closed"
            and "PollerCompletionQueue" in repr(context.get("handle"))
        ):
            return
        super().call_exception_handler(context)


class LoopThread:
    """Start with the constructor; :meth:`stop` cancels what is left and joins."""

    def __init__(self, name: str) -> None:
        self.loop: asyncio.AbstractEventLoop = _Loop()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()
        self._ready.wait()

    @property
    def ident(self) -> int | None:
        return self.thread.ident

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self.thread.ident

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
            self._cancel_leftovers()
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
        finally:
            self.loop.close()

    def _cancel_leftovers(self) -> None:
        tasks = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop; the returned future is safe to wait on from any thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result in the calling thread."""
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError(
                "a blocking call on a grpc_balancer sync channel was made from the "
                "channel's own event-loop thread (e.g. inside a subscribe() callback)"
            )
        return self.submit(coro).result(timeout)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        """Schedule ``callback(*args)`` on the loop from any thread (no-op once stopped)."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(callback, *args)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop, cancel its remaining tasks and join the thread."""
        if self.thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self.loop.stop)
            if not self.in_loop_thread():
                self.thread.join(timeout)
