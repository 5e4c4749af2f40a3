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
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import grpc

from grpc_balancer import __version__, aio
from grpc_balancer._config.service_config import load_service_config
from grpc_balancer.cli.args import number, whole
from grpc_balancer.cli.observe import (
    CommandFailed,
    Run,
    add_observe_args,
    run_observed,
    until_interrupted,
    wants_observed_run,
)
from grpc_balancer.cli.register import add_register_args, registration_hooks
from grpc_balancer.cli.resolve import add_resolve_parser
from grpc_balancer.cli.xds import add_xds_parser
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.demo.server import GreeterServer, serve_forever
from grpc_balancer.demo.servicer import Faults
from grpc_balancer.errors import BalancerConfigError
from grpc_balancer.server.load_reports import LoadReporter
from grpc_balancer.server.probes import LoadProbes
from grpc_balancer.server.registration import RegistrationError
from grpc_balancer.target import parse_port

DEFAULT_TARGET = "static:///localhost:50051,localhost:50052"
DEFAULT_PORT = 50051
MAX_SECONDS = 86400.0  # a day: durations beyond it are a typo (and overflow gRPC deadlines)
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else args.log_level)
    try:
        result: int = asyncio.run(args.func(args))
        return result
    except (BalancerConfigError, UsageError) as exc:
        print(f"grpc-balancer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandFailed as exc:
        print(f"grpc-balancer: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def configure_logging(level: int) -> None:
    """``-v`` / ``--log-level`` raise grpc_balancer's own loggers only: grpcio, asyncio and
    the rest stay at WARNING (their debug lines would drown ours)."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("grpc_balancer").setLevel(level)


def _add_logging_args(parser: argparse.ArgumentParser, default: Any) -> None:
    """On the top-level parser and again on each subcommand (``call -v`` works too); the
    subcommands' copies default to SUPPRESS so they never undo the top-level value."""
    verbose_default = False if default is None else default
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=verbose_default, help="debug logging"
    )
    parser.add_argument(
        "--log-level",
        type=_log_level,
        default=logging.WARNING if default is None else default,
        metavar="LEVEL",
        help="debug, info (one line per state change), warning (default) or error",
    )


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (no usage dump), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="grpc-balancer", description="Client-side load balancing for Python gRPC."
    )
    parser.add_argument("--version", action="version", version=f"grpc-balancer {__version__}")
    _add_logging_args(parser, None)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    serve = sub.add_parser("serve", help="run a greeter server")
    serve.add_argument(
        "--port", type=whole(1, 65535), default=None, help="default $SERVER_PORT or 50051"
    )
    serve.add_argument("--host", default="::", help="address to bind (default: all, IPv4+IPv6)")
    serve.add_argument(
        "--grace",
        type=number(0, MAX_SECONDS),
        default=5.0,
        help="seconds for in-flight calls on stop",
    )
    serve.add_argument(
        "--drain",
        type=number(0, MAX_SECONDS),
        default=1.0,
        metavar="S",
        help="on stop, after NOT_SERVING: wait until calls stop arriving, at most S s (default 1)",
    )
    _add_fault_args(serve)
    serve.add_argument(
        "--orca",
        action="store_true",
        help="send ORCA load reports (trailer and out-of-band) for weighted_round_robin",
    )
    serve.add_argument(
        "--probes",
        action="store_true",
        help="answer load probes (requests in flight, latency) for the prequal policy",
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
    call.add_argument(
        "--timeout",
        type=number(0, MAX_SECONDS, low_open=True),
        default=5.0,
        help="deadline per call, seconds (default 5)",
    )
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
    for subcommand in sub.choices.values():
        _add_logging_args(subcommand, argparse.SUPPRESS)
    return parser


def _add_fault_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--delay-ms", type=number(0, MAX_SECONDS * 1000), default=0.0, help="added latency per call"
    )
    parser.add_argument("--delay-dist", choices=("fixed", "lognormal"), default="fixed")
    parser.add_argument(
        "--fail-rate", type=number(0, 1), default=0.0, help="fraction of calls to fail (0..1)"
    )
    parser.add_argument("--fail-code", default="UNAVAILABLE", help="status code of failures")
    parser.add_argument(
        "--max-concurrency", type=whole(0, 1_000_000), default=0, help="slots (0: unlimited)"
    )


def faults_from_args(args: argparse.Namespace) -> Faults:
    try:
        code = grpc.StatusCode[args.fail_code.upper()]
    except KeyError:
        raise UsageError(f"--fail-code: unknown status code {args.fail_code!r}") from None
    if code is grpc.StatusCode.OK:
        raise UsageError(
            "--fail-code: must be an error status code (CANCELLED..UNAUTHENTICATED), not OK"
        )
    return Faults(
        delay_ms=args.delay_ms,
        delay_dist=args.delay_dist,
        fail_rate=args.fail_rate,
        fail_code=code,
        max_concurrency=args.max_concurrency,
    )


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
        port,
        args.host,
        faults=faults,
        grace_s=args.grace,
        drain_delay_s=args.drain,
        load_reporter=reporter,
        probes=LoadProbes() if args.probes else None,
    )
    hooks = registration_hooks(args)  # --register: validated before the server starts
    try:
        await server.start()
    except OSError as exc:  # port in use, address not assignable: one line, exit 1
        print(f"grpc-balancer: error: {exc}", file=sys.stderr)
        return 1
    print(f"🚀 Starting the load-balanced gRPC server on :{server.port}...", flush=True)
    try:
        await serve_forever(
            server,
            on_started=hooks.get("on_started"),
            on_stopping=hooks.get("on_stopping"),
            announce=lambda text: print(text, flush=True),
        )
    except (OSError, RegistrationError) as exc:
        await server.stop(0)
        print(f"grpc-balancer: error: {exc}", file=sys.stderr)
        return 1
    print(f"Server on :{server.port} stopped.", flush=True)
    return 0


