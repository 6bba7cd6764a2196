"""Database targets against the real local PostgreSQL and SQLite files: config and probes.
Faults are real: row locks held by idle-in-transaction sessions, terminated backends, a closed
port, a locked SQLite file.

Every test that opens sessions gives them a unique ``application_name`` and configures the
target to terminate only that name, so a test can never kill another engineer's sessions on
the shared server.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from pathlib import Path

import pytest
from database_helpers import CANARY, LOCKING_PROBE, Sessions, db_target, probe, with_password
from faultserver import free_port

from recovery.config.loader import parse_config
from recovery.engine.probing import probe_targets
from recovery.redact import redact

pytestmark = pytest.mark.usefixtures("dispose_engines")


# --- config ------------------------------------------------------------------------------------


def test_config_defaults_and_password_registered(pg_url: str) -> None:
    target = db_target("orders-db", with_password(pg_url, "CfgCanary9876"))
    assert target.probe_query == "SELECT 1"
    assert target.statement_timeout_seconds == 5.0
    assert target.stuck_session_seconds == 300.0
    assert target.application_name is None
    assert "CfgCanary9876" not in repr(target) and "CfgCanary9876" not in str(target.model_dump())
    assert redact("driver said: password CfgCanary9876 rejected") == "driver said: password *** rejected"


def test_config_rejects_bad_url_and_fields() -> None:
    from recovery.errors import ConfigError

    with pytest.raises(ConfigError, match=r"targets\[0\]\.url: invalid SQLAlchemy URL"):
        parse_config({"targets": [{"kind": "database", "name": "db", "url": "not a url"}]})
    with pytest.raises(ConfigError, match=r"targets\[0\]\.pool_size: unknown field"):
        parse_config({"targets": [{"kind": "database", "name": "db", "url": "sqlite://", "pool_size": 3}]})
    with pytest.raises(ConfigError, match=r"targets\[0\]\.canary_table: must be a plain SQL identifier"):
        parse_config(
            {"targets": [{"kind": "database", "name": "db", "url": "sqlite://", "canary_table": "x; drop"}]}
        )


# --- probes ------------------------------------------------------------------------------------


async def test_probe_ok_postgres_and_sqlite(pg_url: str, tmp_path: Path) -> None:
    pg = await probe(db_target("pg", with_password(pg_url)))
    assert (pg.healthy, pg.reason, pg.kind) == (True, "ok", "database")
    lite = await probe(db_target("lite", f"sqlite:///{tmp_path / 'app.db'}"))
    assert (lite.healthy, lite.reason) == (True, "ok")


async def test_probe_classifies_failures(pg_url: str, tmp_path: Path) -> None:
    closed = free_port()
    refused = db_target("refused", f"postgresql+psycopg://postgres:{CANARY}@127.0.0.1:{closed}/test")
    no_role = db_target("no-role", pg_url.replace("postgres@", f"nobody_{uuid.uuid4().hex[:6]}:{CANARY}@"))
    no_db = db_target("no-db", with_password(pg_url).replace("/test?", "/no_such_db_x?"))
    bad_query = db_target("bad-query", with_password(pg_url), probe_query="SELECT * FROM missing_table")
    slow = db_target(
        "slow", with_password(pg_url), probe_query="SELECT pg_sleep(5)", statement_timeout_seconds=0.3
    )
    no_file = db_target("no-file", f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")
    results = {r.target: r for r in await probe_targets([refused, no_role, no_db, bad_query, slow, no_file])}
    assert {name: r.reason for name, r in results.items()} == {
        "refused": "connection refused",
        "no-role": "auth failed",
        "no-db": "database does not exist",
        "bad-query": "query error: UndefinedTable (42P01)",
        "slow": "timeout",
        "no-file": "connection error: unable to open database file",
    }
    assert not any(r.healthy for r in results.values())
    assert results["slow"].latency_ms < 4000  # the statement timeout, not pg_sleep(5), ended it
    assert not any(CANARY in r.reason for r in results.values())


async def test_probe_times_out_on_row_lock_held_idle_in_transaction(sessions: Sessions, pg_url: str) -> None:
    holder = sessions.open()
    holder.execute("SELECT * FROM accounts WHERE id = 1 FOR UPDATE")  # idle in transaction now
    target = db_target(
        "orders-db", with_password(pg_url), probe_query=LOCKING_PROBE, statement_timeout_seconds=0.5
    )
    result = await probe(target)
    assert (result.healthy, result.reason) == (False, "timeout")
    holder.rollback()
    assert (await probe(target)).healthy


async def test_sqlite_statement_timeout_and_lock(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    slow = db_target(
        "slow",
        f"sqlite:///{path}",
        statement_timeout_seconds=0.3,
        probe_query="WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c",
    )
    started = time.monotonic()
    assert (await probe(slow)).reason == "timeout"  # the progress handler interrupted the query
    assert time.monotonic() - started < 3
    locker = sqlite3.connect(path)
    locker.execute("CREATE TABLE t (x int)")
    locker.execute("BEGIN EXCLUSIVE")
    try:
        writer = db_target(
            "writer", f"sqlite:///{path}", statement_timeout_seconds=0.3, probe_query="SELECT * FROM t"
        )
        assert (await probe(writer)).reason == "timeout"  # busy_timeout expired: database is locked
    finally:
        locker.rollback()
        locker.close()
    assert (await probe(writer)).healthy


async def test_probes_of_many_databases_run_concurrently_without_blocking_the_loop(pg_url: str) -> None:
    targets = [
        db_target(f"db-{i}", with_password(pg_url), probe_query="SELECT pg_sleep(1)") for i in range(12)
    ]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    results = await probe_targets(targets, concurrency=100)
    elapsed = time.monotonic() - started
    task.cancel()
    assert all(r.healthy for r in results), [r.reason for r in results]
    assert elapsed < 6, elapsed  # 12 x 1 s serially would be 12 s
    assert ticks >= elapsed / 0.05 * 0.5  # the event loop kept running while drivers blocked


async def test_probe_survives_terminated_pooled_connections(sessions: Sessions, pg_url: str) -> None:
    """Backends of the recovery's pooled connections are killed: pre-ping reconnects."""
    app = f"{sessions.app}-rec"
    target = db_target("orders-db", f"{with_password(pg_url)}&application_name={app}")
    assert (await probe(target)).healthy
    admin = sessions.open(app="admin", autocommit=True)
    killed = admin.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = %s",
        (app,),
    ).fetchall()
    assert killed == [(True,)]  # the one pooled backend
    assert (await probe(target)).healthy
