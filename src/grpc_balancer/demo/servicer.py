"""The greeter servicer: says hello and names its port, so a client sees who answered.

Fault injection (delay, failures) lives here too, because tests and benchmarks need
backends that are slow or broken on purpose.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import grpc.aio

from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc

SERVICE_NAME = "greeter.Greeter"


@dataclass
class Faults:
    """Injected behaviour; mutable so tests and admin hooks can change it at run time."""

    delay_ms: float = 0.0
    delay_dist: str = "fixed"  # or "lognormal" (median delay_ms, sigma 0.5)
    fail_rate: float = 0.0
    fail_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    max_concurrency: int = 0  # >0: calls beyond this many wait for a slot (capacity)

    def sample_delay_s(self, rng: random.Random) -> float:
        if self.delay_ms <= 0:
            return 0.0
        if self.delay_dist == "lognormal":
            return rng.lognormvariate(math.log(self.delay_ms), 0.5) / 1000.0
        return self.delay_ms / 1000.0


class GreeterServicer(greeter_pb2_grpc.GreeterServicer):  # type: ignore[misc]
    def __init__(self, port: int, faults: Faults | None = None, seed: int | None = None) -> None:
        self.port = port
        self.faults = faults or Faults()
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._rng = random.Random(seed)
        self._slots: asyncio.Semaphore | None = None

    def reply_text(self, name: str) -> str:
        return f"Hello {name or 'World'} (from :{self.port})"

    async def _behave(self, context: grpc.aio.ServicerContext) -> None:  # type: ignore[type-arg]
        self.calls += 1
        faults = self.faults
        if faults.max_concurrency > 0:
            if self._slots is None:
                self._slots = asyncio.Semaphore(faults.max_concurrency)
            async with self._slots:
                await self._delay_and_fail(context)
        else:
            await self._delay_and_fail(context)

    async def _delay_and_fail(self, context: grpc.aio.ServicerContext) -> None:  # type: ignore[type-arg]
        delay = self.faults.sample_delay_s(self._rng)
        if delay:
            await asyncio.sleep(delay)
        if self.faults.fail_rate > 0 and self._rng.random() < self.faults.fail_rate:
            await context.abort(self.faults.fail_code, f"injected failure (from :{self.port})")

    async def SayHello(
        self,
        request: greeter_pb2.HelloRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> greeter_pb2.HelloReply:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self._behave(context)
            return greeter_pb2.HelloReply(message=self.reply_text(request.name))
        finally:
            self.in_flight -= 1

    async def SayHelloStream(
        self,
        request: greeter_pb2.HelloRequest,
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[greeter_pb2.HelloReply]:
        await self._behave(context)
        for i in range(max(request.count, 1)):
            yield greeter_pb2.HelloReply(message=f"{self.reply_text(request.name)} #{i + 1}")

    async def SayHelloToMany(
        self,
        request_iterator: AsyncIterator[greeter_pb2.HelloRequest],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> greeter_pb2.HelloReply:
        names = [r.name async for r in request_iterator]
        await self._behave(context)
        return greeter_pb2.HelloReply(message=self.reply_text(", ".join(names)))

    async def Chat(
        self,
        request_iterator: AsyncIterator[greeter_pb2.HelloRequest],
        context: grpc.aio.ServicerContext,  # type: ignore[type-arg]
    ) -> AsyncIterator[greeter_pb2.HelloReply]:
        async for request in request_iterator:
            await self._behave(context)
            yield greeter_pb2.HelloReply(message=self.reply_text(request.name))
