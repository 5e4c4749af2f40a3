"""The incremental (delta) ADS state machine, without a network, and over a real stream."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from grpc_balancer.xds.delta import DeltaRequest, DeltaResponse, DeltaStreamState
from grpc_balancer.xds.stream import CLUSTER, ENDPOINTS, ProtocolError
from tests.test_xds_stream import world

W = world(cds={"a": "1", "b": "1"}, eds={"a": "1", "b": "1"})


def one(responses: list[DeltaResponse]) -> DeltaResponse:
    assert len(responses) == 1, responses
    return responses[0]


def ack(r: DeltaResponse) -> DeltaRequest:
    return DeltaRequest(r.type_url, response_nonce=r.nonce)


def test_wildcard_then_only_changes_are_sent() -> None:
    s = DeltaStreamState()
    r = one(s.on_request(DeltaRequest(CLUSTER), W))
    assert r.names == ("a", "b") and r.removed == ()
    assert s.on_request(ack(r), W) == []
    assert s.types[CLUSTER].acked_version == r.system_version
    changed = one(s.on_world(world(cds={"a": "2", "b": "1"})))
    assert changed.names == ("a",)  # b unchanged: not sent again
    gone = one(s.on_world(world(cds={"a": "2"})))
    assert gone.names == () and gone.removed == ("b",)
    assert s.on_world(world(cds={"a": "2"})) == []


def test_named_subscribe_unsubscribe_and_absent_names() -> None:
    s = DeltaStreamState()
    r = one(s.on_request(DeltaRequest(ENDPOINTS, subscribe=("a", "zz")), W))
    assert r.names == ("a",) and r.removed == ("zz",)  # zz does not exist: said at once
    r2 = one(s.on_request(DeltaRequest(ENDPOINTS, subscribe=("b",), response_nonce=r.nonce), W))
    assert r2.names == ("b",)
    assert (
        s.on_request(DeltaRequest(ENDPOINTS, unsubscribe=("a",), response_nonce=r2.nonce), W) == []
    )
    assert s.types[ENDPOINTS].names == {"b", "zz"}
    # a changes, but it is no longer subscribed: nothing.
    assert one(s.on_world(world(eds={"a": "2", "b": "2"}))).names == ("b",)


def test_initial_versions_are_not_sent_again() -> None:
    """A new stream of a client that kept its resources (e.g. after a restart)."""
    first = DeltaStreamState()
    r = one(first.on_request(DeltaRequest(CLUSTER), W))
    versions = {name: version for name, version, _ in r.resources}
    again = DeltaStreamState()
    assert again.on_request(DeltaRequest(CLUSTER, initial_versions=versions), W) == []
    stale = {"a": versions["a"], "b": "old", "c": "gone"}
    r2 = one(DeltaStreamState().on_request(DeltaRequest(CLUSTER, initial_versions=stale), W))
    assert r2.names == ("b",) and r2.removed == ("c",)


def test_a_nack_undoes_what_the_client_has_and_the_refused_version_is_not_resent() -> None:
    s = DeltaStreamState()
    good = one(s.on_request(DeltaRequest(CLUSTER, subscribe=("a",)), W))
    s.on_request(ack(good), W)
    bad_world = world(cds={"a": "2"})
    bad = one(s.on_world(bad_world))
    assert (
        s.on_request(DeltaRequest(CLUSTER, response_nonce=bad.nonce, error="no"), bad_world) == []
    )
    state = s.types[CLUSTER]
    assert state.nack is not None and state.nack.error == "no"
    assert state.nack.version == bad.system_version
    assert state.acked_version == good.system_version
    assert state.known["a"] == good.resources[0][1]  # the client kept its last good one
    assert s.on_world(bad_world) == []
    fixed = one(s.on_world(world(cds={"a": "3"})))
    assert fixed.names == ("a",)


def test_unknown_type_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        DeltaStreamState().on_request(DeltaRequest("type.googleapis.com/x"), W)


async def test_delta_over_a_real_stream() -> None:
    pytest.importorskip("envoy")
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    from grpc_balancer.xds import parse_config
    from grpc_balancer.xds.server import XdsServer

    def cfg(*names: str) -> object:
        return parse_config({"services": {n: {"target": "static:///127.0.0.1:1"} for n in names}})

    async with (
        XdsServer(cfg("a", "b")) as server,  # type: ignore[arg-type]
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
        node = base_pb2.Node(id="delta-1", user_agent_name="envoy")
        await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node, type_url=CLUSTER))
        reply = await asyncio.wait_for(call.read(), 10)
        assert sorted(r.name for r in reply.resources) == ["a", "b"]
        cluster = cluster_pb2.Cluster()
        assert reply.resources[0].resource.Unpack(cluster)
        await call.write(
            discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER, response_nonce=reply.nonce)
        )
        await server.update_config(cfg("a"))  # type: ignore[arg-type]
        removal = await asyncio.wait_for(call.read(), 10)
        assert list(removal.removed_resources) == ["b"] and not removal.resources
        stream = server.status()["streams"][0]
        assert stream["protocol"] == "delta" and stream["types"]["cds"]["wildcard"]
        assert "lds" not in stream["types"]
        await call.done_writing()
