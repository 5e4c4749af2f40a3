"""What only the sync channel has: many caller threads, grpc.Future/with_call call
objects, subscribe(), close() of the loop thread, fork. Behaviour shared with the
asyncio channel is tested once for both kinds (tests/channels.py)."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

import grpc_balancer
from grpc_balancer._sync.channel import SyncBalancedChannel
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.testing import (
    ServerProcess,
    ServerProcesses,
    cli_env,
    free_port,
    manual_resolver,
)
from tests.helpers import port_of

Req = greeter_pb2.HelloRequest


def wait_until(predicate: Any, timeout: float = 15.0) -> None:
    """Poll ``predicate`` (a bound for slow machines, not a speed claim)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def fleet() -> Iterator[ServerProcesses]:
    with ServerProcesses(3) as servers:
        yield servers


@pytest.fixture
def thread_baseline() -> set[threading.Thread]:
    """Threads alive before the test's channel; grpc's process-wide aio poller is
    started here first (one per process, not per channel)."""
    warm = grpc_balancer.insecure_channel(f"static:///127.0.0.1:{free_port()}")
    warm.close()
    return set(threading.enumerate())


def no_new_threads(baseline: set[threading.Thread]) -> bool:
    """No thread beyond ``baseline`` once garbage is collected: grpc's process-wide aio
    poller stops when the last grpc.aio object is freed (some only by the cycle
    collector) and starts anew with the next one."""
    gc.collect()
    return not (set(threading.enumerate()) - baseline)


def run_threads(n: int, work: Any) -> list[Any]:
    """Run ``work(i)`` in ``n`` threads; their results (exceptions are re-raised)."""
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def main(i: int) -> None:
        try:
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=main, args=(i,), name=f"caller-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "caller threads still running"
    if errors:
        raise errors[0]
    return results


def test_32_threads_give_exact_round_robin_totals(fleet: ServerProcesses) -> None:
    with grpc_balancer.insecure_channel(fleet.target(), policy="round_robin") as ch:
        assert ch.wait_for_settled(15)
        stub = greeter_pb2_grpc.GreeterStub(ch)

        def work(i: int) -> Counter[int]:
            ports: Counter[int] = Counter()
            for _ in range(500):
                ports[port_of(stub.SayHello(Req(name=str(i)), timeout=30).message)] += 1
            return ports

        total: Counter[int] = sum(run_threads(32, work), Counter())
        assert sum(total.values()) == 16_000
        assert sorted(total.values()) == [5333, 5333, 5334]
        # The counters bumped from 32 threads at once lost nothing.
        assert sum(sc.calls_started for sc in ch.subchannels) == 16_000
        assert [sc.in_flight for sc in ch.subchannels] == [0, 0, 0]


def test_close_under_load_leaves_no_threads(thread_baseline: set[threading.Thread]) -> None:
    with ServerProcesses(2, args=["--delay-ms", "20"]) as slow:
        ch = grpc_balancer.insecure_channel(slow.target(), policy="round_robin")
        assert ch.wait_for_settled(15)
        stub = greeter_pb2_grpc.GreeterStub(ch)
        started = threading.Barrier(9)

        def work(i: int) -> Counter[str]:
            outcomes: Counter[str] = Counter()
            started.wait(30)
            for _ in range(2000):
                try:
                    stub.SayHello(Req(name="load"), timeout=30)
                    outcomes["OK"] += 1
                except grpc_balancer.ChannelClosedError:
                    outcomes["closed"] += 1
                    break
                except grpc.RpcError as err:
                    call: Any = err
                    assert call.code() in (
                        grpc.StatusCode.CANCELLED,
                        grpc.StatusCode.UNAVAILABLE,
                    ), call
                    assert call.details(), "an error without a message"
                    outcomes[call.code().name] += 1
            return outcomes

        results: list[Any] = []
        runner = threading.Thread(target=lambda: results.extend(run_threads(8, work)))
        runner.start()
        started.wait(30)
        wait_until(lambda: sum(sc.calls_started for sc in ch.subchannels) >= 40)
        ch.close()
        runner.join(120)
        assert not runner.is_alive()
        outcomes = sum(results, Counter())
        # Every thread saw the close, as an error on its in-flight call or on the next one.
        assert outcomes["closed"] == 8, outcomes
        assert outcomes["OK"] > 0
    assert not ch.loop_thread.is_alive()
    wait_until(lambda: no_new_threads(thread_baseline))


