"""Circuit breakers per target on pybreaker, shared by a whole fleet through Redis.

``breaker_for`` is the factory both the recovery flows and the application use, so both see the
same breaker: same name, same keys (``recovery.backends.keys.breaker_key``). Without
``state_url`` the breaker lives in this process only.

The breaker is ``FleetBreaker`` (``recovery.client.breaker_fleet``): pybreaker's
``CircuitBreaker`` whose transitions are atomic store steps (``recovery.backends.breaker_core``,
run as Lua in Redis), with exactly one half-open probe across the fleet, ``async def`` support,
guarded generators, cancellation that is never a failure, and fail-open / fail-closed behaviour
when Redis is down. docs/breakers-and-rate-limits.md lists every deliberate difference from
pybreaker. A closed breaker with no recent failure costs one Redis round trip per call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pybreaker

from recovery.backends.breaker_core import CLOSED, HALF_OPEN, OPEN, BreakerSnapshot
from recovery.backends.breaker_memory import MemoryBreakerStore
from recovery.backends.breaker_store import BreakerStore, RedisBreakerStore
from recovery.backends.state import DEFAULT_TIMEOUT_SECONDS
from recovery.client.breaker_fleet import REDIS_RETRY_SECONDS, CircuitBreakerError, FleetBreaker
from recovery.config.loader import BreakerConfig, RecoveryConfig

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "REDIS_RETRY_SECONDS",
    "BreakerSnapshot",
    "CircuitBreakerError",
    "FleetBreaker",
    "breaker_for",
    "breaker_for_target",
    "breaker_state",
    "close_breaker",
    "open_breaker",
]


# --- the factory ---------------------------------------------------------------------------------

_breakers: dict[tuple[str, str | None, BreakerConfig, float], FleetBreaker] = {}
_memory_stores: dict[str, MemoryBreakerStore] = {}
_factory_lock = threading.Lock()


def breaker_for(
    target: str,
    config: BreakerConfig,
    state_url: str | None,
    *,
    clock: Callable[[], float] | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> FleetBreaker:
    """The breaker guarding ``target``; the same call in the application sees the same state.

    Never raises for an unreachable Redis (nothing is sent before the first call); each Redis
    call gives up after ``timeout`` s (``state_timeout_seconds``). Instances are cached per
    (target, state_url, config, timeout); pass ``clock`` (epoch seconds) only in tests.
    """
    key = (target, state_url, config, timeout)
    if clock is None:
        with _factory_lock:
            cached = _breakers.get(key)
            if cached is not None:
                return cached
    store: BreakerStore
    if state_url:
        store = RedisBreakerStore(target, state_url, config.state_ttl_seconds, clock or time.time, timeout)
    else:
        with _factory_lock:
            memory = _memory_stores.get(target)
            if memory is None:
                memory = _memory_stores[target] = MemoryBreakerStore(target, config.state_ttl_seconds)
        if clock is not None:
            memory.clock = clock
        store = memory
    breaker = FleetBreaker(
        target,
        store,
        fail_max=config.fail_max,
        reset_timeout=config.reset_timeout_seconds,
        success_threshold=config.success_threshold,
        probe_lease_seconds=config.probe_lease_seconds,
        on_state_unavailable=config.on_state_unavailable,
    )
    if clock is None:
        with _factory_lock:
            breaker = _breakers.setdefault(key, breaker)
    return breaker


def breaker_for_target(config: RecoveryConfig, target: str) -> FleetBreaker:
    """The application's entry point: ``breaker_for_target(load_config(), "payments-api")``."""
    target_config = config.target(target)
    state_url = config.state_url.get_secret_value() if config.state_url else None
    return breaker_for(
        target_config.name, target_config.breaker, state_url, timeout=config.state_timeout_seconds
    )


def breaker_state(breaker: pybreaker.CircuitBreaker) -> str:
    """Current shared state; raises ``StateUnavailable`` when it cannot be read."""
    return str(breaker.current_state)


def open_breaker(breaker: FleetBreaker) -> None:
    """Open ``breaker`` (monitor, target confirmed down). An already open breaker keeps its
    ``opened_at``: re-opening every monitor cycle must not postpone the reset timeout forever."""
    breaker.trip()


def close_breaker(breaker: pybreaker.CircuitBreaker) -> None:
    breaker.close()
