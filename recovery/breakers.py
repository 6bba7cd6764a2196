"""Circuit breakers per target, on pybreaker, shared through Redis when ``state_url`` is set.

The recovery flows and the application must see the same breaker, so both build it with
``breaker_for``: same name, same storage namespace (``pybreaker:recovery:breaker:{target}``).
Without Redis the breaker lives in this process only.
"""

from __future__ import annotations

import threading

import pybreaker
import redis

from recovery.config import BreakerConfig
from recovery.errors import StateUnavailable
from recovery.redact import redact, redact_url
from recovery.state import redis_client

_memory_breakers: dict[str, pybreaker.CircuitBreaker] = {}
_lock = threading.Lock()


def breaker_namespace(target: str) -> str:
    return f"recovery:breaker:{target}"


def breaker_for(target: str, config: BreakerConfig, state_url: str | None) -> pybreaker.CircuitBreaker:
    """The breaker guarding ``target``; raises ``StateUnavailable`` if Redis is unreachable."""
    if not state_url:
        with _lock:
            breaker = _memory_breakers.get(target)
            if breaker is None:
                breaker = pybreaker.CircuitBreaker(
                    fail_max=config.fail_max, reset_timeout=config.reset_timeout_seconds, name=target
                )
                _memory_breakers[target] = breaker
            return breaker
    try:
        # pybreaker's Redis storage expects bytes responses.
        client = redis_client(state_url, decode=False)
        storage = pybreaker.CircuitRedisStorage(
            pybreaker.STATE_CLOSED, client, namespace=breaker_namespace(target)
        )
    except redis.RedisError as exc:
        raise StateUnavailable(f"breaker state {redact_url(state_url)}: {redact(str(exc))}") from None
    return pybreaker.CircuitBreaker(
        fail_max=config.fail_max,
        reset_timeout=config.reset_timeout_seconds,
        state_storage=storage,
        name=target,
    )


def breaker_state(breaker: pybreaker.CircuitBreaker) -> str:
    try:
        return str(breaker.current_state)
    except redis.RedisError as exc:
        raise StateUnavailable(f"breaker state: {redact(str(exc))}") from None


def open_breaker(breaker: pybreaker.CircuitBreaker) -> None:
    try:
        breaker.open()
    except redis.RedisError as exc:
        raise StateUnavailable(f"breaker state: {redact(str(exc))}") from None


def close_breaker(breaker: pybreaker.CircuitBreaker) -> None:
    try:
        breaker.close()
    except redis.RedisError as exc:
        raise StateUnavailable(f"breaker state: {redact(str(exc))}") from None
