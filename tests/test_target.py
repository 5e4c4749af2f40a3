"""Target URI parsing and the static resolver's validation (no network)."""

from __future__ import annotations

import pytest

import grpc_balancer
from grpc_balancer.errors import InvalidTargetError
from grpc_balancer.resolvers.static import parse_static_endpoints
from grpc_balancer.target import grpc_target_for, parse_target, split_host_port


@pytest.mark.parametrize(
    ("raw", "scheme", "authority", "endpoint"),
    [
        (
            "static:///localhost:50051,localhost:50052",
            "static",
            "",
            "localhost:50051,localhost:50052",
        ),
        ("dns:///greeter.example.com:443", "dns", "", "greeter.example.com:443"),
        ("dns://8.8.8.8/greeter:443", "dns", "8.8.8.8", "greeter:443"),
        ("ipv4:127.0.0.1:1,127.0.0.2:2", "ipv4", "", "127.0.0.1:1,127.0.0.2:2"),
        ("ipv6:[::1]:50051", "ipv6", "", "[::1]:50051"),
        ("localhost:50051", "dns", "", "localhost:50051"),
        ("etcd://127.0.0.1:2379/services/greeter", "etcd", "127.0.0.1:2379", "services/greeter"),
        ("DNS+SRV:///_grpc._tcp.greeter", "dns+srv", "", "_grpc._tcp.greeter"),
    ],
)
def test_parse_good_targets(raw: str, scheme: str, authority: str, endpoint: str) -> None:
    target = parse_target(raw)
    assert (target.scheme, target.authority, target.endpoint) == (scheme, authority, endpoint)
    assert str(target) == raw


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("static://", r"expected scheme://\[authority\]/endpoint"),
        ("static:///", "no endpoint"),
        ("1abc:///x:1", "invalid scheme"),
        ("static:///a:1 ,b:2", "whitespace"),
    ],
)
def test_parse_bad_targets(raw: str, problem: str) -> None:
    with pytest.raises(InvalidTargetError, match=problem):
        parse_target(raw)


def test_static_list_keeps_order_and_dedupes() -> None:
    target = parse_target("static:///b:2,a:1,b:2,[::1]:3")
    assert [e.address for e in parse_static_endpoints(target)] == ["b:2", "a:1", "[::1]:3"]


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("static:///a:1,,b:2", "empty item"),
        ("static:///,", "empty address list"),
        ("static:///localhost", "missing port"),
        ("static:///localhost:0", "out of range"),
        ("static:///localhost:65536", "out of range"),
        ("static:///localhost:http", "not a number"),
        ("static:///::1:50051", "need brackets"),
        ("static:///[::1:50051", "missing ']'"),
        ("static:///[nothex]:1", "not an IPv6 address"),
        ("static:///:50051", "missing host"),
        ("static://auth/a:1", "take no authority"),
        ("ipv4:localhost:1", "not an IPv4 address"),
        ("ipv6:127.0.0.1:1", "not an IPv6 address"),
    ],
)
def test_static_bad_lists(raw: str, problem: str) -> None:
    with pytest.raises(InvalidTargetError, match=problem):
        parse_static_endpoints(parse_target(raw))


def test_every_bad_target_is_a_value_error_at_channel_creation() -> None:
    for raw in ("static:///", "nosuch:///a:1", "static:///a:99999"):
        with pytest.raises(ValueError) as info:
            grpc_balancer.aio.insecure_channel(raw)
        assert isinstance(info.value, grpc_balancer.BalancerConfigError)


def test_unknown_scheme_lists_known_ones() -> None:
    with pytest.raises(InvalidTargetError, match=r"unknown scheme 'nosuch' \(known: .*static"):
        grpc_balancer.aio.insecure_channel("nosuch:///a:1")


def test_split_host_port_forms() -> None:
    assert split_host_port("[::1]:80") == ("::1", 80)
    assert split_host_port("host", default_port=443) == ("host", 443)
    assert split_host_port("10.0.0.1:8080") == ("10.0.0.1", 8080)


@pytest.mark.parametrize(
    ("address", "grpc_target"),
    [
        ("127.0.0.1:50051", "ipv4:127.0.0.1:50051"),
        ("127.1.2.3:1", "ipv4:127.1.2.3:1"),
        ("[::1]:50051", "ipv6:[::1]:50051"),
        ("localhost:50051", "localhost:50051"),
        ("01.2.3.4:5", "01.2.3.4:5"),  # not a dotted quad grpcio's ipv4: would take
        ("1.2.3:5", "1.2.3:5"),
        ("256.1.1.1:5", "256.1.1.1:5"),
        ("[fe80::1%eth0]:5", "[fe80::1%eth0]:5"),
        ("1.2.3.4\x00:5", "1.2.3.4\x00:5"),
        ("10.0.0.1", "10.0.0.1"),  # no port: as given
    ],
)
def test_endpoint_channels_get_ip_targets_for_ip_literals_only(
    address: str, grpc_target: str
) -> None:
    assert grpc_target_for(address) == grpc_target
