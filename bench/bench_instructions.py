"""Client instructions per unary RPC, ours against grpcio's channel, counted by callgrind.

CPU time on a shared 2-core machine moves by ±20 % from round to round; the number
of instructions the client executes per RPC does not (``valgrind --tool=callgrind``
counts them, whatever else runs). So this is the regression guard for the call path,
next to the time-based ``bench_cpu``: each client runs twice under callgrind, with
``--calls`` and ``3 x --calls`` RPCs at concurrency 8, and the difference divided by
the extra RPCs is the cost of one RPC (start-up, channel setup and warm-up cancel
out). The 3 greeter servers run in another process, not under valgrind.

Run: ``python -m bench.bench_instructions`` (about 4 minutes) → bench/results/instructions.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import Backends

RESULTS = Path(__file__).resolve().parent / "results"
CONCURRENCY = 8


async def _client(which: str, addresses: list[str], calls: int) -> None:
    import grpc.aio

    import grpc_balancer.aio
    from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc

    if which == "ours":
        channel: Any = grpc_balancer.aio.insecure_channel(
            "static:///" + ",".join(addresses), policy="round_robin"
        )
        await channel.wait_for_settled(60)
    else:
        config = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
        channel = grpc.aio.insecure_channel(
            "ipv4:" + ",".join(addresses), options=[("grpc.service_config", config)]
        )
    stub = greeter_pb2_grpc.GreeterStub(channel)
    request = greeter_pb2.HelloRequest(name="x")
    for _ in range(100):  # warm-up: every backend connected and answering
        await stub.SayHello(request, timeout=60)

    async def worker(n: int) -> None:
        for _ in range(n):
            await stub.SayHello(request, timeout=60)

    await asyncio.gather(*(worker(calls // CONCURRENCY) for _ in range(CONCURRENCY)))
    await channel.close()


def _count(which: str, addresses: list[str], calls: int) -> int:
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
                "--addresses",
                ",".join(addresses),
                "--calls",
                str(calls),
            ],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        match = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode != 0 or match is None:
            raise RuntimeError(f"callgrind run failed ({which}, {calls}): {proc.stderr[-2000:]}")
        return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--client", choices=["ours", "grpcio"])
    parser.add_argument("--addresses")
    parser.add_argument("--out", type=Path, default=RESULTS / "instructions.json")
    args = parser.parse_args()
    if args.client:  # the measured child
        asyncio.run(_client(args.client, args.addresses.split(","), args.calls))
        return
    if shutil.which("valgrind") is None:
        sys.exit("bench_instructions: valgrind is not installed (apt-get install valgrind)")
    started = time.time()
    small, large = args.calls, 3 * args.calls
    per_rpc: dict[str, float] = {}
    with Backends([{}, {}, {}]) as backends:
        for which in ("ours", "grpcio"):
            low = _count(which, backends.addresses, small)
            high = _count(which, backends.addresses, large)
            per_rpc[which] = (high - low) / (large - small)
            print(f"{which}: {per_rpc[which]:,.0f} instructions per RPC", flush=True)
    ratio = per_rpc["ours"] / per_rpc["grpcio"]
    result = {
        "benchmark": "instructions per unary RPC (callgrind), aio, concurrency 8",
        "command": "python -m bench.bench_instructions",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "python": platform.python_version(),
        "calls": [small, large],
        "ours": per_rpc["ours"],
        "grpcio": per_rpc["grpcio"],
        "ratio": ratio,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"ratio ours/grpcio: {ratio:.3f}; wrote {args.out}")


if __name__ == "__main__":
    main()
