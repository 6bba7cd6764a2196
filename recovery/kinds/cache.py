"""Redis cache targets: health, corrupted-entry clearing, rebuild from a source of truth.

* Health: PING latency, ``INFO memory`` (used vs ``maxmemory``; unhealthy above
  ``max_memory_ratio``) and ``evicted_keys`` since this process last looked.
* Manual clear (``clear-cache``): only inside the target's key space, never every key nor the
  state keys (``confined_pattern``; rules in ``recovery.config.keyspace``).
* Corrupted entries: ``SCAN`` (never ``KEYS``) over ``validate.key_pattern`` in batches, values
  fetched and deleted with pipelines. A bad key is deleted only if it still holds the value that
  was judged (compare-and-delete in Lua), so a concurrent writer's fresh value is never lost.
* Rebuild: see ``recovery.kinds.cache_rebuild``; shared Redis plumbing: ``cache_client``.

The probe uses redis' asyncio client so many targets are probed concurrently; the steps run the
blocking client on a worker thread. Redis errors become ``TemporaryError`` (retried with the
target's backoff) naming the target and its redacted URL, except auth failures (permanent).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from recovery.backends.state import scan_delete
from recovery.config.keyspace import confinement_problem, pattern_problem, same_redis_database
from recovery.config.loader import CacheValidation, RedisTarget, TargetConfig
from recovery.errors import ConfigError
from recovery.kinds.base import Detail, Kind, ProbeContext, ProbeResult, StepContext, StepSpec
from recovery.kinds.cache_client import (
    as_redis,
    classify_redis_error,
    invalid_reason,
    redis_error,
    sync_client,
)
from recovery.kinds.cache_rebuild import rebuild_cache
from recovery.kinds.common import manual_workflow, recovery_workflow

SAMPLE_KEYS = 10  # corrupted keys listed in the audit detail (counts are exact)

# KEYS[1] is deleted only if its type (ARGV[1]) and, for strings, its value (ARGV[2]) are still
# what the scan judged corrupted.
_COMPARE_AND_DELETE = """
local t = redis.call('TYPE', KEYS[1])['ok']
if t ~= ARGV[1] then return 0 end
if t == 'string' and redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
return redis.call('UNLINK', KEYS[1])
"""

_last_evicted: dict[tuple[str, str], int] = {}


# --- health ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheHealth:
    ping_ms: float
    used_memory: int
    maxmemory: int
    evicted_keys: int
    evictions_since_last_check: int | None  # None on this process' first look

    @property
    def memory_ratio(self) -> float | None:
        return self.used_memory / self.maxmemory if self.maxmemory else None

    def problem(self, target: RedisTarget) -> str | None:
        ratio = self.memory_ratio
        if ratio is not None and ratio > target.max_memory_ratio:
            return f"memory {ratio:.0%} of maxmemory (limit {target.max_memory_ratio:.0%})"
        return None

    def as_json(self) -> dict[str, Any]:
        ratio = self.memory_ratio
        return {
            "ping_ms": round(self.ping_ms, 2),
            "used_memory": self.used_memory,
            "maxmemory": self.maxmemory,
            "memory_ratio": round(ratio, 4) if ratio is not None else None,
            "evicted_keys": self.evicted_keys,
            "evictions_since_last_check": self.evictions_since_last_check,
        }


async def cache_health(target: RedisTarget) -> CacheHealth:
    """PING latency, memory use and evictions; raises ``redis.RedisError`` if unreachable."""
    client = aioredis.Redis.from_url(
        target.url.get_secret_value(),
        socket_timeout=target.timeout_seconds,
        socket_connect_timeout=target.timeout_seconds,
    )
    try:
        started = time.perf_counter()
        await client.ping()
        ping_ms = (time.perf_counter() - started) * 1000
        memory = await client.info("memory")
        stats = await client.info("stats")
    finally:
        await client.aclose()
    evicted = int(stats.get("evicted_keys", 0))
    key = (target.name, target.url.get_secret_value())
    previous = _last_evicted.get(key)
    _last_evicted[key] = evicted
    # A restarted server starts counting at 0 again: everything it reports is new.
    since = None if previous is None else (evicted - previous if evicted >= previous else evicted)
    used, limit = int(memory.get("used_memory", 0)), int(memory.get("maxmemory", 0))
    return CacheHealth(ping_ms, used, limit, evicted, since)


async def probe_redis(target: RedisTarget, ctx: ProbeContext) -> ProbeResult:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(target.timeout_seconds * 2 + 1):
            health = await cache_health(target)
    except Exception as exc:
        reason = "timeout" if isinstance(exc, TimeoutError) else classify_redis_error(exc)
        return ProbeResult(target.name, "redis", False, reason, (time.perf_counter() - started) * 1000)
    problem = health.problem(target)
    return ProbeResult(target.name, "redis", problem is None, problem or "ok", health.ping_ms)


async def check_cache_health(target: TargetConfig) -> Detail:
    """Diagnosis step: record latency, memory and evictions (never fails the run)."""
    cache = as_redis(target)
    try:
        health = await cache_health(cache)
    except Exception as exc:
        return {"healthy": False, "reason": classify_redis_error(exc)}
    problem = health.problem(cache)
    return {"healthy": problem is None, "reason": problem or "ok", **health.as_json()}


# --- validation and corrupted entries ---------------------------------------------------------


def _key_text(key: bytes) -> str:
    return key.decode("utf-8", errors="backslashreplace")


def judge_batch(
    client: redis.Redis, keys: list[Any], rules: CacheValidation
) -> list[tuple[bytes, str, bytes, str]]:
    """The corrupted keys of one SCAN batch: (key, type, value judged, reason)."""
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.get(key)
        values = pipe.execute(raise_on_error=False)
    wrong_type = [k for k, v in zip(keys, values, strict=True) if isinstance(v, redis.ResponseError)]
    types: dict[bytes, str] = {}
    if wrong_type:  # GET answered WRONGTYPE: a hash/list/... where a string value belongs
        with client.pipeline(transaction=False) as pipe:
            for key in wrong_type:
                pipe.type(key)
            types = {k: _key_text(t) for k, t in zip(wrong_type, pipe.execute(), strict=True)}
    bad: list[tuple[bytes, str, bytes, str]] = []
    for key, value in zip(keys, values, strict=True):
        if isinstance(value, redis.ResponseError):
            kind = types.get(key, "none")
            if kind != "none":
                bad.append((key, kind, b"", f"wrong type: {kind}"))
        elif isinstance(value, Exception):
            raise value
        elif value is not None:  # None: expired between SCAN and GET
            why = invalid_reason(value, rules)
            if why is not None:
                bad.append((key, "string", value, why))
    return bad


def delete_unchanged(client: redis.Redis, bad: list[tuple[bytes, str, bytes, str]]) -> int:
    """Pipelined compare-and-delete: a key goes only if it still holds the value that was judged."""
    script = client.register_script(_COMPARE_AND_DELETE)
    with client.pipeline(transaction=False) as pipe:
        for key, kind, value, _ in bad:
            script(keys=[key], args=[kind, value], client=pipe)
        return sum(int(n) for n in pipe.execute())


def _clear_corrupted_sync(target: RedisTarget) -> Detail:
    rules = target.validation
    if rules is None:
        return None
    client = sync_client(target)
    scanned = corrupted = deleted = 0
    reasons: Counter[str] = Counter()
    sample: list[str] = []
    try:
        cursor = 0
        while True:
            cursor, keys = client.scan(cursor, match=rules.key_pattern, count=target.batch_size)
            scanned += len(keys)
            bad = judge_batch(client, keys, rules) if keys else []
            if bad:
                corrupted += len(bad)
                reasons.update(why for _, _, _, why in bad)
                sample.extend(_key_text(k) for k, _, _, _ in bad[: max(0, SAMPLE_KEYS - len(sample))])
                deleted += delete_unchanged(client, bad)
            if cursor == 0:
                break
    except redis.RedisError as exc:
        raise redis_error(target, exc, "clearing corrupted entries") from None
    finally:
        client.close()
    return {
        "pattern": rules.key_pattern,
        "scanned": scanned,
        "corrupted": corrupted,
        "deleted": deleted,
        "changed_since_scan": corrupted - deleted,
        "reasons": dict(reasons),
        "sample": sample,
    }


async def clear_corrupted_entries(target: TargetConfig) -> Detail:
    """SCAN ``validate.key_pattern``, delete values that fail validation (pipelined batches)."""
    return await asyncio.to_thread(_clear_corrupted_sync, as_redis(target))


def confined_pattern(
    target: RedisTarget, pattern: str | None, state_url: str | None, field: str = "pattern"
) -> str:
    """The pattern clear-cache may delete (default: ``validate.key_pattern``), or ``ConfigError``.

    It must lie in the target's key space (``validate.key_pattern`` / ``clearable_patterns``)
    and can never reach every key or the state keys (``recovery.config.keyspace``).
    """
    chosen = pattern or (target.validation.key_pattern if target.validation else None)
    if not chosen or not chosen.strip():
        raise ConfigError(field, f"required: target '{target.name}' has no validate.key_pattern")
    problem = confinement_problem(chosen, target.key_spaces())
    if problem is None and same_redis_database(target.url.get_secret_value(), state_url):
        problem = pattern_problem(chosen)  # a state-database cache: belt and braces
    if problem is not None:
        raise ConfigError(field, f"refused, nothing deleted: {problem}")
    return chosen


def _clear_pattern_sync(target: RedisTarget, pattern: str, dry_run: bool) -> Detail:
    client = sync_client(target)
    try:
        if dry_run:  # SCAN only: what a real run would delete now
            matched = sum(1 for _ in client.scan_iter(match=pattern, count=target.batch_size))
            return {"pattern": pattern, "dry_run": True, "would_delete": matched}
        deleted = scan_delete(client, pattern, target.batch_size)
    except redis.RedisError as exc:
        raise redis_error(target, exc, "clearing keys") from None
    finally:
        client.close()
    return {"pattern": pattern, "deleted": deleted}


async def clear_cache(
    target: TargetConfig, pattern: str | None = None, state_url: str | None = None, dry_run: bool = False
) -> Detail:
    """Manual clear: delete (``dry_run``: count) the keys matching ``pattern``, confined to the
    target's key space (``confined_pattern``; default: ``validate.key_pattern``)."""
    cache = as_redis(target)
    chosen = confined_pattern(cache, pattern, state_url)
    return await asyncio.to_thread(_clear_pattern_sync, cache, chosen, dry_run)


