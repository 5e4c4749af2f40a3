"""Errors raised for bad user input, so callers can catch one family and print one line."""

from __future__ import annotations


class BalancerConfigError(ValueError):
    """Base class for every user-input error (bad target, policy, config field)."""


class InvalidTargetError(BalancerConfigError):
    """The target URI is malformed: unknown scheme, bad host:port, empty list."""


class UnknownPolicyError(BalancerConfigError):
    """A load-balancing policy name that no factory is registered for."""


class ServiceConfigError(BalancerConfigError):
    """The service config is not valid JSON or has a bad or unknown field."""


class ChannelClosedError(RuntimeError, ValueError):
    """The channel was used after close(). Also a ``ValueError``, which is what grpcio's
    own sync channel raises for a closed channel, so existing handlers keep working."""


class ChannelUsedAfterForkError(ChannelClosedError):
    """A sync channel was used in a child process after ``fork()``: its event-loop
    thread and connections exist only in the parent."""


class WrongEventLoopError(RuntimeError):
    """An asyncio channel was used from an event loop other than the one it started on
    (its connections and tasks belong to that loop). Create the channel inside the loop
    that uses it, e.g. in the coroutine passed to ``asyncio.run()``."""
