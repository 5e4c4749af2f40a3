"""Load probes (the prequal policy's input): one unary call that asks a server how many
requests it has in flight and how long its recent calls took at about that load.

The client side is :mod:`grpc_balancer.policies.prequal`; the server side (the RIF
counting interceptor and the probe service) is :mod:`grpc_balancer.server.probes`.
The proto registers as ``grpc_balancer/_probe/probe.proto``, package
``grpc_balancer.probe.v1``: nothing a user's protos can clash with.
"""

from __future__ import annotations

from grpc_balancer._probe.probe_pb2 import ProbeRequest, ProbeResponse

SERVICE = "grpc_balancer.probe.v1.LoadProbe"
METHOD = f"/{SERVICE}/Probe"

__all__ = ["METHOD", "SERVICE", "ProbeRequest", "ProbeResponse"]
