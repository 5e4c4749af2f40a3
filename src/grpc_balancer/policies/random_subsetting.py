"""random_subsetting (gRFC A68): each client connects to ``subsetSize`` endpoints only.

Rendezvous hashing: every endpoint's address is hashed with XXH64 under a random
64-bit seed chosen once per channel, and the ``subsetSize`` lowest hashes are the
subset, handed to ``childPolicy`` (round_robin by default), which balances over them.
Because an endpoint's hash does not depend on the others, adding or removing one
endpoint changes at most one member of any client's subset (minimal churn while a
fleet grows or rolls), and over many clients each server is equally likely to be
chosen; connections per server are balanced only statistically (see README "Large
fleets"; deterministic_aperture balances them exactly).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Mapping, Sequence
from typing import Any

import xxhash

from grpc_balancer.endpoint import Endpoint
from grpc_balancer.policies._subset import SubsetPolicy
from grpc_balancer.policies.base import ChannelControl, register_builtin_policy

NAME = "random_subsetting"


def rendezvous_subset(endpoints: Sequence[Endpoint], size: int, seed: int) -> list[Endpoint]:
    """The ``size`` endpoints with the lowest XXH64(address, seed), in list order."""
    if len(endpoints) <= size:
        return list(endpoints)
    digest = xxhash.xxh64_intdigest
    ranked = heapq.nsmallest(
        size, range(len(endpoints)), key=lambda i: digest(endpoints[i].address.encode(), seed)
    )
    return [endpoints[i] for i in sorted(ranked)]


class RandomSubsettingPolicy(SubsetPolicy):
    NAME = NAME

    def __init__(
        self, control: ChannelControl, config: Mapping[str, Any], rng: random.Random | None = None
    ) -> None:
        super().__init__(control, config)
        #: This client's seed: which subset it takes (random, so clients spread out).
        self.seed = (rng or random.SystemRandom()).getrandbits(64)

    def subset(self, endpoints: Sequence[Endpoint]) -> list[Endpoint]:
        return rendezvous_subset(endpoints, self.subset_size, self.seed)


register_builtin_policy(NAME, RandomSubsettingPolicy)
