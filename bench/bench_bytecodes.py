"""Where a unary RPC's client time goes: Python bytecodes executed per RPC, by layer,
ours against grpcio's own channel.

The CPU and instruction benchmarks say how much more a balanced call costs; this says
where. Each client (asyncio, concurrency 8, the same 3 greeter servers in another
process) makes its calls under ``sys.settrace`` with opcode events, and every bytecode
is counted against the function that ran it, grouped by layer: asyncio and the
standard library, grpcio's Python, and ours (driver, attempt plan, picking,
accounting). The counts repeat from run to run within about 2 % (what moves is how
many event-loop turns the same work takes), so a change to the unary path shows up
here in seconds.

Run: ``python -m bench.bench_bytecodes`` (a few seconds) -> bench/results/bytecodes.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench.bench_instructions import _stub
from bench.harness import Backends

RESULTS = Path(__file__).resolve().parent / "results"
CONCURRENCY = 8

#: (layer, a path fragment that puts a function there), first match wins
LAYERS: tuple[tuple[str, str], ...] = (
    ("ours: driver (_aio/)", "grpc_balancer/_aio/"),
    ("ours: attempt plan (_attempts/)", "grpc_balancer/_attempts/"),
    ("ours: picking (_core/picking.py, policies/)", "grpc_balancer/_core/picking.py"),
    ("ours: picking (_core/picking.py, policies/)", "grpc_balancer/policies/"),
    ("ours: accounting (subchannel, latency)", "grpc_balancer/subchannel.py"),
    ("ours: accounting (subchannel, latency)", "grpc_balancer/_core/load.py"),
    ("ours: other", "grpc_balancer/"),
    ("grpcio (grpc.aio and its helpers)", "/grpc/"),
    ("the benchmark's own loop", "bench_bytecodes.py"),
)
OTHER = "asyncio and the standard library"


def layer_of(filename: str) -> str:
    for layer, fragment in LAYERS:
        if fragment in filename:
            return layer
    return OTHER


async def _count(which: str, addresses: list[str], rpcs: int) -> dict[str, Any]:
    from grpc_balancer.demo import greeter_pb2

    channel, stub = _stub(which, addresses, sync=False)  # the two clients, as there
    if which == "ours":
        await channel.wait_for_settled(60)
    request = greeter_pb2.HelloRequest(name="x")
    for _ in range(200):  # warm-up: every backend connected and answering
        await stub.SayHello(request, timeout=60)

    counts: collections.Counter[tuple[str, str]] = collections.Counter()

    def local(frame: Any, event: str, arg: Any) -> Any:
        if event == "opcode":
            code = frame.f_code
            counts[(code.co_filename, code.co_name)] += 1
        return local

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return local

    async def worker(n: int) -> None:
        for _ in range(n):
            await stub.SayHello(request, timeout=60)

    sys.settrace(tracer)
    try:
        await asyncio.gather(*(worker(rpcs // CONCURRENCY) for _ in range(CONCURRENCY)))
    finally:
        sys.settrace(None)
    await channel.close()
    layers: collections.Counter[str] = collections.Counter()
    for (filename, _), n in counts.items():
        layers[layer_of(filename)] += n
    return {
        "per_rpc": sum(counts.values()) / rpcs,
        "layers": {k: v / rpcs for k, v in layers.most_common()},
        "top_functions": [
            {"function": f"{Path(f).name}:{name}", "per_rpc": n / rpcs}
            for (f, name), n in counts.most_common(15)
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpcs", type=int, default=800)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "bytecodes.json")
    args = parser.parse_args()
    backends = Backends([{}, {}, {}])
    started = time.time()
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "grpcio": []}
    try:
        for i in range(args.rounds):  # A B, B A, ...
            order = ["ours", "grpcio"] if i % 2 == 0 else ["grpcio", "ours"]
            for which in order:
                runs[which].append(asyncio.run(_count(which, backends.addresses, args.rpcs)))
                print(
                    f"[round {i + 1}] {which}: {runs[which][-1]['per_rpc']:.0f} bytecodes per RPC"
                )
    finally:
        backends.close()

    def middle(which: str) -> dict[str, Any]:
        """The run whose total is the median (the lower one of two)."""
        ordered = sorted(runs[which], key=lambda r: r["per_rpc"])
        return ordered[(len(ordered) - 1) // 2]

    out = {
        "command": "python -m bench.bench_bytecodes",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "rpcs": args.rpcs,
        "concurrency": CONCURRENCY,
        "python": platform.python_version(),
        "totals": {k: [r["per_rpc"] for r in v] for k, v in runs.items()},
        "ours": middle("ours"),
        "grpcio": middle("grpcio"),
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
