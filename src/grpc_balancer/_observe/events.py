"""Per-call resilience events, for metrics and logs.

``BalancedChannel.observers`` is a plain list; each observer is called as
``observer(event, subchannel, code)`` on the event loop and must not block.
Nothing is allocated or called when the list is empty. ``event`` is an :class:`Event`
(``grpc_balancer.Event``), a ``str`` too: ``event == "retry"`` keeps working.

Events (``subchannel`` is the backend concerned, ``code`` the status that caused it):

* ``"retry"``: an attempt on ``subchannel`` failed with ``code``; another follows.
* ``"transparent_retry"``: an attempt never reached ``subchannel``; re-sent elsewhere.
* ``"throttled"``: a retry or hedge was refused by ``retryThrottling``.
* ``"hedge"``: an extra hedged attempt was sent to ``subchannel``.
* ``"saturated"``: ``subchannel`` was skipped: at ``circuitBreakers.maxRequests``.
* ``"rejected"``: every backend was saturated; the call failed RESOURCE_EXHAUSTED.
* ``"ejected"`` / ``"unejected"``: outlier detection took it out / put it back.
* ``"health"``: its health-check status changed (read ``subchannel.health``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

if TYPE_CHECKING:
    from grpc_balancer.subchannel import Subchannel


class Event(enum.StrEnum):
    """The events above; a ``str`` too, so ``event == "retry"`` keeps working."""

    RETRY = "retry"
    TRANSPARENT_RETRY = "transparent_retry"
    THROTTLED = "throttled"
    HEDGE = "hedge"
    SATURATED = "saturated"
    REJECTED = "rejected"
    EJECTED = "ejected"
    UNEJECTED = "unejected"
    HEALTH = "health"


Observer = Callable[[Event, "Subchannel | None", "grpc.StatusCode | None"], None]


def emit(
    observers: list[Observer],
    event: Event,
    subchannel: Subchannel | None,
    code: grpc.StatusCode | None = None,
) -> None:
    for observer in observers:
        observer(event, subchannel, code)
