"""Steady client load for the resilience tests: a bounded number of calls, a fixed
number of concurrent workers, every outcome counted (no call lost silently)."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpc.aio

from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from tests.helpers import eventually, port_of


class Load:
    """``total`` SayHello calls from ``concurrency`` workers; run with ``start()``."""

    def __init__(
        self,
        channel: Any,
        total: int,
        concurrency: int = 16,
        timeout: float = 10.0,
        pace_s: float = 0.0,
    ) -> None:
        # tests.channels.AnyChannel: a sync channel's calls run in `concurrency` threads.
        self._sync = getattr(channel, "kind", None) == "sync"
        self._raw = getattr(channel, "channel", channel)
        self._stub = greeter_pb2_grpc.GreeterStub(self._raw)
        self._executor: ThreadPoolExecutor | None = None
        self.total = total
        self.concurrency = concurrency
        self.timeout = timeout
        self.pace_s = pace_s
        self.by_port: Counter[int] = Counter()
        self.errors: list[Any] = []
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
        if self._sync:
            self._executor = ThreadPoolExecutor(self.concurrency, thread_name_prefix="load")
        try:
            await asyncio.gather(*(self._worker() for _ in range(self.concurrency)))
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._raw.drain()  # the calls' events reach observers on the loop thread

    async def _say_hello(self, request: greeter_pb2.HelloRequest) -> greeter_pb2.HelloReply:
        if self._executor is None:
            return await self._stub.SayHello(request, timeout=self.timeout)
        call = functools.partial(self._stub.SayHello, request, timeout=self.timeout)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def _worker(self) -> None:
        request = greeter_pb2.HelloRequest(name="load")
        while self.started < self.total:
            self.started += 1
            try:
                reply = await self._say_hello(request)
            except grpc.RpcError as err:
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
