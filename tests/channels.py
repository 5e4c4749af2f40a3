"""Run one test against both channel kinds, so sync/async parity is tested, not assumed.

Use the ``channel_kind`` fixture (``"aio"`` or ``"sync"``) and :func:`open_channel`::

    async def test_x(channel_kind: str, fleet3: GreeterFleet) -> None:
        async with open_channel(channel_kind, fleet3.target(), policy="round_robin") as ch:
            reply = await ch.stub().SayHello(Req(name="x"), timeout=5)

The test stays async either way. For the sync channel every call runs in a worker
thread (``asyncio.to_thread``), so the test's event loop — and any in-process servers
on it — keeps running while the sync stub blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
import pytest

import grpc_balancer
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from tests.helpers import port_of

KINDS = ("aio", "sync")

Req = greeter_pb2.HelloRequest
Reply = greeter_pb2.HelloReply


@pytest.fixture(params=KINDS)
def channel_kind(request: pytest.FixtureRequest) -> str:
    """Parametrises a test over the asyncio and the sync balanced channel."""
    return str(request.param)


class Greeter:
    """The greeter's four calls, awaitable whatever the channel kind. Streaming replies
    come back as lists; client streams take any iterable of requests."""

    def __init__(self, kind: str, channel: Any) -> None:
        self._sync = kind == "sync"
        self._channel = channel
        self._stub = greeter_pb2_grpc.GreeterStub(channel)

    async def _in_thread(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a blocking call in a worker thread; then let the channel's loop deliver
        the call's events, so a test can count them at once (as with the aio channel)."""

        def run() -> Any:
            try:
                return call(*args, **kwargs)
            finally:
                self._channel.drain()

        return await asyncio.to_thread(run)

    async def SayHello(self, request: Any, **kwargs: Any) -> Any:
        if self._sync:
            return await self._in_thread(self._stub.SayHello, request, **kwargs)
        return await self._stub.SayHello(request, **kwargs)

    async def SayHelloWithTrailers(
        self, request: Any, **kwargs: Any
    ) -> tuple[Any, tuple[Any, ...]]:
        """The reply and the call's trailing metadata, as ``(key, value)`` pairs."""
        if self._sync:
            reply, call = await self._in_thread(self._stub.SayHello.with_call, request, **kwargs)
            return reply, tuple(tuple(item) for item in call.trailing_metadata() or ())
        call = self._stub.SayHello(request, **kwargs)
        reply = await call
        return reply, tuple(tuple(item) for item in await call.trailing_metadata())

    async def SayHelloStream(self, request: Any, **kwargs: Any) -> list[Any]:
        if self._sync:
            return await self._in_thread(lambda: list(self._stub.SayHelloStream(request, **kwargs)))
        return [r async for r in self._stub.SayHelloStream(request, **kwargs)]

    async def SayHelloStreamOutcome(
        self, request: Any, **kwargs: Any
    ) -> tuple[list[Any], Any, grpc.StatusCode, tuple[Any, ...]]:
        """Read a server stream to its end: (replies, the error raised while reading or
        None, the call's code, its trailing metadata as pairs)."""
        if self._sync:

            def run() -> tuple[list[Any], Any, grpc.StatusCode, tuple[Any, ...]]:
                call = self._stub.SayHelloStream(request, **kwargs)
                replies: list[Any] = []
                error = None
                try:
                    replies.extend(call)
                except grpc.RpcError as err:
                    error = err
                trailers = tuple(tuple(item) for item in call.trailing_metadata() or ())
                return replies, error, call.code(), trailers

            return await self._in_thread(run)
        call = self._stub.SayHelloStream(request, **kwargs)
        replies, error = [], None
        try:
            replies = [r async for r in call]
        except grpc.RpcError as err:
            error = err
        trailers = tuple(tuple(item) for item in await call.trailing_metadata())
        return replies, error, await call.code(), trailers

    async def SayHelloToMany(
        self, requests: Iterable[Any], plain_iterator: bool = False, **kwargs: Any
    ) -> Any:
        """``plain_iterator``: give the asyncio stub a sync iterator, not an async one."""
        items = list(requests)
        if self._sync:
            return await self._in_thread(self._stub.SayHelloToMany, iter(items), **kwargs)
        source = iter(items) if plain_iterator else _aiter(items)
        return await self._stub.SayHelloToMany(source, **kwargs)

    async def Chat(
        self, requests: Iterable[Any], plain_iterator: bool = False, **kwargs: Any
    ) -> list[Any]:
        items = list(requests)
        if self._sync:
            return await self._in_thread(lambda: list(self._stub.Chat(iter(items), **kwargs)))
        source = iter(items) if plain_iterator else _aiter(items)
        return [r async for r in self._stub.Chat(source, **kwargs)]


async def _aiter(items: list[Any]) -> AsyncIterator[Any]:
    for item in items:
        yield item


class AnyChannel:
    """A balanced channel of either kind with one async test API; other attributes
    (``subchannels``, ``config``, ``get_state``, ``picker``...) are the channel's own."""

    def __init__(self, kind: str, channel: Any) -> None:
        self.kind = kind
        self.channel = channel

    def __getattr__(self, name: str) -> Any:
        return getattr(self.channel, name)

    def stub(self) -> Greeter:
        return Greeter(self.kind, self.channel)

    async def wait_for_settled(self, timeout: float) -> bool:
        if self.kind == "sync":
            return bool(await asyncio.to_thread(self.channel.wait_for_settled, timeout))
        return bool(await self.channel.wait_for_settled(timeout))

    async def channel_ready(self) -> None:
        if self.kind == "sync":
            await asyncio.to_thread(self.channel.channel_ready)
        else:
            await self.channel.channel_ready()

    async def close(self) -> None:
        if self.kind == "sync":
            await asyncio.to_thread(self.channel.close)
        else:
            await self.channel.close()

    async def say_hello_ports(self, n: int, timeout: float = 5.0) -> list[int]:
        """``n`` sequential SayHello calls; the serving port of each, in order."""
        if self.kind == "sync":
            stub = greeter_pb2_grpc.GreeterStub(self.channel)

            def run() -> list[int]:
                return [
                    port_of(stub.SayHello(Req(name="t"), timeout=timeout).message) for _ in range(n)
                ]

            return await asyncio.to_thread(run)
        stub = greeter_pb2_grpc.GreeterStub(self.channel)
        ports = []
        for _ in range(n):
            reply = await stub.SayHello(Req(name="t"), timeout=timeout)
            ports.append(port_of(reply.message))
        return ports

    async def __aenter__(self) -> AnyChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def open_channel(kind: str, target: str, credentials: Any = None, **kwargs: Any) -> AnyChannel:
    """``grpc_balancer.aio.insecure_channel`` or ``grpc_balancer.insecure_channel``
    (``secure_channel`` of either kind when ``credentials`` are given)."""
    if kind not in KINDS:
        raise ValueError(f"unknown channel kind {kind!r} (known: {', '.join(KINDS)})")
    api: Any = grpc_balancer.aio if kind == "aio" else grpc_balancer
    if credentials is not None:
        return AnyChannel(kind, api.secure_channel(target, credentials, **kwargs))
    return AnyChannel(kind, api.insecure_channel(target, **kwargs))
