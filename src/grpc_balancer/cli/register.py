"""``grpc-balancer serve --register etcd://... [--ttl S] [--advertise H:P] [--metadata JSON]``.

Registers the server after it is serving; on SIGTERM/SIGINT health goes NOT_SERVING
first, then the key is deleted, then the server stops. TLS files and credentials come
from etcdctl's environment variables (``ETCDCTL_CACERT``, ``ETCDCTL_CERT``,
``ETCDCTL_KEY``, ``ETCDCTL_USER`` as ``user[:password]``, ``ETCDCTL_PASSWORD``), so
they never appear on a command line; TLS paths may also be in the target's query.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from grpc_balancer._etcd.settings import settings_from_target
from grpc_balancer.cli.args import whole
from grpc_balancer.demo.server import GreeterServer
from grpc_balancer.errors import BalancerConfigError
from grpc_balancer.server.registration import Registration, validate_address, validate_metadata

_WILDCARDS = ("", "::", "0.0.0.0", "[::]")
#: etcd's own limit on a lease TTL (MaxLeaseTTL).
MAX_TTL_S = 9_000_000_000

Hooks = dict[str, Callable[[GreeterServer], Awaitable[None]]]


def add_register_args(parser: argparse.ArgumentParser) -> None:
    """Hook for cli.py's ``serve`` parser."""
    group = parser.add_argument_group("etcd registration")
    group.add_argument(
        "--register", metavar="TARGET", help="e.g. etcd://127.0.0.1:2379/services/greeter"
    )
    group.add_argument(
        "--ttl", type=whole(1, MAX_TTL_S), default=10, help="lease seconds (default 10)"
    )
    group.add_argument("--advertise", metavar="HOST:PORT", help="address clients should dial")
    group.add_argument("--metadata", metavar="JSON", help='e.g. {"zone": "eu-1", "weight": 2}')


def registration_hooks(args: argparse.Namespace) -> Hooks:
    """``serve_forever`` hooks for ``--register`` (empty without it). Validates every
    option now, before the server starts, so bad input exits 2 with one line."""
    if args.register is None:
        for flag in ("advertise", "metadata"):
            if getattr(args, flag) is not None:
                raise BalancerConfigError(f"--{flag} needs --register")
        return {}
    options = etcd_options_from_env(os.environ)
    settings_from_target(args.register, options)
    if not 1 <= args.ttl <= MAX_TTL_S:
        raise BalancerConfigError(f"--ttl must be 1..{MAX_TTL_S} seconds, got {str(args.ttl)[:20]}")
    metadata = _parse_metadata(args.metadata)
    if args.advertise is not None:
        validate_address(args.advertise)
    state: dict[str, Registration] = {}

    async def on_started(server: GreeterServer) -> None:
        address = args.advertise or _default_advertise(server.host, server.port)
        reg = Registration(args.register, address, ttl=args.ttl, metadata=metadata, options=options)
        await reg.start()
        state["reg"] = reg
        print(f"Registered {address} in etcd as {reg.key} (lease ttl {args.ttl}s)", flush=True)

    async def on_stopping(server: GreeterServer) -> None:
        await server.set_serving(False)  # balancing clients stop picking us first
        reg = state.pop("reg", None)
        if reg is not None:
            await reg.deregister()
            print(f"Deregistered {reg.key}", flush=True)

    return {"on_started": on_started, "on_stopping": on_stopping}


def etcd_options_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """TLS files and credentials from etcdctl's environment variables."""
    options: dict[str, Any] = {}
    for var, key in (
        ("ETCDCTL_CACERT", "ca_file"),
        ("ETCDCTL_CERT", "cert_file"),
        ("ETCDCTL_KEY", "key_file"),
    ):
        if env.get(var):
            options[key] = env[var]
    user = env.get("ETCDCTL_USER")
    if user:
        name, sep, password = user.partition(":")
        options["username"] = name
        options["password"] = password if sep else env.get("ETCDCTL_PASSWORD")
        if options["password"] is None:
            raise BalancerConfigError("ETCDCTL_USER has no password (use user:password)")
    return options


def _parse_metadata(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BalancerConfigError(f"--metadata is not valid JSON: {exc}") from None
    except RecursionError:
        raise BalancerConfigError("--metadata is nested too deeply") from None
    if not isinstance(value, dict):
        raise BalancerConfigError(f"--metadata must be a JSON object, got {type(value).__name__}")
    return validate_metadata(value)


def _default_advertise(host: str, port: int) -> str:
    """The bound host, or for a wildcard bind this machine's first non-loopback IPv4."""
    if host not in _WILDCARDS:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        infos = []
    for info in infos:
        ip = str(info[4][0])
        if not ip.startswith("127."):
            return f"{ip}:{port}"
    return f"127.0.0.1:{port}"
