"""Active health checking (gRFC A17): one ``grpc.health.v1.Health/Watch`` stream per
READY subchannel, turned on by ``healthCheckConfig: {"serviceName": ...}``, opened
on the subchannel's own connection (:meth:`Subchannel.open_server_stream`, one
implementation for the asyncio and the sync channel).

The server's answer becomes ``subchannel.health``; anything but SERVING takes the
subchannel out of every policy's rotation (pick_first included) until it says SERVING
again. That is also how a graceful drain works: a stopping server goes NOT_SERVING
first, clients stop sending it new calls, and its in-flight calls finish.

* UNIMPLEMENTED (the server has no health service): health checking is off for that
  subchannel, with one warning per channel, as in gRPC.
* A broken stream while the connection is up is re-opened with jittered exponential
  backoff (at once if it had delivered an answer); meanwhile the subchannel waits as
  if connecting (``UNKNOWN``).
* When the connection drops the stream ends with it; it re-opens on the next READY.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2

from grpc_balancer.subchannel import HEALTH_UNCHECKED, HEALTH_UNKNOWN, StreamError, Subchannel

log = logging.getLogger("grpc_balancer._core.health")

WATCH_METHOD = "/grpc.health.v1.Health/Watch"
INITIAL_BACKOFF_S = 0.2
MAX_BACKOFF_S = 5.0

_STATUS_NAMES = {
    health_pb2.HealthCheckResponse.SERVING: "SERVING",
    health_pb2.HealthCheckResponse.NOT_SERVING: "NOT_SERVING",
    health_pb2.HealthCheckResponse.SERVICE_UNKNOWN: "SERVICE_UNKNOWN",
    health_pb2.HealthCheckResponse.UNKNOWN: "STATUS_UNKNOWN",
}


class HealthChecking:
    """The health checks of one channel's subchannels (the channel calls its hooks)."""

    def __init__(
        self,
        service_name: str,
        target: str,
        on_event: Callable[[Subchannel], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.service_name = service_name
        self._target = target
        self._on_event = on_event
        self._rng = rng or random.Random()
        self._tasks: dict[Subchannel, asyncio.Task[None]] = {}
        self._unimplemented: set[Subchannel] = set()
        self._warned = False
        self._closed = False

    # -- hooks called by the channel ------------------------------------------------------------
    def add(self, sc: Subchannel) -> None:
        """A new subchannel: it is not usable until its first SERVING answer."""
        sc.health = HEALTH_UNKNOWN

    def on_state(self, sc: Subchannel) -> None:
        """Connectivity (or health) of ``sc`` changed: start or stop its Watch."""
        if self._closed:
            return
        task = self._tasks.get(sc)
        if sc.connectivity is not grpc.ChannelConnectivity.READY:
            if task is not None:
                task.cancel()
                del self._tasks[sc]
            self._unimplemented.discard(sc)  # a restarted server may have it now
            # quietly: no picker change needed, it is not READY anyway
            sc.health = HEALTH_UNKNOWN
        elif task is None and sc not in self._unimplemented:
            self._tasks[sc] = asyncio.get_running_loop().create_task(
                self._watch(sc), name=f"grpc_balancer._core.health[{sc.address}]"
            )

    def remove(self, sc: Subchannel) -> None:
        task = self._tasks.pop(sc, None)
        if task is not None:
            task.cancel()
        self._unimplemented.discard(sc)

    def close(self) -> None:
        self._closed = True
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()

    # -- the stream ----------------------------------------------------------------------------
    async def _watch(self, sc: Subchannel) -> None:
        request = health_pb2.HealthCheckRequest(service=self.service_name)
        backoff = INITIAL_BACKOFF_S
        try:
            while not self._closed:
                answered = False
                why = "the server ended the stream"
                stream = sc.open_server_stream(
                    WATCH_METHOD,
                    request,
                    request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                    response_deserializer=health_pb2.HealthCheckResponse.FromString,
                    wait_for_ready=False,
                )
                try:
                    async for reply in stream:
                        answered = True
                        self._set(sc, _STATUS_NAMES.get(reply.status, "STATUS_UNKNOWN"))
                except StreamError as err:
                    if err.code is grpc.StatusCode.UNIMPLEMENTED:
                        self._give_up(sc)
                        return
                    why = f"{err.code.name}: {err.details}"
                finally:
                    stream.cancel()
                if sc.connectivity is not grpc.ChannelConnectivity.READY:
                    return  # the connection went; on_state restarts us on the next READY
                log.info("%s: health stream broke (%s); re-opening", sc.address, why)
                self._set(sc, HEALTH_UNKNOWN)
                if answered:
                    backoff = INITIAL_BACKOFF_S
                    continue
                await asyncio.sleep(self._rng.uniform(0.8, 1.2) * backoff)
                backoff = min(backoff * 1.6, MAX_BACKOFF_S)
        finally:
            if self._tasks.get(sc) is asyncio.current_task():
                del self._tasks[sc]

    def _set(self, sc: Subchannel, health: str) -> None:
        if health != sc.health:
            sc.set_health(health)
            if self._on_event is not None:
                self._on_event(sc)

    def _give_up(self, sc: Subchannel) -> None:
        self._unimplemented.add(sc)
        if not self._warned:
            self._warned = True
            log.warning(
                "%s: %s does not implement grpc.health.v1.Health; health checking is off "
                "for backends without it (healthCheckConfig)",
                self._target,
                sc.address,
            )
        self._set(sc, HEALTH_UNCHECKED)

    def __repr__(self) -> str:
        return f"<HealthChecking {self.service_name!r} watching={len(self._tasks)}>"
