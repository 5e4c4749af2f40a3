"""grpcio's channel semantics on both channel kinds: close() cancels what is in flight
and closes every connection (checked with the OS), close(grace), no noise at exit, one
event loop per asyncio channel, and grpcio's factory parameters and channel options."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

import grpc_balancer
from grpc_balancer.demo import greeter_pb2_grpc
from grpc_balancer.demo.servicer import GreeterServicer
from grpc_balancer.testing import GreeterFleet, ServerProcesses, cli_env, manual_resolver
from tests.channels import AnyChannel, Req, open_channel
from tests.helpers import established_to, eventually

ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def api(kind: str) -> Any:
    return grpc_balancer.aio if kind == "aio" else grpc_balancer


def outcome(result: Any) -> str:
    """What one call ended with: ``OK``, a status code name, or ``CancelledError``
    (how grpc.aio itself ends an awaited call that its channel's close() cancelled)."""
    if isinstance(result, asyncio.CancelledError):
        return "CancelledError"
    if isinstance(result, grpc.RpcError):
        return result.code().name  # type: ignore[attr-defined, no-any-return]
    if isinstance(result, BaseException):
        return f"{type(result).__name__}: {result}"
    return "OK"


def expected_cancelled(kind: str) -> set[str]:
    return {"CANCELLED", "CancelledError"} if kind == "aio" else {"CANCELLED"}


async def start_calls(ch: AnyChannel, bidi: bool = True) -> list[asyncio.Future[Any]]:
    """Two unary calls, a server stream and a bidi stream, all in flight when it returns
    (the servers hold each one for a minute)."""
    stub = ch.stub()
    calls = [
        asyncio.ensure_future(stub.SayHello(Req(name="u1"), timeout=120)),
        asyncio.ensure_future(stub.SayHello(Req(name="u2"), timeout=120)),
        asyncio.ensure_future(stub.SayHelloStream(Req(name="s", count=3), timeout=120)),
    ]
    if bidi:
        calls.append(asyncio.ensure_future(stub.Chat([Req(name="c1")], timeout=120)))
    return calls


def servers_busy(fleet: GreeterFleet) -> int:
    """Calls the servers have started (each of the four calls above counts once)."""
    return sum(s.servicer.calls for s in fleet.servers)  # type: ignore[union-attr]


@pytest.fixture
async def slow_fleet() -> Any:
    async with GreeterFleet(2) as fleet:
        for server in fleet.servers:
            server.faults.delay_ms = 60_000
        yield fleet


@pytest.mark.parametrize("bidi", [False, True], ids=["unary+server-stream", "with-bidi"])
async def test_close_cancels_calls_and_streams_and_closes_every_connection(
    channel_kind: str, slow_fleet: GreeterFleet, bidi: bool
) -> None:
    ports = set(slow_fleet.ports)
    ch = open_channel(channel_kind, slow_fleet.target(), policy="round_robin")
    assert await ch.wait_for_settled(15)
    calls = await start_calls(ch, bidi)
    started = len(calls)
    await eventually(lambda: servers_busy(slow_fleet) == started)
    assert set(established_to(ports)) == ports

    await ch.close()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert {outcome(r) for r in results} <= expected_cancelled(channel_kind), results
    assert ch.get_state() is grpc.ChannelConnectivity.SHUTDOWN
    assert ch.picker.error.code is grpc.StatusCode.CANCELLED  # a FailPicker: no retries

    # grpc.aio keeps a connection while a call object made on it is alive (as with
    # grpcio's own channel); once the finished calls are dropped, none is left.
    del calls, results
    gc.collect()
    await eventually(lambda: not established_to(ports))


async def test_unary_calls_held_past_close_do_not_keep_its_connections(
    slow_fleet: GreeterFleet,
) -> None:
    """The application may keep the call objects a close cancelled: the connections
    still close (what the calls received is kept, grpcio's core calls are not), and so
    the connectivity watches end on this event loop, not after it."""
    ports = set(slow_fleet.ports)
    ch = grpc_balancer.aio.insecure_channel(slow_fleet.target(), policy="round_robin")
    assert await ch.wait_for_settled(15)
    stub = greeter_pb2_grpc.GreeterStub(ch)
    calls = [stub.SayHello(Req(name=f"u{i}"), timeout=120) for i in range(3)]
    await eventually(lambda: servers_busy(slow_fleet) == 3)
    await ch.close()
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() is grpc.StatusCode.CANCELLED
        assert await call.code() is grpc.StatusCode.CANCELLED
        assert tuple(await call.initial_metadata()) == ()
    gc.collect()
    await eventually(lambda: not established_to(ports))
    assert len(calls) == 3  # still held


async def test_a_call_that_waited_for_a_backend_is_not_kept_by_the_channel(
    fleet3: GreeterFleet,
) -> None:
    """A call waiting for a picker is listed for close() to end; once it finishes it is
    not (it used to stay listed, and with it its grpcio call, until the channel closed)."""
    async with grpc_balancer.aio.insecure_channel(fleet3.target(), policy="round_robin") as ch:
        stub = greeter_pb2_grpc.GreeterStub(ch)
        calls = [stub.SayHello(Req(name="first"), timeout=10) for _ in range(3)]  # no READY yet
        assert len(ch.waiting_calls) == 3
        for call in calls:
            await call
        assert ch.waiting_calls == set()
        await stub.SayHello(Req(name="later"), timeout=10)
        assert ch.waiting_calls == set()


async def test_close_with_grace_lets_calls_finish_and_refuses_new_ones(
    channel_kind: str, fleet3: GreeterFleet
) -> None:
    for server in fleet3.servers:
        server.faults.delay_ms = 300
    ch = open_channel(channel_kind, fleet3.target(), policy="round_robin")
    assert await ch.wait_for_settled(15)
    stub = ch.stub()
    calls = [asyncio.ensure_future(stub.SayHello(Req(name=str(i)), timeout=60)) for i in range(3)]
    await eventually(lambda: servers_busy(fleet3) == 3)
    if channel_kind == "aio":
        closing = asyncio.ensure_future(ch.channel.close(60))
    else:
        closing = asyncio.ensure_future(asyncio.to_thread(ch.channel.close, 60))
    await eventually(lambda: ch.get_state() is grpc.ChannelConnectivity.SHUTDOWN)
    with pytest.raises(grpc_balancer.ChannelClosedError, match="is closed"):
        await stub.SayHello(Req(name="late"), timeout=5)
    await closing
    assert [outcome(r) for r in await asyncio.gather(*calls, return_exceptions=True)] == ["OK"] * 3


async def test_close_grace_is_at_most_grace(channel_kind: str, slow_fleet: GreeterFleet) -> None:
    ch = open_channel(channel_kind, slow_fleet.target(), policy="round_robin")
    assert await ch.wait_for_settled(15)
    calls = await start_calls(ch)
    await eventually(lambda: servers_busy(slow_fleet) == 4)
    if channel_kind == "aio":
        await ch.channel.close(0.2)
    else:
        await asyncio.to_thread(ch.channel.close, 0.2)
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert {outcome(r) for r in results} <= expected_cancelled(channel_kind), results


async def test_a_call_cancelled_by_close_is_not_retried(
    channel_kind: str, slow_fleet: GreeterFleet
) -> None:
    """Even with CANCELLED retryable: after close() nothing is sent again."""
    config = {
        "methodConfig": [
            {
                "name": [{"service": "greeter.Greeter"}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.01s",
                    "backoffMultiplier": 1,
                    "retryableStatusCodes": ["CANCELLED"],
                },
            }
        ]
    }
    ch = open_channel(channel_kind, slow_fleet.target(), service_config=config)
    assert await ch.wait_for_settled(15)
    call = asyncio.ensure_future(ch.stub().SayHello(Req(), timeout=120))
    await eventually(lambda: servers_busy(slow_fleet) == 1)
    await ch.close()
    result = (await asyncio.gather(call, return_exceptions=True))[0]
    assert outcome(result) in expected_cancelled(channel_kind), result
    assert servers_busy(slow_fleet) == 1


async def test_close_ends_calls_of_an_endpoint_the_resolver_dropped(channel_kind: str) -> None:
    """A removed endpoint keeps serving its calls (draining); close() cancels those too."""
    async with GreeterFleet(2) as fleet:
        fleet.servers[0].faults.delay_ms = 60_000
        resolver = manual_resolver([fleet.addresses[0]])
        ch = open_channel(channel_kind, resolver.target)
        assert await ch.wait_for_settled(15)
        call = asyncio.ensure_future(ch.stub().SayHello(Req(), timeout=120))
        await eventually(lambda: servers_busy(fleet) == 1)
        resolver.update([fleet.addresses[1]])
        await eventually(lambda: [sc.address for sc in ch.subchannels] == [fleet.addresses[1]])
        assert established_to({fleet.ports[0]})
        await ch.close()
        assert outcome((await asyncio.gather(call, return_exceptions=True))[0]) in (
            expected_cancelled(channel_kind)
        )
        del call
        gc.collect()
        await eventually(lambda: not established_to(set(fleet.ports)))


# -- no noise at exit --------------------------------------------------------------------
EXIT_SCRIPT = """
import asyncio, sys
import grpc_balancer
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc

target = sys.argv[1]
Req = greeter_pb2.HelloRequest


async def use_aio(close, in_flight=False):
    ch = grpc_balancer.aio.insecure_channel(target, policy="round_robin")
    stub = greeter_pb2_grpc.GreeterStub(ch)
    for _ in range(4):
        await stub.SayHello(Req(name="x"), timeout=10)
    [r async for r in stub.SayHelloStream(Req(count=2), timeout=10)]
    chat = stub.Chat()
    await chat.write(Req(name="c"))
    await chat.read()
    await chat.done_writing()
    await chat.read()  # EOF
    if in_flight:
        pending = [asyncio.ensure_future(stub.SayHello(Req(), timeout=60)) for _ in range(3)]
        await asyncio.sleep(0.3)
    if close:
        await ch.close()
    if in_flight:
        await asyncio.gather(*pending, return_exceptions=True)
    return ch


def use_sync(close):
    ch = grpc_balancer.insecure_channel(target, policy="round_robin")
    stub = greeter_pb2_grpc.GreeterStub(ch)
    for _ in range(4):
        stub.SayHello(Req(name="x"), timeout=10)
    list(stub.SayHelloStream(Req(count=2), timeout=10))
    list(stub.Chat(iter([Req(name="a"), Req(name="b")]), timeout=10))
    if close:
        ch.close()
    return ch


scenario = sys.argv[2]
kept = []
if scenario == "aio closed":
    asyncio.run(use_aio(True))
elif scenario == "aio closed with calls in flight":
    asyncio.run(use_aio(True, in_flight=True))
elif scenario == "aio not closed":
    kept.append(asyncio.run(use_aio(False)))
elif scenario == "aio not closed, dropped":
    asyncio.run(use_aio(False))
elif scenario == "aio closed, then sync":
    asyncio.run(use_aio(True))
    use_sync(True)
elif scenario == "aio closed with calls in flight, then sync":
    asyncio.run(use_aio(True, in_flight=True))
    use_sync(True)
elif scenario == "aio not closed, then sync not closed":
    kept.append(asyncio.run(use_aio(False)))
    kept.append(use_sync(False))
elif scenario == "sync closed":
    use_sync(True)
elif scenario == "sync not closed":
    kept.append(use_sync(False))
elif scenario == "sync not closed, dropped":
    use_sync(False)
else:
    raise SystemExit(f"unknown scenario {scenario}")
print("done")
"""

SCENARIOS = [
    "aio closed",
    "aio closed with calls in flight",
    "aio not closed",
    "aio not closed, dropped",
    "aio closed, then sync",
    "aio closed with calls in flight, then sync",
    "aio not closed, then sync not closed",
    "sync closed",
    "sync not closed",
    "sync not closed, dropped",
]

NOISE = (
    "Event loop is closed",
    "was never awaited",
    "Task was destroyed but it is pending",
    "Exception ignored",
    "Traceback",
    "Warning",
)


@pytest.fixture(scope="module")
def servers() -> Iterator[ServerProcesses]:
    with ServerProcesses(2, args=["--delay-ms", "5"]) as fleet:
        yield fleet


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_warnings_at_exit(scenario: str, servers: ServerProcesses, tmp_path: Path) -> None:
    script = tmp_path / "exit_script.py"
    script.write_text(EXIT_SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(script), servers.target(), scenario],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("done"), proc.stdout
    noise = [line for line in proc.stderr.splitlines() if any(n in line for n in NOISE)]
    assert not noise, proc.stderr


# -- one event loop per asyncio channel ------------------------------------------------------
def test_aio_channel_used_from_another_event_loop_says_so(servers: ServerProcesses) -> None:
    async def first() -> Any:
        ch = grpc_balancer.aio.insecure_channel(servers.target())
        await greeter_pb2_grpc.GreeterStub(ch).SayHello(Req(), timeout=10)
        return ch

    ch = asyncio.run(first())

    async def second() -> None:
        stub = greeter_pb2_grpc.GreeterStub(ch)
        with pytest.raises(grpc_balancer.WrongEventLoopError, match="another event loop"):
            await stub.SayHello(Req(), timeout=10)
        with pytest.raises(grpc_balancer.WrongEventLoopError, match="now closed"):
            await ch.channel_ready()
        with pytest.raises(grpc_balancer.WrongEventLoopError):
            await ch.close()

    asyncio.run(second())


async def test_aio_channel_of_a_loop_in_another_thread(servers: ServerProcesses) -> None:
    """Its loop still runs elsewhere: calls say so; close() is handed to that loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:

        async def make() -> Any:
            ch = grpc_balancer.aio.insecure_channel(servers.target())
            await greeter_pb2_grpc.GreeterStub(ch).SayHello(Req(), timeout=10)
            return ch

        ch = await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(make(), loop))
        with pytest.raises(grpc_balancer.WrongEventLoopError, match="still running elsewhere"):
            await greeter_pb2_grpc.GreeterStub(ch).SayHello(Req(), timeout=10)
        await ch.close()
        assert ch.get_state() is grpc.ChannelConnectivity.SHUTDOWN
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# -- grpcio's factory parameters and channel options ------------------------------------------
@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (grpc_balancer.aio.insecure_channel, grpc.aio.insecure_channel),
        (grpc_balancer.aio.secure_channel, grpc.aio.secure_channel),
        (grpc_balancer.insecure_channel, grpc.insecure_channel),
        (grpc_balancer.secure_channel, grpc.secure_channel),
    ],
)
def test_factories_take_grpcio_parameters_in_grpcio_order(ours: Any, theirs: Any) -> None:
    mine = inspect.signature(ours).parameters
    grpcio = inspect.signature(theirs).parameters
    assert list(mine)[: len(grpcio)] == list(grpcio)
    for name, param in grpcio.items():
        assert mine[name].kind is param.kind, name
        assert mine[name].default == param.default, name
    extras = [p for p in list(mine.values())[len(grpcio) :]]
    assert {p.name for p in extras} == {"policy", "service_config", "resolver_options"}
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in extras)


async def test_options_positionally_with_grpc_service_config(
    channel_kind: str, fleet3: GreeterFleet
) -> None:
    options = [("grpc.service_config", ROUND_ROBIN), ("grpc.primary_user_agent", "semantics")]
    ch = AnyChannel(channel_kind, api(channel_kind).insecure_channel(fleet3.target(), options))
    async with ch:
        assert ch.config.policy == "round_robin"
        assert await ch.wait_for_settled(15)
        ports = await ch.say_hello_ports(6)
        assert sorted(ports) == sorted(fleet3.ports * 2)
        core = ch.channel if channel_kind == "aio" else ch.channel.core
        passed_on = {key for key, _ in core._options}
        assert "grpc.primary_user_agent" in passed_on
        assert not passed_on & {"grpc.service_config", "grpc.lb_policy_name"}


async def test_grpc_lb_policy_name_option(channel_kind: str, fleet3: GreeterFleet) -> None:
    options = [("grpc.lb_policy_name", "round_robin")]
    async with open_channel(channel_kind, fleet3.target(), options=options) as ch:
        assert ch.config.policy == "round_robin"
        assert await ch.wait_for_settled(15)
        assert sorted(await ch.say_hello_ports(3)) == sorted(fleet3.ports)
        core = ch.channel if channel_kind == "aio" else ch.channel.core
        assert "grpc.lb_policy_name" not in {key for key, _ in core._options}


@pytest.mark.parametrize(
    ("options", "kwargs", "message"),
    [
        (
            [("grpc.service_config", ROUND_ROBIN)],
            {"service_config": {"loadBalancingConfig": [{"pick_first": {}}]}},
            "service_config= and the 'grpc.service_config' channel option",
        ),
        (
            [("grpc.lb_policy_name", "pick_first")],
            {"policy": "round_robin"},
            "policy='round_robin' disagrees with the 'grpc.lb_policy_name' channel option",
        ),
        (
            [("grpc.lb_policy_name", "pick_first"), ("grpc.service_config", ROUND_ROBIN)],
            {},
            "disagrees with the service config",
        ),
        ([("grpc.service_config", "{not json")], {}, "not valid JSON"),
    ],
)
def test_conflicting_channel_options_are_a_service_config_error(
    channel_kind: str, options: Any, kwargs: Any, message: str
) -> None:
    with pytest.raises(grpc_balancer.ServiceConfigError, match=message):
        api(channel_kind).insecure_channel("static:///127.0.0.1:1", options, **kwargs)


def test_the_same_config_both_ways_is_fine(channel_kind: str) -> None:
    ch = api(channel_kind).insecure_channel(
        "static:///127.0.0.1:1",
        [("grpc.service_config", ROUND_ROBIN), ("grpc.lb_policy_name", "round_robin")],
        service_config=json.loads(ROUND_ROBIN),
        policy="round_robin",
    )
    assert ch.config.policy == "round_robin"
    if channel_kind == "sync":
        ch.close()


async def test_compression_reaches_every_endpoint(channel_kind: str) -> None:
    """The servers accept only uncompressed messages: a gzip channel's calls fail with
    the servers' UNIMPLEMENTED, so the compression was applied on each endpoint."""
    servers, ports = [], []
    for _ in range(2):
        server = grpc.aio.server(options=[("grpc.compression_enabled_algorithms_bitset", 1)])
        port = server.add_insecure_port("127.0.0.1:0")
        greeter_pb2_grpc.add_GreeterServicer_to_server(GreeterServicer(port), server)
        await server.start()
        servers.append(server)
        ports.append(port)
    target = "static:///" + ",".join(f"127.0.0.1:{p}" for p in ports)
    try:
        async with AnyChannel(channel_kind, api(channel_kind).insecure_channel(target)) as plain:
            assert await plain.wait_for_settled(15)
            assert len(set(await plain.say_hello_ports(4))) == 1  # pick_first: fine
        gzip = api(channel_kind).insecure_channel(
            target, None, grpc.Compression.Gzip, policy="round_robin"
        )
        async with AnyChannel(channel_kind, gzip) as ch:
            assert await ch.wait_for_settled(15)
            for _ in range(len(ports)):
                with pytest.raises(grpc.RpcError) as info:
                    await ch.stub().SayHello(Req(name="x" * 100), timeout=10)
                err: Any = info.value
                assert err.code() is grpc.StatusCode.UNIMPLEMENTED
                assert "gzip" in err.details()
    finally:
        for server in servers:
            await server.stop(0)
