"""register_policy / register_resolver as a user would use them (the README example)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

import grpc_balancer
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.picker import PickInfo
from grpc_balancer.subchannel import Subchannel
from grpc_balancer.testing import GreeterFleet, cli_env
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


_REPO = Path(__file__).resolve().parent.parent

_OVERRIDE_SCRIPT = """
import asyncio, sys
import grpc_balancer
from grpc_balancer.policies.base import get_policy_factory
from grpc_balancer.resolvers.base import get_resolver_factory
from grpc_balancer.target import parse_target
from tests.test_extension_points import FirstUsable, ReversedStaticResolver
from tests.helpers import say_hello_ports

when, addresses = sys.argv[1], sys.argv[2]
if when == "after":  # the built-ins were already imported (a channel was made)
    import grpc_balancer.policies.round_robin, grpc_balancer.resolvers.dns
grpc_balancer.register_policy("round_robin", FirstUsable)
grpc_balancer.register_resolver("dns", ReversedStaticResolver)
if when == "before":  # the built-ins are imported lazily, after the user's registration
    import grpc_balancer.policies.round_robin, grpc_balancer.resolvers.dns
assert get_resolver_factory(parse_target("dns:///" + addresses)) is ReversedStaticResolver
assert get_policy_factory("round_robin") is FirstUsable

async def main() -> None:
    target = "dns:///" + addresses  # ReversedStaticResolver: no DNS query is made
    async with grpc_balancer.aio.insecure_channel(target, policy="round_robin") as ch:
        await ch.wait_for_settled(10)
        print(sorted(set(await say_hello_ports(ch, 6))))

asyncio.run(main())
"""


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_user_registration_wins_over_the_builtin_of_that_name(
    when: str, fleet3: GreeterFleet
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _OVERRIDE_SCRIPT,
        when,
        ",".join(fleet3.addresses),
        env=cli_env(),
        cwd=_REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == str([fleet3.ports[-1]])  # reversed list, first usable
