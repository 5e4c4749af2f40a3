"""Self-registration of a server in etcd, in the format of Go's ``naming/endpoints``.

::

    async with grpc_balancer.registration(
        "etcd://127.0.0.1:2379/services/greeter", address="10.0.0.5:50051", ttl=10,
        metadata={"zone": "eu-1", "weight": 2},
    ):
        await server.wait_for_termination()

Grants a lease of ``ttl`` seconds, puts ``<prefix>/<address>`` with it, and keeps it
alive every ``ttl/3``. If the connection breaks (etcd restarted, partition) it
reconnects with backoff, moving to the next etcd member; if the lease is gone (it
expired meanwhile) it grants a new one and puts the key again. On exit (or
:meth:`Registration.deregister`) it deletes the key and revokes the lease, so
clients drop the server at once; a crashed server is dropped when its lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

import grpc.aio
from grpc.aio import EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

from grpc_balancer._etcd import EtcdError, new_client
from grpc_balancer._etcd.codec import encode_endpoint
from grpc_balancer._etcd.settings import BACKOFF_BASE_S, settings_from_target
from grpc_balancer.errors import BalancerConfigError, InvalidTargetError
from grpc_balancer.target import join_host_port, split_host_port

if TYPE_CHECKING:
    from grpc_balancer._etcd.client import EtcdClient

log = logging.getLogger("grpc_balancer.server.registration")

#: How long ``__aenter__`` tries to register before giving up (etcd unreachable).
DEFAULT_FIRST_TIMEOUT_S = 10.0


class RegistrationError(RuntimeError):
    """The first registration did not succeed in time; the message says why."""


class Registration:
    """One server address kept registered under an etcd prefix (see the module doc)."""

    def __init__(
        self,
        target: str,
        address: str,
        *,
        ttl: int = 10,
        metadata: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
        first_timeout_s: float = DEFAULT_FIRST_TIMEOUT_S,
    ) -> None:
        self.settings = settings_from_target(target, options)
        self.address = validate_address(address)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1:
            raise BalancerConfigError(f"registration ttl must be a whole number >= 1, got {ttl!r}")
        self.ttl = ttl
        self.metadata = validate_metadata(metadata)
        self.key = self.settings.key_for(self.address)
        self.value = encode_endpoint(self.address, self.metadata)
        self.first_timeout_s = first_timeout_s
        self._client = new_client(self.settings)  # the first use: aetcd is imported here
        self._task: asyncio.Task[None] | None = None
        self._registered = asyncio.Event()
        self._rng = random.Random()
        self._last_error: str | None = None
        #: The current lease id (0: none); how many times the key was put (for tests).
        self.lease_id = 0
        self.registrations = 0

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Register, keep alive in the background; :class:`RegistrationError` if the first
        registration does not succeed within ``first_timeout_s``."""
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"grpc_balancer.registration[{self.key}]"
        )
        try:
            await asyncio.wait_for(self._registered.wait(), self.first_timeout_s)
        except TimeoutError:
            await self._stop_task()
            raise RegistrationError(
                f"could not register {self.address} in etcd {','.join(self.settings.endpoints)} "
                f"within {self.first_timeout_s:g}s: {self._last_error or 'no answer'}"
            ) from None

    async def deregister(self) -> None:
        """Stop keeping alive, delete the key and revoke the lease (best effort, bounded).
        Once only: leaving the ``async with`` after an explicit call does nothing more."""
        if self._task is None and not self.lease_id:
            return
        await self._stop_task()
        lease, self.lease_id = self.lease_id, 0
        try:
            await self._client.connect()
            await self._client.delete(self.key)
            if lease:
                await self._client.revoke_lease(lease)
            log.info("deregistered %s", self.key)
        except EtcdError as exc:
            log.warning("could not deregister %s (its lease will expire): %s", self.key, exc)
        finally:
            await self._client.disconnect()

    async def _stop_task(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Registration:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.deregister()

    # -- the keep-alive loop ------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            registered_at: float | None = None
            try:
                await self._client.connect()
                await self._register()
                registered_at = loop.time()
                await self._keep_alive()
            except Exception as exc:  # EtcdError, or a bug: either way keep registering
                if not isinstance(exc, EtcdError):
                    log.error("registration of %s: unexpected error", self.key, exc_info=exc)
                # Registered and kept alive for a while: a fresh start, not a failing loop.
                if registered_at is not None and loop.time() - registered_at > self.ttl / 3:
                    failures = 0
                failures += 1
                error = str(exc) if isinstance(exc, EtcdError) else repr(exc)
                if error != self._last_error:
                    log.warning("registration of %s: %s (retrying)", self.key, error)
                self._last_error = error
                self._client.rotate()
                await self._client.disconnect()
                await asyncio.sleep(self._backoff(failures))

    async def _register(self) -> None:
        """Put the key with a live lease: the current one if it survived, else a new one."""
        if not self.lease_id or not await self._lease_alive(self.lease_id):
            if self.lease_id:
                log.warning("lease of %s was lost; registering again", self.key)
            self.lease_id, granted = await self._client.grant_lease(self.ttl)
            log.debug("lease %x granted for %ss", self.lease_id, granted)
        await self._client.put(self.key, self.value, lease=self.lease_id)
        self.registrations += 1
        self._last_error = None
        self._registered.set()
        log.info("registered %s (lease ttl %ss)", self.key, self.ttl)

    async def _lease_alive(self, lease_id: int) -> bool:
        responses = self._keepalive_responses(_requests(self._client, lease_id, 1, 0.0), 0.0)
        async with contextlib.aclosing(responses):
            async for ttl in responses:
                return ttl > 0
        return False

    async def _keep_alive(self) -> None:
        """Refresh every ttl/3 until the lease is lost (then return) or the stream fails."""
        interval = max(self.ttl / 3, 0.1)
        responses = self._keepalive_responses(
            _requests(self._client, self.lease_id, None, interval), interval
        )
        async with contextlib.aclosing(responses):
            async for ttl in responses:
                if ttl <= 0:
                    raise EtcdError(
                        f"etcd {self._client.endpoint}: lease {self.lease_id:x} expired"
                    )

    async def _keepalive_responses(
        self, requests: AsyncIterator[Any], interval: float
    ) -> AsyncGenerator[int, None]:
        """TTLs from the keep-alive stream. A reply overdue by ttl/3 (at least 1 s) is an
        error, leaving time to reach another member before the lease runs out."""
        call = self._client.keepalive_stream(requests)
        timeout = interval + max(self.ttl / 3, 1.0)
        try:
            while True:
                try:
                    reply = await asyncio.wait_for(call.read(), timeout=timeout)
                except TimeoutError:
                    raise EtcdError(
                        f"etcd {self._client.endpoint}: no keep-alive reply for {timeout:.1f}s"
                    ) from None
                if reply is EOF:
                    raise EtcdError(f"etcd {self._client.endpoint}: keep-alive stream closed")
                yield int(reply.TTL)
        except grpc.aio.AioRpcError as err:
            raise self._client.error(err) from None
        finally:
            call.cancel()

    def _backoff(self, failures: int) -> float:
        if failures <= 1 and len(self.settings.endpoints) > 1:
            return 0.0
        delay = min(self.settings.max_backoff_s, self.ttl / 3, BACKOFF_BASE_S * 2 ** (failures - 1))
        return float(delay * self._rng.uniform(0.8, 1.2))

    def __repr__(self) -> str:
        return f"<Registration {self.key!r} lease={self.lease_id:x} ttl={self.ttl}>"


def registration(
    target: str,
    address: str,
    *,
    ttl: int = 10,
    metadata: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    first_timeout_s: float = DEFAULT_FIRST_TIMEOUT_S,
) -> Registration:
    """``async with registration("etcd://host:2379/services/x", "10.0.0.5:50051"):`` keeps
    ``address`` registered while the block runs. ``options``: TLS files and credentials
    (``ca_file``, ``cert_file``, ``key_file``, ``username``, ``password``)."""
    return Registration(
        target, address, ttl=ttl, metadata=metadata, options=options,
        first_timeout_s=first_timeout_s,
    )  # fmt: skip


async def _requests(
    client: EtcdClient, lease_id: int, count: int | None, interval: float
) -> AsyncIterator[Any]:
    """Keep-alive requests: ``count`` of them (None: forever) ``interval`` apart."""
    sent = 0
    while count is None or sent < count:
        if sent:
            await asyncio.sleep(interval)
        yield client.keepalive_request(lease_id)
        sent += 1
    await asyncio.Event().wait()  # keep the send side open


def validate_address(address: str) -> str:
    try:
        host, port = split_host_port(address, what="registration address")
    except InvalidTargetError as exc:
        raise BalancerConfigError(str(exc)) from None
    return join_host_port(host, port)


def validate_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise BalancerConfigError(
            f"registration metadata must be a JSON object, got {type(metadata).__name__}"
        )
    weight = metadata.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
        raise BalancerConfigError(
            f"registration metadata weight must be an int >= 0, got {weight!r}"
        )
    if "zone" in metadata and not isinstance(metadata["zone"], str):
        raise BalancerConfigError(
            f"registration metadata zone must be a string, got {metadata['zone']!r}"
        )
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise BalancerConfigError(
            f"registration metadata is not JSON-serialisable: {exc}"
        ) from None
    return dict(metadata)
