"""The ``etcd://`` resolver against a real etcd (Debian's) and real greeter servers."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Sequence

import grpc
import pytest

import grpc_balancer
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.testing import GreeterFleet, cli_env, free_port
from tests.etcd_cluster import ETCDCTL, EtcdCluster
from tests.etcd_helpers import (
    PREFIX,
    Recorder,
    go_value,
    only,
    reaches,
    start_resolver,
    until,
)
from tests.helpers import eventually


async def test_keys_put_with_etcdctl_in_go_format_are_used(etcd_node: EtcdCluster) -> None:
    async with GreeterFleet(3) as fleet:
        a, b, c = fleet.addresses
        etcd_node.etcdctl("put", f"{PREFIX}/{a}", go_value(a))
        etcd_node.etcdctl("put", f"{PREFIX}/{b}", go_value(b))
        async with grpc_balancer.aio.insecure_channel(
            etcd_node.target(PREFIX), policy="round_robin"
        ) as channel:
            await until(lambda: reaches(channel, set(fleet.ports[:2])))
            etcd_node.etcdctl("put", f"{PREFIX}/{c}", go_value(c))
            await until(lambda: reaches(channel, set(fleet.ports)))

            etcd_node.etcdctl("del", f"{PREFIX}/{a}")
            await until(lambda: only(channel, set(fleet.ports[1:])))


async def test_metadata_weight_and_zone_reach_the_endpoint(etcd_node: EtcdCluster) -> None:
    etcd_node.etcdctl(
        "put",
        f"{PREFIX}/127.0.0.1:1001",
        go_value("127.0.0.1:1001", {"weight": 3, "zone": "eu-1", "v": 2}),
    )
    etcd_node.etcdctl("put", f"{PREFIX}/127.0.0.1:1002", go_value("127.0.0.1:1002"))
    etcd_node.etcdctl("put", "services/greeterX/127.0.0.1:1003", go_value("127.0.0.1:1003"))
    rec = Recorder()
    resolver = start_resolver(etcd_node.target(PREFIX), rec)
    try:
        await eventually(lambda: bool(rec.updates))
        assert rec.updates[-1] == [
            Endpoint("127.0.0.1:1001", weight=3, metadata={"zone": "eu-1", "v": 2}),
            Endpoint("127.0.0.1:1002"),
        ]
    finally:
        await resolver.close()


async def test_garbage_values_are_skipped_with_a_warning_naming_the_key(
    etcd_node: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "grpc_balancer.resolvers.etcd")
    good = "127.0.0.1:2001"
    etcd_node.etcdctl("put", f"{PREFIX}/{good}", go_value(good))
    etcd_node.etcdctl("put", f"{PREFIX}/bad-json", "{not json")
    rec = Recorder()
    resolver = start_resolver(etcd_node.target(PREFIX), rec)
    try:
        await eventually(lambda: rec.addresses == {good})
        for key, value in [
            ("no-addr", '{"Op":0,"Metadata":null}'),
            ("bad-port", go_value("127.0.0.1:99999")),
            ("bad-weight", go_value("127.0.0.1:2002", {"weight": "heavy"})),
            (good, "garbage over a good key"),  # the key keeps its last good endpoint
            ("fine", go_value("127.0.0.1:2003")),
        ]:
            etcd_node.etcdctl("put", f"{PREFIX}/{key}", value)
        await eventually(lambda: rec.addresses == {good, "127.0.0.1:2003"})
        assert all(u for u in rec.updates), "a garbage value must never empty the list"
        warned = " ".join(r.getMessage() for r in caplog.records)
        for key in ("bad-json", "no-addr", "bad-port", "bad-weight", good):
            assert f"{PREFIX}/{key}" in warned
        assert resolver.revision > 0 and not rec.errors
    finally:
        await resolver.close()


async def test_an_empty_prefix_is_an_empty_list(etcd_node: EtcdCluster) -> None:
    etcd_node.etcdctl("put", f"{PREFIX}/127.0.0.1:3001", go_value("127.0.0.1:3001"))
    rec = Recorder()
    resolver = start_resolver(etcd_node.target(PREFIX), rec)
    try:
        await eventually(lambda: rec.addresses == {"127.0.0.1:3001"})
        etcd_node.etcdctl("del", "--prefix", f"{PREFIX}/")
        await eventually(lambda: rec.updates[-1] == [])
        assert not rec.errors
    finally:
        await resolver.close()


async def test_compaction_past_the_watch_revision_makes_it_read_again(
    etcd_node: EtcdCluster,
) -> None:
    """The list is read at revision R; before the watch starts (the listener is slow),
    keys change and etcd compacts past R: the watch is refused, the resolver re-reads."""
    etcd_node.etcdctl("put", f"{PREFIX}/127.0.0.1:4001", go_value("127.0.0.1:4001"))

    class SlowFirstListener(Recorder):
        def on_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
            super().on_endpoints(endpoints)
            if len(self.updates) == 1:  # runs on the loop: the watch cannot start yet
                thread = threading.Thread(target=self._change_and_compact)
                thread.start()
                thread.join(30)

        def _change_and_compact(self) -> None:
            etcd_node.etcdctl("put", f"{PREFIX}/127.0.0.1:4002", go_value("127.0.0.1:4002"))
            etcd_node.etcdctl("del", f"{PREFIX}/127.0.0.1:4001")
            etcd_node.etcdctl("compact", str(etcd_node.revision()))

    rec = SlowFirstListener()
    resolver = start_resolver(etcd_node.target(PREFIX), rec)
    try:
        await eventually(lambda: rec.addresses == {"127.0.0.1:4002"})
        assert resolver.listings == 2
        assert rec.updates[0] == [Endpoint("127.0.0.1:4001")]
        assert not rec.errors, "a compaction is not an error"
        etcd_node.etcdctl("put", f"{PREFIX}/127.0.0.1:4003", go_value("127.0.0.1:4003"))
        await eventually(lambda: rec.addresses == {"127.0.0.1:4002", "127.0.0.1:4003"})
    finally:
        await resolver.close()


async def test_unreachable_etcd_fails_calls_with_unavailable_naming_etcd() -> None:
    target = f"etcd://127.0.0.1:{free_port()}/{PREFIX}"
    async with grpc_balancer.aio.insecure_channel(target) as channel:
        stub = greeter_pb2_grpc.GreeterStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.SayHello(greeter_pb2.HelloRequest(name="x"), timeout=3)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "etcd 127.0.0.1:" in (info.value.details() or "")


async def test_username_and_password_from_options(etcd_node: EtcdCluster) -> None:
    etcd_node.etcdctl("user", "add", "root", "--new-user-password=s3cret-pw")
    etcd_node.etcdctl("auth", "enable")
    auth = ["--user=root:s3cret-pw"]
    etcd_node.etcdctl(*auth, "put", f"{PREFIX}/127.0.0.1:5001", go_value("127.0.0.1:5001"))
    rec = Recorder()
    resolver = start_resolver(etcd_node.target(PREFIX), rec, username="root", password="s3cret-pw")
    bad = Recorder()
    wrong = start_resolver(etcd_node.target(PREFIX), bad, username="root", password="nope-pw")
    try:
        await eventually(lambda: rec.addresses == {"127.0.0.1:5001"})
        await eventually(lambda: bool(bad.errors))
        assert not bad.updates
        assert "authentication failed" in bad.errors[0]
        assert "nope-pw" not in bad.errors[0] and "nope-pw" not in repr(wrong.settings)
        etcd_node.etcdctl(*auth, "put", f"{PREFIX}/127.0.0.1:5002", go_value("127.0.0.1:5002"))
        await eventually(lambda: rec.addresses == {"127.0.0.1:5001", "127.0.0.1:5002"})
        # the CLI takes credentials from etcdctl's environment variables
        cmd = [sys.executable, "-m", "grpc_balancer", "resolve", etcd_node.target(PREFIX)]
        env = cli_env(ETCDCTL_USER="root:s3cret-pw")
        proc = await asyncio.to_thread(
            subprocess.run, cmd, env=env, capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 0, proc.stderr
        assert "127.0.0.1:5001" in proc.stdout and "127.0.0.1:5002" in proc.stdout
    finally:
        await resolver.close()
        await wrong.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
async def test_tls_with_a_client_certificate() -> None:
    with EtcdCluster(1, tls=True) as etcd:
        assert etcd.tls is not None
        etcd.etcdctl("put", f"{PREFIX}/127.0.0.1:7001", go_value("127.0.0.1:7001"))
        target = etcd.target(PREFIX, query=f"ca={etcd.tls.ca}")
        client_cert = {"cert_file": str(etcd.tls.client), "key_file": str(etcd.tls.client_key)}
        rec, anonymous = Recorder(), Recorder()
        resolver = start_resolver(target, rec, **client_cert)
        refused = start_resolver(target, anonymous)  # etcd demands a client certificate
        try:
            await eventually(lambda: rec.addresses == {"127.0.0.1:7001"}, 15)
            async with grpc_balancer.registration(target, "127.0.0.1:7002", options=client_cert):
                await eventually(lambda: rec.addresses == {"127.0.0.1:7001", "127.0.0.1:7002"})
            await eventually(lambda: rec.addresses == {"127.0.0.1:7001"})
            await eventually(lambda: bool(anonymous.errors), 15)
            assert not anonymous.updates and "UNAVAILABLE" in anonymous.errors[-1]
        finally:
            await resolver.close()
            await refused.close()


async def test_hostile_values_skip_their_key_and_never_stop_discovery(
    etcd_node: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A port of non-ASCII digits (int() raises) and 100,000 nested brackets
    (RecursionError) used to stop discovery for every client of the prefix."""
    caplog.set_level(logging.WARNING, "grpc_balancer.resolvers.etcd")
    good = "127.0.0.1:2001"
    etcd_node.etcdctl("put", f"{PREFIX}/{good}", go_value(good))
    etcd_node.etcdctl("put", f"{PREFIX}/superscript", go_value("127.0.0.1:\u00b2"))
    etcd_node.etcdctl("put", f"{PREFIX}/nested", "[" * 100_000)
    rec = Recorder()  # a new client: lists the prefix with both bad keys in it
    resolver = start_resolver(etcd_node.target(PREFIX), rec)
    try:
        await eventually(lambda: rec.addresses == {good})
        etcd_node.etcdctl("put", f"{PREFIX}/nested2", "{" * 100_000)  # through the watch
        etcd_node.etcdctl("put", f"{PREFIX}/fine", go_value("127.0.0.1:2003"))
        await eventually(lambda: rec.addresses == {good, "127.0.0.1:2003"})
        assert not rec.errors and resolver.listings == 1  # never re-listed
        warned = " ".join(r.getMessage() for r in caplog.records)
        for key in ("superscript", "nested", "nested2"):
            assert f"{PREFIX}/{key}" in warned
        assert not any(r.exc_info for r in caplog.records)  # no traceback
    finally:
        await resolver.close()


