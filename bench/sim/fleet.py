"""Simulated servers and clients around the real policy code.

A :class:`Server` is a FIFO queue in front of ``slots`` workers (0: unlimited, like
the demo greeter without ``--max-concurrency``); each call's service time is drawn
from a lognormal (median ``median_s``, sigma 0.5, as the demo's ``--delay-dist
lognormal``) times the server's current ``slowdown`` (antagonists, a stuck backend).
A client's deadline cancels its call on the server too, as gRPC does.

A :class:`Client` owns one channel: a real policy built by its registered factory,
the real :class:`Picking`, and :class:`SimSubchannel` objects (real
:class:`Subchannel` state, simulated transport). Its calls arrive as a Poisson process;
a call is picked, counted with ``call_started``/``call_finished`` exactly as the
channel's attempt records do, and measured from its *scheduled* arrival (as the
loopback harness does). A client may *stall*: while its event loop is busy, nothing
it receives is processed (replies, probe answers, timers, new arrivals) until the
stall ends — the "busy client" of issue 16.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

import grpc

from bench.sim.loop import VirtualLoop
from grpc_balancer._core.picking import Picking
from grpc_balancer._orca import MIRROR_TRAILER_KEY
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.picker import Picker, PickError, PickInfo
from grpc_balancer.policies.base import Policy, get_policy_factory
from grpc_balancer.server.load_reports import LoadReporter
from grpc_balancer.server.probes import LoadProbes
from grpc_balancer.subchannel import StreamError, Subchannel

C = grpc.ChannelConnectivity
OK = grpc.StatusCode.OK
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
METHOD = "/greeter.Greeter/SayHello"
_INFO = PickInfo(METHOD)


class Call:
    """One RPC: scheduled at ``scheduled``; ``latency`` is None while open or if failed."""

    __slots__ = (
        "client",
        "deadline",
        "handle",
        "latency",
        "rif",
        "scheduled",
        "server",
        "server_t0",
        "started",
        "state",
        "subchannel",
    )

    def __init__(self, client: Client, scheduled: float, deadline: float) -> None:
        self.client = client
        self.scheduled = scheduled
        self.deadline = deadline
        self.subchannel: SimSubchannel | None = None
        self.server: Server | None = None
        self.started = 0.0
        self.handle: asyncio.TimerHandle | None = None
        self.state = "new"  # queued, running, done
        self.latency: float | None = None
        self.rif = 0
        self.server_t0 = 0.0


class Server:
    """A server with ``slots`` workers (0: unlimited) and a FIFO queue."""

    def __init__(
        self,
        loop: VirtualLoop,
        index: int,
        *,
        slots: int,
        median_s: float,
        rng: random.Random,
        sigma: float = 0.5,
        probes: bool = True,
        orca: bool = False,
    ) -> None:
        self.loop = loop
        self.index = index
        self.address = f"10.{index // 250}.{index % 250}.1:50051"
        self.slots = slots
        self.median_s = median_s
        self.sigma = sigma
        self.slowdown = 1.0
        self._rng = rng
        self.busy = 0
        self.queue: deque[Call] = deque()
        self.probes = LoadProbes(clock=loop.time) if probes else None
        self.reporter = LoadReporter(capacity=slots, clock=loop.time) if orca else None
        self.completed = 0
        self._sweep_armed = False

    def set_service(self, median_s: float, sigma: float) -> None:
        """From now on, service times of median ``median_s`` (sigma 0: always that)."""
        self.median_s, self.sigma = median_s, sigma

    def service_time(self) -> float:
        if self.sigma:
            base = self._rng.lognormvariate(math.log(self.median_s), self.sigma)
        else:
            base = self.median_s
        return base * self.slowdown

    # -- calls -------------------------------------------------------------------------
    def submit(self, call: Call) -> None:
        call.server = self
        if self.probes is not None:
            call.rif, call.server_t0 = self.probes.call_started()
        if self.reporter is not None:
            self.reporter.call_started()
        if self.slots == 0 or self.busy < self.slots:
            self._start(call)
        else:
            call.state = "queued"
            self.queue.append(call)
            if not self._sweep_armed:
                self._sweep_armed = True
                self.loop.call_at(self.queue[0].deadline, self._sweep)

    def _sweep(self) -> None:
        """Queued calls past their deadline leave the queue (one timer per server,
        for the head of the queue: deadlines are in arrival order, near enough)."""
        self._sweep_armed = False
        queue, now = self.queue, self.loop.time()
        while queue and queue[0].deadline <= now:
            call = queue.popleft()
            self._account(call, ok=False)
            call.state = "done"
            call.client.reply(call, DEADLINE)
        if queue:
            self._sweep_armed = True
            self.loop.call_at(queue[0].deadline, self._sweep)

    def _start(self, call: Call) -> None:
        now = self.loop.time()
        if now >= call.deadline:  # expired while queued: dropped, not served
            self._account(call, ok=False)
            call.state = "done"
            call.client.reply(call, DEADLINE)
            return
        self.busy += 1
        call.state = "running"
        end = now + self.service_time()
        if end > call.deadline:
            call.handle = self.loop.call_at(call.deadline, self._expire, call)
        else:
            call.handle = self.loop.call_at(end, self._complete, call)

    def _complete(self, call: Call) -> None:
        self._release(call, ok=True)
        call.client.reply(call, OK)

    def _expire(self, call: Call) -> None:
        """The deadline passed while the call ran: the client gives up and the server
        stops working on it (gRPC cancels the handler)."""
        self._release(call, ok=False)
        call.client.reply(call, DEADLINE)

    def _release(self, call: Call, ok: bool) -> None:
        self.busy -= 1
        call.state = "done"
        self.completed += ok
        self._account(call, ok)
        queue = self.queue
        while queue and (self.slots == 0 or self.busy < self.slots):
            self._start(queue.popleft())

    def _account(self, call: Call, ok: bool) -> None:
        if self.probes is not None:
            self.probes.call_finished(call.rif, call.server_t0)
        if self.reporter is not None:
            self.reporter.call_finished(ok)

    def trailers(self) -> tuple[tuple[str, bytes], ...]:
        assert self.reporter is not None
        return ((MIRROR_TRAILER_KEY, self.reporter.report().SerializeToString()),)

    @property
    def rif(self) -> int:
        return self.busy + len(self.queue)


class SimSubchannel(Subchannel):
    """A real Subchannel whose transport is the simulation: READY at once, probes
    answered by the server's real LoadProbes, the answer arriving ``rtt_s`` later."""

    def __init__(self, endpoint: Endpoint, server: Server, client: Client) -> None:
        super().__init__(endpoint, cast(Any, None), client, clock=client.loop.time)
        self.server = server
        self.client = client

    def watch_connectivity(self) -> None:
        self.client.loop.call_soon(self._set_connectivity, C.READY)

    async def probe(self) -> tuple[grpc.StatusCode, str]:
        return OK, ""

    async def unary_call(
        self,
        method: str,
        request: Any,
        *,
        request_serializer: Callable[[Any], bytes],
        response_deserializer: Callable[[bytes], Any],
        timeout: float,
    ) -> Any:
        client = self.client
        loop = client.loop
        future: asyncio.Future[Any] = loop.create_future()
        probes = self.server.probes
        request_serializer(request)
        # The server answers at once (its counters, no queue); the answer reaches the
        # client a round trip later, when the client's loop is free.
        if probes is None:
            result: Any = StreamError(grpc.StatusCode.UNIMPLEMENTED, "unknown service")
        else:
            result = response_deserializer(probes.answer().SerializeToString())
        client.at(loop.time() + client.rtt_s, _resolve, future, result)
        return await future

    def close_transport(self) -> None:
        pass


