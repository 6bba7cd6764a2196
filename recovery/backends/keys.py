"""The shared-state key layout: every Redis key the product reads or writes, in one place.

All keys live under ``recovery:``; a target's keys under ``recovery:target:{name}:``. Anything
else (a cache target's own data, an error-cache pattern) is the target's key space, never ours.
ARCHITECTURE.md's key table is this module in prose; change both together.
"""

from __future__ import annotations

from collections.abc import Callable

# Defined in the config layer, which validates destructive patterns against it at load.
from recovery.config.keyspace import STATE_PREFIX as PREFIX

TARGET_PREFIX = f"{PREFIX}:target:"
BREAKER_PREFIX = f"{PREFIX}:breaker"
STATE_PATTERN = f"{PREFIX}:*"  # everything this product owns (refused as a clear pattern: config.keyspace)

PROBE_HISTORY_SIZE = 21  # Nagios' flap-detection window (recovery/policy/flapping.py)


def target_key(target: str, suffix: str) -> str:
    return f"{TARGET_PREFIX}{target}:{suffix}"


def _suffix_key(suffix: str) -> Callable[[str], str]:
    """The key function of one per-target key: ``target -> target_key(target, suffix)``."""

    def key(target: str) -> str:
        return target_key(target, suffix)

    key.__name__ = key.__qualname__ = f"{suffix}_key"
    return key


# A target's keys (recovery:target:{name}:{suffix}) and what each holds:
# hash: failures, successes, healthy, reason, probed_at, first_failure_at.
health_key = _suffix_key("health")
# string, PX TTL: owner token of the running recovery (its audit row's lock_owner; an
# emergency takes it over by compare-and-set: lua/takeover_lock.lua).
lock_key = _suffix_key("lock")
# string: why the application should hold traffic.
paused_key = _suffix_key("paused")
# integer: bumped by a pool reset; applications reconnect when it changes.
pool_generation_key = _suffix_key("pool_generation")
# list (max 21): last probe results, newest first ("1"/"0").
probe_history_key = _suffix_key("probes")
# string: epoch seconds the target started flapping.
flapping_key = _suffix_key("flapping")
# hash, PX TTL: allowed req/s (AIMD), normal, reset_at, observed.
rate_key = _suffix_key("rate")
# sorted set, PX TTL: start times of recent recoveries (time_window strategy).
recoveries_key = _suffix_key("recoveries")
# string (JSON), PX TTL: the escalation ladder of the current incident: rung (1-based), the
# monitor's lock token it was started under, its outcome (recovery/engine/escalation.py).
ladder_key = _suffix_key("ladder")
# string, PX TTL: the dependency this target waits for (status board: "blocked by ...").
blocked_key = _suffix_key("blocked")
# string, PX TTL: the run id of this incident's "waiting for ..." refusal (audited once).
waiting_key = _suffix_key("waiting")

# Ladder and waiting marks outlive any incident worth remembering, then expire on their own.
INCIDENT_TTL_SECONDS = 7 * 86400.0


def monitor_slot_key(deployment: str, slot: float) -> str:
    """string, PX TTL (two periods): the period run that cycles this grid slot of a served
    monitor deployment. Two period runs overlap at a hand-over; the first to claim a slot
    cycles it, the other skips it (flows/monitor_period.py)."""
    return f"{PREFIX}:monitor:{deployment}:slot:{round(slot * 1000)}"


def window_key(name: str) -> str:
    """sorted set, PX TTL: hits of a named sliding window (e.g. ``manual:{target}``)."""
    return f"{PREFIX}:window:{name}"


def breaker_key(target: str) -> str:
    """hash, PX TTL: state, fail_counter, success_counter, opened_at, changed_at; while a
    recovery's close is unverified, close_lease_owner and close_lease_until (past it: open)."""
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