async def test_an_addr_with_a_newline_is_skipped_and_logged_escaped(
    etcd_node: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Log injection (issue 13.7): hosts are a host name or an IP literal, and an
    outside string reaches a log line only escaped."""
    caplog.set_level(logging.DEBUG, "grpc_balancer")
    good = "127.0.0.1:2001"
    etcd_node.etcdctl("put", f"{PREFIX}/{good}", go_value(good))
    for key, addr in [
        ("newline", "evil\nCRITICAL grpc_balancer: forged:1"),
        ("nul", "a\x01b:1"),
        ("space", "a b:1"),
    ]:
        etcd_node.etcdctl("put", f"{PREFIX}/{key}", go_value(addr))
    rec = Recorder()
    resolver = start_resolver(etcd_node.target(PREFIX), rec)
    try:
        await eventually(lambda: rec.addresses == {good})
        await eventually(lambda: "not a host name or IP address" in caplog.text)
    finally:
        await resolver.close()
    for record in caplog.records:
        message = record.getMessage()
        assert "\n" not in message and "\x01" not in message, message
    assert "\\nCRITICAL" in caplog.text  # shown, escaped


def _put_junk(node: EtcdCluster, names: Sequence[str]) -> None:
    """Many puts in few etcdctl runs (etcd allows 128 operations per transaction)."""
    for start in range(0, len(names), 100):
        ops = "\n".join(f"put {PREFIX}/{name} junk" for name in names[start : start + 100])
        subprocess.run(
            [ETCDCTL, f"--endpoints={node.members[0].endpoint}", "txn"],
            input=f"\n{ops}\n\n\n",
            text=True,
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True,
            timeout=30,
            check=True,
        )


async def test_thousands_of_junk_keys_give_a_few_warnings_and_a_count(
    etcd_node: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "grpc_balancer.resolvers.etcd")
    good = "127.0.0.1:2101"
    etcd_node.etcdctl("put", f"{PREFIX}/{good}", go_value(good))
    _put_junk(etcd_node, [f"junk-{i}" for i in range(300)])
    rec = Recorder()
    resolver = start_resolver(etcd_node.target(PREFIX), rec)

    def ours() -> list[str]:
        """The resolver's own lines (not, say, asyncio's about another test's loop)."""
        return [r.getMessage() for r in caplog.records if r.name == "grpc_balancer.resolvers.etcd"]

    try:
        await eventually(lambda: rec.addresses == {good})
        listed = ours()
        assert len(listed) == 6, listed  # five keys named, then one line for the rest
        assert "skipped 295 more keys" in listed[-1]
        _put_junk(etcd_node, [f"later-{i}" for i in range(100)])  # one watch batch
        await eventually(lambda: any("95 more" in line for line in ours()[6:]))
        assert len(ours()) == 12
        assert rec.addresses == {good}
    finally:
        await resolver.close()


def _put_big(node: EtcdCluster, count: int, size: int) -> None:
    value = "x" * size  # etcdctl reads a value this large from stdin
    for i in range(count):
        subprocess.run(
            [ETCDCTL, f"--endpoints={node.members[0].endpoint}", "put", f"{PREFIX}/big-{i:02}"],
            input=value,
            text=True,
            env={**os.environ, "ETCDCTL_API": "3"},
            capture_output=True,
            timeout=30,
            check=True,
        )


async def test_a_prefix_larger_than_a_grpc_message_is_listed_in_pages(
    etcd_node: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    # 70 values of 1 MB: more than the 64 MiB a single reply may carry
    caplog.set_level(logging.WARNING, "grpc_balancer")
    good = "127.0.0.1:2201"
    etcd_node.etcdctl("put", f"{PREFIX}/{good}", go_value(good))
    _put_big(etcd_node, 70, 1024 * 1024)
    rec = Recorder()
    resolver = start_resolver(etcd_node.target(PREFIX), rec)
    try:
        await eventually(lambda: rec.addresses == {good}, timeout=30)
        assert not rec.errors
        assert resolver.listings == 1
    finally:
        await resolver.close()
