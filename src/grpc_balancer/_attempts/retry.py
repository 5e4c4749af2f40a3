"""Retry and hedging decisions (gRFC A6), with no I/O: which codes retry, the backoff
schedule, the throttling token bucket, when to send the next hedge.

The async attempt loop (:mod:`grpc_balancer._aio.calls`) and the synchronous channel both
call these functions, so the two behave the same. Nothing here sleeps, sends or reads
a clock; callers pass in what happened and get back what to do.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

#: gRFC A6: ``maxAttempts`` above this is treated as this.
MAX_ATTEMPTS_CAP = 5

#: Trailing metadata the server may send to ask for a later retry (or none, if < 0).
PUSHBACK_KEY = "grpc-retry-pushback-ms"

#: Sent on every retry or hedge attempt, and added to the trailing metadata the
#: application sees, with the number of earlier attempts.
PREVIOUS_ATTEMPTS_KEY = "grpc-previous-rpc-attempts"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``methodConfig[].retryPolicy``: retry a failed attempt after a jittered backoff."""

    max_attempts: int
    initial_backoff_s: float
    max_backoff_s: float
    backoff_multiplier: float
    retryable_codes: frozenset[grpc.StatusCode]

    def backoff_s(self, retry: int, rng: random.Random | None = None) -> float:
        """Delay before retry number ``retry`` (1 = first retry): uniformly random in
        ``[0, min(initial * multiplier**(retry-1), max)]`` ("full jitter", as A6 says)."""
        ceiling = min(
            self.initial_backoff_s * self.backoff_multiplier ** (retry - 1), self.max_backoff_s
        )
        return (rng or random).uniform(0.0, ceiling)


@dataclass(frozen=True, slots=True)
class HedgingPolicy:
    """``methodConfig[].hedgingPolicy``: send up to ``max_attempts`` copies, one every
    ``delay_s`` until one answers; the first success wins."""

    max_attempts: int
    delay_s: float
    non_fatal_codes: frozenset[grpc.StatusCode]


@dataclass(frozen=True, slots=True)
class MethodPolicy:
    """Everything the method config says about one method (None = not configured)."""

    timeout_s: float | None = None
    wait_for_ready: bool | None = None
    retry: RetryPolicy | None = None
    hedging: HedgingPolicy | None = None


class RetryThrottle:
    """``retryThrottling``: a token bucket shared by every call on a channel.

    Each failed attempt with a retryable (or non-fatal) code takes one token, each
    success gives back ``token_ratio``; retries and hedges are allowed only while more
    than half the bucket is left. A failing fleet therefore gets at most about
    ``token_ratio`` extra attempts per successful call, instead of ``maxAttempts``.
    """

    __slots__ = ("_lock", "max_tokens", "token_ratio", "tokens")

    def __init__(self, max_tokens: float, token_ratio: float) -> None:
        self.max_tokens = float(max_tokens)
        self.token_ratio = float(token_ratio)
        self.tokens = self.max_tokens
        self._lock = threading.Lock()  # sync calls update it from many threads

    def on_success(self) -> None:
        if self.tokens < self.max_tokens:
            with self._lock:
                self.tokens = min(self.max_tokens, self.tokens + self.token_ratio)

    def on_failure(self) -> None:
        with self._lock:
            self.tokens = max(0.0, self.tokens - 1.0)

    def allows_retry(self) -> bool:
        return self.tokens > self.max_tokens / 2

    def __repr__(self) -> str:
        return f"<RetryThrottle {self.tokens:g}/{self.max_tokens:g} ratio={self.token_ratio:g}>"


def parse_pushback(values: Sequence[str | bytes]) -> int | None:
    """The server's ``grpc-retry-pushback-ms``: None if absent, -1 for "do not retry"
    (negative or unparsable, as A6 says), else milliseconds."""
    if not values:
        return None
    raw = values[0]
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    try:
        value = int(text.strip())
    except ValueError:
        return -1
    return value if value >= 0 else -1


def retry_delay_s(
    policy: RetryPolicy,
    code: grpc.StatusCode,
    attempts: int,
    throttle: RetryThrottle | None,
    pushback_ms: int | None = None,
    rng: random.Random | None = None,
) -> float | None:
    """After ``attempts`` attempts (the last one failed with ``code``): seconds to wait
    before the next one, or None if the call must fail now.

    Records the failure in ``throttle`` (only retryable codes count, as in A6).
    The caller still has to check that the wait fits before the call's deadline.
    """
    if code not in policy.retryable_codes:
        return None
    if throttle is not None:
        throttle.on_failure()
        if not throttle.allows_retry():
            return None
    if attempts >= policy.max_attempts:
        return None
    if pushback_ms is not None:
        return None if pushback_ms < 0 else pushback_ms / 1000.0
    return policy.backoff_s(attempts, rng)


def record_success(throttle: RetryThrottle | None) -> None:
    """A call with a retry or hedging policy succeeded: refill the bucket a little."""
    if throttle is not None:
        throttle.on_success()


def hedge_failure_is_fatal(
    policy: HedgingPolicy, code: grpc.StatusCode, throttle: RetryThrottle | None
) -> bool:
    """A hedged attempt failed with ``code``: True if the whole call fails with it now
    (the others are cancelled); False to keep waiting for (or send) other attempts."""
    if code not in policy.non_fatal_codes:
        return True
    if throttle is not None:
        throttle.on_failure()
    return False


def may_send_hedge(policy: HedgingPolicy, sent: int, throttle: RetryThrottle | None) -> bool:
    """Whether attempt number ``sent + 1`` may go out (the first one always may)."""
    if sent == 0:
        return True
    if sent >= policy.max_attempts:
        return False
    return throttle is None or throttle.allows_retry()
