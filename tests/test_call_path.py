"""The one call path, end to end: the cases where the old per-kind copies drifted.

Each test runs real servers (in-process, on 127.0.0.1) and the real channels; the
decisions themselves are unit-tested in tests/test_attempt_plan.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import grpc
import grpc.aio

import grpc_balancer
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.demo.servicer import Faults
from grpc_balancer.testing import GreeterFleet
from tests.helpers import eventually

Req = greeter_pb2.HelloRequest
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


def _method_config(lb: str = "round_robin", **policy: Any) -> dict[str, Any]:
    return {
        "loadBalancingConfig": [{lb: {}}],
        "methodConfig": [{"name": [{"service": "greeter.Greeter"}], **policy}],
    }


def retrying(
    max_attempts: int = 5, backoff: str = "0.2s", lb: str = "round_robin"
) -> dict[str, Any]:
    return _method_config(
        lb,
        retryPolicy={
            "maxAttempts": max_attempts,
            "initialBackoff": backoff,
            "maxBackoff": backoff,
            "backoffMultiplier": 1,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    )


def hedging(delay: str = "0.05s", max_attempts: int = 3) -> dict[str, Any]:
    return _method_config(
        hedgingPolicy={
            "maxAttempts": max_attempts,
            "hedgingDelay": delay,
            "nonFatalStatusCodes": ["UNAVAILABLE"],
        }
    )


def served(fleet: GreeterFleet) -> int:
    return sum(s.servicer.calls for s in fleet.servers if s.servicer is not None)


async def test_aio_unary_call_starts_when_created_not_when_awaited() -> None:
    async with (
        GreeterFleet(1) as fleet,
        grpc_balancer.aio.insecure_channel(fleet.target()) as ch,
    ):
        await ch.channel_ready()
        stub = greeter_pb2_grpc.GreeterStub(ch)
        call = stub.SayHello(Req(name="early"), timeout=10)
        await eventually(lambda: served(fleet) == 1)  # reached the server, not awaited yet
        reply = await call
        assert "early" in reply.message


async def test_cancelling_the_task_awaiting_an_aio_call_cancels_both_as_grpc_aio() -> None:
    """asyncio's cancellation of the awaiting task (Ctrl-C in asyncio.run, wait_for) ends
    the RPC and reaches the task as CancelledError, as with grpc.aio's own channel (it
    must not turn into a CANCELLED RpcError that a retry loop would swallow)."""

    async def cancelled_while_awaiting(ch: Any) -> tuple[str, bool]:
        call = greeter_pb2_grpc.GreeterStub(ch).SayHello(Req(name="held"), timeout=60)
        task = asyncio.ensure_future(call)
        await eventually(lambda: served(fleet) > before)
        task.cancel()
        try:
            await task
            outcome = "OK"
        except asyncio.CancelledError:
            outcome = "CancelledError"
        except grpc.RpcError as err:
            outcome = f"RpcError {err.code().name}"  # type: ignore[attr-defined]
        return outcome, call.cancelled()

    async with GreeterFleet(1, faults=[Faults(delay_ms=60_000)]) as fleet:
        async with grpc.aio.insecure_channel(fleet.servers[0].address) as theirs:
            before = served(fleet)
            expected = await cancelled_while_awaiting(theirs)
        assert expected == ("CancelledError", True)
        async with grpc_balancer.aio.insecure_channel(fleet.target()) as ours:
            await ours.channel_ready()
            before = served(fleet)
            assert await cancelled_while_awaiting(ours) == expected
            await eventually(lambda: all(sc.in_flight == 0 for sc in ours.subchannels))


async def test_sync_future_with_retry_policy_reports_previous_attempts() -> None:
    # round robin over a failing and a healthy backend: each failure is retried once
    fleet = GreeterFleet(2, faults=[Faults(fail_rate=1.0), Faults()])
    async with fleet:
        target = f"static:///{fleet.addresses[0]},{fleet.addresses[1]}"
        ch = grpc_balancer.insecure_channel(target, service_config=retrying(backoff="0.01s"))
        try:
            await asyncio.to_thread(ch.wait_for_settled, 10)
            stub = greeter_pb2_grpc.GreeterStub(ch)

            def run() -> tuple[Any, Any]:
                future = stub.SayHello.future(Req(name="f"), timeout=10)
                return future.result(), future

            previous = 0
            for _ in range(4):
                reply, future = await asyncio.to_thread(run)
                assert "from" in reply.message
                assert future.code() is grpc.StatusCode.OK
                trailers = dict(future.trailing_metadata() or ())
                previous += int(trailers.get("grpc-previous-rpc-attempts", "0"))
            failed = fleet.servers[0].servicer
            assert failed is not None and previous == failed.calls >= 1
        finally:
            ch.close()


async def test_hedged_sync_futures_hold_no_thread_per_call() -> None:
    faults = [Faults(delay_ms=300), Faults(delay_ms=300), Faults()]
    async with GreeterFleet(3, faults=faults) as fleet:
        ch = grpc_balancer.insecure_channel(fleet.target(), service_config=hedging())
        try:
            await asyncio.to_thread(ch.wait_for_settled, 10)
            stub = greeter_pb2_grpc.GreeterStub(ch)
            before = threading.active_count()
            futures = [stub.SayHello.future(Req(name=str(i)), timeout=20) for i in range(60)]
            during = threading.active_count()
            replies = await asyncio.to_thread(lambda: [f.result() for f in futures])
            assert len(replies) == 60
            assert during - before < 10  # grpcio's own pollers at most, never one per call
            trailers = [dict(f.trailing_metadata() or ()) for f in futures]
            assert any("grpc-previous-rpc-attempts" in t for t in trailers)  # hedges answered
        finally:
            ch.close()


async def test_cancelled_sync_future_is_done_at_once_and_stops_hedging() -> None:
    faults = [Faults(delay_ms=2_000)] * 3
    async with GreeterFleet(3, faults=faults) as fleet:
        ch = grpc_balancer.insecure_channel(
            fleet.target(), service_config=hedging(delay="0.5s", max_attempts=3)
        )
        try:
            await asyncio.to_thread(ch.wait_for_settled, 10)
            stub = greeter_pb2_grpc.GreeterStub(ch)
            futures = [stub.SayHello.future(Req(name=str(i)), timeout=20) for i in range(20)]
            await eventually(lambda: served(fleet) >= 20)
            for future in futures:
                assert future.cancel()
                assert future.done() and not future.running() and future.cancelled()
            sent = served(fleet)
            await asyncio.sleep(1.2)  # past two more hedging delays
            assert served(fleet) == sent  # no hedge went out after cancel()
        finally:
            ch.close()


async def test_sync_futures_pending_at_close_finish_cancelled() -> None:
    async with GreeterFleet(1, faults=[Faults(fail_rate=1.0)]) as fleet:
        ch = grpc_balancer.insecure_channel(fleet.target(), service_config=retrying(backoff="5s"))
        await asyncio.to_thread(ch.wait_for_settled, 10)
        stub = greeter_pb2_grpc.GreeterStub(ch)
        futures = [stub.SayHello.future(Req(name=str(i)), timeout=30) for i in range(10)]
        await eventually(lambda: served(fleet) >= 10)  # all in their 5 s backoff now
        await asyncio.to_thread(ch.close)
        for future in futures:
            error = await asyncio.to_thread(future.exception, 5)
            assert error is not None and error.code() is grpc.StatusCode.CANCELLED


async def test_retrying_stream_cancelled_during_backoff_ends_at_once() -> None:
    # 3 failing backends, maxAttempts 5: cancel() during the first backoff. The backoff
    # is full-jitter (gRFC A6: uniform in [0, 60 s]), so a retry inside the first 0.2 s
    # is a 1-in-300 event; what is asserted is that nothing is sent after cancel().
    fleet = GreeterFleet(3, faults=[Faults(fail_rate=1.0)] * 3)
    async with fleet:
        for kind in ("aio", "sync"):
            if kind == "aio":
                async with grpc_balancer.aio.insecure_channel(
                    fleet.target(), service_config=retrying(backoff="60s")
                ) as ach:
                    await ach.channel_ready()
                    call = greeter_pb2_grpc.GreeterStub(ach).SayHelloStream(
                        Req(name="s", count=3), timeout=300
                    )
                    start = served(fleet)
                    await eventually(lambda s=start: served(fleet) > s)
                    assert call.cancel()
                    at_cancel = served(fleet)
                    assert await call.code() is grpc.StatusCode.CANCELLED
                    await asyncio.sleep(0.3)
                    assert served(fleet) == at_cancel
            else:
                sch = grpc_balancer.insecure_channel(
                    fleet.target(), service_config=retrying(backoff="60s")
                )
                try:
                    await asyncio.to_thread(sch.wait_for_settled, 10)
                    stream = greeter_pb2_grpc.GreeterStub(sch).SayHelloStream(
                        Req(name="s", count=3), timeout=300
                    )
                    start = served(fleet)
                    outcome: dict[str, Any] = {}

                    def read(stream: Any = stream, outcome: dict[str, Any] = outcome) -> None:
                        try:
                            outcome["messages"] = list(stream)
                        except grpc.RpcError as err:
                            outcome["error"] = err

                    reader = threading.Thread(target=read)
                    reader.start()
                    await eventually(lambda s=start: served(fleet) > s)
                    await asyncio.sleep(0.1)
                    assert stream.cancel()
                    at_cancel = served(fleet)
                    await asyncio.to_thread(reader.join, 5)
                    assert not reader.is_alive()
                    assert outcome["error"].code() is grpc.StatusCode.CANCELLED
                    await asyncio.sleep(0.3)
                    assert served(fleet) == at_cancel
                finally:
                    sch.close()


async def test_transparent_retry_exhaustion_is_the_same_error_on_future_and_blocking() -> None:
    # nothing listens on these ports: every attempt fails before reaching a server
    from grpc_balancer.testing import free_port

    target = f"static:///127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    ch = grpc_balancer.insecure_channel(
        target, service_config=retrying(max_attempts=2, backoff="0.01s")
    )
    try:
        stub = greeter_pb2_grpc.GreeterStub(ch)

        def blocking() -> Any:
            try:
                stub.SayHello(Req(name="x"), timeout=5)
            except grpc.RpcError as err:
                return err
            raise AssertionError("the call should have failed")

        def future() -> Any:
            return stub.SayHello.future(Req(name="x"), timeout=5).exception()

        errors = [await asyncio.to_thread(blocking), await asyncio.to_thread(future)]
        for error in errors:
            assert isinstance(error, grpc.RpcError)
            assert isinstance(error, grpc.Call) and isinstance(error, grpc.Future)
            assert error.code() is UNAVAILABLE
        assert errors[0].details() == errors[1].details()
    finally:
        ch.close()


async def test_client_stream_past_the_retry_buffer_limit_commits_and_is_not_retried() -> None:
    requests = [Req(name="x" * 100) for _ in range(5)]  # ~500 request bytes
    for limit, expected_attempts in ((64, 1), (1 << 20, 3)):
        fleet = GreeterFleet(1, faults=[Faults(fail_rate=1.0)])
        async with (
            fleet,
            grpc_balancer.aio.insecure_channel(
                fleet.target(),
                options=[("grpc.per_rpc_retry_buffer_size", limit)],
                service_config=retrying(max_attempts=3, backoff="0.01s"),
            ) as ch,
        ):
            await ch.channel_ready()
            stub = greeter_pb2_grpc.GreeterStub(ch)
            call = stub.SayHelloToMany(iter(requests), timeout=10)
            try:
                await call
            except grpc.aio.AioRpcError as err:
                assert err.code() is UNAVAILABLE
            else:
                raise AssertionError("the call should have failed")
        assert served(fleet) == expected_attempts, limit


async def test_trailers_of_every_call_kind_reach_trailer_observers(channel_kind: str) -> None:
    # the hook weighted_round_robin reads ORCA per-call reports from
    from tests.channels import open_channel

    async with (
        GreeterFleet(2) as fleet,
        open_channel(channel_kind, fleet.target(), policy="round_robin") as ch,
    ):
        assert await ch.wait_for_settled(10)
        seen: list[str] = []
        for sc in ch.subchannels:
            sc.trailer_observers.append(lambda sc, trailers: seen.append(sc.address))
        stub = ch.stub()
        await stub.SayHello(Req(name="a"), timeout=10)
        await stub.SayHelloStream(Req(name="b", count=2), timeout=10)
        await stub.SayHelloToMany([Req(name="c"), Req(name="d")], timeout=10)
        await stub.Chat([Req(name="e")], timeout=10)
        await eventually(lambda: len(seen) == 4)


async def test_aio_calls_in_a_backoff_end_cancelled_when_the_channel_closes() -> None:
    async with GreeterFleet(1, faults=[Faults(fail_rate=1.0)]) as fleet:
        ch = grpc_balancer.aio.insecure_channel(
            fleet.target(), service_config=retrying(backoff="30s")
        )
        await ch.channel_ready()
        stub = greeter_pb2_grpc.GreeterStub(ch)
        calls = [stub.SayHello(Req(name=str(i)), timeout=60) for i in range(5)]
        await eventually(lambda: served(fleet) >= 5)  # every call is in its 30 s backoff
        await ch.close()
        for call in calls:
            assert await call.code() is grpc.StatusCode.CANCELLED
            assert "closed" in await call.details()


async def test_aio_calls_cancelled_in_a_backoff_or_a_pick_wait_raise_cancelled_error() -> None:
    # as grpc.aio: awaiting a call the application cancelled raises CancelledError
    from grpc_balancer.testing import free_port

    async with GreeterFleet(1, faults=[Faults(fail_rate=1.0)]) as fleet:
        retry_ch = grpc_balancer.aio.insecure_channel(
            fleet.target(), service_config=retrying(backoff="30s")
        )
        waiting_ch = grpc_balancer.aio.insecure_channel(f"static:///127.0.0.1:{free_port()}")
        async with retry_ch, waiting_ch:
            await retry_ch.channel_ready()
            in_backoff = [
                greeter_pb2_grpc.GreeterStub(retry_ch).SayHello(Req(name=str(i)), timeout=60)
                for i in range(100)
            ]
            waiting = [
                greeter_pb2_grpc.GreeterStub(waiting_ch).SayHello(
                    Req(name=str(i)), timeout=60, wait_for_ready=True
                )
                for i in range(100)
            ]
            await eventually(lambda: served(fleet) >= 100)  # all of them in their backoff
            for call in in_backoff + waiting:
                assert call.cancel()
            outcomes = await asyncio.gather(*in_backoff, *waiting, return_exceptions=True)
            kinds = {type(o).__name__ for o in outcomes}
            assert kinds == {"CancelledError"}, kinds
            assert all(c.cancelled() and c.done() for c in in_backoff + waiting)


async def test_sync_stream_result_is_none_or_the_error_as_grpcio() -> None:
    async with GreeterFleet(2, faults=[Faults(), Faults(fail_rate=1.0)]) as fleet:

        def run(address: str) -> tuple[Any, Any]:
            with grpc_balancer.insecure_channel(f"static:///{address}") as ch:
                call = greeter_pb2_grpc.GreeterStub(ch).SayHelloStream(
                    Req(name="r", count=2), timeout=10
                )
                with contextlib.suppress(grpc.RpcError):
                    list(call)  # as with grpcio, a stream ends once it is read
                try:
                    return call.result(10), call.code()
                except grpc.RpcError as err:
                    return err, call.code()

        ok = await asyncio.to_thread(run, fleet.addresses[0])
        failed = await asyncio.to_thread(run, fleet.addresses[1])
        assert ok == (None, grpc.StatusCode.OK)
        assert isinstance(failed[0], grpc.RpcError) and failed[1] is UNAVAILABLE


async def test_request_stream_after_commit_reads_the_application_iterator_as_grpc_aio() -> None:
    """After the commit the attempt reads the application's async iterator itself
    (no layer of ours per message): every message arrives once and in order, and an
    iterator that raises mid-stream ends the call as it does on grpc.aio's channel."""

    async def names(n: int, fail_at: int | None = None) -> Any:
        for i in range(n):
            if i == fail_at:
                raise RuntimeError("the application's iterator broke")
            yield Req(name=f"n{i}")
            if i % 50 == 0:
                await asyncio.sleep(0)  # let replies (and the commit) in between

    async with GreeterFleet(1) as fleet:
        ours = grpc_balancer.aio.insecure_channel(fleet.target(), policy="round_robin")
        theirs = grpc.aio.insecure_channel(fleet.addresses[0])
        try:
            outcomes = []
            for channel in (ours, theirs):
                stub = greeter_pb2_grpc.GreeterStub(channel)
                replies = [r.message async for r in stub.Chat(names(300), timeout=10)]
                assert [m.split(" (")[0] for m in replies] == [f"Hello n{i}" for i in range(300)]
                broken = stub.Chat(names(300, fail_at=200), timeout=10)
                got = 0
                with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                    async for _ in broken:
                        got += 1
                outcomes.append((await broken.code(), got <= 200))
            assert outcomes[0] == outcomes[1]
            assert outcomes[0][0] is grpc.StatusCode.CANCELLED
        finally:
            await ours.close()
            await theirs.close()


