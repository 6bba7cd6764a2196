"""Redis plumbing shared by the cache kind and its rebuild: clients, error reasons, validation.

Kept out of ``cache.py`` so ``cache_rebuild`` (a helper of the cache kind) and ``cache`` can both
use it without importing each other.
"""

from __future__ import annotations

import json

import redis

from recovery.config.loader import CacheValidation, RedisTarget, TargetConfig
from recovery.errors import PermanentError, RecoveryError, TemporaryError
from recovery.redact import redact_url


def as_redis(target: TargetConfig) -> RedisTarget:
    if not isinstance(target, RedisTarget):
        raise PermanentError(f"{target.name} is a {target.kind} target, not a redis cache")
    return target


def classify_redis_error(exc: BaseException) -> str:
    """A short, stable reason for a Redis client error (never the URL or password)."""
    message = str(exc).lower()
    if isinstance(exc, redis.AuthenticationError | redis.exceptions.AuthenticationWrongNumberOfArgsError):
        return "auth failed"
    if "wrongpass" in message or "noauth" in message or "invalid password" in message:
        return "auth failed"
    if isinstance(exc, redis.BusyLoadingError):
        return "loading"
    if isinstance(exc, redis.TimeoutError | TimeoutError):
        return "timeout"
    if "connection refused" in message or "connect call failed" in message:
        return "connection refused"
    if isinstance(exc, redis.ConnectionError | ConnectionError | OSError):
        return "connection lost" if "closed" in message or "reset" in message else "connection error"
    if isinstance(exc, redis.ResponseError):
        return f"error: {str(exc).split(' ', 1)[0][:40]}"
    return f"error: {type(exc).__name__}"


def redis_error(target: RedisTarget, exc: BaseException, doing: str) -> RecoveryError:
    reason = classify_redis_error(exc)
    where = f"redis target {target.name} ({redact_url(target.url.get_secret_value())})"
    if reason == "auth failed" or reason.startswith("error:"):
        return PermanentError(f"{where}: {doing}: {reason}")
    return TemporaryError(f"{where} unreachable while {doing}: {reason}")


def sync_client(target: RedisTarget) -> redis.Redis:
    return redis.Redis.from_url(
        target.url.get_secret_value(),
        decode_responses=False,
        socket_timeout=target.timeout_seconds,
        socket_connect_timeout=target.timeout_seconds,
    )


def invalid_reason(value: bytes | str, rules: CacheValidation) -> str | None:
    """Why ``value`` is corrupted under ``rules``, or None if it is valid."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return "not utf-8"
    if rules.format == "string":
        return None if value else "empty"
    try:
        data = json.loads(value)
    except ValueError:
        return "invalid json"
    if rules.required_fields:
        if not isinstance(data, dict):
            return "not a json object"
        for name in rules.required_fields:
            if name not in data:
                return f"missing field {name}"
    return None
