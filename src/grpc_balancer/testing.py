"""Testing support that ships with the library (like grpclib's ``testing``): a manual
resolver whose endpoint list the test sets, an in-process fleet of greeter servers, and
greeter servers in child processes that can be SIGKILLed and restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from grpc_balancer.demo.server import GreeterServer
from grpc_balancer.demo.servicer import Faults
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.resolvers.base import (
    ResolverListener,
    ResolverOptions,
    register_resolver,
    takes_service_config,
)
from grpc_balancer.server.load_reports import LoadReporter
from grpc_balancer.server.probes import LoadProbes
from grpc_balancer.target import Target

_ids = itertools.count(1)


class ManualResolver:
    """Register with :func:`manual_resolver`; the test pushes lists and errors by hand.

    Works with sync channels too: an update is handed to the event loop the channel
    runs on (the sync channel's own thread) and applied before ``update`` returns.
    """

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme
        self.target = f"{scheme}:///test"
        self._instances: list[_ManualInstance] = []
        self._endpoints: list[Endpoint] | None = None
        self._error: str | None = None
        self._config: tuple[dict[str, Any], tuple[str, ...]] | None = None
        self.resolve_now_calls = 0

    def _build(
        self, target: Target, listener: ResolverListener, options: ResolverOptions
    ) -> _ManualInstance:
        return _ManualInstance(self, listener)

    def update(self, addresses: Sequence[str | Endpoint]) -> None:
        endpoints = [a if isinstance(a, Endpoint) else Endpoint(a) for a in addresses]
        self._endpoints = endpoints
        for instance in list(self._instances):
            instance.deliver(lambda listener: listener.on_endpoints(endpoints))

    def fail(self, error: str) -> None:
        self._error = error
        for instance in list(self._instances):
            instance.deliver(lambda listener: listener.on_resolver_error(error))

    def set_service_config(self, config: Mapping[str, Any], notes: Sequence[str] = ()) -> None:
        """Hand every channel a service config, as an xDS resolver does (gRPC's JSON)."""
        self._config = (dict(config), tuple(notes))
        for instance in list(self._instances):
            instance.deliver(lambda listener: _give_config(listener, config, notes))


def _give_config(
    listener: ResolverListener, config: Mapping[str, Any], notes: Sequence[str]
) -> None:
    if takes_service_config(listener):
        listener.on_service_config(config, notes)  # type: ignore[attr-defined]


class _ManualInstance:
    def __init__(self, owner: ManualResolver, listener: ResolverListener) -> None:
        self._owner = owner
        self._listener = listener
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        self._owner._instances.append(self)
        if self._owner._config is not None:
            _give_config(self._listener, *self._owner._config)
        if self._owner._endpoints is not None:
            self._listener.on_endpoints(self._owner._endpoints)

    def deliver(self, action: Callable[[ResolverListener], None]) -> None:
        """Run ``action(listener)`` on the channel's loop, waiting for it if that loop
        runs in another thread."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        loop = self._loop
        if loop is None or loop is running or loop.is_closed():
            action(self._listener)
            return

        async def apply() -> None:
            action(self._listener)

        asyncio.run_coroutine_threadsafe(apply(), loop).result(10)

    def resolve_now(self) -> None:
        self._owner.resolve_now_calls += 1

    async def close(self) -> None:
        if self in self._owner._instances:
            self._owner._instances.remove(self)


def manual_resolver(initial: Sequence[str | Endpoint] | None = None) -> ManualResolver:
    """A fresh ``manual-N:///`` scheme; use ``resolver.target`` as the channel target."""
    resolver = ManualResolver(f"manual-{next(_ids)}")
    if initial is not None:
        resolver._endpoints = [a if isinstance(a, Endpoint) else Endpoint(a) for a in initial]
    register_resolver(resolver.scheme, resolver._build)
    return resolver


class GreeterFleet:
    """N in-process greeter servers on 127.0.0.1 ephemeral ports."""

    def __init__(
        self,
        n: int,
        faults: Sequence[Faults] | None = None,
        *,
        orca: bool = False,
        probes: bool = False,
    ) -> None:
        """``orca``: each server sends ORCA load reports (capacity = its max_concurrency);
        ``probes``: each answers prequal's load probes."""
        self.servers = [
            GreeterServer(
                0,
                "127.0.0.1",
                faults=faults[i] if faults else None,
                grace_s=0.5,
                load_reporter=LoadReporter(capacity=faults[i].max_concurrency if faults else 0)
                if orca
                else None,
                probes=LoadProbes() if probes else None,
            )
            for i in range(n)
        ]

    async def __aenter__(self) -> GreeterFleet:
        for server in self.servers:
            await server.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for server in self.servers:
            await server.stop(0)

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self.servers]

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    def target(self) -> str:
        return "static:///" + ",".join(self.addresses)

    async def restart(self, index: int) -> None:
        """Start server ``index`` again on its old port (after ``stop``)."""
        old = self.servers[index]
        server = GreeterServer(old.port, old.host, faults=old.faults, grace_s=0.5)
        await server.start()
        self.servers[index] = server


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _src_dir() -> str:
    return str(Path(__file__).resolve().parent.parent)


def cli_env(**extra: str) -> dict[str, str]:
    """Environment for running ``python -m grpc_balancer`` from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = _src_dir() + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class ServerProcess:
    """A greeter server in a child process (``grpc-balancer serve``), SIGKILL-able."""

    def __init__(
        self, port: int | None = None, host: str = "127.0.0.1", args: Sequence[str] = ()
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, wait: bool = True) -> ServerProcess:
        cmd = [
            sys.executable,
            "-m",
            "grpc_balancer",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
            *self.args,
        ]
        self.proc = subprocess.Popen(
            cmd, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if wait:
            self.wait_serving()
        return self

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"server on {self.address} exited with {self.proc.returncode}"
                    )
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server on {self.address} not serving after {timeout}s")
                time.sleep(0.05)

    async def await_serving(self, timeout: float = 60.0) -> None:
        await asyncio.to_thread(self.wait_serving, timeout)

    def kill(self) -> None:
        """SIGKILL: no goodbye, connections just drop."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def signal(self, sig: int) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait (graceful); returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


class ServerProcesses:
    """Several :class:`ServerProcess`; a context manager that always cleans up."""

    def __init__(self, n: int, args: Sequence[str] = ()) -> None:
        self.servers = [ServerProcess(args=args) for _ in range(n)]

    def __enter__(self) -> ServerProcesses:
        try:
            for server in self.servers:
                server.start(wait=False)
            for server in self.servers:
                server.wait_serving()
        except BaseException:
            self.__exit__()  # a server that never came up must not leak the others
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.kill()

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self.servers]

    def target(self) -> str:
        return "static:///" + ",".join(self.addresses)
