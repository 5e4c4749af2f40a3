"""XdsResolver's LDS → RDS → CDS → EDS chain, event by event, on a fake ADS client:
what it watches, what it pushes to the channel and in which order, and what it reports."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

pytest.importorskip("envoy")

from grpc_balancer._xds_client import ads
from grpc_balancer._xds_client.ads import XdsEvent
from grpc_balancer._xds_client.model import (
    CLUSTER,
    ENDPOINTS,
    LISTENER,
    ROUTE,
    Cluster,
    Endpoints,
    Listener,
    Route,
    RouteConfig,
    VirtualHost,
)
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.resolvers import xds as xds_resolver
from grpc_balancer.resolvers.base import ResolverOptions
from grpc_balancer.target import parse_target
from grpc_balancer.xds import bootstrap


class FakeClient:
    def __init__(self) -> None:
        self.watches: set[tuple[str, str]] = set()
        self.last_error: str | None = None

    def watch(self, type_url: str, name: str, sink: Any) -> None:
        self.watches.add((type_url, name))

    def cancel(self, type_url: str, name: str, sink: Any) -> None:
        self.watches.discard((type_url, name))

    def status(self) -> dict[str, Any]:
        return {}


class Listener_:
    """The channel side: every call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        self.calls.append(("endpoints", [e.address for e in endpoints]))

    def on_resolver_error(self, error: str) -> None:
        self.calls.append(("error", error))

    def on_service_config(self, config: Mapping[str, Any], notes: Sequence[str] = ()) -> None:
        self.calls.append(("config", (dict(config), tuple(notes))))


def route_config(name: str, cluster: str, domains: tuple[str, ...] = ("*",)) -> RouteConfig:
    route = Route("prefix", "", clusters=((cluster, 1),))
    return RouteConfig(name, (VirtualHost("vh", domains, (route,)),))


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> Any:
    client = FakeClient()
    monkeypatch.setattr(ads, "acquire", lambda boot: client)
    monkeypatch.setattr(ads, "release", lambda c: None)
    return client


async def start(client: FakeClient) -> tuple[xds_resolver.XdsResolver, Listener_]:
    channel = Listener_()
    opts = ResolverOptions(extra={"bootstrap": bootstrap("127.0.0.1:1", "n")})
    resolver = xds_resolver.XdsResolver(parse_target("xds:///greeter"), channel, opts)
    resolver.start()
    return resolver, channel


def send(resolver: xds_resolver.XdsResolver, type_url: str, name: str, value: Any) -> None:
    resolver._on_event(XdsEvent("resource", type_url, name, value))


def full_chain(resolver: xds_resolver.XdsResolver, eps: tuple[str, ...] = ("a:1",)) -> None:
    send(resolver, LISTENER, "greeter", Listener("greeter", "rc1", None))
    send(resolver, ROUTE, "rc1", route_config("rc1", "c1"))
    send(resolver, CLUSTER, "c1", Cluster("c1", "e1", "round_robin"))
    send(resolver, ENDPOINTS, "e1", Endpoints("e1", tuple(Endpoint(a) for a in eps)))


async def test_the_chain_is_watched_step_by_step_and_the_config_comes_first(rig: Any) -> None:
    resolver, channel = await start(rig)
    assert rig.watches == {(LISTENER, "greeter")}
    full_chain(resolver)
    assert rig.watches == {(LISTENER, "greeter"), (ROUTE, "rc1"), (CLUSTER, "c1"),
                           (ENDPOINTS, "e1")}  # fmt: skip
    kinds = [kind for kind, _ in channel.calls]
    assert kinds == ["config", "endpoints"]
    config, notes = channel.calls[0][1]
    assert config == {"loadBalancingConfig": [{"round_robin": {}}]} and notes == ()
    assert channel.calls[1][1] == ["a:1"]
    await resolver.close()
    assert rig.watches == set()


async def test_a_new_route_config_name_moves_the_watch(rig: Any) -> None:
    resolver, channel = await start(rig)
    full_chain(resolver)
    send(resolver, LISTENER, "greeter", Listener("greeter", "rc2", None))
    assert (ROUTE, "rc1") not in rig.watches and (ROUTE, "rc2") in rig.watches
    send(resolver, ROUTE, "rc2", route_config("rc2", "c2"))
    assert (CLUSTER, "c2") in rig.watches and (CLUSTER, "c1") not in rig.watches
    send(resolver, CLUSTER, "c2", Cluster("c2", "e2", "pick_first"))
    send(resolver, ENDPOINTS, "e2", Endpoints("e2", (Endpoint("b:1"),)))
    assert channel.calls[-2][0] == "config"
    assert channel.calls[-2][1][0]["loadBalancingConfig"] == [{"pick_first": {}}]
    assert channel.calls[-1] == ("endpoints", ["b:1"])


async def test_routes_it_cannot_follow_are_an_error_and_nothing_is_emptied(rig: Any) -> None:
    resolver, channel = await start(rig)
    full_chain(resolver)
    send(resolver, ROUTE, "rc1", route_config("rc1", "c1", domains=("other.example",)))
    assert channel.calls[-1][0] == "error" and "no virtual host matches" in channel.calls[-1][1]
    assert [k for k, _ in channel.calls].count("endpoints") == 1


async def test_a_nack_is_a_note_until_a_good_value_comes(rig: Any) -> None:
    resolver, channel = await start(rig)
    full_chain(resolver)
    resolver._on_event(XdsEvent("nacked", CLUSTER, "c1", error="lb_policy 99 is not supported"))
    config, notes = channel.calls[-1][1]
    assert notes == (
        "NACKed cds 'c1' (the last good one is in use): lb_policy 99 is not supported",
    )
    send(resolver, CLUSTER, "c1", Cluster("c1", "e1", "round_robin"))
    assert channel.calls[-1] == ("config", (config, ()))


async def test_a_broken_stream_is_an_error_and_the_next_stream_clears_it(rig: Any) -> None:
    resolver, channel = await start(rig)
    full_chain(resolver)
    resolver._on_event(XdsEvent("connection", error="xDS server x: UNAVAILABLE"))
    assert channel.calls[-1] == ("error", "xDS server x: UNAVAILABLE")
    resolver._on_event(XdsEvent("connected"))
    assert channel.calls[-1] == ("endpoints", ["a:1"])  # the same list: recovered


async def test_a_deleted_cluster_is_an_error_and_the_last_endpoints_stay(rig: Any) -> None:
    resolver, channel = await start(rig)
    full_chain(resolver)
    resolver._on_event(XdsEvent("missing", CLUSTER, "c1", error="cds 'c1': gone"))
    assert channel.calls[-1] == ("error", "cds 'c1': gone")
    send(resolver, CLUSTER, "c1", Cluster("c1", "e1", "round_robin"))
    assert channel.calls[-1] == ("endpoints", ["a:1"])


async def test_no_complete_answer_in_time_names_what_is_missing(
    rig: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(xds_resolver, "INITIAL_TIMEOUT_S", 0.01)
    resolver, channel = await start(rig)
    send(resolver, LISTENER, "greeter", Listener("greeter", "rc1", None))
    for _ in range(100):
        if channel.calls:
            break
        await asyncio.sleep(0.01)
    kind, message = channel.calls[-1]
    assert kind == "error" and "waiting for rds 'rc1'" in message
