"""Shared fixtures: real greeter servers on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from grpc_balancer.testing import GreeterFleet
from tests.channels import channel_kind  # noqa: F401  (fixture: "aio" / "sync")
from tests.dnsmasq import dnsmasq  # noqa: F401  (fixture: a real DNS server)
from tests.etcd_cluster import etcd_cluster3, etcd_node  # noqa: F401  (fixtures: real etcd)


@pytest.fixture
async def fleet3() -> AsyncIterator[GreeterFleet]:
    async with GreeterFleet(3) as fleet:
        yield fleet