def test_every_call_kind_and_call_object(fleet: ServerProcesses) -> None:
    with grpc_balancer.insecure_channel(fleet.target(), policy="round_robin") as ch:
        assert isinstance(ch, grpc.Channel)
        stub = greeter_pb2_grpc.GreeterStub(ch)

        reply, call = stub.SayHello.with_call(Req(name="w"), timeout=10)
        assert reply.message.startswith("Hello w (from :")
        assert call.code() is grpc.StatusCode.OK
        assert call.trailing_metadata() is not None

        future = stub.SayHello.future(Req(name="f"), timeout=10)
        done = threading.Event()
        future.add_done_callback(lambda f: done.set())
        assert future.result(10).message.startswith("Hello f (from :")
        assert done.wait(10) and future.done() and not future.cancelled()
        assert future.code() is grpc.StatusCode.OK and future.exception() is None

        stream = stub.SayHelloStream(Req(name="s", count=3), timeout=10)
        messages = [r.message for r in stream]
        assert len(messages) == 3 and len({port_of(m) for m in messages}) == 1
        assert stream.code() is grpc.StatusCode.OK

        many, many_call = stub.SayHelloToMany.with_call(iter([Req(name="a"), Req(name="b")]))
        assert many.message.startswith("Hello a, b (from :")
        assert many_call.code() is grpc.StatusCode.OK
        assert (
            stub.SayHelloToMany.future(iter([Req(name="c")]))
            .result(10)
            .message.startswith("Hello c")
        )

        chat = [r.message for r in stub.Chat(iter([Req(name="x"), Req(name="y")]), timeout=10)]
        assert len(chat) == 2 and port_of(chat[0]) == port_of(chat[1])


def test_call_errors_are_grpc_errors_with_codes(fleet: ServerProcesses) -> None:
    target = f"static:///127.0.0.1:{free_port()}"
    with grpc_balancer.insecure_channel(target) as ch:
        stub = greeter_pb2_grpc.GreeterStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.SayHello(Req(), timeout=10)
        err: Any = info.value
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        assert "Connection refused" in err.details()

        future = stub.SayHello.future(Req(), timeout=10)
        assert future.exception(10).code() is grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError):
            future.result()

        stream = stub.SayHelloStream(Req(count=2), timeout=10)
        with pytest.raises(grpc.RpcError):
            list(stream)  # the error comes when reading, as with grpcio's channel
        assert stream.code() is grpc.StatusCode.UNAVAILABLE


def test_future_waits_for_a_backend_and_can_be_cancelled() -> None:
    server = ServerProcess()
    with grpc_balancer.insecure_channel(f"static:///{server.address}") as ch:
        stub = greeter_pb2_grpc.GreeterStub(ch)
        waiting = stub.SayHello.future(Req(name="late"), timeout=60, wait_for_ready=True)
        cancelled = stub.SayHello.future(Req(name="never"), timeout=60, wait_for_ready=True)
        wait_until(lambda: ch.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE)
        assert not waiting.done() and waiting.running()
        assert cancelled.cancel()
        assert cancelled.cancelled()
        with pytest.raises(grpc.FutureCancelledError):
            cancelled.result()
        server.start()
        try:
            assert waiting.result(60).message == f"Hello late (from :{server.port})"
        finally:
            server.kill()


def test_cancel_an_in_flight_future() -> None:
    with (
        ServerProcesses(1, args=["--delay-ms", "5000"]) as slow,
        grpc_balancer.insecure_channel(slow.target()) as ch,
    ):
        future = greeter_pb2_grpc.GreeterStub(ch).SayHello.future(Req(), timeout=30)
        wait_until(lambda: sum(sc.in_flight for sc in ch.subchannels) == 1)
        assert future.cancel()
        assert future.cancelled()
        with pytest.raises(grpc.FutureCancelledError):
            future.result(10)
        wait_until(lambda: sum(sc.in_flight for sc in ch.subchannels) == 0)


def test_a_cancelled_stream_reads_as_grpcios_does() -> None:
    """Future and stream share one grpc.Future implementation: after cancel() both are
    done and not running at once, and exception() raises FutureCancelledError, as on
    grpcio's own stream call (compared side by side)."""

    def after_cancel(stub: Any) -> tuple[bool, bool, bool, str]:
        stream = stub.SayHelloStream(Req(name="s", count=3), timeout=30)
        assert stream.cancel()
        try:
            stream.exception(10)
            raised = "none"
        except grpc.FutureCancelledError:
            raised = "FutureCancelledError"
        return stream.done(), stream.running(), stream.cancelled(), raised

    with (
        ServerProcesses(1, args=["--delay-ms", "5000"]) as slow,
        grpc_balancer.insecure_channel(slow.target()) as ours,
        grpc.insecure_channel(slow.addresses[0]) as theirs,
    ):
        expected = after_cancel(greeter_pb2_grpc.GreeterStub(theirs))
        assert expected == (True, False, True, "FutureCancelledError")
        assert after_cancel(greeter_pb2_grpc.GreeterStub(ours)) == expected


