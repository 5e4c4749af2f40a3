"""Prometheus metrics end to end: real greeter servers, the real HTTP endpoint, exact counts."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import grpc
import grpc.aio
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import grpc_balancer
from grpc_balancer import metrics
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.demo.servicer import Faults
from grpc_balancer.testing import GreeterFleet, cli_env, free_port, manual_resolver
from tests.helpers import eventually, port_of

Req = greeter_pb2.HelloRequest
SAY_HELLO = "greeter.Greeter/SayHello"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Scraper:
    def __init__(self, url: str) -> None:
        self.url = url

    async def __call__(self) -> Samples:
        def fetch() -> str:
            with urllib.request.urlopen(self.url, timeout=10) as resp:
                return resp.read().decode()  # type: ignore[no-any-return]

        text = await asyncio.to_thread(fetch)
        out: Samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, frozenset(s.labels.items()))] = s.value
        return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def series(samples: Samples, name: str, **labels: str) -> list[dict[str, str]]:
    want = set(labels.items())
    return [dict(ls) for (n, ls), _ in samples.items() if n == name and want <= ls]


@pytest.fixture
def scrape() -> Iterator[Scraper]:
    registry = CollectorRegistry()
    server = metrics.serve(0, "127.0.0.1", registry=registry)
    try:
        yield Scraper(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
        metrics.disable()


@pytest.fixture
async def fleet_one_failing() -> AsyncIterator[GreeterFleet]:
    faults = [Faults(), Faults(), Faults(fail_rate=1.0, fail_code=grpc.StatusCode.INTERNAL)]
    async with GreeterFleet(3, faults=faults) as fleet:
        yield fleet


async def _calls(channel: grpc.aio.Channel, n: int) -> Counter[tuple[str, str]]:
    """``n`` SayHello calls; (backend, status) of each, as the call object reports it."""
    stub = greeter_pb2_grpc.GreeterStub(channel)
    seen: Counter[tuple[str, str]] = Counter()
    for _ in range(n):
        call = stub.SayHello(Req(name="m"), timeout=10)
        try:
            reply = await call
            assert call.peer_address is not None
            assert port_of(reply.message) == int(call.peer_address.rsplit(":", 1)[1])
        except grpc.aio.AioRpcError:
            pass
        code = await call.code()
        seen[(call.peer_address or "", code.name)] += 1
    return seen


async def test_exact_counts_per_backend_and_status(
    scrape: Scraper, fleet_one_failing: GreeterFleet
) -> None:
    fleet = fleet_one_failing
    target = fleet.target()
    async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as ch:
        assert await ch.wait_for_settled(10)
        seen = await _calls(ch, 30)
        samples = await scrape()

    bad = fleet.addresses[2]
    assert {status for (backend, status) in seen if backend == bad} == {"INTERNAL"}
    assert {backend for backend, _ in seen} == set(fleet.addresses)
    for (backend, status), n in seen.items():
        labels = {"grpc_target": target, "grpc_lb_backend": backend, "grpc_status": status}
        assert value(samples, "grpc_client_call_duration_seconds_count", **labels) == n
        assert value(samples, "grpc_client_attempt_duration_seconds_count", **labels) == n
        call_buckets = series(samples, "grpc_client_call_duration_seconds_bucket", **labels)
        assert {"grpc_method": SAY_HELLO, "le": "+Inf", **labels} in call_buckets
    for backend in fleet.addresses:
        per_backend = sum(n for (b, _), n in seen.items() if b == backend)
        labels = {"grpc_target": target, "grpc_lb_backend": backend}
        assert value(samples, "grpc_client_attempt_started_total", **labels) == per_backend
        assert value(samples, "grpc_lb_in_flight", **labels) == 0
        assert value(samples, "grpc_lb_subchannel_state", state="READY", **labels) == 1
        assert value(samples, "grpc_lb_subchannel_health", health="UNCHECKED", **labels) == 1
    # only these statuses exist: nothing else was counted
    assert value(samples, "grpc_client_call_duration_seconds_count", grpc_target=target) == 30
    assert value(samples, "grpc_client_call_started_total", grpc_target=target) == 30
    assert value(samples, "grpc_client_call_started_total", grpc_method=SAY_HELLO) >= 30
    assert value(samples, "grpc_lb_endpoints", grpc_target=target) == 3
    assert value(samples, "grpc_lb_channels", grpc_target=target) == 1
    assert value(samples, "grpc_lb_resolver_updates_total", grpc_target=target) == 1
    assert value(samples, "grpc_lb_resolver_errors_total", grpc_target=target) == 0


async def test_streams_are_counted_with_their_final_status(
    scrape: Scraper, fleet_one_failing: GreeterFleet
) -> None:
    target = fleet_one_failing.target()
    async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as ch:
        assert await ch.wait_for_settled(10)
        stub = greeter_pb2_grpc.GreeterStub(ch)
        codes: Counter[str] = Counter()
        for _ in range(6):
            call = stub.SayHelloStream(Req(name="s", count=2), timeout=10)
            with contextlib.suppress(grpc.aio.AioRpcError):
                async for _reply in call:
                    pass
            codes[(await call.code()).name] += 1
        assert codes["OK"] > 0 and codes["INTERNAL"] > 0
        await eventually(lambda: all(sc.in_flight == 0 for sc in ch.subchannels))
        samples = await scrape()
    method = "greeter.Greeter/SayHelloStream"
    for code, n in codes.items():
        got = value(
            samples,
            "grpc_client_call_duration_seconds_count",
            grpc_target=target,
            grpc_method=method,
            grpc_status=code,
        )
        assert got == n


async def test_two_channels_to_one_target_sum_and_a_closed_channel_drops_its_series(
    scrape: Scraper, fleet3: GreeterFleet
) -> None:
    target = fleet3.target()
    first = grpc_balancer.aio.insecure_channel(target, policy="round_robin")
    second = grpc_balancer.aio.insecure_channel(target, policy="round_robin")
    try:
        assert await first.wait_for_settled(10) and await second.wait_for_settled(10)
        await _calls(first, 6)
        await _calls(second, 9)
        samples = await scrape()
        assert value(samples, "grpc_lb_channels", grpc_target=target) == 2
        assert value(samples, "grpc_client_call_started_total", grpc_target=target) == 15
        assert value(samples, "grpc_client_attempt_started_total", grpc_target=target) == 15
        assert value(samples, "grpc_lb_subchannel_state", grpc_target=target, state="READY") == 6
        assert value(samples, "grpc_lb_endpoints", grpc_target=target) == 3
        await first.close()
        samples = await scrape()
        assert value(samples, "grpc_lb_channels", grpc_target=target) == 1
        # the shared counters did not go backwards when one channel left
        assert value(samples, "grpc_client_attempt_started_total", grpc_target=target) == 15
        assert value(samples, "grpc_lb_subchannel_state", grpc_target=target, state="READY") == 3
    finally:
        await first.close()
        await second.close()
    samples = await scrape()
    assert not [key for key in samples if ("grpc_target", target) in key[1]]


async def test_removed_endpoint_drops_its_series(scrape: Scraper, fleet3: GreeterFleet) -> None:
    resolver = manual_resolver(fleet3.addresses)
    async with grpc_balancer.aio.insecure_channel(resolver.target, policy="round_robin") as ch:
        assert await ch.wait_for_settled(10)
        await _calls(ch, 3)
        resolver.update(fleet3.addresses[:2])
        resolver.fail("lookup failed")
        samples = await scrape()
    gone = fleet3.addresses[2]
    assert not series(samples, "grpc_client_attempt_started_total", grpc_lb_backend=gone)
    assert value(samples, "grpc_lb_endpoints", grpc_target=resolver.target) == 2
    assert value(samples, "grpc_lb_resolver_updates_total", grpc_target=resolver.target) == 2
    assert value(samples, "grpc_lb_resolver_errors_total", grpc_target=resolver.target) == 1


async def test_calls_that_reach_no_backend_are_counted_without_one(scrape: Scraper) -> None:
    target = f"static:///127.0.0.1:{free_port()}"
    async with grpc_balancer.aio.insecure_channel(target) as ch:
        stub = greeter_pb2_grpc.GreeterStub(ch)
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.SayHello(Req(name="x"), timeout=10)
            assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        samples = await scrape()
    labels = {"grpc_target": target, "grpc_status": "UNAVAILABLE", "grpc_method": SAY_HELLO}
    assert value(samples, "grpc_client_call_duration_seconds_count", **labels) == 2


async def test_ejections_retries_and_hedges(scrape: Scraper, fleet3: GreeterFleet) -> None:
    target = fleet3.target()
    async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as ch:
        assert await ch.wait_for_settled(10)
        sc = ch.subchannels[0]
        sc.set_ejected(True)
        sc.set_ejected(False)
        sc.set_ejected(True)
        metrics.record_retry(ch, sc)
        metrics.record_hedge(ch, sc)
        metrics.record_hedge(ch, sc)
        samples = await scrape()
    labels = {"grpc_target": target, "grpc_lb_backend": sc.address}
    assert value(samples, "grpc_lb_ejections_total", **labels) == 2
    assert value(samples, "grpc_lb_subchannel_ejected", **labels) == 1
    assert value(samples, "grpc_lb_retries_total", **labels) == 1
    assert value(samples, "grpc_lb_hedges_total", **labels) == 2
    assert value(samples, "grpc_lb_ejections_total", grpc_target=target) == 2


async def test_metrics_off_means_no_instrument(fleet3: GreeterFleet) -> None:
    metrics.disable()
    async with grpc_balancer.aio.insecure_channel(fleet3.target()) as ch:
        assert ch.instrument is None
        reply = await greeter_pb2_grpc.GreeterStub(ch).SayHello(Req(name="off"), timeout=10)
        assert reply.message.startswith("Hello off")
        assert metrics.snapshot(fleet3.target()) == {}


def test_bad_port_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="metrics port"):
        metrics.serve(70000)


async def test_retries_from_the_attempt_loop_are_counted_per_backend(
    scrape: Scraper, fleet_one_failing: GreeterFleet
) -> None:
    fleet = fleet_one_failing
    config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": "greeter.Greeter"}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.05s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["INTERNAL"],
                },
            }
        ],
    }
    target = fleet.target()
    bad = fleet.addresses[2]
    async with grpc_balancer.aio.insecure_channel(target, service_config=config) as ch:
        assert await ch.wait_for_settled(10)
        seen = await _calls(ch, 12)
        samples = await scrape()
    assert set(seen) <= {(a, "OK") for a in fleet.addresses[:2]}
    assert sum(seen.values()) == 12
    labels = {"grpc_target": target, "grpc_lb_backend": bad}
    failed_attempts = value(
        samples, "grpc_client_attempt_duration_seconds_count", grpc_status="INTERNAL", **labels
    )
    assert failed_attempts > 0
    assert value(samples, "grpc_lb_retries_total", **labels) == failed_attempts
    assert value(samples, "grpc_lb_retries_total", grpc_target=target) == failed_attempts
    assert value(samples, "grpc_client_call_duration_seconds_count", grpc_target=target) == 12
    assert value(samples, "grpc_client_attempt_started_total", grpc_target=target) == (
        12 + failed_attempts
    )


async def test_counters_never_go_back_while_scraped_under_load(
    scrape: Scraper, fleet3: GreeterFleet
) -> None:
    target = fleet3.target()
    async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as ch:
        assert await ch.wait_for_settled(10)
        stub = greeter_pb2_grpc.GreeterStub(ch)
        remaining = 600

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await stub.SayHello(Req(name="load"), timeout=10)

        load = asyncio.gather(*(worker() for _ in range(8)))
        readings: list[dict[str, float]] = []
        while not load.done():
            samples = await scrape()
            readings.append(
                {
                    b: value(
                        samples,
                        "grpc_client_attempt_started_total",
                        grpc_target=target,
                        grpc_lb_backend=b,
                    )
                    for b in fleet3.addresses
                }
            )
        await load
        final = await scrape()
    for before, after in itertools.pairwise(readings):
        assert all(after[b] >= before[b] for b in fleet3.addresses), (before, after)
    assert value(final, "grpc_client_attempt_started_total", grpc_target=target) == 600


async def test_a_removed_backend_with_calls_in_flight_drains_then_drops(scrape: Scraper) -> None:
    async with GreeterFleet(2, faults=[Faults(), Faults(delay_ms=300)]) as fleet:
        resolver = manual_resolver(fleet.addresses)
        slow = fleet.addresses[1]
        async with grpc_balancer.aio.insecure_channel(resolver.target, policy="round_robin") as ch:
            assert await ch.wait_for_settled(10)
            stub = greeter_pb2_grpc.GreeterStub(ch)
            with grpc_balancer.capture_backend() as seen:
                calls = [
                    asyncio.ensure_future(stub.SayHello(Req(name="d"), timeout=10))
                    for _ in range(4)
                ]
                await eventually(lambda: len(seen.calls) == 4)
            sc = next(s for s in ch.subchannels if s.address == slow)
            await eventually(lambda: sc.in_flight == 2)
            resolver.update(fleet.addresses[:1])
            samples = await scrape()
            labels = {"grpc_target": resolver.target, "grpc_lb_backend": slow}
            assert value(samples, "grpc_client_attempt_started_total", **labels) == 2
            assert value(samples, "grpc_lb_in_flight", **labels) == 2
            await asyncio.gather(*calls)
            samples = await scrape()
            assert not series(samples, "grpc_client_attempt_started_total", **labels)
            assert value(samples, "grpc_lb_endpoints", grpc_target=resolver.target) == 1


def test_otel_without_the_extra_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "try:\n    import grpc_balancer.otel\n"
        "except ImportError as e:\n    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, timeout=60
    )
    assert "pip install 'grpc-balancer[otel]'" in result.stdout, result.stderr


async def test_health_state_per_backend(scrape: Scraper, fleet3: GreeterFleet) -> None:
    config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": "greeter.Greeter"},
    }
    target = fleet3.target()
    async with grpc_balancer.aio.insecure_channel(target, service_config=config) as ch:
        await eventually(lambda: all(sc.health == "SERVING" for sc in ch.subchannels), timeout=30)
        samples = await scrape()
    for backend in fleet3.addresses:
        labels = {"grpc_target": target, "grpc_lb_backend": backend}
        assert value(samples, "grpc_lb_subchannel_health", health="SERVING", **labels) == 1
        assert value(samples, "grpc_lb_subchannel_health", health="UNCHECKED", **labels) == 0


async def test_sync_channel_call_series(scrape: Scraper) -> None:
    from grpc_balancer.testing import ServerProcesses

    def calls_by_backend(target: str) -> dict[str, int]:
        return {
            backend: sum(h.count for h in series.calls.values())
            for backend, series in metrics.snapshot(target).items()
        }

    def run(target: str) -> tuple[Counter[str], dict[str, int]]:
        seen: Counter[str] = Counter()
        with grpc_balancer.insecure_channel(target, policy="round_robin") as ch:
            assert ch.wait_for_settled(10)
            stub = greeter_pb2_grpc.GreeterStub(ch)
            for _ in range(6):
                with grpc_balancer.capture_backend() as cap:
                    stub.SayHello(Req(name="sync"), timeout=10)
                seen[cap.address or ""] += 1
            # call-level series are recorded on the channel's loop thread
            deadline = time.monotonic() + 10
            while sum(calls_by_backend(target).values()) < 6 and time.monotonic() < deadline:
                time.sleep(0.02)
            return seen, calls_by_backend(target)

    with ServerProcesses(2) as fleet:
        seen, recorded = await asyncio.to_thread(run, fleet.target())
    assert sum(seen.values()) == 6 and set(seen) == set(fleet.addresses)
    assert recorded == dict(seen)
