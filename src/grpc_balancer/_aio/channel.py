"""BalancedChannel: a ``grpc.aio.Channel`` that balances each call over many endpoints.

The spine of the library (see ARCHITECTURE.md)::

    target ─► Resolver ─(endpoints)─► Policy ─(owns)─► Subchannels
                                        │ on any change
                                        ▼
                                      Picker ◄── pick() per call ◄── multicallables

The channel is the glue: it is the resolver's listener, the policy's
:class:`~grpc_balancer.policies.base.ChannelControl` and every subchannel's listener.
It holds the current picker and wakes calls waiting for a better one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
import grpc.aio

from grpc_balancer._aio.calls import (
    BalancedStreamStreamMultiCallable,
    BalancedStreamUnaryMultiCallable,
    BalancedUnaryStreamMultiCallable,
    BalancedUnaryUnaryMultiCallable,
)
from grpc_balancer._aio.subchannel import AioSubchannel
from grpc_balancer._attempts.plan import DEFAULT_BUFFER_LIMIT
from grpc_balancer._attempts.retry import MethodPolicy, RetryThrottle
from grpc_balancer._config.method_config import make_throttle
from grpc_balancer._config.service_config import (
    ServiceConfig,
    load_service_config,
    split_channel_options,
)
from grpc_balancer._core.dialing import Dialer
from grpc_balancer._core.health import HealthChecking
from grpc_balancer._core.outlier import OutlierDetector
from grpc_balancer._core.picking import Picking
from grpc_balancer._core.status import ChannelStatus, channel_status
from grpc_balancer._core.switch import PolicySwitch
from grpc_balancer._observe.events import Event, Observer, emit
from grpc_balancer._observe.instrument import ChannelInstrument, for_channel
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.errors import (
    BalancerConfigError,
    ChannelClosedError,
    ServiceConfigError,
    WrongEventLoopError,
)
from grpc_balancer.picker import FailPicker, Picker
from grpc_balancer.policies.base import Policy, get_policy_factory
from grpc_balancer.resolvers.base import Resolver, ResolverOptions, get_resolver_factory
from grpc_balancer.subchannel import ChannelOptions, Subchannel
from grpc_balancer.target import Target, grpc_target_for, parse_target

RETRY_BUFFER_OPTION = "grpc.per_rpc_retry_buffer_size"

log = logging.getLogger("grpc_balancer._aio.channel")

Connectivity = grpc.ChannelConnectivity

#: Reconnect backoff for per-endpoint channels unless the user sets it: gRPC's
#: 120 s maximum is far too slow for a balancer to notice a restarted backend.
#: (``grpc.min_reconnect_backoff_ms`` stays gRPC's 20 s: C-core uses it as the connect
#: timeout, and 1 s made a connect storm over thousands of endpoints abandon and redial
#: every handshake slower than a second.)
#: Channelz is off on them: its node and trace buffer cost ~5 KiB per endpoint channel
#: (a third of what a 10,000-endpoint channel holds per endpoint); set
#: ``("grpc.enable_channelz", 1)`` to inspect the endpoint channels with channelz.
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 1000),
    ("grpc.max_reconnect_backoff_ms", 10_000),
    ("grpc.enable_channelz", 0),
)


class BalancedChannel(grpc.aio.Channel):
    """Created by :func:`grpc_balancer.aio.insecure_channel` / ``secure_channel``."""

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        policy: str | None = None,
        service_config: str | Mapping[str, Any] | None = None,
        options: ChannelOptions | None = None,
        compression: grpc.Compression | None = None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
        resolver_options: ResolverOptions | None = None,
    ) -> None:
        self._target: Target = parse_target(target)
        self._resolver_factory = get_resolver_factory(self._target)
        endpoint_options, service_config, policy = split_channel_options(
            options, service_config, policy
        )
        self.config: ServiceConfig = load_service_config(service_config, policy)
        #: What the user gave (they win over a resolver's service config, key by key).
        self._user_policy = policy
        self._user_config: Mapping[str, Any] = dict(self.config.raw)
        #: Bumped on every applied config; multicallables re-read their method config.
        self.config_generation = 0
        #: What the resolver's config had that the channel does not apply, and why the
        #: last one was refused (None: accepted, or none came).
        self.config_notes: tuple[str, ...] = ()
        self.config_error: str | None = None
        self._policy_factory = get_policy_factory(self.config.policy)
        self._credentials = credentials
        self._compression = compression
        self._interceptors = list(interceptors or ())
        self._options = _merge_options(endpoint_options)
        #: Request bytes a streaming call keeps for replays before it commits (gRPC's
        #: ``grpc.per_rpc_retry_buffer_size`` channel option, 256 KiB by default).
        self.retry_buffer_size: int = _retry_buffer_size(self._options)
        self._resolver_options = resolver_options or ResolverOptions()
        self._subchannels: set[Subchannel] = set()
        #: Starts connections a slice per loop turn (see :mod:`grpc_balancer._core.dialing`).
        self._dialer = Dialer(holding=self._calls_waiting)
        #: One bound method for every subchannel (not one closure each).
        self._open_endpoint_channel = self._open_for
        #: Removed by the policy but still serving calls (closed when those end).
        self._draining: set[Subchannel] = set()
        self._state: Connectivity = Connectivity.IDLE
        self._resolver: Resolver | None = None
        self._switch = PolicySwitch(self, self._publish)
        self._have_endpoints = False
        self._resolver_error: str | None = None
        #: address -> position in the resolver's latest list (introspection order)
        self._target_order: dict[str, int] = {}
        self._closed = False
        self._close_done: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: retryThrottling's token bucket (None: not configured), shared by all calls.
        self.throttle: RetryThrottle | None = make_throttle(self.config.throttling)
        #: circuitBreakers.maxRequests (0: no per-backend limit).
        self.max_requests = self.config.max_requests_per_backend
        #: Calls whose plan waits (a backoff, a picker, a hedging delay): close() ends them.
        self.waiting_calls: set[Any] = set()
        #: The one pick seam: picker + change signal, read by every call's plan.
        self.picking = Picking(
            self._target.raw,
            self._subchannels,
            self.max_requests,
            self.emit,
            self.describe_state,
        )
        #: Called as ``observer(event, subchannel, code)``; see :mod:`grpc_balancer._observe.events`.
        self.observers: list[Observer] = []
        self._outlier: OutlierDetector | None = None
        if self.config.outlier is not None:
            self._outlier = OutlierDetector(
                self.config.outlier, lambda event, sc: self.emit(event, sc, None)
            )
        self._health: HealthChecking | None = None
        if self.config.health_check_service is not None:
            self._health = HealthChecking(
                self.config.health_check_service,
                self._target.raw,
                lambda sc: self.emit(Event.HEALTH, sc, None),
            )
        # Validate the policy config now, so a bad field fails at construction.
        self._switch.start(self._switch.build(self._policy_factory, self.config.policy_config))
        # Likewise the target: resolvers parse it in their constructor.
        self._resolver = self._resolver_factory(self._target, self, self._resolver_options)
        self._options = _with_authority(self._options, self._resolver)
        #: Metrics sinks (``grpc_balancer.metrics.enable()``...); None when none is on.
        self.instrument: ChannelInstrument | None = for_channel(self)
        with contextlib.suppress(RuntimeError):
            self._start(asyncio.get_running_loop())

    # -- lifecycle ------------------------------------------------------------------------
    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None:
            return
        self._loop = loop
        self._state = Connectivity.CONNECTING
        assert self._resolver is not None
        self._resolver.start()

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._start(loop)
        if self._closed:
            raise ChannelClosedError(f"channel for {self._target.raw!r} is closed")
        if loop is not self._loop:
            raise self._wrong_loop_error()

    def _wrong_loop_error(self) -> WrongEventLoopError:
        assert self._loop is not None
        state = "now closed" if self._loop.is_closed() else "still running elsewhere"
        return WrongEventLoopError(
            f"channel for {self._target.raw!r} was used from another event loop than the "
            f"one it started on ({state}); a grpc_balancer.aio channel belongs to one event "
            "loop: create it inside the loop that uses it (e.g. in the coroutine passed to "
            "asyncio.run()), one channel per loop"
        )

    async def close(self, grace: float | None = None) -> None:
        """grpcio's semantics: new calls are refused at once (ChannelClosedError); calls
        and streams in flight get at most ``grace`` seconds (None: none), then end with
        CANCELLED; when this returns, every endpoint channel of the channel is closed."""
        if self._close_done is not None:
            await asyncio.shield(self._close_done)
            return
        loop = asyncio.get_running_loop()
        if self._loop is not None and loop is not self._loop:
            if self._loop.is_running():  # in another thread: close it there
                done = asyncio.run_coroutine_threadsafe(self.close(grace), self._loop)
                await asyncio.wrap_future(done)
                return
            raise self._wrong_loop_error()
        self._closed = True
        self._close_done = loop.create_future()
        try:
            await self._shutdown(grace)
        finally:
            self._close_done.set_result(None)

    async def _shutdown(self, grace: float | None) -> None:
        # Every subchannel, including those the policy removed that still serve calls.
        subchannels = self._subchannels | {sc for sc in self._draining if sc.in_flight}
        self._draining = set()
        # New picks (and calls waiting for a picker) fail with CANCELLED "channel closed".
        self._publish(
            Connectivity.SHUTDOWN, FailPicker(grpc.StatusCode.CANCELLED, "channel closed")
        )
        for call in list(self.waiting_calls):  # in a backoff or a wait: end them now
            call.close_from_channel()
        self._dialer.close()
        if self._resolver is not None:
            await self._resolver.close()
        # Background streams first (health, ORCA), so the grace is the calls' alone.
        if self._health is not None:
            self._health.close()
        if self._outlier is not None:
            self._outlier.close()
        self._switch.close()  # the policies remove their subchannels; closed below
        self._subchannels.clear()  # the same set object as picking's
        # Each endpoint's grpc.aio channel gives its calls `grace`, then cancels them.
        await asyncio.gather(*(sc.aclose(grace) for sc in subchannels), return_exceptions=True)
        if self.instrument is not None:
            self.instrument.closed()

    async def __aenter__(self) -> BalancedChannel:
        self._ensure_started()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- grpc.aio.Channel API -------------------------------------------------------------------
    def get_state(self, try_to_connect: bool = False) -> Connectivity:
        if try_to_connect and self._loop is None and not self._closed:
            self._ensure_started()
        return self._state

    async def wait_for_state_change(self, last_observed_state: Connectivity) -> None:
        if self._loop is not None and asyncio.get_running_loop() is not self._loop:
            raise self._wrong_loop_error()
        while self._state is last_observed_state:
            await self._next_picker()

    async def channel_ready(self) -> None:
        self._ensure_started()
        while self._state is not Connectivity.READY:
            if self._state is Connectivity.SHUTDOWN:
                raise ChannelClosedError(f"channel for {self._target.raw!r} is closed")
            await self.wait_for_state_change(self._state)

    async def wait_for_settled(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the target is resolved and no subchannel
        is still connecting, so the first calls see every reachable backend. Returns
        whether that happened in time; calls work either way."""
        self._ensure_started()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._settled():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._next_picker(), remaining)
        return True

    def _settled(self) -> bool:
        if self._closed:
            return True
        if not self._have_endpoints:
            return self._resolver_error is not None
        if getattr(self._policy, "rebuild_pending", False):
            return False  # the picker does not show the latest states yet
        return not any(sc.wants_connection and sc.still_trying for sc in self._subchannels)

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> BalancedUnaryUnaryMultiCallable:
        return BalancedUnaryUnaryMultiCallable(
            self, method, request_serializer, response_deserializer
        )

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> BalancedUnaryStreamMultiCallable:
        return BalancedUnaryStreamMultiCallable(
            self, method, request_serializer, response_deserializer
        )

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> BalancedStreamUnaryMultiCallable:
        return BalancedStreamUnaryMultiCallable(
            self, method, request_serializer, response_deserializer
        )

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> BalancedStreamStreamMultiCallable:
        return BalancedStreamStreamMultiCallable(
            self, method, request_serializer, response_deserializer
        )

    # -- method config and events (used by the call objects) ---------------------------------------
    def method_policy(self, method: str) -> MethodPolicy | None:
        """What ``methodConfig`` says about ``method`` (looked up once per multicallable)."""
        return self.config.methods.lookup(method)

    def emit(
        self, event: Event, subchannel: Subchannel | None, code: grpc.StatusCode | None
    ) -> None:
        if self.observers:
            emit(self.observers, event, subchannel, code)

    # -- picking (the calls' plans use self.picking) ------------------------------------------
    def loop_for_call(self) -> asyncio.AbstractEventLoop:
        """The loop a new call runs on (starting the channel on first use)."""
        self._ensure_started()
        assert self._loop is not None
        return self._loop

    def describe_state(self) -> str:
        if self._resolver_error and not self._have_endpoints:
            return f"resolver error: {self._resolver_error}"
        if not self._have_endpoints:
            return "still resolving"
        subs = ", ".join(
            f"{sc.address} {sc.describe_problem()}" for sc in self.subchannels if not sc.usable
        )
        return subs or "all backends busy"

    async def _next_picker(self) -> None:
        """Wait until the current picker is replaced."""
        future = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.get_loop().call_soon_threadsafe(_resolve, future)

        self.picking.generation.changed.add_callback(wake)
        await future

    def _publish(self, state: Connectivity, picker: Picker) -> None:
        if state is not self._state:
            log.debug("%s: channel %s -> %s", self._target.raw, self._state.name, state.name)
            self._state = state
        self.picking.publish(state, picker)

    # -- ResolverListener ------------------------------------------------------------------------
    def on_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        if self._closed:
            return
        if self._resolver_error is not None:
            log.info("%s: resolver recovered", self._target.raw)
        self._resolver_error = None
        self._have_endpoints = True
        order: dict[str, int] = {}
        for i, endpoint in enumerate(endpoints):
            order.setdefault(endpoint.address, i)
        self._target_order = order
        log.debug("%s: %d endpoints: %s", self._target.raw, len(endpoints), endpoints)
        if self.instrument is not None:
            self.instrument.resolver_update(endpoints)
        self._switch.update_endpoints(endpoints)

    def on_resolver_error(self, error: str) -> None:
        if self._closed:
            return
        if error != self._resolver_error:
            log.warning(
                "%s: resolver error (keeping the last good list): %s", self._target.raw, error
            )
        self._resolver_error = error
        if self.instrument is not None:
            self.instrument.resolver_error(error)
        if not self._have_endpoints:
            self._publish(
                Connectivity.TRANSIENT_FAILURE,
                FailPicker(
                    grpc.StatusCode.UNAVAILABLE,
                    f"cannot resolve target {self._target.raw!r}: {error}",
                ),
            )

    def on_service_config(self, config: Mapping[str, Any], notes: Sequence[str] = ()) -> None:
        """The resolver's service config (xDS): applied over the user's defaults, the
        user's own ``policy=`` and service config keys winning. A config that does not
        load is refused (the last good one stays) and shown in ``status()``."""
        if self._closed:
            return
        merged = {**config, **self._user_config}
        notes = list(notes)
        if self._user_policy is not None:
            theirs = [k for k in ("loadBalancingConfig", "loadBalancingPolicy") if k in config]
            for key in theirs:
                merged.pop(key, None)
            if theirs:
                notes.append(f"policy={self._user_policy!r} given to the channel wins over the "
                             "resolver's loadBalancingConfig")  # fmt: skip
        try:
            new = load_service_config(merged, self._user_policy)
            built = None
            if (new.policy, new.policy_config) != (self.config.policy, self.config.policy_config):
                built = self._switch.build(get_policy_factory(new.policy), new.policy_config)
        except BalancerConfigError as exc:
            error = f"service config from the resolver refused (the last good one stays): {exc}"
            if error != self.config_error:
                log.warning("%s: %s", self._target.raw, error)
            self.config_error = error
            self.config_notes = tuple(notes)
            return
        self.config_error = None
        self.config_notes = tuple(notes)
        if new.raw != self.config.raw:
            self._apply_config(new, built)

    def _apply_config(self, new: ServiceConfig, built: Any) -> None:
        old, self.config = self.config, new
        log.info("%s: service config from the resolver: policy %s", self._target.raw, new.policy)
        if new.throttling != old.throttling:
            self.throttle = make_throttle(new.throttling)
        self.max_requests = self.picking.max_requests = new.max_requests_per_backend
        if new.outlier != old.outlier:
            self._replace_outlier(new)
        self.config_generation += 1
        if built is not None:
            self._switch.switch_to(built)
        # Calls waiting for a picker re-read the limits they wait on.
        self.picking.publish(self._state, self.picking.generation.picker)

    def _replace_outlier(self, new: ServiceConfig) -> None:
        if self._outlier is not None:
            for sc in self._subchannels:
                self._outlier.remove(sc)
                if sc.ejected:
                    sc.set_ejected(False)
            self._outlier.close()
            self._outlier = None
        if new.outlier is not None:
            self._outlier = OutlierDetector(
                new.outlier, lambda event, sc: self.emit(event, sc, None)
            )
            for sc in self._subchannels:
                self._outlier.add(sc)

    @property
    def _policy(self) -> Policy | None:
        """The policy in use (while switching, the one still publishing)."""
        return self._switch.policy

    # -- ChannelControl (for the policy) ------------------------------------------------------------
    @property
    def target(self) -> str:
        return self._target.raw

    @property
    def parsed_target(self) -> Target:
        return self._target

    def create_subchannel(self, endpoint: Endpoint) -> Subchannel:
        sc = self.make_subchannel(endpoint)
        self._subchannels.add(sc)
        if self._health is not None:
            self._health.add(sc)
        if self._outlier is not None:
            self._outlier.add(sc)
        if self.instrument is not None:
            self.instrument.subchannel_added(sc)
        log.info("%s: endpoint added %s", self._target.raw, endpoint.address)
        return sc

    def make_subchannel(self, endpoint: Endpoint) -> Subchannel:
        """The subchannel for a new endpoint, on its own grpc.aio channel, made when it
        is first dialed (the sync channel makes its own kind, on a sync grpc.Channel
        with the same options)."""
        return AioSubchannel(endpoint, self._open_endpoint_channel, self, self._dialer)

    def _open_for(self, address: str) -> grpc.aio.Channel:
        """The grpc.aio channel of one endpoint (IP literals as ``ipv4:``/``ipv6:``)."""
        target = grpc_target_for(address)
        if self._credentials is None:
            return grpc.aio.insecure_channel(
                target,
                options=self.endpoint_options,
                compression=self._compression,
                interceptors=self._interceptors or None,
            )
        return grpc.aio.secure_channel(
            target,
            self._credentials,
            options=self.endpoint_options,
            compression=self._compression,
            interceptors=self._interceptors or None,
        )

    @property
    def endpoint_options(self) -> list[tuple[str, Any]]:
        """The options of every per-endpoint channel, of either kind: the user's,
        :data:`DEFAULT_CHANNEL_OPTIONS`, the resolver's authority, a local subchannel pool."""
        return self._options

    def _calls_waiting(self) -> bool:
        """Whether a call that had to wait for a backend is still unanswered: only then
        does the dialer hold connection starts to its window."""
        return bool(self.waiting_calls)

    def calls_answered(self) -> None:
        """The last call that waited for a backend finished: dial the rest at full speed."""
        self._dialer.released()

    def remove_subchannel(self, subchannel: Subchannel) -> None:
        if subchannel in self._subchannels:
            log.info("%s: endpoint removed %s", self._target.raw, subchannel.address)
            self._subchannels.discard(subchannel)
            if self.instrument is not None:
                self.instrument.subchannel_removed(subchannel)
        if self._health is not None:
            self._health.remove(subchannel)
        if self._outlier is not None:
            self._outlier.remove(subchannel)
        if self._closed:
            return  # close() closes every subchannel itself, with its grace
        subchannel.shutdown()
        if subchannel.in_flight:
            self._draining = {sc for sc in self._draining if sc.in_flight}
            self._draining.add(subchannel)

    def update_picker(self, state: Connectivity, picker: Picker) -> None:
        if not self._closed:
            self._publish(state, picker)

    def request_reresolution(self) -> None:
        if self._resolver is not None and not self._closed:
            self._resolver.resolve_now()

    # -- SubchannelListener -------------------------------------------------------------------------
    def on_subchannel_state(self, subchannel: Subchannel) -> None:
        if self._closed:
            return
        if subchannel.connectivity is Connectivity.TRANSIENT_FAILURE:
            self.request_reresolution()
        if self._health is not None:
            self._health.on_state(subchannel)
        if self.instrument is not None:
            self.instrument.subchannel_state(subchannel)
        self._switch.on_subchannel_state(subchannel)

    # -- introspection ---------------------------------------------------------------------------------
    @property
    def subchannels(self) -> list[Subchannel]:
        """In the target's order (the resolver's latest list), not sorted as strings."""
        order = self._target_order
        last = len(order)
        return sorted(self._subchannels, key=lambda sc: (order.get(sc.address, last), sc.address))

    @property
    def picker(self) -> Picker:
        return self.picking.generation.picker

    def status(self) -> ChannelStatus:
        """A snapshot of the channel for humans and dashboards: target, resolver state,
        policy, and each backend's connectivity, health, load and latency (plain
        dataclasses; ``.as_dict()`` for JSON)."""
        return channel_status(self)

    def __repr__(self) -> str:
        return (
            f"<BalancedChannel {self._target.raw!r} policy={self.config.policy} "
            f"state={self._state.name} subchannels={self.subchannels}>"
        )


