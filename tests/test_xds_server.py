"""The ADS server with a plain ADS client (envoy's generated stub): wildcards, removal,
many streams at once, protocol errors and a clean shutdown, over a real connection."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

pytest.importorskip("envoy")

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from grpc_balancer.xds import admin, parse_config
from grpc_balancer.xds.server import XdsServer
from grpc_balancer.xds.stream import CLUSTER, ENDPOINTS, LISTENER
from tests.etcd_helpers import until


def two_services(second: bool = True, port: int = 10000) -> Any:
    services = {"a": {"target": "static:///127.0.0.1:1", "listener_port": port}}
    if second:
        services["b"] = {"target": "static:///127.0.0.1:2,127.0.0.1:3"}
    return parse_config({"services": services})


class Ads:
    """One ADS stream as a test drives it."""

    def __init__(self, channel: grpc.aio.Channel, node: Any) -> None:
        self.node = node
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()

    async def send(self, type_url: str, names: tuple[str, ...] = (), reply: Any = None,
                   error: str | None = None) -> None:  # fmt: skip
        request = discovery_pb2.DiscoveryRequest(
            node=self.node, type_url=type_url, resource_names=list(names)
        )
        if reply is not None:
            request.response_nonce = reply.nonce
            if error is None:
                request.version_info = reply.version_info
            else:
                request.error_detail.message = error
        await self.call.write(request)

    async def read(self) -> Any:
        return await asyncio.wait_for(self.call.read(), 10)


def names(reply: Any, cls: Any) -> list[str]:
    out = []
    for resource in reply.resources:
        message = cls()
        assert resource.Unpack(message)
        out.append(
            message.name if hasattr(message, "name") and message.name else message.cluster_name
        )
    return out


ENVOY = base_pb2.Node(id="envoy-1", user_agent_name="envoy")
ENVOY.user_agent_build_version.version.major_number = 1
ENVOY.user_agent_build_version.version.minor_number = 36


async def test_wildcards_removal_and_an_envoy_listener() -> None:
    async with (
        XdsServer(two_services()) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        ads = Ads(channel, ENVOY)
        await ads.send(LISTENER)  # Envoy: wildcard LDS and CDS
        lds = await ads.read()
        assert names(lds, listener_pb2.Listener) == ["a"]  # b has no listener_port
        listener = listener_pb2.Listener()
        lds.resources[0].Unpack(listener)
        assert listener.address.socket_address.port_value == 10000
        await ads.send(LISTENER, reply=lds)
        await ads.send(CLUSTER)
        cds = await ads.read()
        assert names(cds, cluster_pb2.Cluster) == ["a", "b"]
        await ads.send(CLUSTER, reply=cds)
        await ads.send(ENDPOINTS, ("a", "b"))
        eds = await ads.read()
        assert names(eds, endpoint_pb2.ClusterLoadAssignment) == ["a", "b"]
        await ads.send(ENDPOINTS, ("a", "b"), reply=eds)

        stream = server.status()["streams"][0]
        assert stream["client"] == "envoy 1.36.0" and stream["listener"] == "envoy"
        assert stream["types"]["cds"]["wildcard"] is True

        # Service b goes: CDS (full state) comes again without it, and EDS with a alone
        # (for EDS that is no removal); LDS did not change, so it is not sent.
        await server.update_config(two_services(second=False))
        replies = {}
        for _ in range(2):
            reply = await ads.read()
            replies[reply.type_url] = reply
        assert set(replies) == {CLUSTER, ENDPOINTS}
        assert names(replies[ENDPOINTS], endpoint_pb2.ClusterLoadAssignment) == ["a"]
        assert names(replies[CLUSTER], cluster_pb2.Cluster) == ["a"]
        assert replies[CLUSTER].version_info != cds.version_info
        # ACKed over the admin RPC's view too.
        await ads.send(CLUSTER, reply=replies[CLUSTER])
        await ads.send(ENDPOINTS, ("a", "b"), reply=replies[ENDPOINTS])

        def acked() -> bool:
            status = admin.fetch_status(server.address)
            cds_state = status["streams"][0]["types"]["cds"]
            return bool(cds_state["acked_version"] == replies[CLUSTER].version_info)

        await until(lambda: asyncio.to_thread(acked))
        await ads.call.done_writing()


async def test_one_endpoint_change_reaches_many_streams() -> None:
    async with (
        XdsServer(two_services()) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        streams = [
            Ads(channel, base_pb2.Node(id=f"n{i}", user_agent_name="gRPC Go")) for i in range(20)
        ]
        first = []
        for ads in streams:
            await ads.send(ENDPOINTS, ("b",))
            first.append(await ads.read())
            await ads.send(ENDPOINTS, ("b",), reply=first[-1])
        await server.update_config(
            parse_config({"services": {"a": {"target": "static:///127.0.0.1:1"},
                                       "b": {"target": "static:///127.0.0.1:9"}}})
        )  # fmt: skip
        for ads, old in zip(streams, first, strict=True):
            reply = await ads.read()
            assert reply.type_url == ENDPOINTS and reply.version_info != old.version_info
            cla = endpoint_pb2.ClusterLoadAssignment()
            reply.resources[0].Unpack(cla)
            ports = [e.endpoint.address.socket_address.port_value
                     for loc in cla.endpoints for e in loc.lb_endpoints]  # fmt: skip
            assert ports == [9]
        assert len(server.status()["streams"]) == 20
        for ads in streams:
            await ads.call.done_writing()
        await until(lambda: not server.streams)


async def test_a_nack_is_recorded_and_not_answered() -> None:
    async with (
        XdsServer(two_services()) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        ads = Ads(channel, base_pb2.Node(id="n", user_agent_name="gRPC Java"))
        await ads.send(CLUSTER, ("a",))
        reply = await ads.read()
        await ads.send(CLUSTER, ("a",), reply=reply, error="no thanks")
        await until(lambda: bool(server.nacks))
        assert server.nacks[-1]["error"] == "no thanks"
        state = server.status()["streams"][0]["types"]["cds"]
        assert state["nack"] == {"version": reply.version_info, "error": "no thanks"}
        assert state["acked_version"] is None
        await ads.call.done_writing()


async def test_protocol_errors() -> None:
    async with (
        XdsServer(two_services()) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        ads = Ads(channel, base_pb2.Node(id="n"))
        await ads.send("type.googleapis.com/envoy.config.core.v3.Nope")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await ads.read()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_stop_ends_every_stream_cleanly() -> None:
    server = XdsServer(two_services())
    await server.start()
    async with grpc.aio.insecure_channel(server.address) as channel:
        ads = Ads(channel, base_pb2.Node(id="n"))
        await ads.send(CLUSTER, ("a",))
        await ads.read()
        await server.stop()
        assert await asyncio.wait_for(ads.call.read(), 10) is grpc.aio.EOF
        assert await ads.call.code() == grpc.StatusCode.OK
    assert not server.streams


async def test_host_names_become_ip_addresses_in_eds() -> None:
    config = parse_config({"services": {"a": {"target": "static:///localhost:7001,[::1]:7002"}}})
    async with (
        XdsServer(config) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        ads = Ads(channel, base_pb2.Node(id="n", user_agent_name="gRPC Go"))
        await ads.send(ENDPOINTS, ("a",))
        cla = endpoint_pb2.ClusterLoadAssignment()
        (await ads.read()).resources[0].Unpack(cla)
        got = sorted(
            (e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
            for loc in cla.endpoints for e in loc.lb_endpoints
        )  # fmt: skip
        assert got[1] == ("::1", 7002)
        assert got[0][1] == 7001 and got[0][0] in ("127.0.0.1", "::1")
        await ads.call.done_writing()