# -- call ------------------------------------------------------------------------------------------
async def cmd_call(args: argparse.Namespace) -> int:
    policy = cli_policy(args.policy, args.service_config, args.target)
    config = cli_service_config(args.service_config)
    print("🚀 Running the gRPC client with load balancing...", flush=True)
    run = Run()
    if wants_observed_run(args):
        done = await until_interrupted(run_observed(args.target, policy, args, config, run))
    else:
        done = await until_interrupted(
            run_calls(args.target, policy, args.count, args.name, args.timeout, config, run)
        )
    run.interrupted = done.interrupted
    return print_distribution(run)


def cli_service_config(service_config: str | None) -> dict[str, Any]:
    """The user's service config plus health checking of every backend (the standard
    grpc.health.v1 service) unless it configures its own: a server stopping gracefully
    goes NOT_SERVING and gets no new calls, so none is cut off."""
    raw = dict(load_service_config(service_config).raw) if service_config else {}
    raw.setdefault("healthCheckConfig", {"serviceName": ""})
    return raw


def cli_policy(policy: str | None, service_config: str | None, target: str = "") -> str | None:
    """``--policy``, else the service config's own policy, else round_robin: a service
    config with only a methodConfig (a timeout, a retry policy) does not change it. An
    ``xds:`` target takes its policy from the control plane unless ``--policy`` says."""
    if policy is not None:
        if not policy.strip():
            raise UsageError("--policy: must be a policy name such as round_robin, got ''")
        return policy
    if service_config is not None:
        raw = load_service_config(service_config).raw  # bad JSON or field: exit 2
        if "loadBalancingConfig" in raw or "loadBalancingPolicy" in raw:
            return None
    if target.lower().startswith("xds:"):
        return None
    return "round_robin"


async def run_calls(
    target: str,
    policy: str | None,
    count: int,
    name: str,
    timeout: float,
    service_config: str | Mapping[str, Any] | None = None,
    run: Run | None = None,
) -> Run:
    """Make ``count`` sequential SayHello calls, printing each reply; count per backend
    (into ``run`` as they finish)."""
    run = Run() if run is None else run
    async with aio.insecure_channel(
        target, policy=policy, service_config=service_config
    ) as channel:
        stub = greeter_pb2_grpc.GreeterStub(channel)
        try:
            # Let every backend connect first, so the replies show the rotation from the start.
            await channel.wait_for_settled(timeout=min(timeout, 2.0))
            for _ in range(count):
                call = stub.SayHello(greeter_pb2.HelloRequest(name=name), timeout=timeout)
                try:
                    reply = await call
                except grpc.aio.AioRpcError as err:
                    run.failed += 1
                    print(
                        f"Call failed: {err.code().name}: {err.details()}",
                        file=sys.stderr,
                        flush=True,
                    )
                    continue
                print(f"Response from server: {reply.message}", flush=True)
                run.counts[call.peer_address or "?"] += 1
        finally:
            run.backends = channel.status().subchannels
    return run


def print_distribution(run: Run) -> int:
    """Calls per backend in target order, then each backend that could not be reached
    and why (a run can succeed with one of its backends down). Returns the exit status:
    130 if interrupted, 1 if a call failed, else 0."""
    counts, failed = run.totals()
    total = sum(counts.values()) + failed
    print()
    print(f"{'backend':<28} {'calls':>6} {'share':>7}")
    order = [sc.address for sc in run.backends]
    for backend in [*order, *(b for b in counts if b not in order)]:
        n = counts.get(backend, 0)
        print(f"{backend:<28} {n:>6} {n / max(total, 1):>7.1%}")
    if failed:
        print(f"{'(failed)':<28} {failed:>6} {failed / total:>7.1%}")
    for sc in run.backends:
        failing = sc.connectivity == "TRANSIENT_FAILURE" or bool(sc.last_error)
        if failing and not sc.usable and sc.connectivity != "READY":
            why = f": {sc.last_error}" if sc.last_error else ""
            print(f"unreachable: {sc.address} ({sc.connectivity}){why}")
    if run.interrupted:
        print(f"interrupted after {total} calls", flush=True)
        return 130
    return 0 if failed == 0 else 1


# -- demo --------------------------------------------------------------------------------------------
async def cmd_demo(args: argparse.Namespace) -> int:
    load_service_config(None, args.policy)  # an unknown policy: exit 2 before any server starts
    servers = [GreeterServer(0, "127.0.0.1", grace_s=1.0) for _ in range(args.servers)]
    try:
        for server in servers:
            await server.start()
            print(f"🚀 Starting the load-balanced gRPC server on :{server.port}...", flush=True)
        target = "static:///" + ",".join(f"localhost:{s.port}" for s in servers)
        print(f"Target: {target}  policy: {args.policy}", flush=True)
        print("🚀 Running the gRPC client with load balancing...", flush=True)
        config = cli_service_config(None)
        run = Run()
        if wants_observed_run(args):
            done = await until_interrupted(run_observed(target, args.policy, args, config, run))
        else:
            done = await until_interrupted(
                run_calls(target, args.policy, args.count, "World", 5.0, config, run)
            )
        run.interrupted = done.interrupted
        return print_distribution(run)
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
