"""Small helpers shared by tests (not fixtures)."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable

from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc

PORT_RE = re.compile(r"\(from :(\d+)\)")


def port_of(message: str) -> int:
    match = PORT_RE.search(message)
    assert match, message
    return int(match.group(1))


async def say_hello_ports(channel: object, n: int, timeout: float = 5.0) -> list[int]:
    """``n`` sequential SayHello calls; the serving port of each, in order."""
    if hasattr(channel, "say_hello_ports"):  # tests.channels.AnyChannel (aio or sync)
        return await channel.say_hello_ports(n, timeout)  # type: ignore[no-any-return]
    stub = greeter_pb2_grpc.GreeterStub(channel)
    ports = []
    for _ in range(n):
        reply = await stub.SayHello(greeter_pb2.HelloRequest(name="t"), timeout=timeout)
        ports.append(port_of(reply.message))
    return ports


def counts(ports: list[int]) -> Counter[int]:
    return Counter(ports)


async def eventually(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` s (a bound, not a speed claim)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
