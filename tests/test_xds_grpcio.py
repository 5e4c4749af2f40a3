"""Our ADS server driving grpcio's own native ``xds:///`` client (C-core), for real.

Each client is a child process (grpcio's bootstrap is process-wide), bootstrapped with
GRPC_XDS_BOOTSTRAP_CONFIG to the server on a 127.0.0.1 ephemeral port; the backends
are real greeter servers.
"""

from __future__ import annotations

import pytest

pytest.importorskip("envoy")

import grpc_balancer
from grpc_balancer.testing import GreeterFleet
from grpc_balancer.xds.server import XdsServer
from tests.etcd_cluster import EtcdCluster
from tests.etcd_helpers import PREFIX, until
from tests.xds_helpers import XdsClient, all_acked, config, stream_of

pytestmark = pytest.mark.slow


def static(fleet: GreeterFleet, indexes: list[int] | None = None) -> str:
    addresses = fleet.addresses
    return "static:///" + ",".join(addresses[i] for i in (indexes or range(len(addresses))))


async def test_calls_spread_and_an_endpoint_change_reaches_every_node() -> None:
    async with (
        GreeterFleet(3) as fleet,
        XdsServer(config(static(fleet))) as server,
        XdsClient(server.address, "node-a") as a,
        XdsClient(server.address, "node-b") as b,
    ):
        assert await a.ports(30) == set(fleet.ports)
        assert await b.ports(30) == set(fleet.ports)
        await until(
            lambda: all_acked(server.status(), "node-a") and all_acked(server.status(), "node-b")
        )
        stream = stream_of(server.status(), "node-a")
        assert stream is not None and stream["client"].startswith("grpc-core")
        assert stream["types"]["lds"]["subscribed"] == ["greeter"]
        assert stream["types"]["eds"]["nack"] is None
        # One EDS update goes to both nodes' streams.
        await server.update_config(config(static(fleet, [0, 2])))
        want = {fleet.ports[0], fleet.ports[2]}
        await until(a.reaches(want), timeout=30)
        await until(b.reaches(want), timeout=30)


async def test_an_etcd_registered_endpoint_is_used_and_a_deregistered_one_dropped(
    etcd_node: EtcdCluster,
) -> None:
    target = etcd_node.target(PREFIX)
    async with GreeterFleet(2) as fleet:
        first, second = fleet.addresses
        async with (
            grpc_balancer.registration(target, first, ttl=5),
            XdsServer(config(target)) as server,
            XdsClient(server.address, "node-etcd") as client,
        ):
            await until(client.reaches({fleet.ports[0]}), timeout=30)
            async with grpc_balancer.registration(target, second, ttl=5, metadata={"zone": "z2"}):
                await until(client.reaches(set(fleet.ports)), timeout=30)
                zones = {e["zone"] for e in server.status()["services"]["greeter"]["endpoints"]}
                assert zones == {None, "z2"}
            # Deregistered on exit: it stops getting calls.
            await until(client.reaches({fleet.ports[0]}), timeout=30)


async def test_a_policy_change_is_applied() -> None:
    async with (
        GreeterFleet(3) as fleet,
        XdsServer(config(static(fleet))) as server,
        XdsClient(server.address, "node-policy") as client,
    ):
        assert await client.ports(30) == set(fleet.ports)

        async def one_backend() -> bool:
            return len(await client.ports(12)) == 1

        await server.update_config(config(static(fleet), "pick_first"))
        await until(one_backend, timeout=30)
        await until(lambda: all_acked(server.status(), "node-policy"))
        await server.update_config(config(static(fleet), [{"round_robin": {}}]))
        await until(client.reaches(set(fleet.ports), 30), timeout=30)


async def test_least_request_falls_back_to_round_robin_for_grpcio_with_a_warning() -> None:
    async with (
        GreeterFleet(3) as fleet,
        XdsServer(config(static(fleet), "least_request")) as server,
        XdsClient(server.address, "node-lr") as client,
    ):
        assert await client.ports(30) == set(fleet.ports)
        await until(lambda: all_acked(server.status(), "node-lr"))
        stream = stream_of(server.status(), "node-lr")
        assert stream is not None
        assert any("does not accept least_request" in w for w in stream["warnings"])
        assert all(t["nack"] is None for t in stream["types"].values())


