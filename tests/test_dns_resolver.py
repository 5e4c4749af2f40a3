"""dns:/dns+srv: against a real dnsmasq and real greeter servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import grpc.aio
import pytest

import grpc_balancer
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.demo.server import GreeterServer
from grpc_balancer.demo.servicer import GreeterServicer
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.resolvers.base import ResolverOptions
from grpc_balancer.resolvers.dns import DnsResolver
from grpc_balancer.target import parse_target
from grpc_balancer.testing import GreeterFleet, free_port
from tests.dnsmasq import DnsmasqServer
from tests.helpers import eventually, say_hello_ports

HOSTS = ["127.0.0.11", "127.0.0.12", "127.0.0.13"]
NAME = "greeter.test"
#: Short DNS timeouts so "server gone" is noticed quickly in tests.
FAST = ResolverOptions(extra={"query_timeout_s": 0.3})


class Recorder:
    """A ResolverListener that keeps everything it is told."""

    def __init__(self) -> None:
        self.updates: list[list[Endpoint]] = []
        self.errors: list[str] = []

    def on_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        self.updates.append(list(endpoints))

    def on_resolver_error(self, error: str) -> None:
        self.errors.append(error)

    @property
    def addresses(self) -> list[str] | None:
        return [e.address for e in self.updates[-1]] if self.updates else None


@contextlib.asynccontextmanager
async def _resolver(
    target: str, options: ResolverOptions = FAST
) -> AsyncIterator[tuple[DnsResolver, Recorder]]:
    recorder = Recorder()
    resolver = DnsResolver(parse_target(target), recorder, options)
    resolver.start()
    try:
        yield resolver, recorder
    finally:
        await resolver.close()


@pytest.fixture
async def trio() -> AsyncIterator[list[GreeterServer]]:
    """Greeter servers on 127.0.0.11, .12 and .13, all on the same port (as DNS needs)."""
    for _ in range(20):
        port = free_port(HOSTS[0])
        servers: list[GreeterServer] = []
        try:
            for host in HOSTS:
                server = GreeterServer(port, host, grace_s=0.2)
                await server.start()
                servers.append(server)
        except OSError:
            for server in servers:
                await server.stop(0)
            continue
        yield servers
        for server in servers:
            await server.stop(0)
        return
    pytest.fail("no port free on 127.0.0.11-13")


def _calls(servers: Sequence[GreeterServer]) -> list[int]:
    return [s.servicer.calls if s.servicer else 0 for s in servers]


def _addresses(channel: object) -> list[str]:
    return [sc.address for sc in channel.subchannels]  # type: ignore[attr-defined]


def _all_usable(channel: object) -> bool:
    return all(sc.usable for sc in channel.subchannels)  # type: ignore[attr-defined]


async def test_a_records_spread_calls_over_three_loopback_servers(
    dnsmasq: DnsmasqServer, trio: list[GreeterServer]
) -> None:
    dnsmasq.set_a(NAME, HOSTS)
    target = dnsmasq.target(NAME, trio[0].port)
    async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as ch:
        assert await ch.wait_for_settled(10)
        assert _addresses(ch) == [f"{h}:{trio[0].port}" for h in HOSTS]
        await say_hello_ports(ch, 30)
    assert _calls(trio) == [10, 10, 10]


async def test_record_added_then_removed_mid_run_is_followed(
    dnsmasq: DnsmasqServer, trio: list[GreeterServer]
) -> None:
    port = trio[0].port
    dnsmasq.set_a(NAME, HOSTS[:2])
    async with grpc_balancer.aio.insecure_channel(
        dnsmasq.target(NAME, port), policy="round_robin"
    ) as ch:
        assert await ch.wait_for_settled(10)
        await say_hello_ports(ch, 6)
        assert _calls(trio) == [3, 3, 0]

        dnsmasq.set_a(NAME, HOSTS)  # scaled up: seen by polling, no failure needed
        await eventually(lambda: _addresses(ch) == [f"{h}:{port}" for h in HOSTS], timeout=10)
        await eventually(lambda: _all_usable(ch), timeout=10)
        await say_hello_ports(ch, 6)
        assert trio[2].servicer is not None and trio[2].servicer.calls == 2

        dnsmasq.set_a(NAME, [HOSTS[0], HOSTS[2]])  # .12 deregistered (still running)
        await eventually(lambda: _addresses(ch) == [f"{HOSTS[0]}:{port}", f"{HOSTS[2]}:{port}"])
        before = _calls(trio)[1]
        await say_hello_ports(ch, 6)
        assert _calls(trio)[1] == before


async def test_srv_two_ports_carry_weights_and_priorities(dnsmasq: DnsmasqServer) -> None:
    async with GreeterFleet(2) as fleet:
        p0, p1 = fleet.ports
        dnsmasq.set_a("node.test", ["127.0.0.1"])
        dnsmasq.set_srv(
            "_grpc._tcp.greeter.test", [("node.test", p0, 0, 10), ("node.test", p1, 0, 30)]
        )
        target = dnsmasq.srv_target("_grpc._tcp.greeter.test")
        async with _resolver(target) as (_, rec):
            await eventually(lambda: bool(rec.updates), timeout=10)
            assert rec.updates[-1] == [
                Endpoint(f"127.0.0.1:{p1}", weight=30, priority=0, metadata={"host": "node.test"}),
                Endpoint(f"127.0.0.1:{p0}", weight=10, priority=0, metadata={"host": "node.test"}),
            ]
        async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as ch:
            assert await ch.wait_for_settled(10)
            assert {sc.address: sc.endpoint.weight for sc in ch.subchannels} == {
                f"127.0.0.1:{p0}": 10,
                f"127.0.0.1:{p1}": 30,
            }
            assert sorted(await say_hello_ports(ch, 10)) == sorted([p0] * 5 + [p1] * 5)


async def test_srv_priority_failover_and_back(dnsmasq: DnsmasqServer) -> None:
    async with GreeterFleet(3) as fleet:
        p0, p1, backup = fleet.ports
        dnsmasq.set_a("node.test", ["127.0.0.1"])
        dnsmasq.set_srv(
            "_grpc._tcp.greeter.test",
            [("node.test", p0, 0, 10), ("node.test", p1, 0, 10), ("node.test", backup, 1, 10)],
        )
        target = dnsmasq.srv_target("_grpc._tcp.greeter.test")
        async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as ch:
            assert await ch.wait_for_settled(10)
            assert {sc.endpoint.priority for sc in ch.subchannels} == {0, 1}
            assert set(await say_hello_ports(ch, 10)) == {p0, p1}  # priority 1 unused

            await fleet.servers[0].stop(0)
            await fleet.servers[1].stop(0)
            await eventually(
                lambda: not any(sc.usable for sc in ch.subchannels if sc.endpoint.priority == 0)
            )
            assert set(await say_hello_ports(ch, 6)) == {backup}

            await fleet.restart(0)  # a priority-0 server is back: traffic returns to it
            back = next(sc for sc in ch.subchannels if sc.address == f"127.0.0.1:{p0}")
            await eventually(lambda: back.usable, timeout=20)
            assert set(await say_hello_ports(ch, 6)) == {p0}


async def test_dns_server_killed_keeps_the_last_list_and_reports_the_error(
    dnsmasq: DnsmasqServer, trio: list[GreeterServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="grpc_balancer")
    port = trio[0].port
    dnsmasq.set_a(NAME, HOSTS)
    target = dnsmasq.target(NAME, port)
    async with (
        grpc_balancer.aio.insecure_channel(
            target, policy="round_robin", resolver_options=FAST
        ) as ch,
        _resolver(target) as (_, rec),
    ):
        assert await ch.wait_for_settled(10)
        await eventually(lambda: bool(rec.updates))

        dnsmasq.kill()
        await eventually(lambda: len(rec.errors) >= 2, timeout=15)  # retried, with backoff
        assert all(NAME in e and "timed out" in e for e in rec.errors)
        assert rec.updates == [rec.updates[0]]  # nothing pushed, certainly not []
        assert "keeping the last good list" in caplog.text  # the channel heard it too

        assert _addresses(ch) == [f"{h}:{port}" for h in HOSTS]
        before = _calls(trio)
        await say_hello_ports(ch, 9)
        assert [a - b for a, b in zip(_calls(trio), before, strict=True)] == [3, 3, 3]
    # logged once per state change by each of the two resolvers, not once per retry
    logged = [
        r
        for r in caplog.records
        if r.name == "grpc_balancer.resolvers.dns" and "timed out" in r.getMessage()
    ]
    assert 1 <= len(logged) <= 2


async def test_first_resolution_failing_fails_calls_with_the_dns_error(
    dnsmasq: DnsmasqServer,
) -> None:
    dnsmasq.set_a(NAME, HOSTS)
    dnsmasq.kill()
    async with grpc_balancer.aio.insecure_channel(
        dnsmasq.target(NAME, 50051), resolver_options=FAST
    ) as ch:
        stub = greeter_pb2_grpc.GreeterStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SayHello(greeter_pb2.HelloRequest(name="x"), timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    details = info.value.details() or ""
    assert f"DNS lookup of {NAME}" in details and "timed out" in details, details


async def test_refused_answer_is_an_error_not_an_empty_list(dnsmasq: DnsmasqServer) -> None:
    # dnsmasq has no upstream: names outside .test are REFUSED.
    async with _resolver(dnsmasq.target("greeter.example", 80)) as (_, rec):
        await eventually(lambda: bool(rec.errors))
        assert rec.updates == []
        assert "REFUSED" in rec.errors[0]
    async with grpc_balancer.aio.insecure_channel(dnsmasq.target("greeter.example", 80)) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await greeter_pb2_grpc.GreeterStub(ch).SayHello(greeter_pb2.HelloRequest(), timeout=10)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "REFUSED" in (info.value.details() or "")


async def test_nxdomain_is_an_empty_list_and_is_honoured(
    dnsmasq: DnsmasqServer, trio: list[GreeterServer]
) -> None:
    async with _resolver(dnsmasq.target("missing.test", 80)) as (_, rec):
        await eventually(lambda: bool(rec.updates))
        assert rec.updates == [[]] and rec.errors == []

    dnsmasq.set_a(NAME, HOSTS)
    async with grpc_balancer.aio.insecure_channel(
        dnsmasq.target(NAME, trio[0].port), policy="round_robin"
    ) as ch:
        assert await ch.wait_for_settled(10)
        dnsmasq.set_a(NAME, [])  # every record gone: NXDOMAIN
        await eventually(lambda: _addresses(ch) == [], timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await greeter_pb2_grpc.GreeterStub(ch).SayHello(greeter_pb2.HelloRequest(), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "no endpoints" in (info.value.details() or "")


async def test_ip_literals_and_localhost_need_no_dns_server() -> None:
    async with GreeterFleet(2) as fleet:
        p0, p1 = fleet.ports
        dead_server = f"127.0.0.1:{free_port()}"  # nothing answers DNS there
        target = f"dns://{dead_server}/127.0.0.1:{p0},localhost:{p1}"
        async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as ch:
            assert await ch.wait_for_settled(10)
            assert _addresses(ch) == [f"127.0.0.1:{p0}", f"localhost:{p1}"]
            assert sorted(await say_hello_ports(ch, 4)) == sorted([p0, p0, p1, p1])


async def test_names_in_the_hosts_file_need_no_dns_server(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# comment\n127.0.0.1 other.test\n127.0.0.1  Hosted.Test  alias\n")
    options = ResolverOptions(
        min_refresh_s=0.1,
        max_refresh_s=0.5,
        extra={"hosts_file": str(hosts), "query_timeout_s": 0.3},
    )
    async with GreeterFleet(1) as fleet:
        # no DNS server named: the hosts file is read first, like getaddrinfo does
        target = f"dns:///hosted.test:{fleet.ports[0]}"
        async with grpc_balancer.aio.insecure_channel(target, resolver_options=options) as ch:
            assert await say_hello_ports(ch, 2) == [fleet.ports[0]] * 2
    async with _resolver("dns:///alias:80", options) as (_, rec):
        await eventually(lambda: bool(rec.updates))
        assert rec.addresses == ["127.0.0.1:80"]
        hosts.write_text("127.0.0.2 alias\n::1 alias\n")  # edits are picked up
        await eventually(lambda: rec.addresses == ["127.0.0.2:80", "[::1]:80"], timeout=15)


async def test_list_of_names_merges_and_keeps_a_failing_items_last_answer(
    dnsmasq: DnsmasqServer,
) -> None:
    dnsmasq.set_a("a.test", ["127.0.0.11"])
    dnsmasq.set_a("b.test", ["127.0.0.12", "127.0.0.13"])
    async with _resolver(f"dns://{dnsmasq.server}/a.test:1,b.test:2,127.0.0.1:3") as (_, rec):
        await eventually(lambda: bool(rec.updates))
        assert rec.addresses == ["127.0.0.11:1", "127.0.0.12:2", "127.0.0.13:2", "127.0.0.1:3"]


async def test_ttl_is_clamped_by_max_refresh(tmp_path: Path) -> None:
    with DnsmasqServer(tmp_path, ttl=600) as long_ttl:
        long_ttl.set_a(NAME, ["127.0.0.11"])
        options = ResolverOptions(min_refresh_s=0.1, max_refresh_s=0.5, extra=FAST.extra)
        async with _resolver(long_ttl.target(NAME, 80), options) as (_, rec):
            await eventually(lambda: rec.addresses == ["127.0.0.11:80"])
            long_ttl.set_a(NAME, ["127.0.0.12"])
            await eventually(lambda: rec.addresses == ["127.0.0.12:80"], timeout=10)


async def test_resolve_now_refreshes_at_once_but_rate_limited(tmp_path: Path) -> None:
    with DnsmasqServer(tmp_path, ttl=600) as long_ttl:
        long_ttl.set_a(NAME, ["127.0.0.11"])
        options = ResolverOptions(min_refresh_s=0.3, extra=FAST.extra)
        async with _resolver(long_ttl.target(NAME, 80), options) as (resolver, rec):
            await eventually(lambda: rec.addresses == ["127.0.0.11:80"])
            long_ttl.set_a(NAME, ["127.0.0.12"])
            resolver.resolve_now()
            await eventually(lambda: rec.addresses == ["127.0.0.12:80"], timeout=10)

            start, loop = resolver.resolutions, asyncio.get_running_loop()
            began = loop.time()
            for _ in range(100):  # a storm of hints (failing subchannels)
                resolver.resolve_now()
                await asyncio.sleep(0.01)
            elapsed = loop.time() - began
            assert resolver.resolutions - start <= elapsed / 0.3 + 2


# -- TLS: the resolver's authority makes certificates for the name verify ------------------
def _make_cert(tmp: Path, san: str) -> tuple[bytes, bytes]:
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=greeter",
            "-addext", f"subjectAltName={san}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return key.read_bytes(), cert.read_bytes()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
async def test_tls_verifies_the_dns_name_not_the_resolved_ip(
    dnsmasq: DnsmasqServer, tmp_path: Path
) -> None:
    key, cert = _make_cert(tmp_path, f"DNS:{NAME}")  # no IP in the certificate
    server = grpc.aio.server()
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    greeter_pb2_grpc.add_GreeterServicer_to_server(GreeterServicer(port), server)
    await server.start()
    try:
        dnsmasq.set_a(NAME, ["127.0.0.1"])
        creds = grpc.ssl_channel_credentials(root_certificates=cert)
        async with grpc_balancer.aio.secure_channel(dnsmasq.target(NAME, port), creds) as ch:
            assert await say_hello_ports(ch, 2) == [port, port]
        # The user's own override wins over the resolver's authority.
        dnsmasq.set_a("alias.test", ["127.0.0.1"])
        override = [("grpc.ssl_target_name_override", NAME)]
        async with grpc_balancer.aio.secure_channel(
            dnsmasq.target("alias.test", port), creds, options=override
        ) as ch:
            assert await say_hello_ports(ch, 1) == [port]
    finally:
        await server.stop(0)


async def test_a_refused_aaaa_query_does_not_hide_the_a_records(
    tmp_path: Path, trio: list[GreeterServer]
) -> None:
    # No --local line: dnsmasq answers A from its hosts files and REFUSES AAAA.
    with DnsmasqServer(tmp_path / "dnsmasq", local=False) as server:
        server.set_a(NAME, HOSTS)
        target = server.target(NAME, trio[0].port)
        async with _resolver(target) as (_, rec):
            await eventually(lambda: bool(rec.updates or rec.errors), timeout=10)
            assert rec.errors == []
            assert rec.addresses == [f"{h}:{trio[0].port}" for h in HOSTS]
        async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as ch:
            assert await ch.wait_for_settled(10)
            assert sorted(await say_hello_ports(ch, 3)) == [trio[0].port] * 3
    assert _calls(trio) == [1, 1, 1]


async def test_both_families_failing_is_an_error(tmp_path: Path) -> None:
    with DnsmasqServer(tmp_path / "dnsmasq", local=False) as server:
        # A and AAAA both REFUSED (the name is in no hosts file and there is no upstream)
        async with _resolver(server.target("absent.test", 80)) as (_, rec):
            await eventually(lambda: bool(rec.errors), timeout=10)
            assert rec.updates == []
            assert "REFUSED" in rec.errors[0]


async def test_srv_target_that_fails_is_skipped_with_a_warning(
    dnsmasq: DnsmasqServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with GreeterFleet(1) as fleet:
        (port,) = fleet.ports
        dnsmasq.set_a("node.test", ["127.0.0.1"])
        # greeter.example is outside .test: its A/AAAA queries are REFUSED
        dnsmasq.set_srv(
            "_grpc._tcp.greeter.test", [("node.test", port, 0, 10), ("greeter.example", 1, 0, 10)]
        )
        target = dnsmasq.srv_target("_grpc._tcp.greeter.test")
        with caplog.at_level(logging.WARNING, logger="grpc_balancer.resolvers.dns"):
            async with _resolver(target) as (_, rec):
                await eventually(lambda: bool(rec.updates or rec.errors), timeout=10)
                assert rec.errors == []
                assert rec.addresses == [f"127.0.0.1:{port}"]
        assert any(
            "skipping SRV target greeter.example" in r.getMessage() and "REFUSED" in r.getMessage()
            for r in caplog.records
        ), caplog.text
        async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as ch:
            assert await ch.wait_for_settled(10)
            assert await say_hello_ports(ch, 2) == [port, port]


async def test_srv_whose_every_target_fails_is_an_error(dnsmasq: DnsmasqServer) -> None:
    dnsmasq.set_srv("_grpc._tcp.greeter.test", [("greeter.example", 1, 0, 10)])
    async with _resolver(dnsmasq.srv_target("_grpc._tcp.greeter.test")) as (_, rec):
        await eventually(lambda: bool(rec.errors), timeout=10)
        assert rec.updates == []
        assert "REFUSED" in rec.errors[0]
