from __future__ import annotations

import itertools

import grpc_balancer
from grpc_balancer.testing import GreeterFleet
from tests.helpers import counts, say_hello_ports


async def test_round_robin_spreads_evenly_and_alternates(fleet3: GreeterFleet) -> None:
    async with grpc_balancer.aio.insecure_channel(fleet3.target(), policy="round_robin") as ch:
        assert await ch.wait_for_settled(10)
        ports = await say_hello_ports(ch, 300)
    assert sorted(counts(ports).values()) == [100, 100, 100]
    # strict rotation: never the same backend twice in a row, period 3
    assert all(a != b for a, b in itertools.pairwise(ports))
    assert all(ports[i] == ports[i + 3] for i in range(len(ports) - 3))
