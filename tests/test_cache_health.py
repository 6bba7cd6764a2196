"""Redis cache targets against real Redis: config, validation, health, manual clearing, being
unreachable. The shared server (a per-worker DB) and private redis-server processes for faults
the shared one must not suffer (maxmemory and evictions, a password, being down)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from cache_helpers import PASSWORD, USERS, redis_target, sql_rebuild
from dbcache_services import RedisServer
from faultserver import free_port

from recovery.config.loader import CacheValidation
from recovery.engine.probing import probe_targets
from recovery.errors import ConfigError, PermanentError, TemporaryError
from recovery.kinds import cache
from recovery.redact import redact


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


# --- config ------------------------------------------------------------------------------------


def test_config_validate_alias_rebuild_and_secrets() -> None:
    target = redis_target(
        "cache",
        f"redis://:{PASSWORD}@127.0.0.1:6379/5",
        validate=USERS,
        rebuild=sql_rebuild("postgresql+psycopg://reader:SrcCanary0042@db/app"),
    )
    assert target.validation == CacheValidation(key_pattern="user:*", required_fields=["id", "name"])
    assert target.max_memory_ratio == 0.9 and target.batch_size == 500
    assert redact(f"x {PASSWORD} y SrcCanary0042") == "x *** y ***"

    cases: dict[str, dict[str, Any]] = {
        "targets[0].rebuild: exactly one of sql, http, python is required (got 0)": {"rebuild": {}},
        "targets[0].validate.format: Input should be 'json' or 'string'": {
            "validate": {"key_pattern": "a:*", "format": "xml"}
        },
        "targets[0].rebuild.python: expected module:function": {"rebuild": {"python": "no colon"}},
        "targets[0].max_memory_ratio: Input should be less than or equal to 1": {"max_memory_ratio": 1.5},
    }
    for message, extra in cases.items():
        with pytest.raises(ConfigError) as info:
            redis_target("cache", "redis://127.0.0.1:6379/5", **extra)
        assert str(info.value).startswith(message), str(info.value)
    with pytest.raises(ConfigError, match=r"targets\[0\]\.url: invalid Redis URL"):
        redis_target("cache", "http://127.0.0.1:6379")


@pytest.mark.parametrize(
    ("value", "rules", "reason"),
    [
        (b'{"id": 1, "name": "a"}', USERS, None),
        (b'{"id": 1}', USERS, "missing field name"),
        (b"[1, 2]", USERS, "not a json object"),
        (b'{"id": 1, "name"', USERS, "invalid json"),
        (b"", USERS, "invalid json"),
        (b"\xff\xfe", USERS, "not utf-8"),
        (b"42", {"key_pattern": "*"}, None),  # json without required fields: any JSON value
        (b"plain text", {"key_pattern": "*", "format": "string"}, None),
        (b"", {"key_pattern": "*", "format": "string"}, "empty"),
    ],
)
def test_invalid_reason(value: bytes, rules: dict[str, Any], reason: str | None) -> None:
    assert cache.invalid_reason(value, CacheValidation.model_validate(rules)) == reason


# --- health ------------------------------------------------------------------------------------


async def test_probe_ok_and_refused(redis_url: str) -> None:
    ok = redis_target("cache", redis_url)
    down = redis_target("down", f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0", timeout_seconds=0.5)
    good, bad = await probe_targets([ok, down])
    assert (good.healthy, good.reason, good.kind) == (True, "ok", "redis")
    assert 0 < good.latency_ms < 1000
    assert (bad.healthy, bad.reason) == (False, "connection refused")
    detail = await cache.check_cache_health(ok)
    assert detail is not None and detail["healthy"] is True and detail["reason"] == "ok"
    assert detail["ping_ms"] > 0 and detail["used_memory"] > 0
    assert await cache.check_cache_health(down) == {"healthy": False, "reason": "connection refused"}


async def test_probe_auth_failure_never_shows_the_password() -> None:
    server = RedisServer("--requirepass", PASSWORD).start()
    try:
        wrong = redis_target("wrong", server.url(password="NotThePw1234"), clearable_patterns=["user:*"])
        missing = redis_target("missing", server.url())
        right = redis_target("right", server.url(password=PASSWORD))
        results = {r.target: r for r in await probe_targets([wrong, missing, right])}
        assert {n: r.reason for n, r in results.items()} == {
            "wrong": "auth failed",
            "missing": "auth failed",
            "right": "ok",
        }
        with pytest.raises(PermanentError) as info:  # retrying a bad password cannot help
            await cache.clear_cache(wrong, "user:*")
        assert "auth failed" in str(info.value)
        assert PASSWORD not in str(info.value) and "NotThePw1234" not in str(info.value)
    finally:
        server.stop()


async def test_memory_ratio_and_evictions_since_last_check() -> None:
    server = RedisServer("--maxmemory", "3mb", "--maxmemory-policy", "allkeys-lru").start()
    try:
        target = redis_target("cache", server.url(), max_memory_ratio=0.5)
        first = await cache.check_cache_health(target)
        assert first is not None and first["maxmemory"] == 3 * 1024 * 1024
        assert first["evictions_since_last_check"] is None  # this process' first look
        client = redis.Redis.from_url(server.url())
        for chunk in range(40):  # ~4 MB into a 3 MB cache: LRU evictions happen for real
            with client.pipeline(transaction=False) as pipe:
                for i in range(100):
                    pipe.set(f"fill:{chunk}:{i}", b"x" * 1000)
                pipe.execute()
        evicted = int(client.info("stats")["evicted_keys"])
        assert evicted > 0
        second = await cache.check_cache_health(target)
        assert second is not None
        assert second["evicted_keys"] >= evicted  # (a connection's buffers may evict a few more)
        assert second["evictions_since_last_check"] == second["evicted_keys"] - first["evicted_keys"]
        assert second["memory_ratio"] > 0.5 and second["healthy"] is False
        third = await cache.check_cache_health(target)
        assert third is not None  # counted from the previous check, not from server start
        assert third["evictions_since_last_check"] == third["evicted_keys"] - second["evicted_keys"]
        assert third["evictions_since_last_check"] < second["evictions_since_last_check"]
        [result] = await probe_targets([target])
        assert result.healthy is False
        assert result.reason.startswith("memory ") and result.reason.endswith("of maxmemory (limit 50%)")
        client.close()
    finally:
        server.stop()


# --- manual clear, unreachable Redis -------------------------------------------------------------


async def test_clear_cache_pattern_and_default(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    for i in range(1200):
        client.set(f"user:{i}", "v")
        client.set(f"sess:{i}", "v")
    target = redis_target("cache", redis_url, validate=USERS, clearable_patterns=["sess:*"])
    assert await cache.clear_cache(target, "sess:1*") == {"pattern": "sess:1*", "deleted": 311}
    assert await cache.clear_cache(target) == {"pattern": "user:*", "deleted": 1200}
    assert client.dbsize() == 1200 - 311
    with pytest.raises(ConfigError, match=r"has no validate\.key_pattern"):
        await cache.clear_cache(redis_target("bare", redis_url))
    client.close()


async def test_unreachable_redis_is_temporary_and_names_the_target(private_redis: RedisServer) -> None:
    port = private_redis.port
    private_redis.stop()
    target = redis_target(
        "users-cache", f"redis://:{PASSWORD}@127.0.0.1:{port}/0", validate=USERS, timeout_seconds=0.5
    )
    for step in (cache.clear_corrupted_entries, cache.clear_cache):
        with pytest.raises(TemporaryError) as info:
            await step(target)
        assert str(info.value).startswith(
            f"redis target users-cache (redis://***@127.0.0.1:{port}/***) unreachable while clearing"
        )
        assert str(info.value).endswith(": connection refused")
        assert PASSWORD not in str(info.value)
    private_redis.start()  # back: the same step now succeeds
    assert await cache.clear_corrupted_entries(target) == {
        "pattern": "user:*",
        "scanned": 0,
        "corrupted": 0,
        "deleted": 0,
        "changed_since_scan": 0,
        "reasons": {},
        "sample": [],
    }


async def test_probes_of_many_caches_run_concurrently(redis_url: str) -> None:
    targets = [redis_target(f"c-{i}", redis_url) for i in range(50)]
    results = await asyncio.wait_for(probe_targets(targets), 10)
    assert all(r.healthy for r in results)
