"""``etcd://`` target and option parsing, and the Go value format (no etcd needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import grpc_balancer
from grpc_balancer._etcd.codec import BadValueError, decode_endpoint, encode_endpoint
from grpc_balancer._etcd.settings import parse_etcd_target, settings_from_target
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.errors import BalancerConfigError, InvalidTargetError
from grpc_balancer.target import parse_target


def settings(raw: str, **extra: object):  # type: ignore[no-untyped-def]
    return parse_etcd_target(parse_target(raw), extra)


def test_endpoints_and_prefix() -> None:
    s = settings("etcd://h1:2379,[::1]:2380,h1:2379/services/greeter")
    assert s.endpoints == ("h1:2379", "[::1]:2380")
    assert s.prefix == "services/greeter"
    assert s.key_for("10.0.0.1:80") == "services/greeter/10.0.0.1:80"
    assert not s.tls and s.username is None


def test_no_hosts_means_local_etcd_and_a_double_slash_keeps_a_leading_slash() -> None:
    assert settings("etcd:///svc").endpoints == ("127.0.0.1:2379",)
    assert settings("etcd://h:1//services/x").prefix == "/services/x"
    assert settings("etcd://h:1/svc/").prefix == "svc"


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        ("etcd://h1:99999/svc", "out of range"),
        ("etcd://h1/svc", "missing port"),
        ("etcd://h1:2379,,h2:2379/svc", "empty etcd endpoint"),
        ("etcd://h1:2379/", "no endpoint after the scheme"),
        ("etcd://h1:2379//", "no key prefix"),
        ("etcd://h1:2379/svc?colour=red", "unknown query parameter 'colour'"),
        ("etcd://h1:2379/svc?ca", "malformed query"),
        ("etcd://::1:2379/svc", "IPv6 addresses need brackets"),
    ],
)
def test_bad_targets(target: str, needle: str) -> None:
    with pytest.raises(InvalidTargetError, match=needle):
        settings(target)
    with pytest.raises(InvalidTargetError):  # and at channel creation
        grpc_balancer.aio.insecure_channel(target)


@pytest.mark.parametrize(
    "target", ["etcd://root:hunter2@h1:2379/svc", "etcd://h1:2379/svc?password=hunter2"]
)
def test_credentials_in_the_target_are_refused_without_echoing_them(target: str) -> None:
    with pytest.raises(InvalidTargetError) as info:
        settings(target)
    assert "hunter2" not in str(info.value)
    assert "ResolverOptions.extra" in str(info.value)


def test_registration_side_wants_an_etcd_target() -> None:
    with pytest.raises(InvalidTargetError, match="expected an etcd:// target"):
        settings_from_target("dns:///x:1")


def test_tls_files_from_the_query_or_the_options(tmp_path: Path) -> None:
    for name in ("ca.pem", "c.pem", "k.pem"):
        (tmp_path / name).write_bytes(name.encode())
    s = settings(f"etcd://h:1/svc?ca={tmp_path}/ca.pem")
    assert s.tls and s.ca_pem == b"ca.pem" and s.cert_pem is None
    s = settings(
        "etcd://h:1/svc?tls=true",
        cert_file=str(tmp_path / "c.pem"),
        key_file=str(tmp_path / "k.pem"),
    )
    assert s.tls and s.cert_pem == b"c.pem" and s.key_pem == b"k.pem" and s.ca_pem is None
    assert settings("etcd://h:1/svc?tls=1").tls


def test_bad_options_name_the_option(tmp_path: Path) -> None:
    with pytest.raises(BalancerConfigError, match="cannot read ca_file"):
        settings(f"etcd://h:1/svc?ca={tmp_path}/missing.pem")
    (tmp_path / "c.pem").write_text("x")
    with pytest.raises(BalancerConfigError, match="cert_file and key_file"):
        settings("etcd://h:1/svc", cert_file=str(tmp_path / "c.pem"))
    with pytest.raises(BalancerConfigError, match="username and password"):
        settings("etcd://h:1/svc", username="root")
    with pytest.raises(BalancerConfigError, match="tls must be true or false"):
        settings("etcd://h:1/svc?tls=maybe")
    with pytest.raises(BalancerConfigError, match="request_timeout_s"):
        settings("etcd://h:1/svc", request_timeout_s=0)


def test_password_is_not_in_the_settings_repr() -> None:
    s = settings("etcd://h:1/svc", username="root", password="hunter2")
    assert s.password == "hunter2" and "hunter2" not in repr(s)


def test_go_value_format_round_trip() -> None:
    raw = encode_endpoint("10.0.0.1:50051", {"zone": "eu-1", "weight": 4})
    assert json.loads(raw) == {
        "Op": 0,
        "Addr": "10.0.0.1:50051",
        "Metadata": {"zone": "eu-1", "weight": 4},
    }
    assert encode_endpoint("10.0.0.1:1") == b'{"Op":0,"Addr":"10.0.0.1:1","Metadata":null}'
    assert decode_endpoint(raw) == Endpoint("10.0.0.1:50051", weight=4, metadata={"zone": "eu-1"})
    assert decode_endpoint(b'{"Addr":"[::1]:80"}') == Endpoint("[::1]:80")
    assert decode_endpoint(b'{"Op":1,"Addr":"h:1"}') is None  # Go's endpoints.Delete
    assert decode_endpoint(b'{"Addr":"h:1","Metadata":"v2"}') == Endpoint(
        "h:1", metadata={"metadata": "v2"}
    )


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (b"{nope", "not JSON"),
        (b"[1]", "expected a JSON object"),
        (b'{"Op":0}', "missing Addr"),
        (b'{"Addr":"h:0"}', "out of range"),
        (b'{"Addr":"h"}', "missing port"),
        (b'{"Op":7,"Addr":"h:1"}', "unknown Op"),
        (b'{"Addr":"h:1","Metadata":{"weight":-1}}', "weight"),
        (b'{"Addr":"h:1","Metadata":{"zone":3}}', "zone"),
        (b"\xff\xfe", "not JSON"),
    ],
)
def test_bad_values(value: bytes, needle: str) -> None:
    with pytest.raises(BadValueError, match=needle):
        decode_endpoint(value)