def test_subscribe_sees_ready_then_shutdown(fleet: ServerProcesses) -> None:
    seen: list[grpc.ChannelConnectivity] = []
    gone: list[grpc.ChannelConnectivity] = []
    ch = grpc_balancer.insecure_channel(fleet.target(), policy="round_robin")
    ch.subscribe(seen.append, try_to_connect=True)
    ch.subscribe(gone.append)
    wait_until(lambda: grpc.ChannelConnectivity.READY in seen)
    ch.unsubscribe(gone.append)
    ch.close()
    assert seen[-1] is grpc.ChannelConnectivity.SHUTDOWN
    assert grpc.ChannelConnectivity.SHUTDOWN not in gone


def test_use_after_close_is_a_clear_error(fleet: ServerProcesses) -> None:
    with grpc_balancer.insecure_channel(fleet.target()) as ch:
        stub = greeter_pb2_grpc.GreeterStub(ch)
        stub.SayHello(Req(), timeout=10)
    ch.close()  # idempotent
    for call in (
        lambda: stub.SayHello(Req()),
        lambda: stub.SayHello.future(Req()),
        lambda: stub.SayHelloStream(Req()),
        lambda: ch.subscribe(print),
    ):
        with pytest.raises(grpc_balancer.ChannelClosedError, match="is closed"):
            call()
    with pytest.raises(ValueError):  # what grpcio's own closed channel raises
        stub.SayHello(Req())
    assert ch.get_state() is grpc.ChannelConnectivity.SHUTDOWN


def test_bad_input_fails_at_construction_without_leaving_a_thread(
    thread_baseline: set[threading.Thread],
) -> None:
    with pytest.raises(grpc_balancer.InvalidTargetError):
        grpc_balancer.insecure_channel("nope:///x")
    with pytest.raises(grpc_balancer.UnknownPolicyError, match="round_robbin"):
        grpc_balancer.insecure_channel("static:///127.0.0.1:1", policy="round_robbin")
    assert not (set(threading.enumerate()) - thread_baseline)


def test_removed_backend_under_load_loses_no_call(fleet: ServerProcesses) -> None:
    resolver = manual_resolver(fleet.addresses)
    with grpc_balancer.insecure_channel(resolver.target, policy="round_robin") as ch:
        assert ch.wait_for_settled(15)
        stub = greeter_pb2_grpc.GreeterStub(ch)
        halfway = threading.Barrier(9)

        def work(i: int) -> set[int]:
            ports = set()
            for n in range(300):
                if n == 100:
                    halfway.wait(60)
                if n == 150:
                    halfway.wait(60)
                ports.add(port_of(stub.SayHello(Req(), timeout=30).message))
            return ports

        runner_results: list[Any] = []
        runner = threading.Thread(target=lambda: runner_results.extend(run_threads(8, work)))
        runner.start()
        halfway.wait(60)
        resolver.update(fleet.addresses[:2])  # drop the third backend mid-load
        halfway.wait(60)
        runner.join(120)
        assert not runner.is_alive() and len(runner_results) == 8
        assert sorted(sc.address for sc in ch.subchannels) == sorted(fleet.addresses[:2])


_FORK_SCRIPT = """
import os, sys, warnings
import grpc_balancer
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
ch = grpc_balancer.insecure_channel(sys.argv[1])
stub = greeter_pb2_grpc.GreeterStub(ch)
stub.SayHello(greeter_pb2.HelloRequest(), timeout=10)
read_end, write_end = os.pipe()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded, fork()"
    pid = os.fork()
if pid == 0:
    said = b"no error"
    try:
        stub.SayHello(greeter_pb2.HelloRequest(), timeout=1)
    except grpc_balancer.ChannelUsedAfterForkError as exc:
        said = str(exc).encode()
    os.write(write_end, said)
    os._exit(0)
os.close(write_end)
with os.fdopen(read_end, "rb") as pipe:
    print("child:", pipe.read().decode())
os.waitpid(pid, 0)
print("parent:", stub.SayHello(greeter_pb2.HelloRequest(), timeout=10).message)
ch.close()
"""


