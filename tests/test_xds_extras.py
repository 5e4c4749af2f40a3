"""The ``[xds]`` and ``[otel]`` extras side by side, in one process, in either order.

xds-protos ships ``google/rpc``, ``google/api`` and ``opentelemetry/proto`` files that
googleapis-common-protos and opentelemetry-proto also own (one copy on disk wins). Each
order runs in a fresh interpreter: the OTel SDK records a balanced channel's calls,
the OTLP and google.rpc messages work, the Envoy protos that import them load, and our
ADS server answers a DiscoveryRequest from a plain ADS client stub.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("envoy")
pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("opentelemetry.proto")

from grpc_balancer.testing import cli_env

OTEL_FIRST = """
import grpc_balancer.otel
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.proto.common.v1 import common_pb2
from google.rpc import status_pb2
"""
XDS_FIRST = """
from grpc_balancer.xds.server import XdsServer
from envoy.extensions.access_loggers.open_telemetry.v3 import logs_service_pb2
from envoy.config.trace.v3 import opentelemetry_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
"""
WORK = """
import asyncio
import grpc
import grpc_balancer.aio, grpc_balancer.otel
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.proto.common.v1 import common_pb2
from google.rpc import status_pb2, code_pb2
from envoy.extensions.access_loggers.open_telemetry.v3 import logs_service_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.testing import GreeterFleet
from grpc_balancer.xds import parse_config
from grpc_balancer.xds.server import XdsServer

span = trace_pb2.Span(name="s", attributes=[common_pb2.KeyValue(key="k", value=common_pb2.AnyValue(int_value=7))])
assert trace_pb2.Span.FromString(span.SerializeToString()).attributes[0].value.int_value == 7
status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message="m")
assert status_pb2.Status.FromString(status.SerializeToString()).message == "m"
log_config = logs_service_pb2.OpenTelemetryAccessLogConfig(body=common_pb2.AnyValue(string_value="b"))
assert log_config.body.string_value == "b"

reader = InMemoryMetricReader()
grpc_balancer.otel.enable(MeterProvider(metric_readers=[reader]))

async def main():
    async with GreeterFleet(2) as fleet:
        async with grpc_balancer.aio.insecure_channel(fleet.target(), policy="round_robin") as ch:
            stub = greeter_pb2_grpc.GreeterStub(ch)
            for _ in range(4):
                await stub.SayHello(greeter_pb2.HelloRequest(name="x"), timeout=10)
        names = {m.name for rm in reader.get_metrics_data().resource_metrics
                 for sm in rm.scope_metrics for m in sm.metrics}
        assert "grpc.client.attempt.duration" in names, names
        config = parse_config({"services": {"greeter": {"target": fleet.target()}}})
        async with XdsServer(config) as server:
            async with grpc.aio.insecure_channel(server.address) as channel:
                stream = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
                await stream.write(discovery_pb2.DiscoveryRequest(
                    type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster",
                    resource_names=["greeter"]))
                reply = await asyncio.wait_for(stream.read(), 10)
                cluster = cluster_pb2.Cluster()
                assert reply.resources[0].Unpack(cluster) and cluster.name == "greeter"
                await stream.done_writing()
    print("ok")

asyncio.run(main())
"""


@pytest.mark.parametrize("first", [OTEL_FIRST, XDS_FIRST], ids=["otel-first", "xds-first"])
def test_xds_and_otel_extras_work_in_one_process(first: str) -> None:
    script = textwrap.dedent(first) + textwrap.dedent(WORK)
    result = subprocess.run(
        [sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
