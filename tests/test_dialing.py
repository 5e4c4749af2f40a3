"""The dialer's window (issue 17): at most a window of first connection attempts run at
once, the window grows by one per settled attempt (doubling per round, as slow start)
and doubles on its own when nothing settles; a channel's subchannels leave it when
READY, failed or closed; the window holds only while a call waits for the channel."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from grpc_balancer import aio
from grpc_balancer._aio.subchannel import AioSubchannel
from grpc_balancer._core import dialing
from grpc_balancer._core.dialing import Dialer
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.testing import GreeterFleet, free_port
from tests.helpers import eventually, say_hello_ports

C = grpc.ChannelConnectivity


class Starts:
    """Connection starts that record their order; ``closed`` ones start nothing."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.closed: set[int] = set()

    def start(self, i: int) -> bool:
        if i in self.closed:
            return False
        self.started.append(i)
        return True


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def submit(dialer: Dialer, starts: Starts, n: int) -> None:
    for i in range(n):
        dialer.submit(lambda i=i: starts.start(i))  # type: ignore[misc]


async def test_at_most_the_window_connects_at_once_in_order() -> None:
    dialer, starts = Dialer(slice_s=10.0, window=4, widen_after_s=60), Starts()
    submit(dialer, starts, 10)
    await turns()
    assert starts.started == [0, 1, 2, 3]
    assert (dialer.connecting, dialer.queued, dialer.window) == (4, 6, 4)
    dialer.close()


async def test_each_settled_attempt_frees_its_place_and_widens_the_window_by_one() -> None:
    dialer, starts = Dialer(slice_s=10.0, window=4, widen_after_s=60), Starts()
    submit(dialer, starts, 20)
    await turns()
    dialer.settled()
    await turns()
    assert starts.started == [0, 1, 2, 3, 4, 5]  # two more for one settled
    for _ in range(5):  # the rest of the first six settle
        dialer.settled()
    await turns()
    assert dialer.window == 10  # 4 + 6 settled
    assert len(starts.started) == 16  # 6 settled + a full window
    assert dialer.connecting == 10
    dialer.close()


async def test_a_start_that_began_nothing_takes_no_place() -> None:
    dialer, starts = Dialer(slice_s=10.0, window=2, widen_after_s=60), Starts()
    starts.closed = {0, 1, 3}
    submit(dialer, starts, 6)
    await turns()
    assert starts.started == [2, 4]
    assert dialer.connecting == 2
    dialer.close()


async def test_the_window_holds_only_while_its_owner_says_so() -> None:
    holding = True
    dialer = Dialer(slice_s=10.0, window=2, widen_after_s=60, holding=lambda: holding)
    starts = Starts()
    submit(dialer, starts, 6)
    await turns()
    assert starts.started == [0, 1]
    holding = False
    await turns()
    assert starts.started == [0, 1]  # nothing moved the dialer yet
    dialer.released()
    await turns()
    assert starts.started == [0, 1, 2, 3, 4, 5]
    assert (dialer.connecting, dialer.queued) == (6, 0)
    dialer.close()


async def test_a_window_that_never_settles_doubles_after_a_while() -> None:
    dialer, starts = Dialer(slice_s=10.0, window=2, widen_after_s=0.01), Starts()
    submit(dialer, starts, 10)
    await turns()
    assert len(starts.started) == 2
    await eventually(lambda: len(starts.started) > 2, timeout=5)
    assert dialer.window in (4, 8, 16)  # doubled, maybe more than once by now
    assert len(starts.started) == min(10, dialer.window)  # never beyond the window
    await eventually(lambda: len(starts.started) == 10, timeout=5)
    dialer.close()


async def test_slices_bound_one_turn_and_the_rest_run_in_later_turns() -> None:
    dialer, starts = Dialer(slice_s=0.0, window=100, widen_after_s=60), Starts()
    submit(dialer, starts, 3)
    await asyncio.sleep(0)
    assert starts.started == [0]  # a zero slice: one start per turn
    await turns()
    assert starts.started == [0, 1, 2]
    dialer.close()


async def test_close_drops_what_is_queued() -> None:
    dialer, starts = Dialer(slice_s=10.0, window=1, widen_after_s=0.01), Starts()
    submit(dialer, starts, 5)
    await turns()
    dialer.close()
    await asyncio.sleep(0.05)  # a widening would have started more by now
    assert starts.started == [0]
    assert dialer.queued == 0


