from __future__ import annotations

import itertools

from grpc_balancer.testing import GreeterFleet
from tests.channels import open_channel
from tests.helpers import counts, say_hello_ports


async def test_round_robin_spreads_evenly_and_alternates(
    channel_kind: str, fleet3: GreeterFleet
) -> None:
    async with open_channel(channel_kind, fleet3.target(), policy="round_robin") as ch:
        assert await ch.wait_for_settled(10)
        ports = await say_hello_ports(ch, 300)
    assert sorted(counts(ports).values()) == [100, 100, 100]
    # strict rotation: never the same backend twice in a row, period 3
    assert all(a != b for a, b in itertools.pairwise(ports))
    assert all(ports[i] == ports[i + 3] for i in range(len(ports) - 3))
