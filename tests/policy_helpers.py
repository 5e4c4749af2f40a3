"""Helpers for the policy tests: subchannels without a network (for picker internals)
and concurrent call bursts on a real channel (for reactions to in-flight load)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, cast

import grpc
import grpc.aio

from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.subchannel import Subchannel
from tests.helpers import port_of

C = grpc.ChannelConnectivity


class _Listener:
    def on_subchannel_state(self, subchannel: Subchannel) -> None:
        pass


def fake_subchannels(
    n: int, ready: bool = True, weights: list[int] | None = None
) -> list[Subchannel]:
    """``n`` subchannels on 10.0.0.x addresses (never dialed), READY and usable."""
    subs = []
    for i in range(n):
        endpoint = Endpoint(
            f"10.0.{i // 250}.{i % 250 + 1}:443", weight=weights[i] if weights else 1
        )
        sc = Subchannel(endpoint, cast(grpc.aio.Channel, None), _Listener())
        if ready:
            sc.connectivity = C.READY
            sc._usable = True
        subs.append(sc)
    return subs


async def burst(
    channel: Any, n: int, gap_s: float = 0.005, timeout: float = 10.0, metadata: Any = None
) -> tuple[Counter[int], list[grpc.aio.AioRpcError]]:
    """``n`` SayHello calls started ``gap_s`` apart (so in-flight counts build up),
    all awaited; per-port counts and the errors."""
    stub = greeter_pb2_grpc.GreeterStub(channel)
    tasks = []
    for _ in range(n):
        call = stub.SayHello(greeter_pb2.HelloRequest(name="b"), timeout=timeout, metadata=metadata)
        tasks.append(asyncio.ensure_future(call))
        await asyncio.sleep(gap_s)
    by_port: Counter[int] = Counter()
    errors: list[grpc.aio.AioRpcError] = []
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, grpc.aio.AioRpcError):
            errors.append(result)
        elif isinstance(result, BaseException):
            raise result
        else:
            by_port[port_of(result.message)] += 1
    return by_port, errors
