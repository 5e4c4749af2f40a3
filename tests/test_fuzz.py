"""Property tests (Hypothesis, seeded and bounded): hostile input to the parsers raises
only BalancerConfigError subclasses (or argparse's exit 2), never ValueError,
RecursionError, OverflowError or anything else (issue 13.5)."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from grpc_balancer._config.service_config import load_service_config
from grpc_balancer._etcd.codec import BadValueError, decode_endpoint
from grpc_balancer._etcd.settings import settings_from_target
from grpc_balancer.errors import BalancerConfigError
from grpc_balancer.resolvers.base import get_resolver_factory
from grpc_balancer.resolvers.dns import parse_dns_target
from grpc_balancer.resolvers.passthrough import passthrough_address
from grpc_balancer.resolvers.static import parse_static_endpoints
from grpc_balancer.target import parse_target

FUZZ = settings(
    max_examples=150,
    derandomize=True,  # seeded: the same examples every run
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)

_TARGET_CHARS = st.sampled_from([*":/[],.%@?&=+-_ab1209٣²５\n\x00 ", "::", "//"])
targets = st.one_of(
    st.text(max_size=40),
    st.lists(_TARGET_CHARS, max_size=30).map("".join),
    st.builds(
        lambda scheme, rest: f"{scheme}{rest}",
        st.sampled_from(
            [
                "static:///",
                "dns:///",
                "dns://",
                "dns:",
                "dns+srv:///",
                "etcd://",
                "ipv4:",
                "ipv6:",
                "unix:",
                "unix:///",
                "unix-abstract:",
                "passthrough:///",
                "",
            ]
        ),
        st.lists(_TARGET_CHARS, max_size=30).map("".join),
    ),
)


@FUZZ
@given(targets)
@example("static:///127.0.0.1:٣٣")
@example("dns:///h:" + "9" * 400)
@example("etcd://h:2379/" + "[" * 1000)
@example("dns://user:secret@127.0.0.1/name:1")
def test_targets_raise_only_config_errors(raw: str) -> None:
    try:
        target = parse_target(raw)
    except BalancerConfigError:
        return
    parsers: dict[str, Any] = {
        "static": parse_static_endpoints,
        "ipv4": parse_static_endpoints,
        "ipv6": parse_static_endpoints,
        "dns": parse_dns_target,
        "dns+srv": parse_dns_target,
        "etcd": lambda t: settings_from_target(t.raw, {}),
        "unix": passthrough_address,
        "unix-abstract": passthrough_address,
        "passthrough": passthrough_address,
    }
    with contextlib.suppress(BalancerConfigError):
        get_resolver_factory(target)
        parser = parsers.get(target.scheme)
        if parser is not None:
            parser(target)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
_FIELDS = {
    "methodConfig": st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "name": st.lists(
                    st.dictionaries(st.sampled_from(["service", "method"]), json_values)
                ),
                "timeout": st.one_of(st.text(max_size=12), json_values),
                "waitForReady": json_values,
                "retryPolicy": st.dictionaries(
                    st.sampled_from(
                        [
                            "maxAttempts",
                            "initialBackoff",
                            "maxBackoff",
                            "backoffMultiplier",
                            "retryableStatusCodes",
                        ]
                    ),
                    json_values,
                ),
                "hedgingPolicy": st.dictionaries(
                    st.sampled_from(["maxAttempts", "hedgingDelay", "nonFatalStatusCodes"]),
                    json_values,
                ),
            },
        ),
        max_size=2,
    ),
    "retryThrottling": st.dictionaries(st.sampled_from(["maxTokens", "tokenRatio"]), json_values),
    "loadBalancingConfig": st.lists(
        st.dictionaries(
            st.sampled_from(["round_robin", "pick_first", "least_request", "nope"]),
            json_values,
            max_size=2,
        ),
        max_size=3,
    ),
    "loadBalancingPolicy": json_values,
    "healthCheckConfig": json_values,
    "outlierDetection": json_values,
    "circuitBreakers": json_values,
}
service_configs = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional=_FIELDS),  # type: ignore[arg-type]
)


@FUZZ
@given(service_configs)
@example({"retryThrottling": {"maxTokens": 10, "tokenRatio": 1e306}})
@example({"methodConfig": [{"name": [{}], "timeout": "9" * 400 + "s"}]})
def test_service_configs_raise_only_config_errors(raw: Any) -> None:
    with contextlib.suppress(BalancerConfigError):
        load_service_config(raw)
    with contextlib.suppress(BalancerConfigError):  # and as JSON text
        load_service_config(json.dumps(raw, allow_nan=True))


registry_values = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(
        lambda addr, meta: json.dumps({"Op": 0, "Addr": addr, "Metadata": meta}).encode(),
        st.one_of(targets, st.text(max_size=20)),
        json_values,
    ),
)


@FUZZ
@given(registry_values)
@example(b"[" * 100_000)
@example(json.dumps({"Op": 0, "Addr": "127.0.0.1:\u00b2"}).encode())
@example(json.dumps({"Op": 0, "Addr": "h:1", "Metadata": {"weight": 10**400}}).encode())
def test_registry_values_raise_only_bad_value_errors(value: bytes) -> None:
    with contextlib.suppress(BadValueError):
        decode_endpoint(value)


_FLAGS = [
    "serve", "call", "demo", "resolve", "--port", "--host", "--grace", "--drain", "--delay-ms",
    "--fail-rate", "--fail-code", "--max-concurrency", "--register", "--ttl", "--advertise",
    "--metadata", "--target", "--policy", "--service-config", "-n", "--timeout",
    "--concurrency", "--rate", "--status-every", "--metrics-port", "--servers", "-v",
    "--log-level", "--live", "--status", "--watch", "--json",
]  # fmt: skip
_VALUES = st.one_of(
    st.sampled_from(
        [
            "0",
            "-5",
            "1",
            "10" + "0" * 40,
            "inf",
            "nan",
            "1e20",
            "٣٣",
            "h:²",
            "h:1",
            "OK",
            "UNAVAILABLE",
            "{",
            "[" * 5000,
            '{"a": 1}',
            "etcd://127.0.0.1:1/x",
            "static:///h:1",
            "",
        ]
    ),
    st.text(max_size=10),
)


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(_FLAGS), _VALUES), max_size=8))
@example(["serve", "--register", "etcd://127.0.0.1:1/x", "--ttl", "1" + "0" * 40])
@example(["serve", "--register", "etcd://127.0.0.1:1/x", "--advertise", "h:²"])
@example(["serve", "--register", "etcd://127.0.0.1:1/x", "--metadata", "[" * 5000])
def test_cli_arguments_raise_only_usage_errors(argv: list[str]) -> None:
    from grpc_balancer.cli.main import (
        UsageError,
        build_parser,
        cli_policy,
        cli_service_config,
        faults_from_args,
    )
    from grpc_balancer.cli.register import registration_hooks

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:
            assert exc.code in (0, 2)
            return
    assert isinstance(args, argparse.Namespace)
    with contextlib.suppress(BalancerConfigError, UsageError):
        if args.command == "serve":
            faults_from_args(args)
            registration_hooks(args)
        elif args.command == "call":
            cli_policy(args.policy, args.service_config)
            cli_service_config(args.service_config)
            parse_target(args.target)


def test_the_property_tests_are_seeded() -> None:
    assert FUZZ.derandomize and FUZZ.database is None
    pytest.importorskip("hypothesis")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ttl", "1" + "0" * 40], "--ttl: must be a whole number in 1..9000000000"),
        (["--ttl", "٣٣"], "--ttl: '٣٣' is not a whole number"),
        (["--metadata", "[" * 5000], "--metadata is nested too deeply"),
        (["--advertise", "h:²"], "is not a number"),
    ],
)
def test_registration_flags_found_by_the_fuzzer(argv: list[str], message: str) -> None:
    import subprocess
    import sys

    from grpc_balancer.testing import cli_env, free_port

    result = subprocess.run(
        [sys.executable, "-m", "grpc_balancer", "serve", "--port", str(free_port()),
         "--register", "etcd://127.0.0.1:1/x", *argv],
        env=cli_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
