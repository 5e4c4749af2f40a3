"""Small helpers shared by tests (not fixtures)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable

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


def established_to(ports: Iterable[int]) -> Counter[int]:
    """ESTABLISHED TCP connections from this process to each of ``ports`` (read from
    the OS: the sockets in /proc/self/fd, their state in /proc/self/net/tcp{,6})."""
    wanted = set(ports)
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    found: Counter[int] = Counter()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines)  # the header
            for line in lines:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if fields[3] == "01" and remote_port in wanted and fields[9] in inodes:
                    found[remote_port] += 1
    return found
