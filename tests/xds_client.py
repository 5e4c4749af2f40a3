"""A grpcio native ``xds:///`` client in a child process (its bootstrap is process-wide).

Run as ``python -m tests.xds_client``; the bootstrap comes from
``GRPC_XDS_BOOTSTRAP_CONFIG``. It reads commands on stdin, one a line, and answers one
JSON line each: ``call TARGET N [KEY=VALUE...]`` (the pairs sent as metadata) →
``{"ports": [...], "errors": [...]}``.
"""

from __future__ import annotations

import json
import re
import sys

import grpc

from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc

_PORT = re.compile(r"\(from :(\d+)\)")


def main() -> None:
    channels: dict[str, grpc.Channel] = {}
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "quit":
            break
        target, n = parts[1], int(parts[2])
        metadata = tuple(tuple(p.split("=", 1)) for p in parts[3:])
        channel = channels.get(target)
        if channel is None:
            channel = channels[target] = grpc.insecure_channel(target)
        stub = greeter_pb2_grpc.GreeterStub(channel)
        ports, errors = [], []
        for _ in range(n):
            try:
                reply = stub.SayHello(
                    greeter_pb2.HelloRequest(name="xds"), timeout=10, metadata=metadata
                )
            except grpc.RpcError as err:
                errors.append(f"{err.code().name}: {err.details()}")  # type: ignore[attr-defined]
                continue
            match = _PORT.search(reply.message)
            ports.append(int(match.group(1)) if match else 0)
        print(json.dumps({"ports": ports, "errors": errors}), flush=True)
    for channel in channels.values():
        channel.close()


if __name__ == "__main__":
    main()
