"""Redis cache targets against real Redis: clearing corrupted entries and rebuilding them. The
shared server (a per-worker DB) and a private redis-server with KEYS disabled. Rebuild sources
are real: SQLite and PostgreSQL tables, an HTTP server, a Python function in ``cache_helpers``.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
from cache_helpers import USERS, redis_target, sql_rebuild
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

from recovery.config.loader import CacheValidation
from recovery.errors import TemporaryError
from recovery.kinds import cache, cache_rebuild


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


async def test_rebuild_from_python_and_http(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    py = redis_target("cache", redis_url, validate=USERS, rebuild={"python": "cache_helpers:python_source"})
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
