"""The ``grpc-balancer`` command: serve, call, demo (and more as features land).

Bad input (malformed target, unknown policy, bad JSON) prints one line on stderr and
exits with status 2; a run where some call failed exits with 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any, NoReturn

import grpc

from grpc_balancer import aio
from grpc_balancer.cli.observe import add_observe_args, run_observed, wants_observed_run
from grpc_balancer.cli.register import add_register_args, registration_hooks
from grpc_balancer.cli.resolve import add_resolve_parser
from grpc_balancer.cli.xds import add_xds_parser
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.demo.server import GreeterServer, serve_forever
from grpc_balancer.demo.servicer import Faults
from grpc_balancer.errors import BalancerConfigError
from grpc_balancer.server.load_reports import LoadReporter
from grpc_balancer.server.registration import RegistrationError
from grpc_balancer.target import parse_port

DEFAULT_TARGET = "static:///localhost:50051,localhost:50052"
DEFAULT_PORT = 50051
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result: int = asyncio.run(args.func(args))
        return result
    except (BalancerConfigError, UsageError) as exc:
        print(f"grpc-balancer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="grpc-balancer", description="Client-side load balancing for Python gRPC."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-level",
        type=_log_level,
        default=logging.WARNING,
        metavar="LEVEL",
        help="debug, info (one line per state change), warning (default) or error",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    serve = sub.add_parser("serve", help="run a greeter server")
    serve.add_argument("--port", type=_port_arg, default=None, help="default $SERVER_PORT or 50051")
    serve.add_argument("--host", default="::", help="address to bind (default: all, IPv4+IPv6)")
    serve.add_argument(
        "--grace", type=float, default=5.0, help="seconds for in-flight calls on stop"
    )
    _add_fault_args(serve)
    serve.add_argument(
        "--orca",
        action="store_true",
        help="send ORCA load reports (trailer and out-of-band) for weighted_round_robin",
    )
    add_register_args(serve)
    serve.set_defaults(func=cmd_serve)

    call = sub.add_parser("call", help="call greeter servers through a balanced channel")
    call.add_argument("--target", default=DEFAULT_TARGET, help=f"default {DEFAULT_TARGET}")
    call.add_argument(
        "--policy",
        default=None,
        help="round_robin (default unless --service-config), pick_first, ...",
    )
    call.add_argument("--service-config", default=None, help="gRPC service config JSON")
    call.add_argument("-n", "--count", type=_positive_int, default=4, help="number of calls")
    call.add_argument("--name", default="World")
    call.add_argument("--timeout", type=float, default=5.0, help="deadline per call, seconds")
    add_observe_args(call)
    call.set_defaults(func=cmd_call)

    demo = sub.add_parser("demo", help="start 3 servers, balance calls over them, stop them")
    demo.add_argument("--servers", type=_positive_int, default=3)
    demo.add_argument("-n", "--count", type=_positive_int, default=9)
    demo.add_argument("--policy", default="round_robin")
    add_observe_args(demo)
    demo.set_defaults(func=cmd_demo, timeout=5.0, name="World")

    add_resolve_parser(sub)
    add_xds_parser(sub)
    return parser


def _add_fault_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added latency per call")
    parser.add_argument("--delay-dist", choices=("fixed", "lognormal"), default="fixed")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="fraction of calls to fail")
    parser.add_argument("--fail-code", default="UNAVAILABLE", help="status code of failures")
    parser.add_argument("--max-concurrency", type=int, default=0, help="slots (0: unlimited)")


def faults_from_args(args: argparse.Namespace) -> Faults:
    if not 0.0 <= args.fail_rate <= 1.0:
        raise UsageError(f"--fail-rate must be between 0 and 1, got {args.fail_rate}")
    if args.delay_ms < 0:
        raise UsageError(f"--delay-ms must be >= 0, got {args.delay_ms}")
    try:
        code = grpc.StatusCode[args.fail_code.upper()]
    except KeyError:
        raise UsageError(f"--fail-code: unknown status code {args.fail_code!r}") from None
    return Faults(
        delay_ms=args.delay_ms,
        delay_dist=args.delay_dist,
        fail_rate=args.fail_rate,
        fail_code=code,
        max_concurrency=args.max_concurrency,
    )


def _port_arg(text: str) -> int:
    try:
        return parse_port(text, "--port")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _log_level(text: str) -> int:
    levels = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
    levels["error"] = logging.ERROR
    try:
        return levels[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"unknown log level {text!r} (use {', '.join(levels)})"
        ) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def server_port_from_env() -> int:
    raw = os.environ.get("SERVER_PORT")
    if raw is None or raw == "":
        return DEFAULT_PORT
    try:
        return parse_port(raw, "SERVER_PORT")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# -- serve ---------------------------------------------------------------------------------------
async def cmd_serve(args: argparse.Namespace) -> int:
    port = args.port if args.port is not None else server_port_from_env()
    faults = faults_from_args(args)
    reporter = LoadReporter(capacity=faults.max_concurrency) if args.orca else None
    server = GreeterServer(
        port, args.host, faults=faults, grace_s=args.grace, load_reporter=reporter
    )
    hooks = registration_hooks(args)  # --register: validated before the server starts
    print(f"🚀 Starting the load-balanced gRPC server on :{port}...", flush=True)
    try:
        await serve_forever(server, **hooks)
    except (OSError, RegistrationError) as exc:
        await server.stop(0)
        print(f"grpc-balancer: error: {exc}", file=sys.stderr)
        return 1
    print(f"Server on :{server.port} stopped.", flush=True)
    return 0


# -- call ------------------------------------------------------------------------------------------
async def cmd_call(args: argparse.Namespace) -> int:
    print("🚀 Running the gRPC client with load balancing...", flush=True)
    policy = args.policy or (None if args.service_config else "round_robin")
    if wants_observed_run(args):
        counts, failed = await run_observed(args.target, policy, args, args.service_config)
    else:
        counts, failed = await run_calls(
            args.target, policy, args.count, args.name, args.timeout, args.service_config
        )
    print_distribution(counts, failed)
    return 0 if failed == 0 else 1


async def run_calls(
    target: str,
    policy: str | None,
    count: int,
    name: str,
    timeout: float,
    service_config: str | None = None,
) -> tuple[Counter[str], int]:
    """Make ``count`` sequential SayHello calls, printing each reply; count per backend."""
    counts: Counter[str] = Counter()
    failed = 0
    async with aio.insecure_channel(
        target, policy=policy, service_config=service_config
    ) as channel:
        stub = greeter_pb2_grpc.GreeterStub(channel)
        # Let every backend connect first, so the replies show the rotation from the start.
        await channel.wait_for_settled(timeout=min(timeout, 2.0))
        for _ in range(count):
            call = stub.SayHello(greeter_pb2.HelloRequest(name=name), timeout=timeout)
            try:
                reply = await call
            except grpc.aio.AioRpcError as err:
                failed += 1
                print(
                    f"Call failed: {err.code().name}: {err.details()}", file=sys.stderr, flush=True
                )
                continue
            print(f"Response from server: {reply.message}", flush=True)
            counts[call.peer_address or "?"] += 1
    return counts, failed


def print_distribution(counts: Counter[str], failed: int) -> None:
    total = sum(counts.values()) + failed
    print()
    print(f"{'backend':<28} {'calls':>6} {'share':>7}")
    for backend, n in sorted(counts.items()):
        print(f"{backend:<28} {n:>6} {n / total:>7.1%}")
    if failed:
        print(f"{'(failed)':<28} {failed:>6} {failed / total:>7.1%}")


# -- demo --------------------------------------------------------------------------------------------
async def cmd_demo(args: argparse.Namespace) -> int:
    servers = [GreeterServer(0, "127.0.0.1", grace_s=1.0) for _ in range(args.servers)]
    try:
        for server in servers:
            await server.start()
            print(f"🚀 Starting the load-balanced gRPC server on :{server.port}...", flush=True)
        target = "static:///" + ",".join(f"localhost:{s.port}" for s in servers)
        print(f"Target: {target}  policy: {args.policy}", flush=True)
        print("🚀 Running the gRPC client with load balancing...", flush=True)
        if wants_observed_run(args):
            counts, failed = await run_observed(target, args.policy, args)
        else:
            counts, failed = await run_calls(target, args.policy, args.count, "World", 5.0)
        print_distribution(counts, failed)
        return 0 if failed == 0 else 1
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                await server.stop(0.5)


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"invalid JSON {text!r}: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
