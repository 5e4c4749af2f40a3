"""grpcio's native ``xds:///`` client in a child process (its bootstrap is process-wide).

The same options and the same JSON lines as tests/xds_js/client.js, so the tests and
benchmarks read both alike::

    GRPC_XDS_BOOTSTRAP_CONFIG='{...}' python -m tests.xds_grpcio_client --target xds:///greeter

``--count 0`` calls until stdin closes or SIGTERM; ``--header K=V`` adds request metadata.
Calls are sequential. ``--channel balancer`` makes the same calls on a grpc_balancer
sync channel, ``--channel balancer-aio`` on a grpc_balancer asyncio channel; their own
xds resolver reads the same bootstrap: one program, three clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import sys
import threading
import time
from typing import Any

import grpc

from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc

_PORT = re.compile(r"\(from :(\d+)\)")


def emit(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--interval-ms", type=float, default=0.0)
    parser.add_argument("--deadline-ms", type=float, default=2000.0)
    parser.add_argument("--name", default="grpcio")
    parser.add_argument("--header", action="append", default=[], help="KEY=VALUE metadata")
    parser.add_argument(
        "--channel", choices=("grpcio", "balancer", "balancer-aio"), default="grpcio"
    )
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if args.count == 0:
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()

    request = greeter_pb2.HelloRequest(name=args.name)
    metadata = tuple(tuple(h.split("=", 1)) for h in args.header)
    emit({"event": "start", "target": args.target, "grpcio": grpc.__version__,
          "channel": args.channel})  # fmt: skip
    if args.channel == "balancer-aio":
        calls, ok = asyncio.run(_run_aio(args, stop, request, metadata))
    else:
        if args.channel == "balancer":
            import grpc_balancer

            channel = grpc_balancer.insecure_channel(args.target)
        else:
            channel = grpc.insecure_channel(args.target)
        stub = greeter_pb2_grpc.GreeterStub(channel)
        calls = ok = 0
        while not stop.is_set() and (args.count == 0 or calls < args.count):
            started = time.perf_counter()
            try:
                reply = stub.SayHello(request, timeout=args.deadline_ms / 1000, metadata=metadata)
            except grpc.RpcError as exc:
                _emit_call(calls, started, None, exc)
            else:
                ok += 1
                _emit_call(calls, started, reply, None)
            calls += 1
            if args.interval_ms > 0:
                stop.wait(args.interval_ms / 1000)
        channel.close()
    emit({"event": "end", "calls": calls, "ok": ok})
    return 0


async def _run_aio(
    args: argparse.Namespace, stop: threading.Event, request: Any, metadata: Any
) -> tuple[int, int]:
    import grpc_balancer.aio

    channel = grpc_balancer.aio.insecure_channel(args.target)
    stub = greeter_pb2_grpc.GreeterStub(channel)
    calls = ok = 0
    while not stop.is_set() and (args.count == 0 or calls < args.count):
        started = time.perf_counter()
        try:
            reply = await stub.SayHello(request, timeout=args.deadline_ms / 1000, metadata=metadata)
        except grpc.RpcError as exc:
            _emit_call(calls, started, None, exc)
        else:
            ok += 1
            _emit_call(calls, started, reply, None)
        calls += 1
        await asyncio.sleep(args.interval_ms / 1000 if args.interval_ms > 0 else 0)
    await channel.close()
    return calls, ok


def _emit_call(i: int, started: float, reply: Any, error: Any) -> None:
    record: dict[str, Any] = {"event": "call", "i": i}
    if error is not None:
        record.update(ok=False, code=error.code().value[0], details=error.details())
    else:
        match = _PORT.search(reply.message)
        record.update(ok=True, port=int(match.group(1)) if match else None)
        record["message"] = reply.message
    record["t_ms"] = time.time() * 1000
    record["latency_ms"] = (time.perf_counter() - started) * 1000
    emit(record)


if __name__ == "__main__":
    sys.exit(main())