async def test_an_invalid_resource_is_nacked_shown_in_status_and_the_client_keeps_working() -> None:
    async with (
        GreeterFleet(3) as fleet,
        XdsServer(config(static(fleet)), test_hooks=True) as server,
        XdsClient(server.address, "node-nack") as client,
    ):
        assert await client.ports(30) == set(fleet.ports)
        await until(lambda: all_acked(server.status(), "node-nack"))
        good = stream_of(server.status(), "node-nack")["types"]["cds"]["acked_version"]  # type: ignore[index]

        server.break_resource("cds", "greeter")

        def nacked() -> bool:
            stream = stream_of(server.status(), "node-nack")
            return stream is not None and stream["types"]["cds"]["nack"] is not None

        await until(nacked, timeout=30)
        cds = stream_of(server.status(), "node-nack")["types"]["cds"]  # type: ignore[index]
        assert cds["acked_version"] == good  # the last good one
        assert cds["nack"]["version"] == cds["sent_version"] != good
        assert cds["nack"]["error"]
        assert server.status()["recent_nacks"][-1]["node"] == "node-nack"
        # The client works on its last good config.
        assert await client.ports(30) == set(fleet.ports)
        # Healed: the good version again, ACKed; the NACK stays visible as the last one.
        server.heal()
        await until(lambda: all_acked(server.status(), "node-nack"), timeout=30)
        cds = stream_of(server.status(), "node-nack")["types"]["cds"]  # type: ignore[index]
        assert cds["acked_version"] == good and cds["nack"] is not None


async def test_a_control_plane_restart_leaves_clients_working_and_they_resubscribe() -> None:
    async with GreeterFleet(3) as fleet:
        server = XdsServer(config(static(fleet, [0, 1])))
        await server.start()
        port = server.port
        try:
            async with XdsClient(server.address, "node-restart") as client:
                assert await client.ports(20) == set(fleet.ports[:2])
                await server.stop()
                # No control plane: the client goes on with what it has.
                assert await client.ports(20) == set(fleet.ports[:2])
                server = XdsServer(config(static(fleet)), port=port)
                await server.start()
                await until(lambda: all_acked(server.status(), "node-restart"), timeout=60)
                # Resubscribed: a change made now reaches it.
                await until(client.reaches(set(fleet.ports)), timeout=30)
        finally:
            await server.stop()


async def test_ring_hash_on_a_header_keeps_each_key_on_one_backend() -> None:
    async with (
        GreeterFleet(3) as fleet,
        XdsServer(config(static(fleet), [{"ring_hash": {"minRingSize": 64}}],
                         hash_header="x-user")) as server,
        XdsClient(server.address, "node-ring") as client,
    ):  # fmt: skip
        await client.ports(3)  # the channel (and its ADS stream) is made on the first call
        await until(lambda: all_acked(server.status(), "node-ring"), timeout=30)
        backend_of = {}
        for user in range(20):
            # Each key: every call on one backend (the first may still be connecting).
            await until(lambda u=user: _one_port(client, f"user-{u}"), timeout=30)
            (backend_of[user],) = await client.ports(3, metadata={"x-user": f"user-{user}"})
        assert len(set(backend_of.values())) > 1  # 20 keys over 3 backends
        for user, port in backend_of.items():  # and each stays where it is
            assert await client.ports(3, metadata={"x-user": f"user-{user}"}) == {port}


async def _one_port(client: XdsClient, user: str) -> bool:
    return len(await client.ports(8, metadata={"x-user": user})) == 1


async def test_a_full_service_config_is_accepted_by_grpcio() -> None:
    """Route timeout and retry policy, outlier detection and circuit breakers: ACKed."""
    service_config = {
        "methodConfig": [
            {"name": [{"service": "greeter.Greeter", "method": "SayHello"}], "timeout": "5s",
             "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
                             "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}},
            {"name": [{}], "timeout": "10s"},
        ],
        "outlierDetection": {"interval": "1s", "failurePercentageEjection": {"threshold": 90},
                             "successRateEjection": {}},
        "circuitBreakers": {"maxRequests": 50},
    }  # fmt: skip
    async with (
        GreeterFleet(3) as fleet,
        XdsServer(config(static(fleet), service_config=service_config)) as server,
        XdsClient(server.address, "node-full") as client,
    ):
        assert await client.ports(30) == set(fleet.ports)
        await until(lambda: all_acked(server.status(), "node-full"), timeout=30)
        stream = stream_of(server.status(), "node-full")
        assert stream is not None
        assert all(t["nack"] is None for t in stream["types"].values())
