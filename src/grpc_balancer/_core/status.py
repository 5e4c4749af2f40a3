"""``channel.status()``: what a balanced channel is doing, as plain data.

Read in one pass on the event loop (no locks, no I/O), so it is cheap enough to call
from a health endpoint or a periodic log line. ``as_dict()`` gives JSON-ready values;
:func:`format_status` the table ``grpc-balancer call --status`` prints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from grpc_balancer._aio.channel import BalancedChannel
    from grpc_balancer.subchannel import Subchannel

#: Resolver states: no answer yet / a list is in use / the last attempt failed.
RESOLVING = "RESOLVING"
RESOLVED = "RESOLVED"
ERROR = "ERROR"


@dataclass(frozen=True)
class SubchannelStatus:
    address: str
    #: IDLE, CONNECTING, READY, TRANSIENT_FAILURE or SHUTDOWN.
    connectivity: str
    #: UNCHECKED (health checking off), UNKNOWN (no answer yet), SERVING, NOT_SERVING...
    health: str
    ejected: bool
    #: READY, healthy and not ejected: the policy may pick it.
    usable: bool
    in_flight: int
    calls_started: int
    calls_failed: int
    #: Peak-EWMA latency estimate in milliseconds; None before the first call.
    latency_ms: float | None
    #: The weight the policy uses (a policy's own, e.g. from ORCA, else the endpoint's).
    weight: float
    #: Why it last failed to connect or failed a call with UNAVAILABLE ("" if none).
    last_error: str


@dataclass(frozen=True)
class ChannelStatus:
    target: str
    #: The channel's aggregate connectivity.
    state: str
    policy: str
    #: RESOLVING, RESOLVED or ERROR (on ERROR the last good list stays in use).
    resolver_state: str
    resolver_error: str | None
    subchannels: tuple[SubchannelStatus, ...]
    #: What the resolver's service config (xDS) set that the channel does not apply,
    #: and resources the resolver rejected (NACKed) while keeping the last good ones.
    config_notes: tuple[str, ...] = ()
    #: Why the resolver's last service config was refused (the previous one stays).
    config_error: str | None = None
    #: The resolver's own view, when it has one (xDS: the ADS stream and its watches).
    resolver_detail: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def subchannel(self, address: str) -> SubchannelStatus:
        for sc in self.subchannels:
            if sc.address == address:
                return sc
        raise KeyError(
            f"no subchannel for {address!r} (have: {[s.address for s in self.subchannels]})"
        )


def channel_status(channel: BalancedChannel) -> ChannelStatus:
    error = channel._resolver_error
    if error is not None:
        resolver_state = ERROR
    elif channel._have_endpoints:
        resolver_state = RESOLVED
    else:
        resolver_state = RESOLVING
    subchannels = channel.subchannels
    return ChannelStatus(
        target=channel.target,
        state=channel.get_state().name,
        policy=channel.config.policy,
        resolver_state=resolver_state,
        resolver_error=error,
        subchannels=tuple(
            _subchannel_status(sc, weight)
            for sc, weight in zip(subchannels, _weights(channel, subchannels), strict=True)
        ),
        config_notes=channel.config_notes,
        config_error=channel.config_error,
        resolver_detail=_resolver_detail(channel._resolver),
    )


def _resolver_detail(resolver: object) -> dict[str, Any] | None:
    describe = getattr(resolver, "status", None)
    if not callable(describe):
        return None
    try:
        detail = describe()
    except Exception:  # a resolver's introspection must never break status()
        return None
    return detail if isinstance(detail, dict) else None


def _weights(channel: BalancedChannel, subchannels: list[Subchannel]) -> list[float]:
    """The policy's own weights when it has some (weighted_round_robin's
    ``current_weights``: ORCA or discovery; unknown ones count as the mean, as the
    policy does), else ``attrs["weight"]``, else the endpoint's weight."""
    current = getattr(channel._policy, "current_weights", None)
    if callable(current) and subchannels:
        try:
            found = [w if isinstance(w, int | float) else None for w in current(subchannels)]
        except Exception:  # a policy's introspection must never break status()
            found = []
        known = [w for w in found if w is not None]
        if len(found) == len(subchannels) and known:
            mean = sum(known) / len(known)
            return [float(mean if w is None else w) for w in found]
    out = []
    for sc in subchannels:
        weight = sc.attrs.get("weight")
        if not isinstance(weight, int | float) or isinstance(weight, bool):
            weight = sc.endpoint.weight
        out.append(float(weight))
    return out


def _subchannel_status(sc: Subchannel, weight: float) -> SubchannelStatus:
    return SubchannelStatus(
        address=sc.address,
        connectivity=sc.connectivity.name,
        health=sc.health,
        ejected=sc.ejected,
        usable=sc.usable,
        in_flight=sc.in_flight,
        calls_started=sc.calls_started,
        calls_failed=sc.calls_failed,
        latency_ms=sc.latency.value_s * 1000.0 if sc.latency.samples else None,
        weight=weight,
        last_error=sc.last_error,
    )


def format_status(status: ChannelStatus) -> str:
    """A few lines for a terminal or a log file; columns stay aligned whatever the
    addresses and weights (ORCA weights are fractions, SRV weights up to 65535)."""
    width = max([24, *(len(sc.address) for sc in status.subchannels)])
    lines = [
        f"target {status.target}  policy {status.policy}  state {status.state}",
        f"resolver {status.resolver_state}"
        + (f" ({status.resolver_error})" if status.resolver_error else ""),
        f"{'backend':<{width}} {'state':<17} {'health':<11} {'ejected':<7} {'in-flight':>9} "
        f"{'calls':>7} {'failed':>6} {'latency':>9} {'weight':>9}  last error",
    ]
    for sc in status.subchannels:
        latency = "-" if sc.latency_ms is None else _ms(sc.latency_ms)
        lines.append(
            f"{sc.address:<{width}} {sc.connectivity:<17} {sc.health:<11} "
            f"{'yes' if sc.ejected else 'no':<7} {sc.in_flight:>9} {sc.calls_started:>7} "
            f"{sc.calls_failed:>6} {latency:>9} {sc.weight:>9.4g}  {sc.last_error}"
        )
    if not status.subchannels:
        lines.append("(no backends)")
    if status.config_error:
        lines.append(f"config refused: {status.config_error}")
    lines.extend(f"not applied: {note}" for note in status.config_notes)
    return "\n".join(lines)


def _ms(value: float) -> str:
    return f"{value:.2f}ms" if value < 1000 else f"{value:.0f}ms"
