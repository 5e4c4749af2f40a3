"""dns:/dns+srv: target validation (no DNS server needed: all of it happens at construction)."""

from __future__ import annotations

import pytest

import grpc_balancer
from grpc_balancer.errors import BalancerConfigError, InvalidTargetError
from grpc_balancer.resolvers.base import ResolverOptions
from grpc_balancer.resolvers.dns import DnsResolver, parse_dns_target
from grpc_balancer.target import parse_target


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("dns:///greeter.test:0", "out of range"),
        ("dns:///greeter.test:0", "out of range"),
        ("dns:///greeter.test:http", "not a number"),
        ("dns:///a.test:1,,b.test:2", "empty item"),
        ("dns:///bad_name!.test:80", "is not a host name or IP address"),
        ("dns:///-x.test:80", "is not a host name or IP address"),
        ("dns:///::1:80", "IPv6 addresses need brackets"),
        ("dns://ns.example.com/greeter.test:80", "must be an IP address"),
        ("dns://127.0.0.1:99999/greeter.test:80", "out of range"),
        ("dns://127.0.0.1:x/greeter.test:80", "not a number"),
        ("dns+srv:///_grpc._tcp.greeter.test:80", "carries no port"),
        ("dns+srv:///_grpc._tcp.a.test,_grpc._tcp.b.test", "one SRV name"),
        ("dns+srv:///bad name", "whitespace"),
    ],
)
def test_malformed_targets_fail_at_construction(raw: str, problem: str) -> None:
    with pytest.raises(InvalidTargetError) as info:
        grpc_balancer.aio.insecure_channel(raw)
    assert problem in str(info.value)
    assert "\n" not in str(info.value)


def test_valid_forms() -> None:
    spec = parse_dns_target(parse_target("dns://[::1]:5353/a.test:80,127.0.0.1:81,localhost:82"))
    assert spec.server == ("::1", 5353)
    assert spec.items == (("a.test", 80), ("127.0.0.1", 81), ("localhost", 82))
    assert spec.authority is None  # several names: no single name to verify
    assert parse_dns_target(parse_target("dns://10.0.0.2/a.test:80")).server == ("10.0.0.2", 53)
    assert parse_dns_target(parse_target("a.test:80")).authority == "a.test:80"
    srv = parse_dns_target(parse_target("dns+srv:///_grpc._tcp.greeter.test"))
    assert (srv.server, srv.srv_name, srv.authority) == (
        None,
        "_grpc._tcp.greeter.test",
        "greeter.test",
    )
    assert parse_dns_target(parse_target("dns:///127.0.0.1:80")).authority is None


def test_bad_query_timeout_option_is_a_config_error() -> None:
    with pytest.raises(BalancerConfigError, match="query_timeout_s"):
        DnsResolver(
            parse_target("dns:///a.test:80"),
            _NullListener(),
            ResolverOptions(extra={"query_timeout_s": -1}),
        )


class _NullListener:
    def on_endpoints(self, endpoints: object) -> None:
        pass

    def on_resolver_error(self, error: str) -> None:
        pass
