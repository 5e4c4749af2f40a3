from __future__ import annotations

from collections import Counter

import grpc
import pytest

import grpc_balancer
from grpc_balancer import aio
from grpc_balancer.demo import greeter_pb2, greeter_pb2_grpc
from grpc_balancer.errors import ServiceConfigError
from grpc_balancer.picker import PickInfo
from grpc_balancer.policies.ring_hash import RingHashPicker, build_ring, key_hash
from grpc_balancer.testing import GreeterFleet, manual_resolver
from tests.channels import open_channel
from tests.helpers import eventually, port_of
from tests.policy_helpers import fake_subchannels

RING_HASH = {"loadBalancingConfig": [{"ring_hash": {}}]}


def _picker(subs: list, usable: list | None = None) -> RingHashPicker:
    hashes, owners = build_ring(subs, 1024, 8192)
    return RingHashPicker(hashes, owners, frozenset(subs if usable is None else usable), None)


def test_removing_one_of_ten_moves_about_a_tenth_of_keys() -> None:
    subs = fake_subchannels(10)
    before = _picker(subs)
    after = _picker(subs[:4] + subs[5:])
    keys = [key_hash(f"key-{i}") for i in range(10_000)]
    moved = [
        k
        for k in keys
        if before.pick(PickInfo("/m", hash_key=k)) is not after.pick(PickInfo("/m", hash_key=k))
    ]
    # only the removed backend's keys move (about 1/N of all keys)
    assert all(before.pick(PickInfo("/m", hash_key=k)) is subs[4] for k in moved)
    assert 0.05 < len(moved) / len(keys) < 0.12
    load = Counter(after.pick(PickInfo("/m", hash_key=k)) for k in keys)
    assert max(load.values()) / (len(keys) / 9) < 1.3


def test_ring_size_follows_bounds_and_weights() -> None:
    subs = fake_subchannels(3, weights=[1, 1, 2])
    hashes, owners = build_ring(subs, 100, 1000)
    assert 100 <= len(hashes) <= 1000
    per = Counter(owners)
    assert per[subs[2]] == 2 * per[subs[0]]
    hashes, _ = build_ring(fake_subchannels(50), 10, 20)
    assert len(hashes) <= 20


def test_pick_walks_past_unusable_backends() -> None:
    subs = fake_subchannels(3)
    full = _picker(subs)
    partial = _picker(subs, usable=subs[1:])
    subs[0].connectivity = grpc.ChannelConnectivity.TRANSIENT_FAILURE
    subs[0].failed_since_ready = True
    subs[0]._usable = False
    for i in range(200):
        info = PickInfo("/m", hash_key=key_hash(i))
        owner = full.pick(info)
        if owner is subs[0]:
            assert partial.pick(info) in subs[1:]
        else:
            assert partial.pick(info) is owner  # nobody else's keys move


async def _port(stub: greeter_pb2_grpc.GreeterStub, **kwargs: object) -> int:
    reply = await stub.SayHello(greeter_pb2.HelloRequest(name="r"), timeout=5, **kwargs)
    return port_of(reply.message)


async def test_hash_key_is_sticky_and_spreads(fleet3: GreeterFleet) -> None:
    async with aio.insecure_channel(fleet3.target(), service_config=RING_HASH) as ch:
        assert await ch.wait_for_settled(10)
        stub = greeter_pb2_grpc.GreeterStub(ch)
        owners = {}
        for key in range(30):
            with grpc_balancer.hash_key(f"user-{key}"):
                seen = {await _port(stub) for _ in range(5)}
            assert len(seen) == 1  # the same key always lands on the same backend
            owners[key] = seen.pop()
    assert len(set(owners.values())) == 3


async def test_request_hash_header(channel_kind: str, fleet3: GreeterFleet) -> None:
    config = {"loadBalancingConfig": [{"ring_hash": {"requestHashHeader": "session"}}]}
    async with open_channel(channel_kind, fleet3.target(), service_config=config) as ch:
        assert await ch.wait_for_settled(10)
        stub = ch.stub()
        owners: dict[str, set[int]] = {}
        for key in ("a", "b", "c", "d", "e", "f"):
            for _ in range(4):
                reply = await stub.SayHello(
                    greeter_pb2.HelloRequest(name="h"), timeout=5, metadata=(("session", key),)
                )
                owners.setdefault(key, set()).add(port_of(reply.message))
    assert all(len(ports) == 1 for ports in owners.values()), owners


async def test_keys_of_a_dead_backend_move_and_come_back(fleet3: GreeterFleet) -> None:
    resolver = manual_resolver(fleet3.addresses)
    async with aio.insecure_channel(resolver.target, service_config=RING_HASH) as ch:
        assert await ch.wait_for_settled(10)
        stub = greeter_pb2_grpc.GreeterStub(ch)

        async def owners() -> dict[int, int]:
            result = {}
            for key in range(40):
                with grpc_balancer.hash_key(key * 7919):
                    result[key] = await _port(stub)
            return result

        before = await owners()
        victim = fleet3.ports[0]
        assert victim in before.values()
        await fleet3.servers[0].stop(0)
        await eventually(lambda: sum(sc.usable for sc in ch.subchannels) == 2)
        during = await owners()
        assert victim not in during.values()
        assert all(during[k] == p for k, p in before.items() if p != victim)
        await fleet3.restart(0)
        await eventually(lambda: sum(sc.usable for sc in ch.subchannels) == 3, timeout=30)
        assert await owners() == before


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"minRingSize": 0}, "minRingSize"),
        ({"maxRingSize": 9_000_000}, "maxRingSize"),
        ({"minRingSize": 100, "maxRingSize": 10}, "minRingSize"),
        ({"requestHashHeader": "Session"}, "requestHashHeader"),
        ({"requestHashHeader": 3}, "requestHashHeader"),
        ({"ringSize": 3}, "ringSize"),
    ],
)
def test_config_errors_name_the_field(config: dict[str, object], field: str) -> None:
    with pytest.raises(ServiceConfigError, match=field):
        aio.insecure_channel(
            "static:///127.0.0.1:1", service_config={"loadBalancingConfig": [{"ring_hash": config}]}
        )


@pytest.mark.parametrize("key", [1.5, None, True, ["a"]])
def test_hash_key_names_the_accepted_types(key: object) -> None:
    with (
        pytest.raises(TypeError, match=r"hash_key: the key must be a str, bytes or int, got "),
        grpc_balancer.hash_key(key),  # type: ignore[arg-type]
    ):
        pass