def test_use_in_a_forked_child_is_a_clear_error(fleet: ServerProcesses) -> None:
    # In a fresh interpreter: fork() of a process with gRPC threads is only safe with
    # grpcio's own fork handlers off (they crash the child now and then otherwise).
    env = cli_env(GRPC_ENABLE_FORK_SUPPORT="false")
    out = subprocess.run(
        [sys.executable, "-c", _FORK_SCRIPT, fleet.target()],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "cannot be used after fork(); create a new channel in the child" in out.stdout
    assert "parent: Hello" in out.stdout  # the parent's channel still works


def test_repr_names_target_policy_and_backends(fleet: ServerProcesses) -> None:
    with grpc_balancer.insecure_channel(fleet.target(), policy="round_robin") as ch:
        assert isinstance(ch, SyncBalancedChannel)
        ch.wait_for_settled(15)
        text = repr(ch)
        assert "policy=round_robin" in text and "state=READY" in text
        for address in fleet.addresses:
            assert address in text


def test_a_channel_dropped_without_close_stops_its_thread(fleet: ServerProcesses) -> None:
    ch = grpc_balancer.insecure_channel(fleet.target())
    stub = greeter_pb2_grpc.GreeterStub(ch)
    stub.SayHello(Req(), timeout=10)
    loop_thread = ch.loop_thread
    del ch, stub
    gc.collect()
    wait_until(lambda: not loop_thread.is_alive())


def test_capture_backend_names_the_backend_of_sync_calls(fleet: ServerProcesses) -> None:
    with grpc_balancer.insecure_channel(fleet.target(), policy="round_robin") as ch:
        stub = greeter_pb2_grpc.GreeterStub(ch)
        with grpc_balancer.capture_backend() as seen:
            reply = stub.SayHello(Req(name="c"), timeout=10)
            stub.SayHello.future(Req(name="d"), timeout=10).result(10)
        assert seen.address is not None and len(seen.addresses) == 2
        assert seen.addresses[0] == f"127.0.0.1:{port_of(reply.message)}"


def test_many_threads_waiting_for_a_backend_all_proceed_when_it_appears() -> None:
    server = ServerProcess()
    with grpc_balancer.insecure_channel(f"static:///{server.address}") as ch:
        stub = greeter_pb2_grpc.GreeterStub(ch)
        waiting = [
            stub.SayHello.future(Req(name=str(i)), timeout=60, wait_for_ready=True)
            for i in range(8)
        ]
        blocked: list[Any] = []
        runner = threading.Thread(
            target=lambda: blocked.extend(
                run_threads(8, lambda i: stub.SayHello(Req(), timeout=60, wait_for_ready=True))
            )
        )
        runner.start()
        wait_until(lambda: ch.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE)
        assert not any(f.done() for f in waiting) and runner.is_alive()
        server.start()
        try:
            for future in waiting:
                assert future.result(60).message.endswith(f"(from :{server.port})")
            runner.join(60)
        finally:
            server.kill()
        assert not runner.is_alive() and len(blocked) == 8


def test_close_ends_calls_waiting_for_a_backend_with_a_clear_status(
    thread_baseline: set[threading.Thread],
) -> None:
    ch = grpc_balancer.insecure_channel(f"static:///127.0.0.1:{free_port()}")
    stub = greeter_pb2_grpc.GreeterStub(ch)
    future = stub.SayHello.future(Req(), timeout=60, wait_for_ready=True)

    def blocked_call(i: int) -> str:
        try:
            stub.SayHello(Req(), timeout=60, wait_for_ready=True)
        except grpc_balancer.ChannelClosedError:
            return "closed"
        except grpc.RpcError as err:
            call: Any = err
            return f"{call.code().name}: {call.details()}"
        return "OK"

    results: list[str] = []
    runner = threading.Thread(target=lambda: results.extend(run_threads(4, blocked_call)))
    runner.start()
    wait_until(lambda: ch.get_state() is grpc.ChannelConnectivity.TRANSIENT_FAILURE)
    ch.close()
    runner.join(30)
    assert not runner.is_alive()
    for outcome in [*results, f"{future.code().name}: {future.details()}"]:
        assert outcome == "closed" or outcome.startswith("CANCELLED: channel closed"), outcome
    wait_until(lambda: no_new_threads(thread_baseline))
