"""Rate-limit response headers: when the limit resets and what limit the server announced.

Shared by the http prober (which records them on a 429) and the rate-limit kind (which waits
and lowers the rate); kept apart from both so neither kind module imports the other.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping

EPOCH_THRESHOLD = 1_000_000_000  # X-RateLimit-Reset above this is an epoch time, below a delay


# --- headers ------------------------------------------------------------------------------------


def _delta_seconds(value: str, strict: bool) -> float | None:
    """``value`` as a number of seconds, or None when it is not one (then it may be a date)."""
    if strict:
        return float(value) if value.isdigit() else None
    try:
        return float(value)
    except ValueError:
        return None


def parse_retry_after(value: str | None, now: float | None = None, *, strict: bool = False) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date (RFC 9110).

    Lenient (default): any number is a delay, a negative one counts as 0. ``strict``: only
    RFC 9110 delay-seconds (``1*DIGIT``); ``"-5"``, ``"0.5"`` or ``"inf"`` are not delays (None).
    """
    if not value:
        return None
    value = value.strip()
    seconds = _delta_seconds(value, strict)
    if seconds is None:
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
