"""The observability side of ``grpc-balancer call`` / ``demo``: concurrent or
rate-limited load (``--concurrency``, ``--rate``), the live view (``--live``), a
status dump (``--status``) and a metrics endpoint (``--metrics-port``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from grpc_balancer import aio
from grpc_balancer._aio.channel import BalancedChannel
from grpc_balancer._core.status import SubchannelStatus, format_status
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc


@dataclass
class Run:
    """What a ``call``/``demo`` run did so far: calls per backend, failed calls, and each
    backend as the channel last saw it (in target order). Filled in as the calls go, so
    an interrupted run (Ctrl-C) still reports what was counted."""

    counts: Counter[str] = field(default_factory=Counter)
    failed: int = 0
    backends: tuple[SubchannelStatus, ...] = ()
    #: the observed run's per-backend statistics (counts and failures come from there)
    stats: CallStats | None = None
    interrupted: bool = False

    def totals(self) -> tuple[Counter[str], int]:
        if self.stats is None:
            return self.counts, self.failed
        counts = Counter({b: s.calls for b, s in self.stats.backends.items() if s.calls})
        return counts, self.stats.failed


async def until_interrupted(work: Awaitable[Run]) -> Run:
    """Run ``work``; a Ctrl-C (SIGINT) cancels it and marks the run interrupted, instead
    of ending the program, so the caller can still print what was counted."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(work)
    interrupted = False

    def on_sigint() -> None:
        nonlocal interrupted
        interrupted = True
        task.cancel()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        return await task
    except asyncio.CancelledError:
        if not interrupted:
            raise
        return Run(interrupted=True)
    finally:
        loop.remove_signal_handler(signal.SIGINT)


class CommandFailed(Exception):
    """The command cannot do its work (a port in use, ...): one line, exit status 1."""


if TYPE_CHECKING:
    from grpc_balancer.cli.live import CallStats


def add_observe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--concurrency", type=_positive_int, default=1, help="calls in flight at once (default 1)"
    )
    parser.add_argument(
        "--rate",
        type=_non_negative_float,
        default=0.0,
        help="calls per second (0: as fast as possible)",
    )
    parser.add_argument(
        "--live", action="store_true", help="live per-backend view (plain lines if not a terminal)"
    )
    parser.add_argument(
        "--status",
        action="store_true",
        help="print the channel status after the calls (and on SIGUSR1 while running)",
    )
    parser.add_argument(
        "--status-every",
        type=_non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="also print it every SECONDS while the calls run",
    )
    parser.add_argument(
        "--metrics-port",
        type=_port_or_zero,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on this port while running (0: any free port)",
    )


def wants_observed_run(args: argparse.Namespace) -> bool:
    """Whether the plain sequential loop (one printed reply per call) will not do."""
    return bool(
        args.live
        or args.status
        or args.status_every
        or args.metrics_port is not None
        or args.concurrency > 1
        or args.rate
    )


async def run_observed(
    target: str,
    policy: str | None,
    args: argparse.Namespace,
    service_config: str | Mapping[str, Any] | None = None,
    run: Run | None = None,
) -> Run:
    """Run ``args.count`` SayHello calls with the chosen concurrency and rate; count per backend."""
    run = Run() if run is None else run
    from grpc_balancer.cli.live import CallStats, LiveView  # rich is slow to import: only here

    server = None
    if args.metrics_port is not None:
        from grpc_balancer import metrics

        try:
            server = metrics.serve(args.metrics_port, "127.0.0.1")
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise CommandFailed(
                f"--metrics-port: cannot listen on 127.0.0.1:{args.metrics_port}: {reason}"
            ) from None
        print(f"Metrics on http://127.0.0.1:{server.server_port}/metrics", flush=True)
    try:
        async with aio.insecure_channel(
            target, policy=policy, service_config=service_config
        ) as channel:
            try:
                await channel.wait_for_settled(timeout=min(args.timeout, 2.0))
                stats = run.stats = CallStats()
                async with _status_reports(channel, args):
                    if args.live:
                        async with LiveView(channel, stats, args.count):
                            await run_load(channel, stats, args)
                    else:
                        await run_load(channel, stats, args, echo=True)
                if args.status:
                    print(format_status(channel.status()), flush=True)
            finally:
                run.backends = channel.status().subchannels
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    return run


@contextlib.asynccontextmanager
async def _status_reports(
    channel: BalancedChannel, args: argparse.Namespace
) -> AsyncIterator[None]:
    """While the calls run: the status on SIGUSR1 (with ``--status``) and every
    ``--status-every`` seconds, on stderr so it never mixes with replies or the view."""

    def dump() -> None:
        print(format_status(channel.status()), file=sys.stderr, flush=True)

    loop = asyncio.get_running_loop()
    on_signal = args.status and hasattr(signal, "SIGUSR1")
    if on_signal:
        loop.add_signal_handler(signal.SIGUSR1, dump)
    ticker = None
    if args.status_every:

        async def tick() -> None:
            while True:
                await asyncio.sleep(args.status_every)
                dump()

        ticker = loop.create_task(tick())
    try:
        yield
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        if on_signal:
            loop.remove_signal_handler(signal.SIGUSR1)


async def run_load(
    channel: BalancedChannel, stats: CallStats, args: argparse.Namespace, echo: bool = False
) -> None:
    """``args.count`` calls from ``args.concurrency`` workers, paced to ``args.rate``/s."""
    stub = greeter_pb2_grpc.GreeterStub(channel)
    request = greeter_pb2.HelloRequest(name=args.name)
    remaining = args.count
    interval = 1.0 / args.rate if args.rate else 0.0
    next_at = time.monotonic()

    async def worker() -> None:
        nonlocal remaining, next_at
        while remaining > 0:
            remaining -= 1
            if interval:
                now = time.monotonic()
                slot, next_at = max(next_at, now), max(next_at, now) + interval
                if slot > now:
                    await asyncio.sleep(slot - now)
            call = stub.SayHello(request, timeout=args.timeout)
            started = time.monotonic()
            try:
                reply = await call
            except grpc.aio.AioRpcError as err:
                stats.record(call.peer_address, time.monotonic() - started, ok=False)
                if echo:
                    print(f"Call failed: {err.code().name}: {err.details()}", file=sys.stderr)
                continue
            stats.record(call.peer_address, time.monotonic() - started, ok=True)
            if echo:
                print(f"Response from server: {reply.message}", flush=True)

    await asyncio.gather(*(worker() for _ in range(min(args.concurrency, args.count))))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _port_or_zero(text: str) -> int:
    value = _non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port 0..65535, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value
