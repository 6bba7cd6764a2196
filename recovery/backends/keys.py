"""The shared-state key layout: every Redis key the product reads or writes, in one place.

All keys live under ``recovery:``; a target's keys under ``recovery:target:{name}:``. Anything
else (a cache target's own data, an error-cache pattern) is the target's key space, never ours.
ARCHITECTURE.md's key table is this module in prose; change both together.
"""

from __future__ import annotations

PREFIX = "recovery"
TARGET_PREFIX = f"{PREFIX}:target:"
BREAKER_PREFIX = f"{PREFIX}:breaker"
STATE_PATTERN = f"{PREFIX}:*"  # everything this product owns (never a clearable pattern)

PROBE_HISTORY_SIZE = 21  # Nagios' flap-detection window (recovery/policy/flapping.py)


def target_key(target: str, suffix: str) -> str:
    return f"{TARGET_PREFIX}{target}:{suffix}"


def health_key(target: str) -> str:
    """hash: failures, successes, healthy, reason, probed_at, first_failure_at."""
    return target_key(target, "health")


def lock_key(target: str) -> str:
    """string, PX TTL: owner token of the running recovery."""
    return target_key(target, "lock")


def paused_key(target: str) -> str:
    """string: why the application should hold traffic."""
    return target_key(target, "paused")


def pool_generation_key(target: str) -> str:
    """integer: bumped by a pool reset; applications reconnect when it changes."""
    return target_key(target, "pool_generation")


def probe_history_key(target: str) -> str:
    """list (max 21): last probe results, newest first ("1"/"0")."""
    return target_key(target, "probes")


def flapping_key(target: str) -> str:
    """string: epoch seconds the target started flapping."""
    return target_key(target, "flapping")


def rate_key(target: str) -> str:
    """hash, PX TTL: allowed req/s (AIMD), normal, reset_at, observed."""
    return target_key(target, "rate")


def recoveries_key(target: str) -> str:
    """sorted set, PX TTL: start times of recent recoveries (time_window strategy)."""
    return target_key(target, "recoveries")


def window_key(name: str) -> str:
    """sorted set, PX TTL: hits of a named sliding window (e.g. ``manual:{target}``)."""
    return f"{PREFIX}:window:{name}"


def breaker_key(target: str) -> str:
    """hash, PX TTL: state, fail_counter, success_counter, opened_at, changed_at."""
    return f"{BREAKER_PREFIX}:{target}"


def breaker_probe_key(target: str) -> str:
    """string, PX TTL: owner of the single half-open probe."""
    return f"{BREAKER_PREFIX}:{target}:probe"


def target_of(key: str, suffix: str) -> str | None:
    """``recovery:target:{name}:{suffix}`` -> name (None for any other key)."""
    tail = f":{suffix}"
    if key.startswith(TARGET_PREFIX) and key.endswith(tail):
        return key[len(TARGET_PREFIX) : -len(tail)]
    return None
