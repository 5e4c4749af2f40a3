"""``grpc-balancer resolve`` end to end, in a subprocess, against a real dnsmasq."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

from grpc_balancer.testing import cli_env
from tests.dnsmasq import DnsmasqServer

NAME = "greeter.test"


async def _run(*args: str, timeout: float = 30.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "grpc_balancer", "resolve", *args,
        env=cli_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_resolve_prints_the_endpoints_as_a_table(dnsmasq: DnsmasqServer) -> None:
    dnsmasq.set_a(NAME, ["127.0.0.11", "127.0.0.12"])
    code, out, _ = await _run(dnsmasq.target(NAME, 50051))
    assert code == 0
    assert "2 endpoint(s)" in out
    assert "ADDRESS" in out and "WEIGHT" in out and "PRIORITY" in out
    assert "127.0.0.11:50051" in out and "127.0.0.12:50051" in out
    assert '{"host": "greeter.test"}' in out


async def test_resolve_srv_as_json_shows_weights_and_priorities(dnsmasq: DnsmasqServer) -> None:
    dnsmasq.set_a("node.test", ["127.0.0.1"])
    dnsmasq.set_srv(
        "_grpc._tcp.greeter.test", [("node.test", 7001, 0, 5), ("node.test", 7002, 1, 9)]
    )
    code, out, _ = await _run(dnsmasq.srv_target("_grpc._tcp.greeter.test"), "--json")
    assert code == 0
    (line,) = out.splitlines()
    endpoints = json.loads(line)["endpoints"]
    assert [(e["address"], e["weight"], e["priority"]) for e in endpoints] == [
        ("127.0.0.1:7001", 5, 0),
        ("127.0.0.1:7002", 9, 1),
    ]


async def test_resolve_watch_prints_each_change_and_exits_0_on_ctrl_c(
    dnsmasq: DnsmasqServer,
) -> None:
    dnsmasq.set_a(NAME, ["127.0.0.11"])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "grpc_balancer", "resolve", dnsmasq.target(NAME, 80),
        "--watch", "--json", "--timeout", "60",
        env=cli_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    try:

        async def next_record() -> dict[str, Any]:
            line = await asyncio.wait_for(proc.stdout.readline(), 20)  # type: ignore[union-attr]
            assert line, "resolve exited early"
            record: dict[str, Any] = json.loads(line)
            return record

        first = await next_record()
        assert [e["address"] for e in first["endpoints"]] == ["127.0.0.11:80"]
        dnsmasq.set_a(NAME, ["127.0.0.11", "127.0.0.12"])
        second = await next_record()
        assert [e["address"] for e in second["endpoints"]] == ["127.0.0.11:80", "127.0.0.12:80"]
        dnsmasq.kill()
        third = await next_record()
        assert "timed out" in third["error"] and NAME in third["error"]
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proc.communicate()


async def test_resolve_watch_stops_at_the_timeout(dnsmasq: DnsmasqServer) -> None:
    dnsmasq.set_a(NAME, ["127.0.0.11"])
    code, out, _ = await _run(dnsmasq.target(NAME, 80), "--watch", "--timeout", "1.5")
    assert code == 0
    assert out.count("1 endpoint(s)") == 1  # unchanged refreshes are not repeated


async def test_resolve_reports_a_dns_error_with_exit_1(dnsmasq: DnsmasqServer) -> None:
    code, _, err = await _run(dnsmasq.target("greeter.example", 80))  # REFUSED
    assert code == 1
    assert "resolver error" in err and "REFUSED" in err and "greeter.example" in err


async def test_resolve_works_for_static_targets_and_rejects_bad_ones() -> None:
    code, out, _ = await _run("static:///127.0.0.1:1,127.0.0.1:2")
    assert code == 0 and "127.0.0.1:1" in out and "127.0.0.1:2" in out
    code, _, err = await _run("static:///greeter.test")
    assert code == 2
    assert err.strip().splitlines() == [
        "grpc-balancer: error: address 'greeter.test': missing port (expected host:port)"
    ]
