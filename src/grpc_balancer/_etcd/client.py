"""A thin etcd v3 client: one member at a time, a fresh channel per connection.

Built on the generated ``etcdserverpb`` stubs that ship in aetcd (``aetcd.rpc``), not on
``aetcd.Client``: the latter dials only plaintext (no TLS), authenticates once and never
again, and has no way to require a leader on a watch. The stubs work with protobuf 7;
generating a second copy of etcd's protos would clash with aetcd's in protobuf's
default descriptor pool whenever both are imported.

Every error surfaces as :class:`EtcdError` (message: member, status, etcd's reason); the
caller decides to :meth:`EtcdClient.rotate` and reconnect with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any

import grpc
import grpc.aio
from aetcd import rpc

from grpc_balancer._etcd import EtcdError
from grpc_balancer._etcd.settings import EtcdSettings

_Metadata = tuple[tuple[str, str], ...]

#: The largest reply accepted from etcd (a value is at most 1.5 MiB by etcd's default).
MAX_MESSAGE = 64 * 1024 * 1024
#: Keys per page when listing a prefix (halved while a page is too large to receive).
LIST_PAGE_KEYS = 512

log = logging.getLogger("grpc_balancer.etcd")


class _TooLarge(Exception):
    """A Range reply would exceed MAX_MESSAGE."""


#: Channel options: detect a silent (partitioned) member by keepalive, within etcd's
#: enforcement policy (it refuses pings more often than every 5 s).
_CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.use_local_subchannel_pool", 1),
)
#: Watches fail with "no leader" instead of hanging on a member cut off from its cluster.
_REQUIRE_LEADER: _Metadata = (("hasleader", "true"),)


def prefix_range_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range request cover every key with ``prefix``."""
    end = bytearray(prefix)
    for i in reversed(range(len(end))):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


