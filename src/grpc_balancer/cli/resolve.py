"""``grpc-balancer resolve TARGET [--watch] [--timeout S] [--json]``: a debugging aid.

Runs the target's resolver on its own (any registered scheme: static, dns, dns+srv,
etcd...) through the generic :class:`~grpc_balancer.resolvers.base.Resolver` protocol
and prints what a channel would be told: each endpoint list (address, weight,
priority, metadata) and each resolver error. With ``--watch`` it keeps printing
changes until ``--timeout`` runs out or Ctrl-C (both exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from grpc_balancer.cli.register import etcd_options_from_env
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.resolvers.base import ResolverOptions, get_resolver_factory
from grpc_balancer.target import parse_target

#: Without --watch: how long to wait for the first answer unless --timeout says.
DEFAULT_FIRST_ANSWER_TIMEOUT_S = 10.0

_Event = tuple[str, Any]  # ("endpoints", list[Endpoint]) or ("error", str)


def add_resolve_parser(sub: Any) -> None:
    """Hook for cli.py: ``sub`` is its subparsers object."""
    parser = sub.add_parser(
        "resolve", help="print the endpoints a target resolves to (debugging aid)"
    )
    parser.add_argument("target", help="e.g. dns:///greeter.example.com:50051")
    parser.add_argument("--watch", action="store_true", help="print every change as it happens")
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        help="stop after S seconds (default: forever with --watch, "
        f"{DEFAULT_FIRST_ANSWER_TIMEOUT_S:g} s for the first answer without)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(func=cmd_resolve)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


class _QueueListener:
    """ResolverListener that turns callbacks into queue events."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[_Event] = asyncio.Queue()

    def on_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        self.events.put_nowait(("endpoints", list(endpoints)))

    def on_resolver_error(self, error: str) -> None:
        self.events.put_nowait(("error", error))


async def cmd_resolve(args: argparse.Namespace) -> int:
    target = parse_target(args.target)  # bad input → BalancerConfigError → exit 2
    factory = get_resolver_factory(target)
    listener = _QueueListener()
    extra = etcd_options_from_env(os.environ) if target.scheme == "etcd" else {}
    resolver = factory(target, listener, ResolverOptions(extra=extra))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    timeout = args.timeout
    if timeout is None and not args.watch:
        timeout = DEFAULT_FIRST_ANSWER_TIMEOUT_S
    deadline = None if timeout is None else loop.time() + timeout
    printer = _Printer(target.raw, as_json=args.json, stamped=args.watch)
    resolver.start()
    try:
        while True:
            event = await _next_event(listener, stop, deadline)
            if event is None:  # Ctrl-C or --timeout
                if args.watch:
                    return 0
                print(
                    f"grpc-balancer: error: no answer for {target.raw!r} within {timeout:g}s",
                    file=sys.stderr,
                )
                return 1
            printer.show(event)
            if not args.watch:
                return 0 if event[0] == "endpoints" else 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await resolver.close()


async def _next_event(
    listener: _QueueListener, stop: asyncio.Event, deadline: float | None
) -> _Event | None:
    loop = asyncio.get_running_loop()
    get = asyncio.ensure_future(listener.events.get())
    halt = asyncio.ensure_future(stop.wait())
    try:
        timeout = None if deadline is None else max(0.0, deadline - loop.time())
        await asyncio.wait({get, halt}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        return get.result() if get.done() and not halt.done() else None
    finally:
        for task in (get, halt):
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


class _Printer:
    """Prints endpoint lists as a table (or JSON lines), skipping unchanged repeats."""

    def __init__(self, target: str, *, as_json: bool, stamped: bool) -> None:
        self._target = target
        self._json = as_json
        self._stamped = stamped
        self._last: _Event | None = None

    def show(self, event: _Event) -> None:
        if event == self._last:
            return
        self._last = event
        kind, value = event
        if self._json:
            record: dict[str, Any] = {"time": round(time.time(), 3), "target": self._target}
            if kind == "endpoints":
                record["endpoints"] = [_endpoint_json(e) for e in value]
            else:
                record["error"] = value
            print(json.dumps(record, default=str), flush=True)
            return
        stamp = time.strftime("[%H:%M:%S] ") if self._stamped else ""
        if kind == "error":
            stream = sys.stdout if self._stamped else sys.stderr
            print(f"{stamp}resolver error: {value}", file=stream, flush=True)
            return
        print(f"{stamp}{self._target}: {len(value)} endpoint(s)", flush=True)
        if value:
            width = max(len("ADDRESS"), *(len(e.address) for e in value))
            print(f"  {'ADDRESS':<{width}}  WEIGHT  PRIORITY  METADATA")
            for e in value:
                meta = json.dumps(dict(e.metadata), default=str) if e.metadata else ""
                print(f"  {e.address:<{width}}  {e.weight:>6}  {e.priority:>8}  {meta}".rstrip())
        sys.stdout.flush()


def _endpoint_json(endpoint: Endpoint) -> dict[str, Any]:
    return {
        "address": endpoint.address,
        "weight": endpoint.weight,
        "priority": endpoint.priority,
        "metadata": dict(endpoint.metadata),
    }
