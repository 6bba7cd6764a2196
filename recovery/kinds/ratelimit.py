"""Rate limits: reading reset headers, bounded waits, and the AIMD request rate in shared state.

When a dependency answers 429 (or ``X-RateLimit-Remaining: 0``) the ``rate-limit-recovery``
workflow lowers the target's *allowed request rate* in shared state (observed limit x
``safety_factor``: multiplicative decrease), waits for the limit to reset (``Retry-After`` as
seconds or an HTTP date, else ``X-RateLimit-Reset``; never longer than ``max_wait_seconds``: a
longer reset is audited and escalated instead), and every later healthy monitor cycle raises the
rate by ``increase_per_cycle`` until it is back at ``normal_rate_per_second`` (additive
increase). Applications read the rate with ``recovery.client.tokenbucket.TokenBucket``.

The allowed rate is stored by ``recovery.backends.rate`` (``RateStore``, layout there).
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass

from recovery.config.targets import RateLimitConfig

EPOCH_THRESHOLD = 1_000_000_000  # X-RateLimit-Reset above this is an epoch time, below a delay


# --- headers ------------------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    return max(0.0, seconds) if seconds == seconds else None  # NaN is not a delay


def parse_ratelimit_reset(value: str | None, now: float | None = None) -> float | None:
    """``X-RateLimit-Reset`` as seconds from now: epoch seconds (GitHub) or a delay (IETF draft)."""
    if not value:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if number != number or number < 0:
        return None
    if number >= EPOCH_THRESHOLD:
        return max(0.0, number - (time.time() if now is None else now))
    return number


def reset_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds until the limit resets: ``Retry-After`` first, else ``X-RateLimit-Reset``."""
    lowered = {k.lower(): v for k, v in headers.items()}
    retry_after = parse_retry_after(lowered.get("retry-after"), now)
    if retry_after is not None:
        return retry_after
    return parse_ratelimit_reset(lowered.get("x-ratelimit-reset"), now)


def observed_limit(headers: Mapping[str, str], window_seconds: float | None) -> float | None:
    """``X-RateLimit-Limit`` per ``window_seconds`` as requests/second (None when unknown)."""
    if window_seconds is None:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        limit = float(lowered.get("x-ratelimit-limit", "").strip())
    except ValueError:
        return None
    return limit / window_seconds if limit > 0 else None


# --- pure decisions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WaitPlan:
    """How long to sleep for a reset, or why not (escalate: the reset is beyond the cap)."""

    reset_in: float | None
    sleep_seconds: float
    escalate: bool

    @property
    def reason(self) -> str:
        if self.reset_in is None:
            return "no reset time announced"
        if self.escalate:
            return f"limit resets in {self.reset_in:g}s, beyond max_wait_seconds"
        return f"limit resets in {self.reset_in:g}s"


def plan_wait(reset_in: float | None, max_wait_seconds: float) -> WaitPlan:
    if reset_in is None or reset_in <= 0:
        return WaitPlan(reset_in, 0.0, False)
    if reset_in > max_wait_seconds:
        return WaitPlan(reset_in, 0.0, True)
    return WaitPlan(reset_in, round(reset_in, 3), False)


def decreased_rate(current: float, observed: float | None, config: RateLimitConfig) -> float:
    """Multiplicative decrease: the lower of current and observed, times the safety factor."""
    base = current if observed is None else min(current, observed)
    return max(config.min_rate_per_second, base * config.safety_factor)


def increased_rate(current: float, normal: float, increase: float) -> float:
    """Additive increase, never above the normal rate."""
    return min(normal, current + increase)
