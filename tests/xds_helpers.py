"""Helpers for the xDS tests: grpcio native ``xds:///`` clients in child processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any

from grpc_balancer.testing import cli_env
from grpc_balancer.xds import bootstrap_json, parse_config
from grpc_balancer.xds.model import XdsConfig


def config(target: str, policy: Any = "round_robin", **extra: Any) -> XdsConfig:
    return parse_config({"services": {"greeter": {"target": target, "policy": policy, **extra}}})


class XdsClient:
    """``python -m tests.xds_client`` bootstrapped (GRPC_XDS_BOOTSTRAP_CONFIG) to ``server``."""

    def __init__(self, server: str, node_id: str) -> None:
        self.server = server
        self.node_id = node_id
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> XdsClient:
        env = cli_env(GRPC_XDS_BOOTSTRAP_CONFIG=bootstrap_json(self.server, self.node_id))
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.xds_client",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )  # fmt: skip
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            assert proc.stdin is not None
            try:
                proc.stdin.write(b"quit\n")
                await proc.stdin.drain()
                await asyncio.wait_for(proc.wait(), 10)
            except (TimeoutError, ConnectionError):
                proc.kill()
                await proc.wait()

    async def calls(
        self, n: int, target: str = "xds:///greeter", metadata: dict[str, str] | None = None
    ) -> dict[str, list[Any]]:
        """``n`` sequential SayHello calls in the child: the serving ports and the errors."""
        proc = self.proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        pairs = "".join(f" {k}={v}" for k, v in (metadata or {}).items())
        proc.stdin.write(f"call {target} {n}{pairs}\n".encode())
        await proc.stdin.drain()
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line:
            raise RuntimeError(f"xds client {self.node_id} exited with {await proc.wait()}")
        result: dict[str, list[Any]] = json.loads(line)
        return result

    async def ports(self, n: int, metadata: dict[str, str] | None = None) -> set[int]:
        """The ports of ``n`` calls, which must all succeed."""
        result = await self.calls(n, metadata=metadata)
        assert result["errors"] == [], result["errors"]
        return set(result["ports"])

    def reaches(self, ports: set[int] | list[int], n: int = 12) -> Callable[[], Any]:
        """A predicate for ``until``: ``n`` calls reach exactly ``ports``."""
        want = set(ports)

        async def check() -> bool:
            return await self.ports(n) == want

        return check


def stream_of(status: dict[str, Any], node_id: str) -> dict[str, Any] | None:
    for stream in status["streams"]:
        if stream["node"] == node_id:
            return stream  # type: ignore[no-any-return]
    return None


def all_acked(status: dict[str, Any], node_id: str) -> bool:
    """The node has a stream and ACKed the last version of each of the four types."""
    stream = stream_of(status, node_id)
    if stream is None or set(stream["types"]) != {"lds", "rds", "cds", "eds"}:
        return False
    return all(
        t["sent_version"] is not None and t["acked_version"] == t["sent_version"]
        for t in stream["types"].values()
    )
