"""The Policy protocol, the policy registry, and :class:`BasePolicy`.

A policy receives endpoint lists and subchannel state changes and publishes pickers.
Most policies only decide *how to choose among usable subchannels*: they subclass
:class:`BasePolicy` and write :meth:`BasePolicy.build_picker` (grpc-go's
``balancer/base``). BasePolicy does the rest: subchannel reuse across updates,
aggregate connectivity (with gRPC's sticky TRANSIENT_FAILURE), SRV priority groups,
and the "why nothing is reachable" message.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

import grpc

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.errors import ServiceConfigError, UnknownPolicyError
from grpc_balancer.picker import FailPicker, Picker, QueuePicker
from grpc_balancer.subchannel import Subchannel

Connectivity = grpc.ChannelConnectivity


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
        self.endpoints_updated(ordered)
        self.regenerate()

    def on_subchannel_state(self, subchannel: Subchannel) -> None:
        if self._closed or self._by_address.get(subchannel.address) is not subchannel:
            return
        if subchannel.connectivity is Connectivity.IDLE and subchannel.wants_connection:
            subchannel.connect()
        self.regenerate()

    def close(self) -> None:
        self._closed = True
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

    # -- picker publication --------------------------------------------------------
    @property
    def subchannels(self) -> list[Subchannel]:
        return list(self._ordered)

    def usable_subchannels(self) -> list[Subchannel]:
        usable = [sc for sc in self._ordered if sc.usable]
        if usable:
            best = min(sc.endpoint.priority for sc in usable)
            if any(sc.endpoint.priority != best for sc in usable):
                usable = [sc for sc in usable if sc.endpoint.priority == best]
        return usable

    def regenerate(self) -> None:
        """Recompute the aggregate state and publish a picker for it."""
        if self._closed:
            return
        usable = self.usable_subchannels()
        if usable:
            self._control.update_picker(Connectivity.READY, self.build_picker(usable))
        elif not self._resolved or any(sc.still_trying for sc in self._ordered):
            self._control.update_picker(Connectivity.CONNECTING, QueuePicker())
        else:
            message = describe_unreachable(self._control.target, self._ordered)
            self._control.update_picker(
                Connectivity.TRANSIENT_FAILURE,
                FailPicker(grpc.StatusCode.UNAVAILABLE, message),
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {[sc.address for sc in self._ordered]}>"
