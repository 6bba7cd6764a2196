"""Destructive operations stay inside the target's own key space (issue 11, part 1).

Pattern rules are unit-tested on strings; the refusals are then run against a real Redis
database holding both a cache's keys and the shared state (locks, paused flags, breakers), and
every refusal is checked to have deleted nothing. The CLI runs in-process: its checks happen
before Prefect is imported. Stuck-session clearing runs against the real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
import yaml
from sqlalchemy.engine import make_url

from recovery.audit.store import AuditStore
from recovery.backends.state_redis import RedisState
from recovery.client.breakers import breaker_for, open_breaker
from recovery.config.keyspace import (
    confinement_problem,
    literal_prefix,
    pattern_problem,
    same_redis_database,
)
from recovery.config.loader import BreakerConfig, RedisTarget, parse_config
from recovery.errors import ConfigError
from recovery.kinds import cache, database
from recovery_cli.main import main

DANGEROUS = ["*", "?*", "[a-z]*", "*user:*", "recovery:*", "recovery:target:*", "rec*", "r?covery:*", "\\*"]


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [("user:*", "user:"), ("user:1?", "user:1"), ("a\\*b*", "a*b"), ("[ab]*", ""), ("plain", "plain")],
)
def test_literal_prefix(pattern: str, prefix: str) -> None:
    assert literal_prefix(pattern) == prefix


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("*", "every key"),
        ("?*", "every key"),
        ("[a-z]*", "every key"),
        ("recovery:*", "recovery state"),
        ("recovery:target:x:lock", "recovery state"),
        ("rec*", "recovery state"),
        ("r", "recovery state"),
        ("recovery\\:*", "recovery state"),  # an escaped ":" is still ":"
        ("user:*", None),
        ("recoveryx:*", None),  # cannot match "recovery:..."
    ],
)
def test_pattern_problem(pattern: str, why: str | None) -> None:
    problem = pattern_problem(pattern)
    assert (problem is None) if why is None else (why in str(problem)), problem


def test_confinement_to_key_spaces() -> None:
    spaces = ["user:*", "tmp:sessions:*"]
    assert confinement_problem("user:*", spaces) is None
    assert confinement_problem("user:42:*", spaces) is None
    assert confinement_problem("tmp:sessions:9", spaces) is None
    assert "outside the target's key space" in str(confinement_problem("tmp:*", spaces))
    assert "outside" in str(confinement_problem("use*", spaces))  # reaches "usera", "users"...
    assert "set validate.key_pattern" in str(confinement_problem("user:*", []))
    assert "every key" in str(confinement_problem("*", ["*"]))  # a key_pattern of "*" grants nothing


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("redis://localhost:6379/0", "redis://127.0.0.1", True),
        ("redis://:pw@cache:6379/2", "redis://cache:6379/2", True),
        ("redis://cache:6379/2", "redis://cache:6379/3", False),
        ("redis://cache:6380/0", "redis://cache/0", False),
        ("redis://other:6379/0", "redis://cache:6379/0", False),
        ("unix:///run/r.sock?db=1", "unix:///run/r.sock?db=1", True),
    ],
)
def test_same_redis_database(a: str, b: str, same: bool) -> None:
    assert same_redis_database(a, b) is same


def target_config(**fields: Any) -> dict[str, Any]:
    return {"name": "users-cache", "kind": "redis", "url": "redis://127.0.0.1:6379/5", **fields}


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"targets": [target_config(clearable_patterns=["tmp:*", "*"])]}, "targets[0].clearable_patterns"),
        (
            {
                "targets": [
                    {"name": "api", "kind": "http", "url": "http://h/", "error_cache_pattern": "recovery:*"}
                ]
            },
            "targets[0].error_cache_pattern",
        ),
        (  # key_pattern "*" in the state's own database: clear_corrupted_entries would take locks
            {"state_url": "redis://localhost/5", "targets": [target_config(validate={"key_pattern": "*"})]},
            "targets[0].validate.key_pattern",
        ),
    ],
)
def test_config_load_refuses_unconfined_patterns(document: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(document)
    assert info.value.field == field


def test_a_cache_of_its_own_may_validate_every_key() -> None:
    config = parse_config(
        {"state_url": "redis://127.0.0.1/4", "targets": [target_config(validate={"key_pattern": "*"})]}
    )
    assert isinstance(config.targets[0], RedisTarget)


# --- against a real Redis database shared by a cache and the state ---------------------------------


def seed(url: str) -> redis.Redis:
    """A cache's keys next to the shared state of two targets: a lock, a paused flag, a breaker."""
    client = redis.Redis.from_url(url)
    for i in range(30):
        client.set(f"user:{i}", "{}")
        client.set(f"tmp:{i}", "x")
        client.set(f"other:{i}", "x")
    state = RedisState(url)
    assert state.acquire_lock("users-cache", "owner-1", 600)
    state.set_paused("orders-db", "recovering")
    open_breaker(breaker_for("orders-db", BreakerConfig(), url))
    return client


