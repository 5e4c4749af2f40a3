"""No secret in a repr (issue 13.8, first part): ResolverOptions hides credential values."""

from __future__ import annotations

from typing import Any

import pytest

from grpc_balancer.resolvers.base import ResolverOptions

SENTINEL = "s3ntinel-Pa55"


def test_resolver_options_repr_hides_credentials() -> None:
    options = ResolverOptions(
        extra={
            "password": SENTINEL,
            "key_file": SENTINEL,
            "auth_token": SENTINEL,
            "username": "alice",
            "query_timeout_s": 2.0,
        }
    )
    for text in (repr(options), str(options), f"{options}"):
        assert SENTINEL not in text
        assert "'username': 'alice'" in text and "'query_timeout_s': 2.0" in text


SENTINEL_TARGETS = [
    "etcd://127.0.0.1:2379/services/greeter?passwd=SENTINEL-6f1c",
    "etcd://127.0.0.1:2379/services/greeter?pwd=SENTINEL-6f1c&tls=1",
    "etcd://127.0.0.1:2379/services/greeter?auth_token=SENTINEL-6f1c",
    "dns://user:SENTINEL-6f1c@127.0.0.1:53/greeter.local:50051",
    "static://user:SENTINEL-6f1c@/127.0.0.1:50051",
    "etcd://user:SENTINEL-6f1c@127.0.0.1:2379/services/greeter",
]


@pytest.mark.parametrize("target", SENTINEL_TARGETS)
def test_a_secret_in_a_bad_target_is_in_no_error_message(target: str) -> None:
    import grpc_balancer
    from grpc_balancer import parse_target
    from grpc_balancer.target import redact_target

    assert "SENTINEL-6f1c" not in redact_target(target)
    for make in (grpc_balancer.insecure_channel, parse_target):
        try:
            made = make(target)
        except grpc_balancer.BalancerConfigError as err:
            assert "SENTINEL-6f1c" not in str(err), str(err)
        else:  # a target that parses keeps no secret in what it shows
            assert "SENTINEL-6f1c" not in str(made) and "SENTINEL-6f1c" not in repr(made)
            if hasattr(made, "close"):
                made.close()


async def test_a_secret_in_a_bad_target_is_in_no_aio_error_message() -> None:
    import grpc_balancer.aio

    for target in SENTINEL_TARGETS:
        try:
            channel = grpc_balancer.aio.insecure_channel(target)
        except ValueError as err:  # BalancerConfigError
            assert "SENTINEL-6f1c" not in str(err), str(err)
        else:
            assert "SENTINEL-6f1c" not in repr(channel)
            await channel.close()


async def test_an_etcd_password_is_in_no_log_line_status_or_repr(
    etcd_node: Any, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import grpc_balancer.aio
    from grpc_balancer.resolvers.base import ResolverOptions as Options

    caplog.set_level(logging.DEBUG, "grpc_balancer")
    options = Options(extra={"username": "root", "password": "SENTINEL-6f1c"})
    channel = grpc_balancer.aio.insecure_channel(
        etcd_node.target("services/greeter"), resolver_options=options
    )
    async with channel:
        await channel.wait_for_settled(5)  # etcd has no auth enabled: the login fails
        shown = [repr(channel), repr(options), str(channel.status().as_dict())]
    shown += [record.getMessage() for record in caplog.records]
    assert not [s for s in shown if "SENTINEL-6f1c" in s]
    assert any("root" in s or "auth" in s.lower() for s in shown), shown  # the login was tried
