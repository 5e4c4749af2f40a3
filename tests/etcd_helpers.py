"""Helpers for the etcd tests: the Go value format, a recording listener, polling."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.resolvers.base import ResolverOptions
from grpc_balancer.resolvers.etcd import EtcdResolver
from grpc_balancer.target import parse_target
from tests.helpers import say_hello_ports

PREFIX = "services/greeter"


def go_value(addr: str, metadata: object = None) -> str:
    """What etcd's Go endpoints.Manager.AddEndpoint stores."""
    return json.dumps({"Op": 0, "Addr": addr, "Metadata": metadata}, separators=(",", ":"))


class Recorder:
    """A ResolverListener that keeps every update and error."""

    def __init__(self) -> None:
        self.updates: list[list[Endpoint]] = []
        self.errors: list[str] = []

    def on_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        self.updates.append(list(endpoints))

    def on_resolver_error(self, error: str) -> None:
        self.errors.append(error)

    @property
    def addresses(self) -> set[str] | None:
        return {e.address for e in self.updates[-1]} if self.updates else None


def start_resolver(target: str, listener: object, **extra: object) -> EtcdResolver:
    resolver = EtcdResolver(parse_target(target), listener, ResolverOptions(extra=extra))  # type: ignore[arg-type]
    resolver.start()
    return resolver


async def until(predicate: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0) -> None:
    """Like ``eventually``, for a predicate that may be async (e.g. makes calls)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.05)


async def only(channel: object, ports: set[int]) -> bool:
    return set(await say_hello_ports(channel, 6)) == ports


async def reaches(channel: object, ports: set[int]) -> bool:
    """Calls reach every port in ``ports`` and no other (within a bounded batch)."""
    return set(await say_hello_ports(channel, 3 * len(ports))) == ports
