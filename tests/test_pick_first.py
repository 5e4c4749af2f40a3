"""pick_first on real server processes: sticky, fails over in order, SIGKILL-tested."""

from __future__ import annotations

import grpc_balancer
from grpc_balancer.testing import ServerProcess, ServerProcesses
from tests.channels import open_channel
from tests.helpers import eventually, say_hello_ports


async def _calls_until(channel: object, port: int, limit: int = 200) -> list[int]:
    """Call until one reply comes from ``port`` (bounded); the ports seen, in order."""
    seen: list[int] = []
    for _ in range(limit):
        try:
            seen += await say_hello_ports(channel, 1, timeout=5)
        except Exception:  # calls racing the kill may fail; we count, not assert, here
            seen.append(-1)
        if seen[-1] == port:
            return seen
    raise AssertionError(f"no call reached :{port} in {limit} calls: {seen[-10:]}")


async def test_pick_first_is_sticky_and_fails_over_in_order(channel_kind: str) -> None:
    with ServerProcesses(3) as fleet:
        s0, s1, _s2 = fleet.servers
        async with open_channel(channel_kind, fleet.target()) as ch:
            assert ch.config.policy == "pick_first"
            assert set(await say_hello_ports(ch, 20)) == {s0.port}
            # Only the first endpoint was dialed.
            assert [sc.wants_connection for sc in _ordered(ch, fleet)] == [True, False, False]

            s0.kill()
            await _calls_until(ch, s1.port)
            assert set(await say_hello_ports(ch, 20)) == {s1.port}

            # s0 comes back and reconnects, but the policy stays on s1 (sticky).
            restarted = ServerProcess(port=s0.port).start()
            try:
                sc0 = _ordered(ch, fleet)[0]
                await eventually(lambda: sc0.usable, timeout=30)
                assert set(await say_hello_ports(ch, 20)) == {s1.port}

                # s1 dies: the first reachable in order is s0 again, not s2.
                s1.kill()
                await _calls_until(ch, s0.port)
                assert set(await say_hello_ports(ch, 20)) == {s0.port}
            finally:
                restarted.kill()


async def test_pick_first_shuffle_address_list_spreads_clients(channel_kind: str) -> None:
    with ServerProcesses(3) as fleet:
        first_ports = set()
        config = {"loadBalancingConfig": [{"pick_first": {"shuffleAddressList": True}}]}
        for _ in range(12):
            async with open_channel(channel_kind, fleet.target(), service_config=config) as ch:
                first_ports.add((await say_hello_ports(ch, 1))[0])
        # 12 clients all landing on one of 3 backends has probability 3 * (1/3)^12.
        assert len(first_ports) > 1


def _ordered(channel: object, fleet: ServerProcesses) -> list[grpc_balancer.Subchannel]:
    by_address = {sc.address: sc for sc in channel.subchannels}  # type: ignore[attr-defined]
    return [by_address[a] for a in fleet.addresses]
