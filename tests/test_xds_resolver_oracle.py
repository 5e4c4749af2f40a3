"""grpcio's own ``xds:///`` client as the oracle for ours: one control plane, the same
scenarios, a grpcio native client (a child process, tests/xds_client.py) next to a
grpc_balancer channel (aio and sync). Both must use the same endpoints, follow the same
changes and NACK the same invalid resources while keeping their last good config.
"""

from __future__ import annotations

import pytest

pytest.importorskip("envoy")

from grpc_balancer.testing import GreeterFleet
from grpc_balancer.xds.server import XdsServer
from tests.etcd_helpers import until
from tests.test_xds_resolver import reaches, static, xds_channel
from tests.xds_helpers import XdsClient, all_acked, config, stream_of

pytestmark = pytest.mark.slow


async def test_both_clients_use_the_same_endpoints_and_follow_the_same_changes(
    channel_kind: str,
) -> None:
    ours = f"ours-{channel_kind}"
    theirs = f"grpcio-{channel_kind}"
    async with (
        GreeterFleet(4) as fleet,
        XdsServer(config(static(fleet, [0, 1, 2]))) as server,
        XdsClient(server.address, theirs) as grpcio,
        xds_channel(channel_kind, server.address, ours) as ch,
    ):
        want = set(fleet.ports[:3])
        assert await grpcio.ports(30) == want
        assert set(await ch.say_hello_ports(30)) == want
        for indexes in ([1, 3], [0, 1, 2, 3], [2]):
            await server.update_config(config(static(fleet, indexes)))
            want = {fleet.ports[i] for i in indexes}
            await until(grpcio.reaches(want), timeout=30)
            await until(reaches(ch, want), timeout=30)
        await until(lambda: all_acked(server.status(), theirs), timeout=10)
        await until(lambda: all_acked(server.status(), ours), timeout=10)
        # Both saw the same resource versions.
        mine = stream_of(server.status(), ours)["types"]  # type: ignore[index]
        native = stream_of(server.status(), theirs)["types"]  # type: ignore[index]
        assert {t: v["acked_version"] for t, v in mine.items() if t != "cds"} == {
            t: v["acked_version"] for t, v in native.items() if t != "cds"
        }


@pytest.mark.parametrize("kind", ["lds", "rds", "cds", "eds"])
async def test_both_clients_nack_the_same_invalid_resource_and_keep_working(
    kind: str, channel_kind: str
) -> None:
    ours = f"ours-nack-{kind}-{channel_kind}"
    theirs = f"grpcio-nack-{kind}-{channel_kind}"
    async with (
        GreeterFleet(3) as fleet,
        XdsServer(config(static(fleet)), test_hooks=True) as server,
        XdsClient(server.address, theirs) as grpcio,
        xds_channel(channel_kind, server.address, ours) as ch,
    ):
        assert await grpcio.ports(20) == set(fleet.ports)
        assert set(await ch.say_hello_ports(20)) == set(fleet.ports)
        await until(lambda: all_acked(server.status(), theirs), timeout=20)
        await until(lambda: all_acked(server.status(), ours), timeout=20)
        before = {
            node: stream_of(server.status(), node)["types"][kind]["acked_version"]  # type: ignore[index]
            for node in (ours, theirs)
        }
        server.break_resource(kind, "greeter")

        def nacked(node: str) -> bool:
            stream = stream_of(server.status(), node)
            return stream is not None and stream["types"][kind]["nack"] is not None

        await until(lambda: nacked(theirs) and nacked(ours), timeout=30)
        status = server.status()
        for node in (ours, theirs):
            state = stream_of(status, node)["types"][kind]  # type: ignore[index]
            assert state["acked_version"] == before[node]  # the last good one
            assert state["nack"]["version"] == state["sent_version"]
            assert state["nack"]["error"]
        # Same version NACKed by both.
        assert (
            stream_of(status, ours)["types"][kind]["nack"]["version"]  # type: ignore[index]
            == stream_of(status, theirs)["types"][kind]["nack"]["version"]  # type: ignore[index]
        )
        assert await grpcio.ports(20) == set(fleet.ports)
        assert set(await ch.say_hello_ports(20)) == set(fleet.ports)
        server.heal()
        await until(lambda: all_acked(server.status(), theirs), timeout=30)
        await until(lambda: all_acked(server.status(), ours), timeout=30)


async def test_both_clients_follow_a_policy_change_to_pick_first() -> None:
    ours, theirs = "ours-pf", "grpcio-pf"
    async with (
        GreeterFleet(3) as fleet,
        XdsServer(config(static(fleet))) as server,
        XdsClient(server.address, theirs) as grpcio,
        xds_channel("aio", server.address, ours) as ch,
    ):
        assert await grpcio.ports(30) == set(fleet.ports)
        assert set(await ch.say_hello_ports(30)) == set(fleet.ports)
        await server.update_config(config(static(fleet), "pick_first"))

        async def grpcio_one() -> bool:
            return len(await grpcio.ports(12)) == 1

        async def ours_one() -> bool:
            return len(set(await ch.say_hello_ports(12))) == 1

        await until(grpcio_one, timeout=30)
        await until(ours_one, timeout=30)
