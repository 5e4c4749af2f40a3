"""SyncBalancedChannel: a ``grpc.Channel`` for sync stubs, on the async channel's core.

Each sync channel owns one background thread running an event loop, and on it one
:class:`~grpc_balancer._aio.channel.BalancedChannel` (the *core*): resolver, policy,
subchannel connectivity, health checks and timers are exactly the async channel's.
Caller threads only read the core's immutable picker (lock-free), then send on that
endpoint's synchronous grpcio channel — no thread hop on the fast path. When no
backend is ready, the caller waits on the loop's own pick (bounded by its deadline).
Connectivity and health are watched on that same channel (one connection per
endpoint, as grpcio), their results handed to the loop thread.

::

    caller threads ──pick (lock-free)──► core.picker ◄── policy ◄── resolver   (loop thread)
          │                                                ▲
          └──► SyncSubchannel's grpc.Channel ──► backend    │
                   └── subscribe() / health / ORCA ─────────┘ (via call_soon)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import grpc.aio

from grpc_balancer._aio.channel import BalancedChannel
from grpc_balancer._attempts.errors import SyncRpcError
from grpc_balancer._config.service_config import ServiceConfig
from grpc_balancer._core.picking import ChangeSignal
from grpc_balancer._core.status import ChannelStatus
from grpc_balancer._observe.events import Event, Observer
from grpc_balancer._sync.calls import (
    SyncStreamStreamMultiCallable,
    SyncStreamUnaryMultiCallable,
    SyncUnaryStreamMultiCallable,
    SyncUnaryUnaryMultiCallable,
)
from grpc_balancer._sync.loop_thread import LoopThread
from grpc_balancer._sync.subchannel import SyncSubchannel
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.errors import ChannelClosedError, ChannelUsedAfterForkError
from grpc_balancer.picker import Picker
from grpc_balancer.resolvers.base import ResolverOptions
from grpc_balancer.subchannel import ChannelOptions, Subchannel

log = logging.getLogger("grpc_balancer._sync.channel")

Connectivity = grpc.ChannelConnectivity
StateCallback = Callable[[Connectivity], None]

#: How often a caller blocked on the loop re-checks that the loop is still alive.
_LIVENESS_S = 1.0


class _LoopCore(BalancedChannel):
    """The async channel, living on the loop thread, with sync subchannels."""

    def __init__(
        self,
        target: str,
        *,
        loop_thread: LoopThread,
        on_state: StateCallback,
        credentials: grpc.ChannelCredentials | None,
        **kwargs: Any,
    ) -> None:
        self._loop_thread = loop_thread
        self._on_state = on_state
        self._sync_credentials = credentials
        #: Every subchannel made, draining ones included, so close() closes them all.
        self._made: weakref.WeakSet[SyncSubchannel] = weakref.WeakSet()
        super().__init__(target, credentials=credentials, **kwargs)

    async def close(self, grace: float | None = None) -> None:
        await super().close(grace)
        # A subchannel the policy removed with calls in flight waits for them to end
        # before closing; the channel is closing, so close it now (its calls end
        # CANCELLED), or its connection and grpcio's connectivity poller would stay.
        await asyncio.gather(*(sc.aclose() for sc in list(self._made)))

    def make_subchannel(self, endpoint: Endpoint) -> Subchannel:
        """One sync ``grpc.Channel`` per endpoint, with the options an aio one gets:
        calls, connectivity, health and ORCA all share its one connection."""
        options = self.endpoint_options
        if self._sync_credentials is None:
            inner = grpc.insecure_channel(endpoint.address, options=options)
        else:
            inner = grpc.secure_channel(endpoint.address, self._sync_credentials, options=options)
        sc = SyncSubchannel(endpoint, inner, self, call_soon=self._loop_thread.call_soon)
        self._made.add(sc)
        return sc

    def emit(
        self, event: Event, subchannel: Subchannel | None, code: grpc.StatusCode | None
    ) -> None:
        # Observers (metrics, logs) run on the loop, whichever thread saw the event.
        if self.observers:
            if self._loop_thread.in_loop_thread():
                super().emit(event, subchannel, code)
            else:
                self._loop_thread.call_soon(super().emit, event, subchannel, code)

    def _publish(self, state: Connectivity, picker: Picker) -> None:
        changed = state is not self._state
        super()._publish(state, picker)
        if changed:
            self._on_state(state)


class SyncBalancedChannel(grpc.Channel):
    """Created by :func:`grpc_balancer.insecure_channel` / ``secure_channel``."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        policy: str | None = None,
        service_config: str | Mapping[str, Any] | None = None,
        options: ChannelOptions | None = None,
        resolver_options: ResolverOptions | None = None,
    ) -> None:
        #: Set when the channel must not be used any more (closed, or in a forked child).
        self._unusable: tuple[type[ChannelClosedError], str] | None = None
        self._lock = threading.Lock()
        #: Calls driven by callbacks and calls waiting in a caller thread: close()
        #: ends them at once (their loop timers would never fire).
        self.live_calls: set[Any] = set()
        self._closed_event = threading.Event()
        self._subscribers: list[StateCallback] = []
        self._pid = os.getpid()
        self._thread = LoopThread(name=f"grpc_balancer.sync[{target}]")
        me = weakref.ref(self)

        def on_state(state: Connectivity) -> None:
            channel = me()
            if channel is not None:
                channel._deliver(state)

        async def make_core() -> _LoopCore:
            return _LoopCore(
                target,
                loop_thread=self._thread,
                on_state=on_state,
                credentials=credentials,
                policy=policy,
                service_config=service_config,
                options=options,
                resolver_options=resolver_options,
            )

        try:
            self._core = self._thread.run(make_core())
        except BaseException:
            self._thread.stop()
            raise
        self._target = target
        _LIVE.add(self)

    # -- usability ------------------------------------------------------------------------
    def check_usable(self) -> None:
        """Raise :class:`ChannelClosedError` (a ``ValueError`` too) after close or fork."""
        if self._unusable is not None:
            kind, message = self._unusable
            raise kind(message)

    def _after_fork(self) -> None:
        self._unusable = (
            ChannelUsedAfterForkError,
            f"channel for {self._target!r} was created in process {self._pid} and cannot be "
            "used after fork(); create a new channel in the child process",
        )

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Stop the loop thread and close every endpoint channel. In-flight calls end
        with CANCELLED; later calls raise :class:`ChannelClosedError`."""
        with self._lock:
            if self._unusable is not None:
                return
            self._unusable = (ChannelClosedError, f"channel for {self._target!r} is closed")
        _LIVE.discard(self)
        self._closed_event.set()
        for call in list(self.live_calls):
            call.close_from_channel()
        if self._thread.in_loop_thread():
            self._thread.loop.create_task(self._close_and_stop())
            return
        try:
            self._thread.run(self._core.close(), timeout=30)
        except Exception:  # pragma: no cover - a failing close must still stop the thread
            log.exception("%s: error while closing", self._target)
        finally:
            self._thread.stop()

    async def _close_and_stop(self) -> None:
        try:
            await self._core.close()
        finally:
            self._thread.loop.stop()

    def __enter__(self) -> SyncBalancedChannel:
        self.check_usable()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Never closed: let the loop thread finish without blocking the collector.
        unusable = getattr(self, "_unusable", ("?", ""))
        thread: LoopThread | None = getattr(self, "_thread", None)
        if unusable is None and thread is not None and getattr(self, "_core", None) is not None:
            thread.call_soon(lambda: thread.loop.create_task(self._close_and_stop()))

    # -- connectivity ------------------------------------------------------------------------
    def subscribe(self, callback: StateCallback, try_to_connect: bool = False) -> None:
        """``callback(state)`` now and on every change, called on the channel's loop
        thread (so it must not block; a blocking call from it raises RuntimeError)."""
        self.check_usable()
        with self._lock:
            self._subscribers.append(callback)
        self._thread.call_soon(self._deliver_to, callback)

    def unsubscribe(self, callback: StateCallback) -> None:
        with self._lock:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

    def _deliver_to(self, callback: StateCallback) -> None:
        with self._lock:
            subscribed = callback in self._subscribers
        if subscribed:
            self._call_subscriber(callback, self._core.get_state())

    def _deliver(self, state: Connectivity) -> None:
        with self._lock:
            callbacks = list(self._subscribers)
        for callback in callbacks:
            self._call_subscriber(callback, state)

    def _call_subscriber(self, callback: StateCallback, state: Connectivity) -> None:
        try:
            callback(state)
        except Exception:
            log.exception("%s: subscribe() callback failed", self._target)

    def get_state(self) -> Connectivity:
        return self._core.get_state()

    def channel_ready(self, timeout: float | None = None) -> None:
        """Block until some backend is READY (``TimeoutError`` after ``timeout`` s)."""
        self.check_usable()
        self._wait(self._core.channel_ready(), timeout)

    def wait_for_settled(self, timeout: float) -> bool:
        """Block until resolved and no subchannel is still connecting (see the async one)."""
        self.check_usable()
        return bool(self._wait(self._core.wait_for_settled(timeout), timeout + _LIVENESS_S))

    # -- multicallables --------------------------------------------------------------------
    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> SyncUnaryUnaryMultiCallable:
        return SyncUnaryUnaryMultiCallable(self, method, request_serializer, response_deserializer)

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> SyncUnaryStreamMultiCallable:
        return SyncUnaryStreamMultiCallable(self, method, request_serializer, response_deserializer)

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> SyncStreamUnaryMultiCallable:
        return SyncStreamUnaryMultiCallable(self, method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> SyncStreamStreamMultiCallable:
        return SyncStreamStreamMultiCallable(
            self, method, request_serializer, response_deserializer
        )

    # -- waiting (used by the call drivers, in caller threads) -----------------------------
    def wait_for(self, signal: ChangeSignal, timeout: float | None) -> bool:
        """Block until ``signal`` fires (True), ``timeout`` passes or the channel
        closes (False)."""
        if signal.fired:
            return True
        woken = threading.Event()
        signal.add_callback(woken.set)
        end = None if timeout is None else time.monotonic() + timeout
        try:
            while not woken.is_set() and not self._closed_event.is_set():
                step = _LIVENESS_S if end is None else min(_LIVENESS_S, end - time.monotonic())
                if step <= 0:
                    break
                woken.wait(step)
        finally:
            signal.remove_callback(woken.set)
        return woken.is_set()

    def sleep(self, seconds: float) -> None:
        """A backoff: ``seconds``, or less if the channel closes meanwhile."""
        self._closed_event.wait(seconds)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        """``callback()`` on the loop thread after ``delay`` seconds."""
        self._thread.call_soon(self._thread.loop.call_later, delay, callback)

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until everything already handed to the loop thread has run: resilience
        events and metrics hooks of finished calls are delivered there, just after the
        call returns. Useful in tests that count events right after their calls."""
        if self._unusable is None and not self._thread.in_loop_thread():

            async def nothing() -> None:
                return None

            self._wait(nothing(), timeout)

    def on_loop(self, callback: Callable[..., Any], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop thread (metrics hooks, executor jobs)."""
        self._thread.call_soon(callback, *args)

    def _wait(self, coro: Any, timeout: float | None) -> Any:
        """Run ``coro`` on the loop; block this thread until it finishes (or the channel
        closes under us, which ends the wait with CANCELLED)."""
        future = self._thread.submit(coro)
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            step = _LIVENESS_S if end is None else min(_LIVENESS_S, end - time.monotonic())
            try:
                return future.result(max(step, 0.0))
            except concurrent.futures.TimeoutError:
                if end is not None and time.monotonic() >= end:
                    future.cancel()
                    raise TimeoutError(f"timed out after {timeout}s") from None
                if not self._thread.thread.is_alive():
                    raise SyncRpcError(grpc.StatusCode.CANCELLED, "channel closed") from None
            except concurrent.futures.CancelledError:
                raise SyncRpcError(grpc.StatusCode.CANCELLED, "channel closed") from None

    # -- introspection ------------------------------------------------------------------------
    @property
    def core(self) -> BalancedChannel:
        """The async core on the loop thread (read-only use from other threads)."""
        return self._core

    @property
    def config(self) -> ServiceConfig:
        return self._core.config

    @property
    def target(self) -> str:
        return self._target

    @property
    def picker(self) -> Picker:
        return self._core.picker

    @property
    def subchannels(self) -> list[Subchannel]:
        for _ in range(10):
            try:  # the loop thread may change the set while we copy it
                return self._core.subchannels
            except RuntimeError:
                time.sleep(0.001)
        return self._core.subchannels

    def status(self) -> ChannelStatus:
        """Like :meth:`BalancedChannel.status`; taken on the loop thread, so it is a
        consistent snapshot."""

        async def take() -> ChannelStatus:
            return self._core.status()

        result: ChannelStatus = self._wait(take(), 10.0)
        return result

    @property
    def observers(self) -> list[Observer]:
        """Resilience event observers (see :mod:`grpc_balancer._observe.events`); they are called
        on the channel's loop thread."""
        return self._core.observers

    @property
    def loop_thread(self) -> threading.Thread:
        return self._thread.thread

    def __repr__(self) -> str:
        return (
            f"<SyncBalancedChannel {self._target!r} policy={self.config.policy} "
            f"state={self.get_state().name} subchannels={self.subchannels}>"
        )


#: Live channels, so a forked child can mark them unusable.
_LIVE: weakref.WeakSet[SyncBalancedChannel] = weakref.WeakSet()


def _mark_forked_children() -> None:
    for channel in list(_LIVE):
        channel._after_fork()


os.register_at_fork(after_in_child=_mark_forked_children)


def insecure_channel(
    target: str,
    *,
    policy: str | None = None,
    service_config: str | Mapping[str, Any] | None = None,
    options: ChannelOptions | None = None,
    resolver_options: ResolverOptions | None = None,
) -> SyncBalancedChannel:
    """A plaintext balanced ``grpc.Channel`` for sync stubs, e.g.
    ``insecure_channel("dns:///greeter.internal:50051", policy="round_robin")``.

    Raises a ``ValueError`` subclass (:class:`grpc_balancer.BalancerConfigError`) for a
    malformed target, an unknown scheme or policy, or a bad service config.
    """
    return SyncBalancedChannel(
        target,
        policy=policy,
        service_config=service_config,
        options=options,
        resolver_options=resolver_options,
    )


def secure_channel(
    target: str,
    credentials: grpc.ChannelCredentials,
    *,
    policy: str | None = None,
    service_config: str | Mapping[str, Any] | None = None,
    options: ChannelOptions | None = None,
    resolver_options: ResolverOptions | None = None,
) -> SyncBalancedChannel:
    """Like :func:`insecure_channel`, with TLS ``credentials`` on every endpoint."""
    return SyncBalancedChannel(
        target,
        credentials=credentials,
        policy=policy,
        service_config=service_config,
        options=options,
        resolver_options=resolver_options,
    )
