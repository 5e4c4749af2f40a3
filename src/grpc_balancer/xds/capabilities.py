"""What each xDS client accepts, derived from its ``Node``, and the policy it gets.

A resource a client NACKs is a resource it does not use, so the control plane never
sends one it knows will be refused: a policy the client lacks is replaced by the next
entry of the service's ``loadBalancingConfig`` list the client takes, else by
round_robin, with a warning that the status view shows.

Plain values only (no protobuf): the server passes the node's fields in.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from grpc_balancer.xds.model import PolicySpec, ServiceSpec

#: Policies each client family takes (checked against real clients where the tests
#: have one: grpcio's C-core NACKs CDS lb_policy LEAST_REQUEST, MAGLEV and RANDOM).
ACCEPTS: dict[str, frozenset[str]] = {
    "grpc-core": frozenset({"round_robin", "ring_hash", "pick_first", "weighted_round_robin"}),
    "grpc-js": frozenset({"round_robin", "ring_hash", "pick_first"}),
    "grpc-go": frozenset(
        {"round_robin", "ring_hash", "pick_first", "weighted_round_robin", "least_request"}
    ),
    "grpc-java": frozenset(
        {"round_robin", "ring_hash", "pick_first", "weighted_round_robin", "least_request"}
    ),
    "envoy": frozenset({"round_robin", "ring_hash", "least_request", "random", "maglev"}),
    # grpc_balancer's own xds:/// resolver: every policy it has (peak_ewma by name).
    "grpc-balancer": frozenset(
        {
            "round_robin",
            "ring_hash",
            "pick_first",
            "weighted_round_robin",
            "least_request",
            "peak_ewma",
        }
    ),
    "unknown": frozenset({"round_robin"}),
}
FALLBACK = PolicySpec("round_robin")

_FAMILIES = (
    (re.compile(r"^grpc-balancer", re.I), "grpc-balancer"),
    (re.compile(r"^gRPC (C-core|Python|C\+\+|Ruby|PHP|ObjC|C#)", re.I), "grpc-core"),
    (re.compile(r"^gRPC Node|grpc-js", re.I), "grpc-js"),
    (re.compile(r"^gRPC Go", re.I), "grpc-go"),
    (re.compile(r"^gRPC Java", re.I), "grpc-java"),
    (re.compile(r"^envoy", re.I), "envoy"),
)


@dataclass(frozen=True, slots=True)
class Capabilities:
    """One client's family and version, and what it accepts."""

    family: str
    version: str
    features: frozenset[str] = frozenset()

    @property
    def policies(self) -> frozenset[str]:
        return ACCEPTS[self.family]

    @property
    def default_listener(self) -> str:
        return "envoy" if self.family == "envoy" else "api"

    def describe(self) -> str:
        return f"{self.family} {self.version}".strip()


def from_node(
    user_agent_name: str, user_agent_version: str = "", client_features: Sequence[str] = ()
) -> Capabilities:
    family = "unknown"
    for pattern, name in _FAMILIES:
        if pattern.search(user_agent_name):
            family = name
            break
    return Capabilities(family, user_agent_version, frozenset(client_features))


def choose_policy(service: ServiceSpec, caps: Capabilities) -> tuple[PolicySpec, str | None]:
    """The first of the service's policies the client accepts, and a warning when none
    is (the fallback is then round_robin)."""
    for spec in (service.policy, *service.alternatives):
        if spec.name in caps.policies:
            return spec, None
    tried = ", ".join(s.name for s in (service.policy, *service.alternatives))
    return FALLBACK, (
        f"service {service.name}: {caps.describe()} does not accept {tried}; "
        f"sending {FALLBACK.name} instead"
    )