class EtcdClient:
    """Talks to one member of ``settings.endpoints``; :meth:`rotate` moves to the next."""

    def __init__(self, settings: EtcdSettings) -> None:
        self.settings = settings
        self._index = 0
        self._channel: grpc.aio.Channel | None = None
        self._auth: _Metadata = ()

    @property
    def endpoint(self) -> str:
        return self.settings.endpoints[self._index]

    def rotate(self) -> None:
        """Use the next member on the next :meth:`connect`."""
        self._index = (self._index + 1) % len(self.settings.endpoints)

    async def connect(self) -> None:
        """A fresh channel to the current member (no inherited gRPC reconnect backoff),
        authenticated if credentials are set."""
        await self.disconnect()
        self._channel = self._make_channel()
        self._auth = ()
        if self.settings.username is not None:
            request = rpc.AuthenticateRequest(
                name=self.settings.username, password=self.settings.password or ""
            )
            reply = await self._unary(rpc.AuthStub(self._channel).Authenticate, request, ())
            self._auth = (("token", reply.token),)

    async def disconnect(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close(None)

    def _make_channel(self) -> grpc.aio.Channel:
        if not self.settings.tls:
            return grpc.aio.insecure_channel(self.endpoint, options=_CHANNEL_OPTIONS)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.settings.ca_pem,
            private_key=self.settings.key_pem,
            certificate_chain=self.settings.cert_pem,
        )
        return grpc.aio.secure_channel(self.endpoint, credentials, options=_CHANNEL_OPTIONS)

    def _ch(self) -> grpc.aio.Channel:
        if self._channel is None:
            raise EtcdError(f"etcd {self.endpoint}: not connected")
        return self._channel

    async def _unary(self, method: Any, request: Any, metadata: _Metadata | None = None) -> Any:
        try:
            return await method(
                request,
                timeout=self.settings.request_timeout_s,
                metadata=self._auth if metadata is None else metadata,
            )
        except grpc.aio.AioRpcError as err:
            raise self.error(err) from None

    def error(self, err: grpc.aio.AioRpcError) -> EtcdError:
        details = (err.details() or "").strip()
        return EtcdError(f"etcd {self.endpoint}: {err.code().name}: {details}")

    # -- KV -----------------------------------------------------------------------------
    async def get_prefix(self, prefix: str) -> Any:
        """A linearizable read of every key under ``prefix`` (one ``RangeResponse``).

        Read in pages at one revision (a consistent snapshot, as etcd's own clients
        page with ``limit`` and a range continuation), so a prefix larger than a gRPC
        message still lists; a page too large is read again halved, and a single
        value too large to receive at all is skipped with a warning."""
        key = prefix.encode()
        end = prefix_range_end(key)
        kvs: list[Any] = []
        header: Any = None
        start, page = key, LIST_PAGE_KEYS
        while True:
            request = rpc.RangeRequest(
                key=start, range_end=end, limit=page, revision=header.revision if header else 0
            )
            try:
                reply = await self._ch_range(request)
            except _TooLarge:
                if page > 1:
                    page = max(1, page // 2)
                    continue
                skipped = await self._first_key(start, end, header)
                log.warning(
                    "etcd %s: skipping key %r: its value is larger than a gRPC message (%d MiB)",
                    self.endpoint,
                    skipped.decode(errors="replace"),
                    MAX_MESSAGE // (1024 * 1024),
                )
                start = skipped + b"\0"
                continue
            if header is None:
                header = reply.header
            kvs.extend(reply.kvs)
            if not reply.more or not reply.kvs:
                break
            start = reply.kvs[-1].key + b"\0"
        return rpc.RangeResponse(header=header, kvs=kvs, count=len(kvs))

    async def _ch_range(self, request: Any) -> Any:
        try:
            return await rpc.KVStub(self._ch()).Range(
                request, timeout=self.settings.request_timeout_s, metadata=self._auth
            )
        except grpc.aio.AioRpcError as err:
            if err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise _TooLarge() from None
            raise self.error(err) from None

    async def _first_key(self, start: bytes, end: bytes, header: Any) -> bytes:
        request = rpc.RangeRequest(
            key=start,
            range_end=end,
            limit=1,
            keys_only=True,
            revision=header.revision if header else 0,
        )
        reply = await self._unary(rpc.KVStub(self._ch()).Range, request)
        if not reply.kvs:
            raise EtcdError(f"etcd {self.endpoint}: a value under {start!r} is too large to read")
        return bytes(reply.kvs[0].key)

    async def put(self, key: str, value: bytes, lease: int = 0) -> None:
        request = rpc.PutRequest(key=key.encode(), value=value, lease=lease)
        await self._unary(rpc.KVStub(self._ch()).Put, request)

    async def delete(self, key: str) -> None:
        request = rpc.DeleteRangeRequest(key=key.encode())
        await self._unary(rpc.KVStub(self._ch()).DeleteRange, request)

    async def compact(self, revision: int) -> None:
        request = rpc.CompactionRequest(revision=revision, physical=True)
        await self._unary(rpc.KVStub(self._ch()).Compact, request)

    # -- Watch --------------------------------------------------------------------------
    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncGenerator[Any, None]:
        """``WatchResponse`` messages for keys under ``prefix`` from ``start_revision``.

        Ends only by raising :class:`EtcdError` (stream broken) or by cancellation.
        """
        key = prefix.encode()
        create = rpc.WatchCreateRequest(
            key=key, range_end=prefix_range_end(key), start_revision=start_revision
        )
        call = rpc.WatchStub(self._ch()).Watch(
            _send_then_hold(rpc.WatchRequest(create_request=create)),
            metadata=self._auth + _REQUIRE_LEADER,
        )
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as err:
            raise self.error(err) from None
        finally:
            call.cancel()
        raise EtcdError(f"etcd {self.endpoint}: watch stream closed by the server")

    # -- Leases -------------------------------------------------------------------------
    async def grant_lease(self, ttl: int) -> tuple[int, int]:
        """A new lease: ``(id, granted ttl)`` (etcd may raise a too-short TTL)."""
        reply = await self._unary(
            rpc.LeaseStub(self._ch()).LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl)
        )
        if reply.error:
            raise EtcdError(f"etcd {self.endpoint}: lease grant failed: {reply.error}")
        return int(reply.ID), int(reply.TTL)

    async def revoke_lease(self, lease_id: int) -> None:
        request = rpc.LeaseRevokeRequest(ID=lease_id)
        await self._unary(rpc.LeaseStub(self._ch()).LeaseRevoke, request)

    def keepalive_request(self, lease_id: int) -> Any:
        """One ``LeaseKeepAliveRequest`` for :meth:`keepalive_stream`."""
        return rpc.LeaseKeepAliveRequest(ID=lease_id)

    def keepalive_stream(self, requests: AsyncIterator[Any]) -> Any:
        """The bidirectional ``LeaseKeepAlive`` call (the caller sends and reads)."""
        return rpc.LeaseStub(self._ch()).LeaseKeepAlive(
            requests, metadata=self._auth + _REQUIRE_LEADER
        )


async def _send_then_hold(first: Any) -> AsyncIterator[Any]:
    """Send one request and keep the send side open (a half-close ends etcd's stream)."""
    yield first
    await asyncio.Event().wait()
