"""Steady client load for the resilience tests: a bounded number of calls, a fixed
number of concurrent workers, every outcome counted (no call lost silently)."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc.aio

from grpc_balancer.greeter import greeter_pb2, greeter_pb2_grpc
from tests.helpers import eventually, port_of


class Load:
    """``total`` SayHello calls from ``concurrency`` workers; run with ``start()``."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        total: int,
        concurrency: int = 16,
        timeout: float = 10.0,
        pace_s: float = 0.0,
    ) -> None:
        self._stub = greeter_pb2_grpc.GreeterStub(channel)
        self.total = total
        self.concurrency = concurrency
        self.timeout = timeout
        self.pace_s = pace_s
        self.by_port: Counter[int] = Counter()
        self.errors: list[grpc.aio.AioRpcError] = []
        self.started = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def done(self) -> int:
        return sum(self.by_port.values()) + len(self.errors)

    def start(self) -> Load:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def finish(self, timeout: float = 120.0) -> Load:
        assert self._task is not None
        await asyncio.wait_for(self._task, timeout)
        assert self.done == self.total
        return self

    async def reached(self, n: int, timeout: float = 60.0) -> None:
        await eventually(lambda: self.done >= n, timeout=timeout)

    async def _run(self) -> None:
        await asyncio.gather(*(self._worker() for _ in range(self.concurrency)))

    async def _worker(self) -> None:
        request = greeter_pb2.HelloRequest(name="load")
        while self.started < self.total:
            self.started += 1
            try:
                reply = await self._stub.SayHello(request, timeout=self.timeout)
            except grpc.aio.AioRpcError as err:
                self.errors.append(err)
            else:
                self.by_port[port_of(reply.message)] += 1
            if self.pace_s:
                await asyncio.sleep(self.pace_s)

    def describe_errors(self) -> str:
        return "; ".join(
            f"{code.name}: {details}"
            for (code, details), _ in Counter(
                (e.code(), e.details()) for e in self.errors
            ).most_common(5)
        )
