"""``etcd://h1:2379,h2:2379/services/greeter``: endpoints registered in etcd.

Keys ``<prefix>/<addr>`` hold values in the format of etcd's Go ``naming/endpoints``
manager (see :mod:`grpc_balancer._etcd.codec`). The resolver reads the prefix, pushes
the list, then watches from the next revision and pushes each change. On compaction
it re-reads at once; on any other watch or connection error it reports the error
(the channel keeps the last good list), moves to the next etcd member and re-reads
after a capped exponential backoff. An empty prefix is a real empty list.

A value that does not parse is skipped with a warning naming the key; if that key
held a good value before, the old endpoint stays (as in Go's watcher).
``resolve_now()`` is ignored: while the watch is up the list is already current.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from grpc_balancer._etcd import EtcdError
from grpc_balancer._etcd.client import EtcdClient
from grpc_balancer._etcd.codec import decode_endpoint
from grpc_balancer._etcd.settings import BACKOFF_BASE_S, EtcdSettings, parse_etcd_target
from grpc_balancer.endpoint import Endpoint
from grpc_balancer.resolvers.base import (
    ResolverListener,
    ResolverOptions,
    register_builtin_resolver,
)
from grpc_balancer.target import Target

log = logging.getLogger("grpc_balancer.resolvers.etcd")

#: Skipped keys named one by one per read; the rest are counted in one line.
SKIPPED_NAMED = 5

SCHEME = "etcd"
_DELETE = 1  # mvccpb.Event.EventType (0 is PUT)
#: A watch that lived this long resets the backoff (a flapping one does not).
STABLE_WATCH_S = 1.0


class _Compacted(Exception):
    """The watch fell behind a compaction: re-read the prefix (not an error)."""


class EtcdResolver:
    """Lists and watches one prefix in a background task."""

    def __init__(
        self, target: Target, listener: ResolverListener, options: ResolverOptions
    ) -> None:
        self._target = target
        self.settings: EtcdSettings = parse_etcd_target(target, options.extra)
        self._listener = listener
        self._client = EtcdClient(self.settings)
        self._task: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self._entries: dict[str, Endpoint] = {}  # etcd key -> endpoint, key order
        self._warned: set[tuple[str, int]] = set()  # (key, mod_revision) already logged
        #: Keys skipped in the current read (list or watch batch): warned about in one go.
        self._skipped: list[str] = []
        self._last_pushed: list[Endpoint] | None = None
        self._error: str | None = None
        self._closed = False
        self._watch_up_since: float | None = None
        #: Prefix reads done so far, and the revision the watch is at (for tests, repr).
        self.listings = 0
        self.revision = 0

    # -- Resolver protocol --------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"grpc_balancer.etcd[{self._target.raw}]"
        )

    def resolve_now(self) -> None:
        pass

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._client.disconnect()

    # -- list, then watch ---------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._closed:
            self._watch_up_since = None
            try:
                await self._client.connect()
                while True:
                    start = await self._list()
                    try:
                        await self._watch(start)
                    except _Compacted as exc:
                        log.info("%s: %s; reading the prefix again", self._target.raw, exc)
            except Exception as exc:  # EtcdError, or a bug: either way keep resolving
                if not isinstance(exc, EtcdError):
                    log.error("%s: unexpected error", self._target.raw, exc_info=exc)
                # A watch that was up for a while is a fresh start; a failing loop is not.
                up = self._watch_up_since
                if up is not None and loop.time() - up > STABLE_WATCH_S:
                    failures = 0
                failures += 1
                self._report(str(exc) if isinstance(exc, EtcdError) else repr(exc))
                self._client.rotate()
                await self._client.disconnect()
                await asyncio.sleep(self._backoff(failures))

    async def _list(self) -> int:
        """Read the whole prefix, push it; the revision to watch from."""
        reply = await self._client.get_prefix(self.settings.key_prefix)
        self.listings += 1
        old, self._entries = self._entries, {}
        for kv in reply.kvs:
            key = kv.key.decode(errors="replace")
            self._apply_put(key, kv.value, kv.mod_revision, old.get(key))
        self.revision = int(reply.header.revision)
        self._push()
        return self.revision + 1

    async def _watch(self, start_revision: int) -> None:
        stream = self._client.watch_prefix(self.settings.key_prefix, start_revision)
        async with contextlib.aclosing(stream):  # cancels the etcd watch on any exit
            async for response in stream:
                if response.compact_revision:
                    raise _Compacted(
                        f"watch from revision {start_revision} was compacted "
                        f"(oldest kept: {response.compact_revision})"
                    )
                if response.created and self._watch_up_since is None:
                    self._watch_up_since = asyncio.get_running_loop().time()
                if response.canceled:
                    reason = response.cancel_reason or "no reason given"
                    raise EtcdError(f"etcd {self._client.endpoint}: watch canceled: {reason}")
                for event in response.events:
                    key = event.kv.key.decode(errors="replace")
                    if event.type == _DELETE:
                        self._entries.pop(key, None)
                    else:
                        previous = self._entries.pop(key, None)
                        self._apply_put(key, event.kv.value, event.kv.mod_revision, previous)
                if response.header.revision:
                    self.revision = int(response.header.revision)
                if response.events:
                    self._entries = dict(sorted(self._entries.items()))
                    self._push()

    def _apply_put(self, key: str, value: bytes, revision: int, previous: Endpoint | None) -> None:
        try:
            endpoint = decode_endpoint(value)
        except Exception as exc:  # BadValueError, or anything: skip this key only
            if (key, revision) not in self._warned:
                self._warned.add((key, revision))
                if len(self._skipped) < SKIPPED_NAMED:
                    kept = f"; keeping its previous {previous.address}" if previous else ""
                    log.warning("%s: skipping key %r: %s%s", self._target.raw, key, exc, kept)
                self._skipped.append(key)
            endpoint = previous
        if endpoint is not None:
            self._entries[key] = endpoint

    # -- reporting ----------------------------------------------------------------------
    def _push(self) -> None:
        skipped, self._skipped = self._skipped, []
        if len(skipped) > SKIPPED_NAMED:  # 10,000 junk keys: a few named, then one count
            log.warning(
                "%s: skipped %d more keys with values that do not parse in this read",
                self._target.raw,
                len(skipped) - SKIPPED_NAMED,
            )
        if self._closed:
            return
        merged: dict[str, Endpoint] = {}
        for endpoint in self._entries.values():
            merged.setdefault(endpoint.address, endpoint)  # two keys, one address: once
        endpoints = list(merged.values())
        recovered = self._error is not None
        if endpoints != self._last_pushed or recovered:
            self._last_pushed = endpoints
            self._listener.on_endpoints(list(endpoints))
        if recovered:
            log.info("%s: etcd read again via %s", self._target.raw, self._client.endpoint)
            self._error = None

    def _report(self, error: str) -> None:
        if self._closed:
            return
        if error != self._error:
            log.info("%s: %s (keeping the last good list, retrying)", self._target.raw, error)
        self._error = error
        self._listener.on_resolver_error(error)

    def _backoff(self, failures: int) -> float:
        if failures <= 1 and len(self.settings.endpoints) > 1:
            return 0.0  # first failure: try the next member at once
        delay = min(self.settings.max_backoff_s, BACKOFF_BASE_S * 2 ** (failures - 1))
        return float(delay * self._rng.uniform(0.8, 1.2))

    def __repr__(self) -> str:
        state = f"error={self._error!r}" if self._error else f"endpoints={self._last_pushed}"
        return f"<EtcdResolver {self._target.raw!r} revision={self.revision} {state}>"


register_builtin_resolver(SCHEME, EtcdResolver)
