"""A grpcio native ``xds:///`` caller for bench/bench_xds.py, in a child process.

Calls ``argv[1]`` without pause (sequentially, ``argv[2]`` seconds at most) and prints
one line per call: ``<time.time()> <serving port>`` (0 for a failed call).
"""

from __future__ import annotations

import re
import sys
import time

import grpc

from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc

_PORT = re.compile(r"\(from :(\d+)\)")


def main() -> None:
    target, seconds = sys.argv[1], float(sys.argv[2])
    with grpc.insecure_channel(target) as channel:
        stub = greeter_pb2_grpc.GreeterStub(channel)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                reply = stub.SayHello(greeter_pb2.HelloRequest(name="b"), timeout=5)
                match = _PORT.search(reply.message)
                port = int(match.group(1)) if match else 0
            except grpc.RpcError:
                port = 0
            print(f"{time.time():.6f} {port}", flush=True)


if __name__ == "__main__":
    main()
