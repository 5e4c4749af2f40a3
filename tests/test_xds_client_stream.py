"""The ADS client's protocol decisions, response by response, without a network: what it
ACKs and NACKs (version, nonce, error_detail), what its watchers hear, and that a broken
resource never deletes a good one."""

from __future__ import annotations

import queue
from typing import Any

import pytest

pytest.importorskip("envoy")

from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from grpc_balancer._xds_client.ads import XdsClient, XdsEvent
from grpc_balancer._xds_client.bootstrap import parse_bootstrap
from grpc_balancer._xds_client.model import CLUSTER
from grpc_balancer.xds import bootstrap


class Harness:
    """An XdsClient whose stream is this test: responses in, requests out."""

    def __init__(self) -> None:
        boot = parse_bootstrap(bootstrap("127.0.0.1:1", "unit"), "test")
        self.client = XdsClient(boot, ("unit",))
        self.client._thread = object()  # type: ignore[assignment]  # no stream thread
        self.requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.client._queue = self.requests
        self.events: list[XdsEvent] = []

    def watch(self, type_url: str, name: str) -> Any:
        self.client.watch(type_url, name, self.events.append)
        return self.requests.get_nowait()

    def respond(self, version: str, nonce: str, *clusters: Any) -> Any:
        response = discovery_pb2.DiscoveryResponse(
            version_info=version, nonce=nonce, type_url=CLUSTER
        )
        for cluster in clusters:
            response.resources.add().Pack(cluster)
        self.client._on_response(response)
        return self.requests.get_nowait()


def cluster(name: str, lb: int = cluster_pb2.Cluster.ROUND_ROBIN) -> Any:
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS, lb_policy=lb)  # type: ignore[arg-type]
    c.eds_cluster_config.eds_config.ads.SetInParent()
    return c


def test_the_first_request_names_the_resource_and_carries_the_node() -> None:
    h = Harness()
    first = h.watch(CLUSTER, "a")
    assert list(first.resource_names) == ["a"] and first.type_url == CLUSTER
    assert first.node.id == "unit" and first.node.user_agent_name == "grpc-balancer"
    assert (first.version_info, first.response_nonce) == ("", "")
    second = h.watch(CLUSTER, "b")
    assert list(second.resource_names) == ["a", "b"] and not second.HasField("node")


def test_a_good_response_is_acked_and_a_bad_one_nacked_keeping_the_last_good() -> None:
    h = Harness()
    h.watch(CLUSTER, "a")
    ack = h.respond("v1", "n1", cluster("a"))
    assert (ack.version_info, ack.response_nonce) == ("v1", "n1")
    assert not ack.HasField("error_detail")
    assert [(e.kind, e.name) for e in h.events] == [("resource", "a")]
    nack = h.respond("v2", "n2", cluster("a", lb=99))  # type: ignore[arg-type]
    assert (nack.version_info, nack.response_nonce) == ("v1", "n2")  # last ACKed version
    assert nack.error_detail.code == 3
    assert "a: lb_policy 99 is not supported" in nack.error_detail.message
    assert h.events[-1].kind == "nacked" and h.events[-1].value == h.events[0].value
    assert h.client.nacks[-1]["version"] == "v2"
    # The same good value again: ACKed, and the watcher hears it is good again.
    assert h.respond("v1", "n3", cluster("a")).version_info == "v1"
    assert h.events[-1].kind == "resource"


def test_a_cluster_missing_from_a_response_was_deleted() -> None:
    h = Harness()
    h.watch(CLUSTER, "a")
    h.respond("v1", "n1", cluster("a"))
    h.respond("v2", "n2", cluster("other"))
    assert h.events[-1].kind == "missing" and "does not exist" in h.events[-1].error


def test_a_resource_too_broken_to_name_deletes_nothing() -> None:
    h = Harness()
    h.watch(CLUSTER, "a")
    h.respond("v1", "n1", cluster("a"))
    response = discovery_pb2.DiscoveryResponse(version_info="v2", nonce="n2", type_url=CLUSTER)
    response.resources.add(type_url=CLUSTER, value=b"\xff\xff not a cluster")
    h.client._on_response(response)
    nack = h.requests.get_nowait()
    assert nack.HasField("error_detail") and nack.version_info == "v1"
    assert [e.kind for e in h.events] == ["resource"]  # no "missing"


def test_an_unchanged_resource_is_acked_without_waking_the_watcher() -> None:
    h = Harness()
    h.watch(CLUSTER, "a")
    h.respond("v1", "n1", cluster("a"))
    h.respond("v2", "n2", cluster("a"))
    assert len(h.events) == 1
    # A second watcher of the same name hears the cached value at once, no request.
    seen: list[XdsEvent] = []
    h.client.watch(CLUSTER, "a", seen.append)
    assert [e.kind for e in seen] == ["resource"] and h.requests.empty()
