"""Redis cache targets against real Redis: the shared server (a per-worker DB) and private
redis-server processes for faults the shared one must not suffer (maxmemory and evictions, a
password, being down, KEYS disabled). Rebuild sources are real: SQLite and PostgreSQL tables, an
HTTP server, a Python function in this module.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from dbcache_services import (
    N_KEYS,
    RedisServer,
    corrupted_ids,
    healthy_value,
    seed_cache,
    seed_source_table,
    snapshot,
    source_value,
)
from faultserver import free_port

from recovery.config.loader import CacheValidation, RedisTarget, parse_config
from recovery.engine.probing import probe_targets
from recovery.errors import ConfigError, PermanentError, TemporaryError
from recovery.kinds import cache, cache_rebuild
from recovery.redact import redact

PASSWORD = "RedisCanaryPw4711"
USERS = {"key_pattern": "user:*", "format": "json", "required_fields": ["id", "name"]}


def redis_target(name: str, url: str, **overrides: Any) -> RedisTarget:
    config = parse_config({"targets": [{"kind": "redis", "name": name, "url": url, **overrides}]})
    target = config.targets[0]
    assert isinstance(target, RedisTarget)
    return target


def sql_rebuild(url: str, **overrides: Any) -> dict[str, Any]:
    source = {
        "url": url,
        "query": "SELECT id, payload FROM users ORDER BY id",
        "key_template": "user:{id}",
        "value_column": "payload",
    }
    return {"sql": source, **overrides}


@pytest.fixture
def source_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQL source table of 10,000 rows, on SQLite or PostgreSQL (the test's own schema)."""
    url = (
        str(request.getfixturevalue("pg_url"))
        if request.param == "postgres"
        else f"sqlite:///{tmp_path / 's.db'}"
    )
    seed_source_table(url)
    return url


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


# --- corrupted entries + rebuild (issue 3, "Done when") ------------------------------------------


@pytest.mark.parametrize("source_url", ["sqlite", "postgres"], indirect=True)
async def test_clears_exactly_the_500_corrupted_and_rebuilds_them(redis_url: str, source_url: str) -> None:
    by_reason = seed_cache(redis_url)
    before = snapshot(redis_url, "*")
    bad_keys = {f"user:{i}".encode() for i in corrupted_ids()}
    target = redis_target("users-cache", redis_url, validate=USERS, rebuild=sql_rebuild(source_url))

    cleared = await cache.clear_corrupted_entries(target)

    assert cleared is not None
    assert {k: cleared[k] for k in ("pattern", "scanned", "corrupted", "deleted", "changed_since_scan")} == {
        "pattern": "user:*",
        "scanned": N_KEYS,
        "corrupted": 500,
        "deleted": 500,
        "changed_since_scan": 0,
    }
    assert cleared["reasons"] == {reason: len(ids) for reason, ids in by_reason.items()}
    assert all(n == 100 for n in cleared["reasons"].values())
    assert len(cleared["sample"]) == cache.SAMPLE_KEYS and {k.encode() for k in cleared["sample"]} <= bad_keys
    after_clear = snapshot(redis_url, "*")
    assert set(after_clear) == set(before) - bad_keys
    assert all(after_clear[k] == before[k] for k in after_clear)  # values, types and TTLs untouched

    rebuilt = await cache_rebuild.rebuild_cache(target)

    assert rebuilt == {
        "source": "sql",
        "overwrite": False,
        "rows": N_KEYS,
        "written": 500,
        "existing": 9500,
        "invalid": 0,
        "batches": N_KEYS // 500,
    }
    after = snapshot(redis_url, "*")
    assert set(after) == set(before)
    for key, (kind, value, has_ttl) in after.items():
        if key in bad_keys:
            i = int(key.split(b":")[1])
            assert (kind, value, has_ttl) == (b"string", source_value(i).encode(), 0)
        else:
            assert (kind, value, has_ttl) == before[key]  # the other 9,500 (+ sessions) untouched
    healthy = [k for k in after if k.startswith(b"user:") and k not in bad_keys]
    assert len(healthy) == 9500
    assert after[healthy[0]][1] == healthy_value(int(healthy[0].split(b":")[1])).encode()