# --- workflows -------------------------------------------------------------------------------
# Steps bind the functions above to a StepContext; the functions keep plain arguments so they
# can be called (and tested) without a running recovery.


async def _health_step(ctx: StepContext) -> Detail:
    return await check_cache_health(ctx.target)


async def _clear_corrupted_step(ctx: StepContext) -> Detail:
    return await clear_corrupted_entries(ctx.target)


async def _rebuild_step(ctx: StepContext) -> Detail:
    return await rebuild_cache(ctx.target)


async def _clear_keys_step(ctx: StepContext) -> Detail:
    state_url = ctx.config.state_url.get_secret_value() if ctx.config.state_url else None
    return await clear_cache(ctx.target, ctx.options.get("pattern"), state_url)


CHECK_CACHE_HEALTH = StepSpec(
    "check_cache_health", "PING latency, memory vs maxmemory, evictions.", _health_step, retryable=False
)

CACHE_RECOVERY = recovery_workflow(
    "cache-recovery",
    "redis",
    "Recover a Redis cache: delete corrupted entries, rebuild them, verify, resume.",
    StepSpec(
        "clear_corrupted_entries",
        "SCAN validate.key_pattern; delete invalid values (pipelined).",
        _clear_corrupted_step,
    ),
    # Optional: a cold but correct cache can serve traffic; a source outage must not keep it paused.
    StepSpec(
        "rebuild_cache",
        "Warm missing keys from the rebuild source (pipelined).",
        _rebuild_step,
        optional=True,
    ),
    diagnose=CHECK_CACHE_HEALTH,
)

CLEAR_CACHE = manual_workflow(
    "clear-cache",
    "redis",
    "Manual: delete the keys matching a pattern inside the target's key space "
    "(default: validate.key_pattern).",
    StepSpec(
        "clear_cache_keys",
        "Refuse a pattern outside the key space; SCAN + UNLINK it in batches.",
        _clear_keys_step,
    ),
)

KIND = Kind("redis", probe_redis, (CACHE_RECOVERY, CLEAR_CACHE))
