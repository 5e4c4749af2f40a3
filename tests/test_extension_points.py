"""register_policy / register_resolver as a user would use them (the README example)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc_balancer
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.picker import PickInfo
from grpc_balancer.subchannel import Subchannel
from grpc_balancer.testing import GreeterFleet
from tests.helpers import say_hello_ports


class AlwaysFirstPicker:
    def __init__(self, subchannel: Subchannel) -> None:
        self._subchannel = subchannel

    def pick(self, info: PickInfo) -> Subchannel | None:
        return self._subchannel


class FirstUsable(grpc_balancer.BasePolicy):
    NAME = "first_usable_test"

    def build_picker(self, usable: list[Subchannel]) -> AlwaysFirstPicker:
        return AlwaysFirstPicker(usable[0])


class ReversedStaticResolver:
    """A user-written scheme: the static list, reversed."""

    def __init__(
        self,
        target: grpc_balancer.Target,
        listener: grpc_balancer.ResolverListener,
        options: object,
    ) -> None:
        self._endpoints: Sequence[Endpoint] = [
            Endpoint(a) for a in reversed(target.endpoint.split(","))
        ]
        self._listener = listener

    def start(self) -> None:
        self._listener.on_endpoints(self._endpoints)

    def resolve_now(self) -> None:
        pass

    async def close(self) -> None:
        pass


async def test_user_policy_and_resolver(fleet3: GreeterFleet) -> None:
    grpc_balancer.register_policy(FirstUsable.NAME, FirstUsable)
    grpc_balancer.register_resolver("reversed-test", ReversedStaticResolver)
    target = "reversed-test:///" + ",".join(fleet3.addresses)
    async with grpc_balancer.aio.insecure_channel(target, policy=FirstUsable.NAME) as ch:
        await ch.wait_for_settled(10)
        assert set(await say_hello_ports(ch, 5)) == {fleet3.ports[-1]}


def test_public_api_is_curated() -> None:
    assert sorted(grpc_balancer.__all__) == sorted(set(grpc_balancer.__all__))
    for name in grpc_balancer.__all__:
        assert hasattr(grpc_balancer, name), name
    assert callable(grpc_balancer.aio.insecure_channel)
    assert callable(grpc_balancer.aio.secure_channel)
