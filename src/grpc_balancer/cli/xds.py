"""``grpc-balancer xds serve | bootstrap | status``: the xDS control plane's commands.

``serve`` runs the ADS server on a config file until SIGTERM or SIGINT (a graceful
stop: every stream ends, clients keep their config); SIGHUP reloads the file. A bad
config is one line naming the field, exit 2; a busy port one line, exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

from grpc_balancer.target import parse_port

DEFAULT_XDS_PORT = 18000


def add_xds_parser(sub: Any) -> None:
    """Hook for cli/main.py: ``sub`` is its subparsers object."""
    xds = sub.add_parser("xds", help="an xDS control plane (ADS) fed by grpc_balancer's discovery")
    cmds = xds.add_subparsers(dest="xds_command", required=True, metavar="XDS_COMMAND")

    serve = cmds.add_parser("serve", help="serve the config file's services over ADS")
    serve.add_argument("--config", required=True, metavar="FILE", help="JSON (or YAML) file")
    serve.add_argument(
        "--port", type=_port, default=DEFAULT_XDS_PORT, help="default 18000 (0: any free port)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument(
        "--test-hooks",
        action="store_true",
        help="enable the admin methods that break resources or replace the config (tests)",
    )
    serve.set_defaults(func=cmd_xds_serve)

    boot = cmds.add_parser("bootstrap", help="print a gRPC xDS bootstrap JSON")
    boot.add_argument("--server", required=True, metavar="HOST:PORT", help="the ADS server")
    boot.add_argument("--node-id", default=None, help="node id (default: the host name)")
    boot.add_argument("--cluster", default="", help="node cluster")
    boot.add_argument(
        "--envoy",
        action="store_true",
        help="an Envoy bootstrap instead (everything from ADS; admin on 127.0.0.1, any port)",
    )
    boot.set_defaults(func=cmd_xds_bootstrap)

    status = cmds.add_parser("status", help="connected nodes, subscriptions, ACKs and NACKs")
    status.add_argument("--server", required=True, metavar="HOST:PORT", help="the ADS server")
    status.add_argument("--json", action="store_true", help="the raw status JSON")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    status.set_defaults(func=cmd_xds_status)


def _port(text: str) -> int:
    if text.strip() == "0":
        return 0  # an ephemeral port, printed on start
    try:
        return parse_port(text, "--port")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def cmd_xds_serve(args: argparse.Namespace) -> int:
    from grpc_balancer.errors import BalancerConfigError
    from grpc_balancer.xds.config import load_config_file

    config = load_config_file(args.config)  # bad config: one line, exit 2 (cli.main)
    try:
        from grpc_balancer.xds.server import XdsServer
    except ImportError as exc:
        print(f"grpc-balancer: error: the xds extra is missing ({exc}); "
              "pip install 'grpc-balancer[xds]'", file=sys.stderr)  # fmt: skip
        return 1
    server = XdsServer(config, host=args.host, port=args.port, test_hooks=args.test_hooks)
    try:
        await server.start()
    except OSError as exc:
        await server.stop(0)
        print(f"grpc-balancer: error: {exc}", file=sys.stderr)
        return 1
    print(f"xDS control plane on {server.address} ({len(config.services)} service(s))", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[None]] = set()

    def reload() -> None:
        try:
            new = load_config_file(args.config)
        except BalancerConfigError as exc:
            print(f"grpc-balancer: reload failed, keeping the old config: {exc}", file=sys.stderr)
            return
        task = loop.create_task(server.update_config(new))
        reloads.add(task)
        task.add_done_callback(reloads.discard)
        print(f"reloaded {args.config}", flush=True)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await server.stop(1.0)
    print("xDS control plane stopped.", flush=True)
    return 0


async def cmd_xds_bootstrap(args: argparse.Namespace) -> int:
    from grpc_balancer.xds.bootstrap import bootstrap_json

    if args.envoy:
        import socket

        from grpc_balancer.xds.envoy import envoy_bootstrap

        node_id = args.node_id or f"envoy-{socket.gethostname()}"
        try:
            boot = envoy_bootstrap(args.server, node_id, cluster=args.cluster or "grpc-balancer")
        except ValueError as exc:
            print(f"grpc-balancer xds bootstrap: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(boot, indent=2))
        return 0
    print(bootstrap_json(args.server, args.node_id, args.cluster))
    return 0


async def cmd_xds_status(args: argparse.Namespace) -> int:
    import grpc

    from grpc_balancer.xds.admin import fetch_status

    try:
        status = await asyncio.to_thread(fetch_status, args.server, args.timeout)
    except grpc.RpcError as err:
        code = err.code().name if hasattr(err, "code") else "?"
        print(f"grpc-balancer: error: no status from {args.server}: {code}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(format_status(status))
    return 0


def format_status(status: dict[str, Any]) -> str:
    lines = [f"control plane {status['address']} (generation {status['generation']})"]
    for name, svc in sorted(status["services"].items()):
        eps = svc["endpoints"]
        shown = "not resolved yet" if eps is None else ", ".join(e["address"] for e in eps) or "-"
        error = f"  resolver error: {svc['resolver_error']}" if svc["resolver_error"] else ""
        lines.append(f"service {name} ← {svc['target']}: {shown}{error}")
    if not status["streams"]:
        lines.append("no connected nodes")
    for s in status["streams"]:
        lines.append(
            f"node {s['node']!r} [{s['client'] or s['user_agent']}] {s['peer']} "
            f"listener={s['listener']}"
        )
        for warning in s["warnings"]:
            lines.append(f"  warning: {warning}")
        for kind, t in sorted(s["types"].items()):
            names = ("*" if t["wildcard"] else "") + ",".join(t["subscribed"])
            acked = t["acked_version"] or "-"
            line = f"  {kind}: {names or '(none)'} sent={t['sent_version'] or '-'} acked={acked}"
            if t["nack"]:
                line += f"  NACK {t['nack']['version']}: {t['nack']['error']}"
            lines.append(line)
    for nack in status["recent_nacks"][-5:]:
        lines.append(
            f"recent NACK node={nack['node']!r} {nack['type']} {nack['version']}: {nack['error']}"
        )
    return "\n".join(lines)