async def test_a_value_rewritten_after_the_scan_is_not_deleted(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("user:1", "garbage{")
    client.set("user:2", "garbage{")
    rules = CacheValidation.model_validate(USERS)
    bad = cache.judge_batch(client, [b"user:1", b"user:2"], rules)
    assert [(k, why) for k, _, _, why in bad] == [(b"user:1", "invalid json"), (b"user:2", "invalid json")]
    client.set("user:2", healthy_value(2))  # the application repaired it meanwhile
    assert cache.delete_unchanged(client, bad) == 1
    assert client.get("user:1") is None
    assert client.get("user:2") == healthy_value(2).encode()
    client.close()


async def test_scan_in_batches_never_keys() -> None:
    """KEYS is renamed away on this server: the clearing works only because it uses SCAN."""
    server = RedisServer("--rename-command", "KEYS", "KEYS_DISABLED_X").start()
    try:
        client = redis.Redis.from_url(server.url())
        with client.pipeline(transaction=False) as pipe:
            for i in range(2000):
                pipe.set(f"user:{i}", healthy_value(i) if i % 10 else "broken")
            pipe.execute()
        client.config_resetstat()
        target = redis_target("cache", server.url(), validate=USERS, batch_size=250)
        detail = await cache.clear_corrupted_entries(target)
        assert detail is not None and (detail["scanned"], detail["deleted"]) == (2000, 200)
        stats = client.info("commandstats")
        assert "cmdstat_keys" not in stats and "cmdstat_keys_disabled_x" not in stats
        assert stats["cmdstat_scan"]["calls"] >= 2000 // 250
        # One pipelined GET per scanned key, plus the compare-and-delete script's own GET per bad key.
        assert stats["cmdstat_evalsha"]["calls"] == 200
        assert stats["cmdstat_get"]["calls"] == 2000 + 200
        assert client.dbsize() == 1800
        client.close()
    finally:
        server.stop()


async def test_rebuild_skips_invalid_source_values_and_honours_ttl_and_overwrite(
    redis_url: str, tmp_path: Path
) -> None:
    from sqlalchemy import create_engine, text

    url = f"sqlite:///{tmp_path / 'src.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE users (id integer, payload text)"))
        conn.execute(
            text("INSERT INTO users VALUES (:id, :payload)"),
            [{"id": i, "payload": source_value(i) if i != 3 else "{broken"} for i in range(5)],
        )
    engine.dispose()
    client = redis.Redis.from_url(redis_url)
    client.set("user:0", healthy_value(0))
    target = redis_target("cache", redis_url, validate=USERS, rebuild=sql_rebuild(url, ttl_seconds=600))
    detail = await cache_rebuild.rebuild_cache(target)
    assert detail is not None
    assert (detail["rows"], detail["written"], detail["existing"], detail["invalid"]) == (5, 3, 1, 1)
    assert client.get("user:3") is None  # never write a value the validator would delete
    assert client.get("user:0") == healthy_value(0).encode()
    assert 0 < client.ttl("user:1") <= 600
    overwrite = redis_target("cache", redis_url, validate=USERS, rebuild=sql_rebuild(url, overwrite=True))
    detail = await cache_rebuild.rebuild_cache(overwrite)
    assert detail is not None and (detail["written"], detail["existing"], detail["invalid"]) == (4, 0, 1)
    assert client.get("user:0") == source_value(0).encode()
    client.close()


def python_source() -> dict[str, Any]:
    """Rebuild source used through ``rebuild.python: test_cache:python_source``."""
    return {f"user:{i}": {"id": i, "name": f"user-{i}", "v": "py"} for i in range(3)}


async def test_rebuild_from_python_and_http(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    py = redis_target("cache", redis_url, validate=USERS, rebuild={"python": "test_cache:python_source"})
    detail = await cache_rebuild.rebuild_cache(py)
    assert detail is not None and (detail["source"], detail["written"]) == ("python", 3)
    assert json.loads(client.get("user:2") or b"") == {"id": 2, "name": "user-2", "v": "py"}

    body = json.dumps({f"user:{i}": source_value(i) for i in range(10, 14)}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/warm"
        web = redis_target("cache", redis_url, validate=USERS, rebuild={"http": {"url": url}})
        detail = await cache_rebuild.rebuild_cache(web)
        assert detail is not None and (detail["source"], detail["rows"], detail["written"]) == ("http", 4, 4)
        assert client.get("user:13") == source_value(13).encode()
    finally:
        server.shutdown()
        server.server_close()
    gone = redis_target("cache", redis_url, rebuild={"http": {"url": url, "timeout_seconds": 1}})
    with pytest.raises(TemporaryError, match=r"rebuild source http://127\.0\.0\.1:"):
        await cache_rebuild.rebuild_cache(gone)  # the source is down: worth retrying
    client.close()


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
