"""OpenTelemetry instruments (the ``otel`` extra), read with the SDK's InMemoryMetricReader."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.aio
import pytest

pytest.importorskip("opentelemetry.sdk.metrics")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import grpc_balancer
from grpc_balancer import metrics, otel
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.demo.servicer import Faults
from grpc_balancer.testing import GreeterFleet

Req = greeter_pb2.HelloRequest


@pytest.fixture
def reader() -> Iterator[InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    otel.enable(provider)
    try:
        yield reader
    finally:
        otel.disable()
        provider.shutdown()


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out.setdefault(metric.name, []).extend(metric.data.data_points)
    return out


def total(pts: list[Any], field: str = "value", **attrs: str) -> float:
    return sum(getattr(p, field) for p in pts if attrs.items() <= dict(p.attributes).items())


async def test_otel_counts_per_backend_and_status(reader: InMemoryMetricReader) -> None:
    faults = [Faults(), Faults(fail_rate=1.0, fail_code=grpc.StatusCode.INTERNAL)]
    async with GreeterFleet(2, faults=faults) as fleet:
        target = fleet.target()
        async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as ch:
            assert await ch.wait_for_settled(10)
            assert ch.instrument is not None
            stub = greeter_pb2_grpc.GreeterStub(ch)
            seen: Counter[tuple[str, str]] = Counter()
            for _ in range(20):
                call = stub.SayHello(Req(name="o"), timeout=10)
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await call
                seen[(call.peer_address or "", (await call.code()).name)] += 1
            got = points(reader)

    assert {status for (b, status) in seen if b == fleet.addresses[1]} == {"INTERNAL"}
    method = "greeter.Greeter/SayHello"
    for (backend, status), n in seen.items():
        attrs = {"grpc.target": target, "grpc.lb.backend": backend, "grpc.status": status}
        assert (
            total(got["grpc.client.call.duration"], "count", **attrs, **{"grpc.method": method})
            == n
        )
        assert total(got["grpc.client.attempt.duration"], "count", **attrs) == n
        started = total(
            got["grpc.client.attempt.started"],
            **{"grpc.target": target, "grpc.lb.backend": backend},
        )
        assert started == n
    assert total(got["grpc.client.call.started"], **{"grpc.target": target}) == 20
    assert total(got["grpc.lb.endpoints"], **{"grpc.target": target}) == 2
    ready = total(
        got["grpc.lb.subchannel.state"], **{"grpc.target": target, "grpc.lb.state": "READY"}
    )
    assert ready == 2
    assert total(got["grpc.lb.resolver.updates"], **{"grpc.target": target}) == 1
    assert total(got["grpc.lb.in_flight"], **{"grpc.target": target}) == 0


async def test_otel_and_prometheus_together_do_not_clash(
    reader: InMemoryMetricReader, fleet3: GreeterFleet
) -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics.enable(registry)
    try:
        target = fleet3.target()
        async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as ch:
            stub = greeter_pb2_grpc.GreeterStub(ch)
            for _ in range(9):
                await stub.SayHello(Req(name="both"), timeout=10)
            got = points(reader)
            prom = registry.get_sample_value
            count = sum(
                prom(
                    "grpc_client_call_duration_seconds_count",
                    {
                        "grpc_target": target,
                        "grpc_lb_backend": b,
                        "grpc_method": "greeter.Greeter/SayHello",
                        "grpc_status": "OK",
                    },
                )
                or 0
                for b in fleet3.addresses
            )
        assert count == 9
        assert total(got["grpc.client.call.duration"], "count", **{"grpc.target": target}) == 9
        # after close the observed series are gone
        after = points(reader)
        assert total(after.get("grpc.lb.endpoints", []), **{"grpc.target": target}) == 0
    finally:
        metrics.disable()
