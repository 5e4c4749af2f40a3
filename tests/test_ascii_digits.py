"""Only ASCII digits are digits: '²' and '٣' (and fullwidth ones) are digits to str.isdigit() and to
the regex \\d, and int() reads some of them, but a port or a duration written with them
is an error (issue 13.4)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from grpc_balancer._config.service_config import load_service_config
from grpc_balancer.errors import BalancerConfigError
from grpc_balancer.resolvers.static import parse_static_endpoints
from grpc_balancer.target import parse_port, parse_target
from grpc_balancer.testing import cli_env

NOT_ASCII = ["٣٣", "²", "５０", "3٣"]


@pytest.mark.parametrize("port", NOT_ASCII)
def test_ports_take_ascii_digits_only(port: str) -> None:
    with pytest.raises(BalancerConfigError, match="is not a number"):
        parse_port(port, "port")
    with pytest.raises(BalancerConfigError, match="is not a number"):
        parse_static_endpoints(parse_target(f"static:///127.0.0.1:{port}"))


@pytest.mark.parametrize("digits", NOT_ASCII)
def test_durations_take_ascii_digits_only(digits: str) -> None:
    config = {"methodConfig": [{"name": [{}], "timeout": f"{digits}s"}]}
    with pytest.raises(BalancerConfigError, match="must be a duration string"):
        load_service_config(config)


@pytest.mark.parametrize(
    ("args", "env"),
    [(["serve", "--port", "٣٣"], {}), (["serve"], {"SERVER_PORT": "٣٣"})],
)
def test_serve_rejects_a_non_ascii_port(args: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "grpc_balancer", *args],
        env=cli_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "not a" in result.stderr and "Traceback" not in result.stderr