def _resolve(future: asyncio.Future[Any], result: Any) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def make_policy(
    name: str, control: Any, config: dict[str, Any], rng: random.Random, clock: Callable[[], float]
) -> Policy:
    """The registered policy ``name``, given the simulation's rng and clock where its
    factory takes them (the built-ins do, for tests): the one seam."""
    factory = get_policy_factory(name)
    params = inspect.signature(factory).parameters
    kwargs: dict[str, Any] = {}
    if "rng" in params:
        kwargs["rng"] = rng
    if "clock" in params:
        kwargs["clock"] = clock
    return factory(control, config, **kwargs)  # type: ignore[call-arg]


class Client:
    """One channel (a policy, its pickers, its subchannels) and its calls."""

    def __init__(
        self,
        loop: VirtualLoop,
        index: int,
        policy: str,
        config: dict[str, Any],
        servers: Sequence[Server],
        rng: random.Random,
        *,
        timeout_s: float,
        rtt_s: float = 0.0002,
        record: Callable[[Call, Server | None], None],
    ) -> None:
        self.loop = loop
        self.index = index
        self.rng = rng
        self.timeout_s = timeout_s
        self.rtt_s = rtt_s
        self._record = record
        self.target = f"sim:///client{index}"
        self._by_address = {s.address: s for s in servers}
        self._subchannels: set[Subchannel] = set()
        self.picking = Picking(self.target, self._subchannels, 0, _no_emit, lambda: "simulated")
        self.waiting: list[Call] = []
        #: while loop.time() < busy_until this client's loop is stalled
        self.busy_until = 0.0
        self.policy = make_policy(policy, self, config, rng, loop.time)
        self._endpoints = [Endpoint(s.address) for s in servers]

    def start(self) -> None:
        self.run(self.policy.update_endpoints, self._endpoints)

    # -- ChannelControl ---------------------------------------------------------------------
    def create_subchannel(self, endpoint: Endpoint) -> Subchannel:
        sc = SimSubchannel(endpoint, self._by_address[endpoint.address], self)
        self._subchannels.add(sc)
        return sc

    def remove_subchannel(self, subchannel: Subchannel) -> None:
        self._subchannels.discard(subchannel)
        subchannel.shutdown()

    def update_picker(self, state: C, picker: Picker) -> None:
        self.picking.publish(state, picker)
        if self.waiting:
            waiting, self.waiting = self.waiting, []
            for call in waiting:
                self._send(call)

    def request_reresolution(self) -> None:
        pass

    def on_subchannel_state(self, subchannel: Subchannel) -> None:
        self.policy.on_subchannel_state(subchannel)

    # -- the client's event loop, which may stall ------------------------------------------
    def at(self, when: float, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback`` at ``when``, or when this client's loop is free again."""
        loop = self.loop
        owner, loop.owner = loop.owner, None
        try:
            loop.call_at(when, self.gate, callback, args)
        finally:
            loop.owner = owner

    def gate(self, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        """Run one callback of this client's loop: now, or once a stall is over.
        Whatever it schedules belongs to this client too (see VirtualLoop.owner)."""
        loop = self.loop
        if loop.time() < self.busy_until:
            owner, loop.owner = loop.owner, None
            try:
                loop.call_at(self.busy_until, self.gate, callback, args)
            finally:
                loop.owner = owner
            return
        owner, loop.owner = loop.owner, self
        try:
            callback(*args)
        finally:
            loop.owner = owner

    def run(self, callback: Callable[..., object], *args: Any) -> None:
        """Run ``callback`` now as this client's code (its policy's timers are its own)."""
        self.gate(callback, args)

    def stall(self, duration_s: float) -> None:
        self.busy_until = max(self.busy_until, self.loop.time() + duration_s)

    # -- calls ---------------------------------------------------------------------------------
    def arrive(self, scheduled: float) -> None:
        """A call scheduled at ``scheduled`` (now, or earlier if the loop was stalled)."""
        call = Call(self, scheduled, scheduled + self.timeout_s)
        if self.loop.time() >= call.deadline:
            self._finish(call, DEADLINE, None)
            return
        self._send(call)

    def _send(self, call: Call) -> None:
        try:
            sc = self.picking.pick(_INFO, False)
        except PickError:
            self._finish(call, UNAVAILABLE, None)
            return
        if sc is None:
            self.waiting.append(call)  # until the next picker (or the deadline)
            return
        assert isinstance(sc, SimSubchannel)
        call.subchannel = sc
        call.started = sc.call_started()
        sc.server.submit(call)

    def reply(self, call: Call, code: grpc.StatusCode) -> None:
        """The server finished (or dropped) ``call``; the client sees it half an RTT on."""
        self.at(self.loop.time() + self.rtt_s / 2, self._received, call, code)

    def _received(self, call: Call, code: grpc.StatusCode) -> None:
        sc = call.subchannel
        assert sc is not None
        sc.call_finished(call.started, code)
        if code is OK and sc.trailer_observers:
            sc.trailers_received(sc.server.trailers())
        self._finish(call, code, sc.server)

    def _finish(self, call: Call, code: grpc.StatusCode, server: Server | None) -> None:
        if code is OK:
            call.latency = self.loop.time() - call.scheduled
        self._record(call, server)


def _no_emit(*args: Any) -> None:
    return None