async def test_a_channel_with_a_window_of_one_reaches_every_backend_and_empties_it(
    fleet3: GreeterFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """READY and failed attempts both leave the window (a refused port among them),
    so the channel dials one endpoint after another until all have settled."""
    monkeypatch.setattr(dialing, "INITIAL_WINDOW", 1)
    monkeypatch.setattr(dialing, "WIDEN_AFTER_S", 60.0)  # only settling moves it
    refused = f"127.0.0.1:{free_port()}"
    addresses = [refused, *fleet3.addresses]
    target = "static:///" + ",".join(addresses)
    async with aio.insecure_channel(target, policy="round_robin") as ch:
        dialer = ch._dialer
        await eventually(lambda: sum(sc.usable for sc in ch.subchannels) == 3, timeout=20)
        assert set(await say_hello_ports(ch, 6)) == set(fleet3.ports)
        await eventually(lambda: dialer.connecting == 0, timeout=10)
        assert dialer.window == 1 + len(addresses)
        assert ch.subchannels[0].connectivity is C.TRANSIENT_FAILURE


@pytest.fixture
def silent_listeners() -> Iterator[list[str]]:
    """Listening sockets nobody accepts on: TCP connects, the HTTP/2 handshake never
    ends, so a channel's attempts there stay CONNECTING (until gRPC's 20 s timeout)."""
    socks = []
    for _ in range(6):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        socks.append(sock)
    yield [f"127.0.0.1:{sock.getsockname()[1]}" for sock in socks]
    for sock in socks:
        sock.close()


def _waiting_call(ch: aio.BalancedChannel) -> asyncio.Task[Any]:
    """A call that waits for a backend (what makes the channel hold its dials back)."""
    stub = greeter_pb2_grpc.GreeterStub(ch)
    request = greeter_pb2.HelloRequest(name="dialing")
    return asyncio.ensure_future(stub.SayHello(request, timeout=30, wait_for_ready=True))


async def test_closing_a_channel_mid_dial_leaves_nothing_in_the_window(
    silent_listeners: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dialing, "INITIAL_WINDOW", 2)
    monkeypatch.setattr(dialing, "WIDEN_AFTER_S", 60.0)
    ch = aio.insecure_channel("static:///" + ",".join(silent_listeners[:3]), policy="round_robin")
    call = _waiting_call(ch)
    dialer = ch._dialer
    await eventually(lambda: dialer.connecting == 2, timeout=10)
    await turns()
    assert dialer.queued == 1  # the third waits for a place
    assert all(sc.connectivity is not C.READY for sc in ch.subchannels)
    await ch.close()
    assert dialer.connecting == 0
    assert dialer.queued == 0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() is grpc.StatusCode.CANCELLED


async def test_with_no_call_waiting_every_dial_starts_at_once(
    silent_listeners: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dialing, "INITIAL_WINDOW", 1)
    monkeypatch.setattr(dialing, "WIDEN_AFTER_S", 60.0)
    async with aio.insecure_channel(
        "static:///" + ",".join(silent_listeners[:3]), policy="round_robin"
    ) as ch:
        await eventually(lambda: ch._dialer.connecting == 3, timeout=10)
        assert ch._dialer.queued == 0


async def test_the_rest_dial_once_the_waiting_call_is_answered(
    fleet3: GreeterFleet, silent_listeners: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Window 1: a black-holed address holds it until it widens (to 2); the backend
    after it answers the waiting call and settles (window 3: two more start); then the
    three left start at once, though the window is full."""
    monkeypatch.setattr(dialing, "INITIAL_WINDOW", 1)
    monkeypatch.setattr(dialing, "WIDEN_AFTER_S", 0.3)
    first, *rest = silent_listeners
    addresses = [first, fleet3.addresses[0], *rest]
    async with aio.insecure_channel("static:///" + ",".join(addresses), policy="round_robin") as ch:
        dialer = ch._dialer
        call = _waiting_call(ch)
        await eventually(lambda: dialer.connecting == 1, timeout=10)
        assert dialer.queued == 6  # held while the call waits
        dialer._widen_after_s = 60.0  # from the next widening on: only settling moves it
        reply = await call
        assert reply.message.endswith(f"(from :{fleet3.ports[0]})")
        await turns()
        assert dialer.queued == 0
        assert dialer.connecting == 6
        assert dialer.window == 3


async def test_following_connectivity_takes_no_task_per_endpoint(
    silent_listeners: list[str],
) -> None:
    """The watch is stepped from callbacks (a task each cost 2 KiB and a third of a
    10,000-endpoint storm's CPU); it still sees every change, down to SHUTDOWN."""

    async def tasks_with(addresses: list[str]) -> int:
        target = "static:///" + ",".join(addresses)
        async with aio.insecure_channel(target, policy="round_robin") as ch:
            ch.get_state(try_to_connect=True)
            await eventually(lambda: ch._dialer.connecting == len(addresses), timeout=10)
            await turns()
            assert all(sc.connectivity is C.CONNECTING for sc in ch.subchannels)
            n = len(asyncio.all_tasks())
        assert all(not sc._watch_live for sc in ch.subchannels)
        return n

    assert await tasks_with(silent_listeners) == await tasks_with(silent_listeners[:1])


class _Listener:
    def on_subchannel_state(self, subchannel: object) -> None:
        pass


async def test_a_dial_stopped_before_its_watcher_ran_leaves_the_window(
    silent_listeners: list[str],
) -> None:
    dialer = Dialer(window=1, widen_after_s=60)
    sc = AioSubchannel(
        Endpoint(silent_listeners[0]),
        lambda address: grpc.aio.insecure_channel(address),
        _Listener(),
        dialer,
    )
    sc.watch_connectivity()  # the dialer starts it in its next slice...
    asyncio.get_running_loop().call_soon(sc.stop_watching)  # ...and this runs right after
    await turns()
    assert sc.has_transport  # it did start
    assert dialer.connecting == 0
    await sc.aclose(0)


def test_a_settle_without_a_running_loop_starts_nothing() -> None:
    """A watcher finalized after its event loop ended still settles its place."""
    dialer, starts = Dialer(slice_s=10.0, window=1, widen_after_s=60), Starts()
    dialer._connecting = 1  # one connection started; its loop is gone
    dialer._queue.append(lambda: starts.start(0))
    dialer.settled()
    assert starts.started == []
    assert (dialer.connecting, dialer.window, dialer.queued) == (0, 2, 1)
