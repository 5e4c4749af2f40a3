"""The Policy protocol, the policy registry, and :class:`BasePolicy`.

A policy receives endpoint lists and subchannel state changes and publishes pickers.
Most policies only decide *how to choose among usable subchannels*: they subclass
:class:`BasePolicy` and write :meth:`BasePolicy.build_picker` (grpc-go's
``balancer/base``). BasePolicy does the rest: subchannel reuse across updates,
aggregate connectivity (with gRPC's sticky TRANSIENT_FAILURE), SRV priority groups,
and the "why nothing is reachable" message.

Subchannel state changes are coalesced (grpc-go's pending flag + ``call_soon``): however
many arrive in one event-loop turn, the picker is rebuilt once, in the next turn. A
rebuild scans every subchannel, so a connect storm over N endpoints would otherwise cost
O(N²); each rebuild is also timed, and the next one waits until
:data:`REBUILD_BUDGET` times its cost has passed, so rebuilds take at most about a
seventeenth of the loop however fast changes arrive, and calls are never starved by
them.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import grpc

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.errors import ServiceConfigError, UnknownPolicyError
from grpc_balancer.picker import FailPicker, Picker, QueuePicker
from grpc_balancer.subchannel import Subchannel

Connectivity = grpc.ChannelConnectivity

#: After a rebuild that took ``t`` s, the next waits until ``REBUILD_BUDGET * t`` s have
#: passed (at N = 10,000 a rebuild costs about a millisecond, so a new READY backend
#: joins the picker within ~20 ms; at N = 10, microseconds). At 4, rebuilds still took
#: a tenth of a 10,000-endpoint connect storm (``bench/fleet.py``: 145-190 ms of it).
REBUILD_BUDGET = 16.0


class ChannelControl(Protocol):
    """What a policy may ask of its channel (grpc-go's ``balancer.ClientConn``)."""

    @property
    def target(self) -> str: ...

    def create_subchannel(self, endpoint: Endpoint) -> Subchannel:
        """A new, idle subchannel for ``endpoint``; call ``connect()`` to dial it."""

    def remove_subchannel(self, subchannel: Subchannel) -> None:
        """Stop using it; it closes once its in-flight calls finish."""

    def update_picker(self, state: Connectivity, picker: Picker) -> None:
        """Publish a new aggregate state and picker."""

    def request_reresolution(self) -> None:
        """Ask the resolver for a fresh list (e.g. a backend went away)."""


class Policy(Protocol):
    def update_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """A complete new list from the resolver (possibly empty)."""

    def on_subchannel_state(self, subchannel: Subchannel) -> None:
        """Connectivity, health, ejection or load-report state of ``subchannel`` changed."""

    def close(self) -> None:
        """Drop every subchannel; no picker updates after this."""


PolicyFactory = Callable[[ChannelControl, Mapping[str, Any]], Policy]

# Two tiers, so a user's registration wins whenever it happens: before or after the
# built-in module of the same name is imported (lazily here, or directly by anyone).
_REGISTRY: dict[str, PolicyFactory] = {}  # the user's
_BUILTIN_FACTORIES: dict[str, PolicyFactory] = {}  # what the built-in modules register

#: The built-in policies, each imported (and registering itself) on first use of its
#: name, so a channel using round_robin never loads weighted_round_robin's ORCA protos.
_BUILTIN = {
    name: f"grpc_balancer.policies.{name}"
    for name in (
        "pick_first",
        "round_robin",
        "weighted_round_robin",
        "least_request",
        "peak_ewma",
        "prequal",
        "ring_hash",
        "random_subsetting",
        "deterministic_aperture",
    )
}


def register_policy(name: str, factory: PolicyFactory) -> None:
    """Make ``name`` usable as ``policy=`` and in ``loadBalancingConfig``.

    ``factory(control, config)`` is called once per channel with the policy's config
    object (``{}`` when none); it should raise :class:`ServiceConfigError` for bad fields.
    A registration replaces an earlier one of the same name and always wins over a
    built-in policy of that name (for channels created after it).
    """
    if not name:
        raise ValueError("policy name must not be empty")
    _REGISTRY[name] = factory


def register_builtin_policy(name: str, factory: PolicyFactory) -> None:
    """For grpc_balancer's own policy modules: used only where no user registered ``name``."""
    _BUILTIN_FACTORIES[name] = factory


def get_policy_factory(name: str) -> PolicyFactory:
    factory = _REGISTRY.get(name)
    if factory is not None:
        return factory
    if name not in _BUILTIN_FACTORIES:
        _load_builtin(name)
    try:
        return _BUILTIN_FACTORIES[name]
    except KeyError:
        raise UnknownPolicyError(
            f"unknown load-balancing policy {name!r} (known: {', '.join(registered_policies())})"
        ) from None


def registered_policies() -> list[str]:
    """Every usable name: the registered ones and the built-ins (not imported for this)."""
    return sorted(_REGISTRY.keys() | _BUILTIN.keys() | _BUILTIN_FACTORIES.keys())


def _load_builtin(name: str) -> None:
    """The lazy seam: import the built-in module for ``name`` (it registers itself with
    :func:`register_builtin_policy`, a tier below the user's registrations)."""
    module = _BUILTIN.get(name)
    if module is not None:
        importlib.import_module(module)


def select_policy(entries: Any, where: str) -> tuple[str, Mapping[str, Any]]:
    """The first entry of a ``loadBalancingConfig``-style list (``[{"name": {config}},
    ...]``) whose policy is known here, as gRPC chooses: ``(name, config)``. ``where``
    names the list in errors (``"service config: loadBalancingConfig"``)."""
    if not isinstance(entries, list) or not entries:
        raise ServiceConfigError(f"{where} must be a non-empty list")
    names = []
    for entry in entries:
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ServiceConfigError(
                f"{where}: each entry must be an object with exactly one policy name, got {entry!r}"
            )
        ((name, cfg),) = entry.items()
        names.append(name)
        if name in registered_policies():
            if cfg is None:
                cfg = {}
            if not isinstance(cfg, dict):
                raise ServiceConfigError(f"{where}[{name!r}] must be an object")
            return name, cfg
    raise ServiceConfigError(
        f"{where}: no supported policy in {names} (known: {', '.join(registered_policies())})"
    )


def check_config_fields(policy: str, config: Mapping[str, Any], allowed: set[str]) -> None:
    """Reject unknown fields with a message that names them (typos fail loudly)."""
    if not isinstance(config, Mapping):
        raise ServiceConfigError(f"{policy}: config must be a JSON object, got {config!r}")
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise ServiceConfigError(
            f"{policy}: unknown config field(s) {', '.join(map(repr, unknown))}"
            f" (allowed: {', '.join(sorted(allowed)) or 'none'})"
        )


def describe_unreachable(target: str, subchannels: Sequence[Subchannel]) -> str:
    """'no backend reachable for target T: a:1 (Connection refused); b:2 (NOT_SERVING)'."""
    if not subchannels:
        return f"no endpoints for target {target!r} (the resolver returned an empty list)"
    parts = "; ".join(f"{sc.address}: {sc.describe_problem()}" for sc in subchannels)
    return f"no backend reachable for target {target!r}: {parts}"


class RebuildStats:
    """What picker rebuilds cost a policy: how many, in total, the longest, the last."""

    __slots__ = ("count", "last_s", "max_s", "total_s")

    def __init__(self) -> None:
        self.count = 0
        self.total_s = 0.0
        self.max_s = 0.0
        self.last_s = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.total_s += seconds
        self.last_s = seconds
        if seconds > self.max_s:
            self.max_s = seconds

    def __repr__(self) -> str:
        return (
            f"<RebuildStats count={self.count} total={self.total_s * 1e3:.1f}ms "
            f"max={self.max_s * 1e3:.2f}ms last={self.last_s * 1e3:.2f}ms>"
        )


class BasePolicy:
    """Subchannel bookkeeping shared by every policy that picks among usable subchannels.

    Subclasses set ``NAME`` and implement :meth:`build_picker`. Usable means READY,
    not failing health checks and not ejected; among usable subchannels only the lowest
    SRV priority group is offered to the picker.
    """

    NAME: ClassVar[str] = ""
    CONFIG_FIELDS: ClassVar[set[str]] = set()

    def __init__(self, control: ChannelControl, config: Mapping[str, Any]) -> None:
        check_config_fields(self.NAME, config, self.CONFIG_FIELDS)
        self._control = control
        self._config = config
        self._by_address: dict[str, Subchannel] = {}
        self._ordered: list[Subchannel] = []
        self._resolved = False
        self._closed = False
        #: Whether endpoints of more than one SRV priority are in the list.
        self._mixed_priorities = False
        self._rebuild: asyncio.Handle | None = None
        self._rebuild_not_before = 0.0
        #: The cost of every picker rebuild (see :data:`REBUILD_BUDGET`).
        self.rebuilds = RebuildStats()

    # -- inputs ------------------------------------------------------------------
    def update_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        if self._closed:
            return
        self._resolved = True
        ordered: list[Subchannel] = []
        fresh: dict[str, Subchannel] = {}
        for endpoint in endpoints:
            if endpoint.address in fresh:
                continue
            sc = self._by_address.pop(endpoint.address, None)
            if sc is None:
                sc = self._control.create_subchannel(endpoint)
                self.subchannel_added(sc)
            else:
                sc.endpoint = endpoint
            fresh[endpoint.address] = sc
            ordered.append(sc)
        for gone in self._by_address.values():
            self.subchannel_removed(gone)
            self._control.remove_subchannel(gone)
        self._by_address = fresh
        self._ordered = ordered
        self._mixed_priorities = len({sc.endpoint.priority for sc in ordered}) > 1
        self.endpoints_updated(ordered)
        self.rebuild_now()

    def on_subchannel_state(self, subchannel: Subchannel) -> None:
        if self._closed or self._by_address.get(subchannel.address) is not subchannel:
            return
        if subchannel.connectivity is Connectivity.IDLE and subchannel.wants_connection:
            subchannel.connect()
        self.rebuild_soon()

    def close(self) -> None:
        self._closed = True
        if self._rebuild is not None:
            self._rebuild.cancel()
            self._rebuild = None
        for sc in self._ordered:
            self._control.remove_subchannel(sc)
        self._by_address.clear()
        self._ordered = []

    # -- hooks for subclasses ------------------------------------------------------
    def subchannel_added(self, subchannel: Subchannel) -> None:
        """A new subchannel joined; by default it starts connecting at once."""
        subchannel.connect()

    def subchannel_removed(self, subchannel: Subchannel) -> None:
        """``subchannel`` is leaving (its address is gone from the list)."""

    def endpoints_updated(self, ordered: list[Subchannel]) -> None:
        """The list changed (after adds/removes, before the picker is rebuilt)."""

    def build_picker(self, usable: list[Subchannel]) -> Picker:
        """A picker over ``usable`` (non-empty, in resolver order)."""
        raise NotImplementedError

    def connecting_picker(self) -> Picker:
        """The picker while nothing is usable yet but something may become so: calls
        wait for the next picker (a lazy policy's picker may also ask for connections)."""
        return QueuePicker()

    # -- picker publication --------------------------------------------------------
    @property
    def subchannels(self) -> list[Subchannel]:
        return list(self._ordered)

    def usable_subchannels(self) -> list[Subchannel]:
        # (the property's value read directly: this scan runs over every subchannel
        # in every rebuild, and at 10,000 the property calls were most of its cost)
        usable = [sc for sc in self._ordered if sc._usable]
        if usable and self._mixed_priorities:
            best = min(sc.endpoint.priority for sc in usable)
            usable = [sc for sc in usable if sc.endpoint.priority == best]
        return usable

    # -- coalescing ----------------------------------------------------------------------
    @property
    def rebuild_pending(self) -> bool:
        """A rebuild is scheduled (state changed since the last one)."""
        return self._rebuild is not None

    def rebuild_soon(self) -> None:
        """Rebuild the picker in a later loop turn, once for every change until then
        (at once when no event loop runs, e.g. a policy driven by hand)."""
        if self._closed or self._rebuild is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.rebuild_now()
            return
        delay = self._rebuild_not_before - loop.time()
        if delay > 0:
            self._rebuild = loop.call_later(delay, self._scheduled_rebuild)
        else:
            self._rebuild = loop.call_soon(self._scheduled_rebuild)

    def _scheduled_rebuild(self) -> None:
        self._rebuild = None
        self.rebuild_now()

    def rebuild_now(self) -> None:
        """:meth:`regenerate` now, timed; a scheduled rebuild is no longer needed."""
        if self._rebuild is not None:
            self._rebuild.cancel()
            self._rebuild = None
        if self._closed:
            return
        try:
            clock = asyncio.get_running_loop().time  # virtual on a simulated loop
        except RuntimeError:
            clock = time.monotonic
        start, started = clock(), time.perf_counter()
        self.regenerate()
        self.rebuilds.add(time.perf_counter() - started)
        end = clock()
        self._rebuild_not_before = end + REBUILD_BUDGET * (end - start)

    def regenerate(self) -> None:
        """Recompute the aggregate state and publish a picker for it."""
        if self._closed:
            return
        usable = self.usable_subchannels()
        if usable:
            self._control.update_picker(Connectivity.READY, self.build_picker(usable))
        elif not self._resolved or any(sc.still_trying for sc in self._ordered):
            self._control.update_picker(Connectivity.CONNECTING, self.connecting_picker())
        else:
            message = describe_unreachable(self._control.target, self._ordered)
            self._control.update_picker(
                Connectivity.TRANSIENT_FAILURE,
                FailPicker(grpc.StatusCode.UNAVAILABLE, message),
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {[sc.address for sc in self._ordered]}>"
