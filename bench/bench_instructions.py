"""Client instructions per unary RPC and per stream message, ours against grpcio's
channel, counted by callgrind.

CPU time on a shared 2-core machine moves by ±20 % from round to round; the number
of instructions the client executes per RPC moves far less (``valgrind
--tool=callgrind`` counts them, whatever else runs; what still moves is how many
event-loop turns the same work takes, a few per cent with the load). So this is the
regression guard for the call path, next to the time-based ``bench_cpu``. For each
point, each client runs twice under callgrind, with ``n`` and ``3 n`` units (RPCs, or
messages of one stream), and the difference divided by the extra units is the cost
of one unit (start-up, channel setup and warm-up cancel out). Rounds alternate which
client goes first (A B, B A, ...); reported per point: the median of the per-round
ratios and their range. The 3 greeter servers run in another process, not under
valgrind.

Points: aio unary at concurrency 8; the sync channel's blocking unary with 8 threads;
per message of an aio server stream (``SayHelloStream``) and of an aio bidi stream
(``Chat``, a request generator).

Run: ``python -m bench.bench_instructions`` (about 15 minutes) →
bench/results/instructions.json; ``--points unary,bidi --rounds 1`` for a quick look.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import Backends

RESULTS = Path(__file__).resolve().parent / "results"
CONCURRENCY = 8

#: point → (what one unit is, units in the small run)
POINTS: dict[str, tuple[str, int]] = {
    "unary": ("unary RPC, aio, concurrency 8", 400),
    "sync": ("unary RPC, sync channel, 8 threads", 400),
    "server_stream": ("message of an aio server stream (SayHelloStream)", 1000),
    "bidi": ("message of an aio bidi stream (Chat)", 1000),
}


def _stub(which: str, addresses: list[str], sync: bool) -> tuple[Any, Any]:
    import grpc
    import grpc.aio

    import grpc_balancer
    import grpc_balancer.aio
    from grpc_balancer.demo import greeter_pb2_grpc

    config = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
    options = [("grpc.service_config", config)]
    if which == "ours":
        target = "static:///" + ",".join(addresses)
        if sync:
            channel: Any = grpc_balancer.insecure_channel(target, policy="round_robin")
        else:
            channel = grpc_balancer.aio.insecure_channel(target, policy="round_robin")
    elif sync:
        channel = grpc.insecure_channel("ipv4:" + ",".join(addresses), options=options)
    else:
        channel = grpc.aio.insecure_channel("ipv4:" + ",".join(addresses), options=options)
    return channel, greeter_pb2_grpc.GreeterStub(channel)


async def _aio_client(which: str, point: str, addresses: list[str], units: int) -> None:
    from grpc_balancer.demo import greeter_pb2

    channel, stub = _stub(which, addresses, sync=False)
    if which == "ours":
        await channel.wait_for_settled(60)
    request = greeter_pb2.HelloRequest(name="x")
    for _ in range(100):  # warm-up: every backend connected and answering
        await stub.SayHello(request, timeout=60)

    if point == "unary":

        async def worker(n: int) -> None:
            for _ in range(n):
                await stub.SayHello(request, timeout=60)

        await asyncio.gather(*(worker(units // CONCURRENCY) for _ in range(CONCURRENCY)))
    elif point == "server_stream":
        stream = greeter_pb2.HelloRequest(name="x", count=units)
        async for _reply in stub.SayHelloStream(stream, timeout=600):
            pass
    else:

        async def requests() -> Any:
            for _ in range(units):
                yield request

        async for _reply in stub.Chat(requests(), timeout=600):
            pass
    await channel.close()


def _sync_client(which: str, addresses: list[str], units: int) -> None:
    from grpc_balancer.demo import greeter_pb2

    channel, stub = _stub(which, addresses, sync=True)
    if which == "ours":
        channel.wait_for_settled(60)
    request = greeter_pb2.HelloRequest(name="x")
    for _ in range(100):
        stub.SayHello(request, timeout=60)

    def worker(n: int) -> None:
        for _ in range(n):
            stub.SayHello(request, timeout=60)

    threads = [
        threading.Thread(target=worker, args=(units // CONCURRENCY,)) for _ in range(CONCURRENCY)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    channel.close()


def _count(which: str, point: str, addresses: list[str], units: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        proc = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "bench.bench_instructions",
                "--client",
                which,
                "--point",
                point,
                "--addresses",
                ",".join(addresses),
                "--units",
                str(units),
            ],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        match = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode != 0 or match is None:
            raise RuntimeError(f"callgrind run failed ({which} {point}): {proc.stderr[-2000:]}")
        return int(match.group(1))


def _per_unit(which: str, point: str, addresses: list[str], small: int) -> float:
    low = _count(which, point, addresses, small)
    high = _count(which, point, addresses, 3 * small)
    return (high - low) / (2 * small)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default=",".join(POINTS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "instructions.json")
    parser.add_argument("--client", choices=["ours", "grpcio"])  # the measured child
    parser.add_argument("--point", choices=list(POINTS))
    parser.add_argument("--addresses")
    parser.add_argument("--units", type=int)
    args = parser.parse_args()
    if args.client:
        addresses = args.addresses.split(",")
        if args.point == "sync":
            _sync_client(args.client, addresses, args.units)
        else:
            asyncio.run(_aio_client(args.client, args.point, addresses, args.units))
        return
    points = [p.strip() for p in args.points.split(",") if p.strip()]
    unknown = [p for p in points if p not in POINTS]
    if unknown or args.rounds < 1:
        sys.exit(f"bench_instructions: unknown points {unknown} (known: {', '.join(POINTS)})")
    if shutil.which("valgrind") is None:
        sys.exit("bench_instructions: valgrind is not installed (apt-get install valgrind)")
    started = time.time()
    results: dict[str, Any] = {}
    with Backends([{}, {}, {}]) as backends:
        for point in points:
            unit, small = POINTS[point]
            rounds: list[dict[str, float]] = []
            for r in range(args.rounds):
                order = ("ours", "grpcio") if r % 2 == 0 else ("grpcio", "ours")
                measured = {w: _per_unit(w, point, backends.addresses, small) for w in order}
                measured["ratio"] = measured["ours"] / measured["grpcio"]
                rounds.append(measured)
                print(
                    f"[{point}] round {r + 1}/{args.rounds}: ours {measured['ours']:,.0f}, "
                    f"grpcio {measured['grpcio']:,.0f} per {unit}, ratio {measured['ratio']:.3f}",
                    flush=True,
                )
            ratios = [m["ratio"] for m in rounds]
            results[point] = {
                "unit": unit,
                "ours": statistics.median(m["ours"] for m in rounds),
                "grpcio": statistics.median(m["grpcio"] for m in rounds),
                "ratio": statistics.median(ratios),
                "ratio_min": min(ratios),
                "ratio_max": max(ratios),
                "rounds": rounds,
            }
    result = {
        "benchmark": "client instructions per unit (callgrind), ours ÷ grpcio's channel",
        "command": "python -m bench.bench_instructions"
        + ("" if args.points == ",".join(POINTS) else f" --points {args.points}")
        + ("" if args.rounds == 2 else f" --rounds {args.rounds}"),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "python": platform.python_version(),
        "load_average": os.getloadavg()[0],
        "points": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