def _retry_buffer_size(options: list[tuple[str, Any]]) -> int:
    for key, value in options:
        if key == RETRY_BUFFER_OPTION:
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ServiceConfigError(
                    f"channel option {RETRY_BUFFER_OPTION} must be an integer >= 0, got {value!r}"
                )
            return value
    return DEFAULT_BUFFER_LIMIT


def _merge_options(options: ChannelOptions | None) -> list[tuple[str, Any]]:
    """User options win, except the local subchannel pool: without it grpcio would
    share one connection between our per-endpoint channels to the same address."""
    user = list(options or ())
    keys = {k for k, _ in user}
    merged = [(k, v) for k, v in DEFAULT_CHANNEL_OPTIONS if k not in keys]
    merged += [(k, v) for k, v in user if k != "grpc.use_local_subchannel_pool"]
    merged.append(("grpc.use_local_subchannel_pool", 1))
    return merged


def _with_authority(options: list[tuple[str, Any]], resolver: Resolver) -> list[tuple[str, Any]]:
    """A resolver may name the authority (e.g. DNS: the looked-up name), so TLS verifies
    that name rather than the resolved IP; the user's own setting wins."""
    authority = getattr(resolver, "authority", None)
    keys = {k for k, _ in options}
    if not authority or keys & {"grpc.default_authority", "grpc.ssl_target_name_override"}:
        return options
    return [*options, ("grpc.default_authority", authority)]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def insecure_channel(
    target: str,
    options: ChannelOptions | None = None,
    compression: grpc.Compression | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    *,
    policy: str | None = None,
    service_config: str | Mapping[str, Any] | None = None,
    resolver_options: ResolverOptions | None = None,
) -> BalancedChannel:
    """A plaintext balanced channel, e.g.
    ``insecure_channel("static:///localhost:50051,localhost:50052", policy="round_robin")``.

    ``options``, ``compression`` and ``interceptors`` are grpcio's (given to every
    endpoint's channel; ``grpc.service_config`` and ``grpc.lb_policy_name`` are read by
    the balancer). Raises a ``ValueError`` subclass
    (:class:`grpc_balancer.BalancerConfigError`) for a malformed target, an unknown
    scheme or policy, or a bad service config.
    """
    return BalancedChannel(
        target,
        policy=policy,
        service_config=service_config,
        options=options,
        compression=compression,
        interceptors=interceptors,
        resolver_options=resolver_options,
    )


def secure_channel(
    target: str,
    credentials: grpc.ChannelCredentials,
    options: ChannelOptions | None = None,
    compression: grpc.Compression | None = None,
    interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
    *,
    policy: str | None = None,
    service_config: str | Mapping[str, Any] | None = None,
    resolver_options: ResolverOptions | None = None,
) -> BalancedChannel:
    """Like :func:`insecure_channel`, with TLS ``credentials`` on every endpoint."""
    return BalancedChannel(
        target,
        credentials=credentials,
        policy=policy,
        service_config=service_config,
        options=options,
        compression=compression,
        interceptors=interceptors,
        resolver_options=resolver_options,
    )