async def test_malformed_metadata_fails_at_once_with_value_error_on_both_channels() -> None:
    """As on grpcio's channels: a ValueError from the call itself, not attempts that
    fail as they are sent until the deadline (the sync channel once took a malformed
    pair for a closed endpoint channel and retried it for the whole deadline)."""
    async with GreeterFleet(1) as fleet:
        aio_channel = grpc_balancer.aio.insecure_channel(fleet.target())
        sync_channel = grpc_balancer.insecure_channel(fleet.target())
        try:
            aio_stub = greeter_pb2_grpc.GreeterStub(aio_channel)
            sync_stub = greeter_pb2_grpc.GreeterStub(sync_channel)
            bad = (("k",),)
            try:
                await aio_stub.SayHello(Req(name="x"), timeout=30, metadata=bad)
            except ValueError as err:
                assert "(key, value) pairs" in str(err)
            else:
                raise AssertionError("no ValueError on the asyncio channel")

            def sync_call() -> str:
                try:
                    sync_stub.SayHello(Req(name="x"), timeout=30, metadata=bad)
                except ValueError as err:
                    return str(err)
                return "no error"

            assert "(key, value) pairs" in await asyncio.to_thread(sync_call)
            # nothing was sent or left in flight, and good calls still work
            assert served(fleet) == 0
            assert all(sc.in_flight == 0 for sc in aio_channel.subchannels)
            assert all(sc.in_flight == 0 for sc in sync_channel.subchannels)
            assert "x" in (await aio_stub.SayHello(Req(name="x"), timeout=10)).message
        finally:
            await aio_channel.close()
            sync_channel.close()