def snapshot(client: redis.Redis) -> dict[bytes, bytes | None]:
    return {k: client.dump(k) for k in client.scan_iter(count=1000)}


def cache_target(url: str) -> RedisTarget:
    config = parse_config(
        {
            "state_url": url,
            "targets": [
                target_config(url=url, validate={"key_pattern": "user:*"}, clearable_patterns=["tmp:*"])
            ],
        }
    )
    target = config.targets[0]
    assert isinstance(target, RedisTarget)
    return target


@pytest.mark.parametrize("pattern", [*DANGEROUS, "other:*", "use*"])
async def test_clear_cache_refuses_and_deletes_nothing(redis_url: str, pattern: str) -> None:
    client = seed(redis_url)
    before = snapshot(client)
    assert any(k.startswith(b"recovery:") for k in before)
    with pytest.raises(ConfigError, match="refused, nothing deleted"):
        await cache.clear_cache(cache_target(redis_url), pattern, state_url=redis_url)
    assert snapshot(client) == before
    client.close()


async def test_clear_cache_inside_the_key_space_and_dry_run(redis_url: str) -> None:
    client = seed(redis_url)
    target = cache_target(redis_url)
    state_keys = {k for k in snapshot(client) if k.startswith(b"recovery:")}
    dry = await cache.clear_cache(target, "tmp:*", state_url=redis_url, dry_run=True)
    assert dry == {"pattern": "tmp:*", "dry_run": True, "would_delete": 30}
    assert client.exists(*[f"tmp:{i}" for i in range(30)]) == 30  # a dry run deletes nothing
    assert await cache.clear_cache(target, "tmp:1*", state_url=redis_url) == {
        "pattern": "tmp:1*",
        "deleted": 11,
    }
    assert await cache.clear_cache(target, state_url=redis_url) == {"pattern": "user:*", "deleted": 30}
    assert {k for k in snapshot(client) if k.startswith(b"recovery:")} == state_keys
    assert client.exists(*[f"other:{i}" for i in range(30)]) == 30
    client.close()


def write_config(tmp_path: Path, redis_url: str) -> Path:
    path = tmp_path / "recovery.yaml"
    document = {
        "audit_url": f"sqlite:///{tmp_path / 'audit.db'}",
        "state_url": redis_url,
        "targets": [
            target_config(url=redis_url, validate={"key_pattern": "user:*"}, clearable_patterns=["tmp:*"])
        ],
    }
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize("pattern", ["*", "recovery:*", "re*", "other:*"])
def test_cli_refuses_with_one_line_naming_pattern(
    redis_url: str, tmp_path: Path, pattern: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = seed(redis_url)
    before = snapshot(client)
    code = main(
        [
            "--config",
            str(write_config(tmp_path, redis_url)),
            "clear-cache",
            "users-cache",
            "--pattern",
            pattern,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert (
        err.startswith("recovery: error: --pattern: refused, nothing deleted: ") and err.count("\n") == 1
    ), err
    assert snapshot(client) == before
    client.close()


def test_cli_dry_run_counts_and_is_audited(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    client = seed(redis_url)
    before = snapshot(client)
    config = write_config(tmp_path, redis_url)
    code = main(["--config", str(config), "clear-cache", "users-cache", "--pattern", "tmp:*", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "30 key(s) match 'tmp:*'; nothing was deleted" in out
    assert snapshot(client) == before
    [run] = AuditStore(f"sqlite:///{tmp_path / 'audit.db'}").history()
    assert (run.workflow, run.dry_run, run.state) == ("clear-cache", True, "succeeded")
    assert run.steps[0].detail == {"pattern": "tmp:*", "dry_run": True, "would_delete": 30}
    client.close()


# --- PostgreSQL: only our application's sessions are ever terminated --------------------------------


async def test_stuck_sessions_without_application_name_are_listed_not_terminated(pg_url: str) -> None:
    app = f"test-{uuid.uuid4().hex[:12]}"
    conn = psycopg.connect(
        host="127.0.0.1",
        user="postgres",
        dbname="test",
        options=str(make_url(pg_url).query["options"]),
        application_name=app,
    )
    try:
        conn.execute("SELECT 1")  # opens a transaction, left idle in it: stuck
        pid = conn.info.backend_pid
        await asyncio.sleep(1.2)
        config = parse_config(
            {
                "targets": [
                    {"name": "orders-db", "kind": "database", "url": pg_url, "stuck_session_seconds": 1}
                ]
            }
        )
        detail = await database.clear_stuck_sessions(config.targets[0])
        assert detail is not None
        assert (
            detail["terminated_pids"] == []
            and detail["not_terminated_because"] == "application_name is not set"
        )
        assert pid in [s["pid"] for s in detail["not_terminated"]]
        assert conn.execute("SELECT 1").fetchone() == (1,)  # still alive: nobody was terminated
    finally:
        conn.close()
        database.dispose_all_engines()
