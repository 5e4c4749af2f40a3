"""Subsetting parent policies: random_subsetting (gRFC A68, rendezvous hashing with
XXH64) and deterministic_aperture (Finagle), each over any child policy."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from typing import Any, cast

import grpc
import grpc.aio
import pytest

from grpc_balancer import aio
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.picker import Picker
from grpc_balancer.policies.deterministic_aperture import (
    COUNT_ENV,
    INDEX_ENV,
    DeterministicAperturePolicy,
    aperture_indices,
    aperture_subset,
)
from grpc_balancer.policies.random_subsetting import RandomSubsettingPolicy, rendezvous_subset
from grpc_balancer.subchannel import Subchannel
from grpc_balancer.testing import GreeterFleet, cli_env, manual_resolver
from tests.helpers import counts, established_to, say_hello_ports

C = grpc.ChannelConnectivity


def endpoints(n: int, start: int = 0) -> list[Endpoint]:
    return [Endpoint(f"10.{i // 250}.{i % 250}.1:443") for i in range(start, start + n)]


class Control:
    """Records subchannels and pickers; subchannels never dial."""

    target = "test:///fleet"

    def __init__(self) -> None:
        self.live: dict[str, Subchannel] = {}
        self.published: list[tuple[C, Picker]] = []

    def create_subchannel(self, endpoint: Endpoint) -> Subchannel:
        sc = Subchannel(endpoint, cast(grpc.aio.Channel, None), self)
        sc.connect = lambda: setattr(sc, "wants_connection", True)  # type: ignore[method-assign]
        self.live[endpoint.address] = sc
        return sc

    def remove_subchannel(self, subchannel: Subchannel) -> None:
        self.live.pop(subchannel.address, None)

    def update_picker(self, state: C, picker: Picker) -> None:
        self.published.append((state, picker))

    def request_reresolution(self) -> None:
        pass

    def on_subchannel_state(self, subchannel: Subchannel) -> None:
        pass


def random_policy(size: int, seed: int, child: str = "round_robin") -> tuple[Any, Control]:
    control = Control()
    config = {"subsetSize": size, "childPolicy": [{child: {}}]}
    return RandomSubsettingPolicy(control, config, rng=random.Random(seed)), control


# -- random_subsetting -------------------------------------------------------------------------
def test_random_subset_has_subset_size_members_and_creates_only_those() -> None:
    policy, control = random_policy(10, seed=1)
    policy.update_endpoints(endpoints(100))
    assert len(policy.chosen) == 10
    assert set(control.live) == set(policy.chosen)  # nothing else has a subchannel
    assert policy.child_name == "round_robin"


def test_random_subset_is_fixed_by_the_seed_and_differs_between_seeds() -> None:
    fleet = endpoints(200)
    a, _ = random_policy(10, seed=7)
    b, _ = random_policy(10, seed=7)
    c, _ = random_policy(10, seed=8)
    for policy in (a, b, c):
        policy.update_endpoints(fleet)
    assert a.chosen == b.chosen
    assert a.chosen != c.chosen
    # The list order does not matter, only the set of addresses.
    shuffled = list(fleet)
    random.Random(3).shuffle(shuffled)
    assert set(rendezvous_subset(shuffled, 10, a.seed)) == {
        e for e in fleet if e.address in a.chosen
    }


def test_growing_the_fleet_only_swaps_in_new_endpoints() -> None:
    """Rendezvous hashing: members that stay are the old ones; each newcomer displaces
    at most one, so churn is bounded by the number of endpoints added."""
    for seed in range(20):
        before = set(a.address for a in rendezvous_subset(endpoints(100), 10, seed))
        grown = endpoints(110)
        after = set(a.address for a in rendezvous_subset(grown, 10, seed))
        added = {e.address for e in endpoints(10, start=100)}
        assert after - added <= before
        assert len(after - before) <= len(after & added)
    # Removing an endpoint outside the subset changes nothing.
    seed = 5
    fleet = endpoints(50)
    chosen = {e.address for e in rendezvous_subset(fleet, 5, seed)}
    outside = next(e for e in fleet if e.address not in chosen)
    rest = [e for e in fleet if e is not outside]
    assert {e.address for e in rendezvous_subset(rest, 5, seed)} == chosen


def test_a_small_list_is_used_whole_and_duplicates_count_once() -> None:
    policy, control = random_policy(20, seed=1)
    fleet = endpoints(5)
    policy.update_endpoints(fleet + fleet[:2])
    assert policy.chosen == [e.address for e in fleet]
    assert len(control.live) == 5


def test_over_many_clients_every_server_is_chosen_about_equally() -> None:
    fleet = endpoints(100)
    load = Counter(
        e.address for seed in range(2000) for e in rendezvous_subset(fleet, 10, seed * 7919 + 1)
    )
    assert len(load) == 100
    mean = 2000 * 10 / 100
    assert max(load.values()) / mean < 1.3 and min(load.values()) / mean > 0.7


def test_the_child_balances_over_the_subset_and_sees_its_state_changes() -> None:
    policy, control = random_policy(3, seed=2, child="least_request")
    policy.update_endpoints(endpoints(30))
    for sc in control.live.values():
        sc._set_connectivity(C.READY)
        policy.on_subchannel_state(sc)
    state, picker = control.published[-1]
    assert state is C.READY
    from grpc_balancer.picker import PickInfo

    picked = {picker.pick(PickInfo("/m")) for _ in range(200)}
    assert picked == set(control.live.values())
    policy.close()
    assert not control.live


# -- deterministic_aperture ------------------------------------------------------------------------
def coverage(servers: int, size: int, clients: int) -> Counter[int]:
    return Counter(j for i in range(clients) for j in aperture_indices(servers, size, i, clients))


@pytest.mark.parametrize(
    ("servers", "size", "clients"),
    [(100, 10, 100), (97, 10, 100), (30, 5, 7), (10, 3, 50), (1000, 20, 3), (12, 12, 5)],
)
def test_aperture_covers_every_server_evenly(servers: int, size: int, clients: int) -> None:
    per_server = coverage(servers, size, clients)
    assert set(per_server) == set(range(servers))  # no server is left without clients
    assert max(per_server.values()) - min(per_server.values()) <= 1
    for i in range(clients):
        mine = aperture_indices(servers, size, i, clients)
        # At least subsetSize; wider when too few clients would leave servers uncovered.
        widest = max(size, -(-servers // clients)) + 1
        assert min(size, servers) <= len(mine) <= min(widest, servers)
        assert len(set(mine)) == len(mine)


def test_aperture_aligned_fleet_gives_each_server_exactly_subset_size_clients() -> None:
    assert set(coverage(100, 10, 100).values()) == {10}


def test_aperture_orders_servers_by_address_whatever_the_list_order() -> None:
    fleet = endpoints(40)
    shuffled = list(fleet)
    random.Random(1).shuffle(shuffled)
    a = {e.address for e in aperture_subset(fleet, 5, 3, 8)}
    b = {e.address for e in aperture_subset(shuffled, 5, 3, 8)}
    assert a == b and len(a) in (5, 6)


def test_aperture_reads_its_place_from_the_environment() -> None:
    control = Control()
    env = {INDEX_ENV: "2", COUNT_ENV: "10"}
    policy = DeterministicAperturePolicy(control, {"subsetSize": 4}, env=env)
    assert (policy.client_index, policy.client_count) == (2, 10)
    policy.update_endpoints(endpoints(40))
    assert policy.chosen == [e.address for e in aperture_subset(endpoints(40), 4, 2, 10)]
    # The config wins over the environment.
    policy = DeterministicAperturePolicy(control, {"clientIndex": 0, "clientCount": 3}, env=env)
    assert (policy.client_index, policy.client_count) == (0, 3)


@pytest.mark.parametrize(
    ("config", "env", "message"),
    [
        ({}, {}, "clientIndex and clientCount in the config, or GRPC_BALANCER_CLIENT_INDEX"),
        ({"clientIndex": 1}, {}, "give both clientIndex and clientCount"),
        ({"clientIndex": 5, "clientCount": 5}, {}, "must be in 0..4 for 5 clients, got 5"),
        ({"clientIndex": -1, "clientCount": 5}, {}, "got -1"),
        ({"clientIndex": 0, "clientCount": 0}, {}, "client count must be >= 1"),
        ({"clientIndex": "1", "clientCount": 5}, {}, "clientIndex must be a whole number"),
        ({"clientIndex": True, "clientCount": 5}, {}, "clientIndex must be a whole number"),
        ({}, {INDEX_ENV: "x1", COUNT_ENV: "3"}, "GRPC_BALANCER_CLIENT_INDEX must be a whole"),
        ({}, {INDEX_ENV: "3", COUNT_ENV: "3"}, "(GRPC_BALANCER_CLIENT_INDEX / "),
        ({}, {INDEX_ENV: "1"}, "each client needs its place"),
    ],
)
def test_aperture_bad_places_are_clear_errors(
    config: dict[str, Any], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ServiceConfigError) as info:
        DeterministicAperturePolicy(Control(), config, env=env)
    assert message in str(info.value)
    assert str(info.value).startswith("deterministic_aperture: ")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"subsetSize": 0}, "random_subsetting: subsetSize must be >= 1, got 0"),
        ({"subsetSize": "20"}, "random_subsetting: subsetSize must be a whole number"),
        ({"subsetSize": 2**32}, "random_subsetting: subsetSize must be <= 4294967295"),
        ({"childPolicy": []}, "random_subsetting: childPolicy must be a non-empty list"),
        ({"childPolicy": {"round_robin": {}}}, "childPolicy must be a non-empty list"),
        ({"childPolicy": [{"nope": {}}]}, "random_subsetting: childPolicy: no supported policy"),
        ({"childPolicy": [{"ring_hash": {"minRingSize": 0}}]}, "ring_hash: minRingSize"),
        ({"subset_size": 3}, "unknown config field(s) 'subset_size'"),
    ],
)
def test_subsetting_config_errors_name_the_field(config: dict[str, Any], message: str) -> None:
    service_config = {"loadBalancingConfig": [{"random_subsetting": config}]}
    with pytest.raises(ServiceConfigError) as info:
        aio.insecure_channel("static:///127.0.0.1:1", service_config=service_config)
    assert message in str(info.value)


def test_child_policy_list_takes_the_first_known_policy() -> None:
    control = Control()
    config = {"subsetSize": 2, "childPolicy": [{"grpclb": {}}, {"least_request": {}}]}
    policy = RandomSubsettingPolicy(control, config, rng=random.Random(1))
    assert policy.child_name == "least_request"


def test_the_subsetting_names_are_known_before_their_modules_are_imported() -> None:
    code = (
        "import sys\n"
        "from grpc_balancer.policies.base import registered_policies\n"
        "from grpc_balancer._config.service_config import load_service_config\n"
        "assert 'grpc_balancer.policies.random_subsetting' not in sys.modules\n"
        "names = registered_policies()\n"
        "assert 'random_subsetting' in names and 'deterministic_aperture' in names, names\n"
        "cfg = {'loadBalancingConfig': [{'random_subsetting': {'subsetSize': 3}}]}\n"
        "assert load_service_config(cfg).policy == 'random_subsetting'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env()
    )
    assert done.returncode == 0, done.stderr


# -- on real servers ------------------------------------------------------------------------------
async def test_random_subsetting_on_real_servers_connects_only_to_its_subset() -> None:
    async with GreeterFleet(5) as fleet:
        config = {
            "loadBalancingConfig": [
                {"random_subsetting": {"subsetSize": 2, "childPolicy": [{"round_robin": {}}]}}
            ]
        }
        async with aio.insecure_channel(fleet.target(), service_config=config) as ch:
            assert await ch.wait_for_settled(10)
            ports = await say_hello_ports(ch, 40)
            used = set(ports)
            assert len(used) == 2 and used <= set(fleet.ports)
            assert sorted(counts(ports).values()) == [20, 20]  # round_robin over the two
            assert len(ch.subchannels) == 2
            connected = established_to(fleet.ports)
            assert set(connected) == used and all(v == 1 for v in connected.values())


async def test_deterministic_aperture_on_real_servers_follows_the_client_index() -> None:
    async with GreeterFleet(4) as fleet:
        ring = sorted(fleet.addresses)
        seen = []
        for index in range(2):
            config = {
                "loadBalancingConfig": [
                    {
                        "deterministic_aperture": {
                            "subsetSize": 2,
                            "clientIndex": index,
                            "clientCount": 2,
                            "childPolicy": [{"least_request": {}}],
                        }
                    }
                ]
            }
            resolver = manual_resolver(fleet.addresses)
            async with aio.insecure_channel(resolver.target, service_config=config) as ch:
                assert await ch.wait_for_settled(10)
                used = set(await say_hello_ports(ch, 30))
                expected = {int(a.rsplit(":", 1)[1]) for a in ring[2 * index : 2 * index + 2]}
                assert used == expected
                seen.append(used)
        assert seen[0].isdisjoint(seen[1])  # two clients, four servers: halves
