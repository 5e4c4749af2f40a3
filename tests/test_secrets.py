"""No secret in a repr (issue 13.8, first part): ResolverOptions hides credential values."""

from __future__ import annotations

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
