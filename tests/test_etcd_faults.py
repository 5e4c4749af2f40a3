"""The etcd resolver and registration under etcd faults, on a real 3-member cluster."""

from __future__ import annotations

import asyncio

import grpc_balancer
from grpc_balancer.testing import GreeterFleet
from tests.etcd_cluster import EtcdCluster
from tests.etcd_helpers import PREFIX, Recorder, go_value, reaches, start_resolver, until
from tests.helpers import eventually, say_hello_ports


async def test_leader_killed_updates_keep_flowing(etcd_cluster3: EtcdCluster) -> None:
    cluster = etcd_cluster3
    leader = cluster.leader_index()
    others = [i for i in range(3) if i != leader]
    # The resolver talks to the leader first, so killing it breaks its watch.
    endpoints = [cluster.endpoints[leader]] + [cluster.endpoints[i] for i in others]
    target = f"etcd://{','.join(endpoints)}/{PREFIX}"
    cluster.etcdctl("put", f"{PREFIX}/127.0.0.1:6001", go_value("127.0.0.1:6001"))
    rec = Recorder()
    resolver = start_resolver(target, rec)
    try:
        await eventually(lambda: rec.addresses == {"127.0.0.1:6001"})
        cluster.kill(leader)
        cluster.wait_healthy(members=others)
        live = [cluster.endpoints[i] for i in others]
        cluster.etcdctl(
            "put", f"{PREFIX}/127.0.0.1:6002", go_value("127.0.0.1:6002"), endpoints=live
        )
        await eventually(lambda: rec.addresses == {"127.0.0.1:6001", "127.0.0.1:6002"}, 15)
        cluster.etcdctl("del", f"{PREFIX}/127.0.0.1:6001", endpoints=live)
        await eventually(lambda: rec.addresses == {"127.0.0.1:6002"}, 15)
        assert all(u for u in rec.updates), "the list was never emptied by the fault"
        assert resolver.listings >= 2
    finally:
        await resolver.close()


async def test_whole_cluster_down_calls_keep_working_and_updates_resume(
    etcd_cluster3: EtcdCluster,
) -> None:
    cluster = etcd_cluster3
    target = cluster.target(PREFIX)
    async with GreeterFleet(3) as fleet:
        a, b, c = fleet.addresses
        for addr in (a, b):
            cluster.etcdctl("put", f"{PREFIX}/{addr}", go_value(addr))
        async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as channel:
            await until(lambda: reaches(channel, set(fleet.ports[:2])))
            resolver = channel._resolver
            cluster.kill_all()
            await eventually(lambda: "etcd" in repr(resolver) and "error=" in repr(resolver))
            # calls keep working on the last good list, for as long as etcd is gone
            for _ in range(5):
                assert set(await say_hello_ports(channel, 4)) == set(fleet.ports[:2])
            cluster.start()
            cluster.etcdctl("put", f"{PREFIX}/{c}", go_value(c))
            await until(lambda: reaches(channel, set(fleet.ports)), timeout=20)


async def test_registration_moves_to_another_member_when_its_member_dies(
    etcd_cluster3: EtcdCluster,
) -> None:
    cluster = etcd_cluster3
    address = "127.0.0.1:6101"
    key = f"{PREFIX}/{address}"
    async with grpc_balancer.registration(cluster.target(PREFIX), address, ttl=2) as reg:
        cluster.kill(0)  # the member it talks to first
        await eventually(lambda: reg.registrations >= 2, timeout=15)
        live = cluster.endpoints[1:]
        # kept alive by the other members past several TTLs
        for _ in range(3):
            await asyncio.sleep(1.5)
            assert cluster.etcdctl("get", key, "--keys-only", endpoints=live).strip() == key
    assert cluster.etcdctl("get", key, "--keys-only", endpoints=live).strip() == ""
