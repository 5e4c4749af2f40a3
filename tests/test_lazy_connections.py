"""Endpoints a policy does not need stay IDLE, with no grpc channel and no connection
(pick_first's spares, ring_hash's endpoints no key has landed on), as in gRPC."""

from __future__ import annotations

import grpc

import grpc_balancer
from grpc_balancer import aio
from grpc_balancer.testing import GreeterFleet
from tests.helpers import established_to, eventually, say_hello_ports

C = grpc.ChannelConnectivity
RING_HASH = {"loadBalancingConfig": [{"ring_hash": {}}]}


def _dialed(channel: aio.BalancedChannel) -> list[str]:
    return [sc.address for sc in channel.subchannels if sc.has_transport]  # type: ignore[attr-defined]


async def test_pick_first_leaves_the_spares_idle_without_a_channel(fleet3: GreeterFleet) -> None:
    async with aio.insecure_channel(fleet3.target(), policy="pick_first") as ch:
        assert await ch.wait_for_settled(10)
        assert set(await say_hello_ports(ch, 5)) == {fleet3.ports[0]}
        first, *spares = ch.subchannels
        assert first.connectivity is C.READY
        assert all(sc.connectivity is C.IDLE and not sc.wants_connection for sc in spares)
        assert _dialed(ch) == [first.address]
        assert set(established_to(fleet3.ports)) == {fleet3.ports[0]}


async def test_ring_hash_dials_one_endpoint_then_each_owner_on_its_first_key(
    fleet3: GreeterFleet,
) -> None:
    async with aio.insecure_channel(fleet3.target(), service_config=RING_HASH) as ch:
        assert await ch.wait_for_settled(10)
        assert len(_dialed(ch)) == 1  # enough for READY; the rest wait for keys
        assert sum(sc.connectivity is C.IDLE for sc in ch.subchannels) == 2
        stub_ports: dict[int, set[int]] = {}
        for key in range(30):
            with grpc_balancer.hash_key(f"k{key}"):
                stub_ports[key] = set(await say_hello_ports(ch, 2))
        # Every key kept one owner, even the ones whose owner was IDLE at first.
        assert all(len(ports) == 1 for ports in stub_ports.values())
        owners = set().union(*stub_ports.values())
        await eventually(lambda: len(_dialed(ch)) == len(owners))
        assert set(established_to(fleet3.ports)) == owners
