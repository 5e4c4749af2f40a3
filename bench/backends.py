"""Benchmark backends: greeter servers with injected faults in one child process, so
their CPU is not the client's. Started by :class:`bench.harness.Backends`.

``python -m bench.backends '<json list of fault specs>'`` prints ``{"ports": [...]}``,
then reads JSON lines on stdin: ``{"i": 0, "delay_ms": 2000}`` changes server 0's
faults at once (stall, warm-up...). Exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from grpc_balancer.demo.server import GreeterServer
from grpc_balancer.demo.servicer import Faults
from grpc_balancer.server.load_reports import LoadReporter
from grpc_balancer.server.probes import LoadProbes


def _faults(spec: dict[str, Any]) -> Faults:
    return Faults(
        delay_ms=float(spec.get("delay_ms", 0.0)),
        delay_dist=str(spec.get("dist", "lognormal")),
        max_concurrency=int(spec.get("max_concurrency", 0)),
    )


async def main(specs: list[dict[str, Any]]) -> None:
    servers = []
    for spec in specs:
        faults = _faults(spec)
        reporter = LoadReporter(capacity=faults.max_concurrency) if spec.get("orca") else None
        probes = LoadProbes() if spec.get("probes") else None
        server = GreeterServer(
            0, "127.0.0.1", faults=faults, grace_s=0.1, load_reporter=reporter, probes=probes
        )
        await server.start()
        servers.append(server)
    print(json.dumps({"ports": [s.port for s in servers]}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        change = json.loads(line)
        faults = servers[int(change.pop("i"))].faults
        for key, value in change.items():
            setattr(faults, key, value)
    for server in servers:
        await server.stop(0)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
