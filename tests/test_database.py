"""Database targets against the real local PostgreSQL and SQLite files: probes, stuck sessions,
pool reset, integrity checks. Faults are real: row locks held by idle-in-transaction sessions,
terminated backends, a closed port, a read-only database, a corrupted SQLite file.

Every test that opens sessions gives them a unique ``application_name`` and configures the
target to terminate only that name, so a test can never kill another engineer's sessions on
the shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dbcache_services import corrupt_sqlite
from faultserver import free_port
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from recovery.backends.state_memory import MemoryState
from recovery.backends.state_redis import RedisState
from recovery.client.poolwatch import PoolGenerationWatcher
from recovery.config.loader import DatabaseTarget, parse_config
from recovery.engine.probing import probe_targets
from recovery.errors import IntegrityCheckFailed, PermanentError, TemporaryError
from recovery.kinds import database
from recovery.kinds.base import ProbeResult
from recovery.redact import redact

CANARY = "DbCanaryPw4711"


def with_password(url: str, password: str = CANARY) -> str:
    """The fixture URL with a password (trust auth ignores it, so it still connects)."""
    assert "postgres@" in url
    return url.replace("postgres@", f"postgres:{password}@", 1)


def db_target(name: str, url: str, **overrides: Any) -> DatabaseTarget:
    config = parse_config({"targets": [{"kind": "database", "name": name, "url": url, **overrides}]})
    target = config.targets[0]
    assert isinstance(target, DatabaseTarget)
    return target


async def probe(target: DatabaseTarget) -> ProbeResult:
    [result] = await probe_targets([target])
    return result


class Sessions:
    """Raw psycopg sessions in the test's schema, closed at teardown."""

    def __init__(self, pg_url: str) -> None:
        self.options = str(make_url(pg_url).query["options"])
        self.app = f"test-{uuid.uuid4().hex[:12]}"
        self.opened: list[psycopg.Connection[Any]] = []

    def open(self, app: str | None = None, autocommit: bool = False) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            host="127.0.0.1",
            user="postgres",
            dbname="test",
            options=self.options,
            application_name=app or self.app,
            autocommit=autocommit,
        )
        self.opened.append(conn)
        return conn

    def close(self) -> None:
        for conn in self.opened:
            conn.close()


@pytest.fixture
def sessions(pg_url: str) -> Iterator[Sessions]:
    s = Sessions(pg_url)
    setup = s.open(autocommit=True)
    setup.execute("CREATE TABLE accounts (id int PRIMARY KEY, n int NOT NULL)")
    setup.execute("INSERT INTO accounts VALUES (1, 0), (2, 0)")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(autouse=True)
def _dispose_engines() -> Iterator[None]:
    """The recovery caches one engine per target: close their connections to the shared server."""
    yield
    database.dispose_all_engines()


def alive(conn: psycopg.Connection[Any]) -> bool:
    try:
        conn.execute("SELECT 1").fetchone()
        return True
    except psycopg.OperationalError:
        return False


LOCKING_PROBE = "SELECT n FROM accounts WHERE id = 1 FOR UPDATE"


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


# --- stuck sessions ----------------------------------------------------------------------------


async def test_clear_stuck_sessions_terminates_exactly_the_stuck_backends(
    sessions: Sessions, pg_url: str
) -> None:
    threshold = 2.0
    holder = sessions.open()  # idle in transaction, holding a row lock
    holder.execute("SELECT * FROM accounts WHERE id = 1 FOR UPDATE")
    holder_pid = holder.info.backend_pid
    blocker = sessions.open(autocommit=True)  # active, blocking a waiter with its lock
    blocker.execute("BEGIN")
    blocker.execute("UPDATE accounts SET n = n + 1 WHERE id = 2")
    blocker_pid = blocker.info.backend_pid
    blocker_task = asyncio.create_task(asyncio.to_thread(_run_quietly, blocker, "SELECT pg_sleep(60)"))
    waiter = sessions.open(autocommit=True)
    waiter_pid = waiter.info.backend_pid
    waiter_task = asyncio.create_task(
        asyncio.to_thread(_run_quietly, waiter, "UPDATE accounts SET n = n + 1 WHERE id = 2")
    )
    idle = sessions.open()  # same application, idle (no transaction): not stuck
    idle.execute("SELECT 1")
    idle.commit()
    other_app = sessions.open(app=f"{sessions.app}-other")  # stuck, but not ours to terminate
    other_app.execute("SELECT * FROM accounts WHERE id = 1")
    await asyncio.sleep(threshold + 0.7)
    young = sessions.open()  # idle in transaction for far less than the threshold
    young.execute("SELECT 1")

    target = db_target(
        "orders-db",
        with_password(pg_url),
        stuck_session_seconds=threshold,
        application_name=sessions.app,
    )
    detail = await database.clear_stuck_sessions(target)

    assert detail is not None
    assert sorted(detail["terminated_pids"]) == sorted([holder_pid, blocker_pid])
    assert detail["found"] == 2 and detail["not_terminated"] == []
    by_pid = {s["pid"]: s for s in detail["terminated"]}
    assert by_pid[holder_pid]["state"] == "idle in transaction"
    assert by_pid[holder_pid]["age_seconds"] >= threshold
    assert by_pid[blocker_pid]["state"] == "active" and by_pid[blocker_pid]["blocking"] == 1
    assert by_pid[blocker_pid]["age_seconds"] >= threshold
    assert all(s["application_name"] == sessions.app for s in detail["terminated"])

    await asyncio.wait_for(waiter_task, 10)  # the waiter got its lock once the blocker died
    await asyncio.wait_for(blocker_task, 10)
    assert not alive(holder)
    assert alive(idle) and alive(other_app) and alive(waiter)
    assert young.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS and alive(young)
    assert waiter_pid not in detail["terminated_pids"]
    assert database.find_stuck_sessions(target) == []


def _run_quietly(conn: psycopg.Connection[Any], sql: str) -> None:
    with contextlib.suppress(psycopg.OperationalError):  # terminated by the test, as intended
        conn.execute(sql)


async def test_clear_stuck_sessions_is_skipped_for_sqlite(tmp_path: Path) -> None:
    assert await database.clear_stuck_sessions(db_target("lite", f"sqlite:///{tmp_path / 'a.db'}")) is None


async def test_unreachable_database_is_a_temporary_error_without_password() -> None:
    port = free_port()
    target = db_target("gone", f"postgresql+psycopg://postgres:{CANARY}@127.0.0.1:{port}/test")
    for step in (database.clear_stuck_sessions, database.verify_integrity):
        with pytest.raises(TemporaryError) as info:
            await step(target)
        assert str(info.value).startswith("database gone: ")
        assert str(info.value).endswith(": connection refused")
        assert CANARY not in str(info.value) and info.value.__cause__ is None


# --- pool reset -----------------------------------------------------------------------------------


async def test_reset_connection_pool_disposes_engine_and_bumps_generation(
    pg_url: str, redis_url: str
) -> None:
    target = db_target("orders-db", with_password(pg_url))
    assert (await probe(target)).healthy
    engine = database.target_engine(target)
    assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    state = RedisState(redis_url)
    try:
        assert state.pool_generation("orders-db") == 0
        first = await database.reset_connection_pool(state, target)
        assert first == {"disposed_engine": True, "pool_generation": 1}
        assert engine.pool.checkedin() == 0  # type: ignore[attr-defined]
        second = await database.reset_connection_pool(state, target)
        assert second == {"disposed_engine": False, "pool_generation": 2}  # nothing cached any more
        assert database.target_engine(target) is not engine  # the next use builds a fresh engine
        assert state.pool_generation("orders-db") == 2
        assert RedisState(redis_url).pool_generation("orders-db") == 2  # what applications read
    finally:
        state.close()


def test_pool_generation_watcher_disposes_the_application_engine(pg_url: str) -> None:
    app_engine = create_engine(pg_url)
    state = MemoryState()
    now = [0.0]
    watcher = PoolGenerationWatcher(
        app_engine, "orders-db", state=state, interval_seconds=5.0, clock=lambda: now[0]
    )
    try:
        with app_engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert app_engine.pool.checkedin() == 1  # type: ignore[attr-defined]
        assert watcher.check() is False and watcher.generation == 0  # first look only records
        state.bump_pool_generation("orders-db")
        now[0] = 1.0
        assert watcher.check() is False  # rate limited: shared state not read again yet
        assert app_engine.pool.checkedin() == 1  # type: ignore[attr-defined]
        now[0] = 6.0
        assert watcher.check() is True
        assert watcher.generation == 1
        assert app_engine.pool.checkedin() == 0  # type: ignore[attr-defined]
        with app_engine.connect() as conn:  # the application reconnects transparently
            assert conn.execute(text("SELECT 1")).scalar() == 1
        now[0] = 12.0
        assert watcher.check() is False  # generation unchanged
    finally:
        app_engine.dispose()


def test_pool_generation_watcher_keeps_engine_when_state_is_down(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    watcher = PoolGenerationWatcher(
        engine, "orders-db", f"redis://127.0.0.1:{free_port()}/0", interval_seconds=0
    )
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert watcher.check() is False
    assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    engine.dispose()


# --- integrity -----------------------------------------------------------------------------------


async def test_integrity_checks_pass_and_leave_nothing_behind(sessions: Sessions, pg_url: str) -> None:
    target = db_target("orders-db", with_password(pg_url), application_name=sessions.app)
    detail = await database.verify_integrity(target)
    assert detail == {"checks": {"probe_query": "ok", "canary_round_trip": "ok", "stuck_sessions": 0}}
    check = sessions.open(autocommit=True)
    assert check.execute("SELECT to_regclass('recovery_canary')").fetchone() == (None,)  # rolled back


async def test_integrity_fails_while_stuck_sessions_remain(sessions: Sessions, pg_url: str) -> None:
    holder = sessions.open()
    holder.execute("SELECT * FROM accounts WHERE id = 2 FOR UPDATE")
    await asyncio.sleep(1.3)
    target = db_target(
        "orders-db", with_password(pg_url), stuck_session_seconds=1, application_name=sessions.app
    )
    pid = holder.info.backend_pid
    with pytest.raises(IntegrityCheckFailed, match=rf"1 stuck session\(s\) remain \(pids {pid}\)"):
        await database.verify_integrity(target)


async def test_integrity_fails_on_a_read_only_database(pg_url: str) -> None:
    """The canary write is refused (read-only transactions): a real integrity failure, not retried."""
    read_only = with_password(pg_url) + "%20-cdefault_transaction_read_only%3Don"
    target = db_target("orders-db", read_only)
    assert (await probe(target)).healthy  # reads still work: only the write check can see it
    expected = r"canary write/read\): query error: ReadOnlySqlTransaction \(25006\)"
    with pytest.raises(IntegrityCheckFailed, match=expected):
        await database.verify_integrity(target)


@pytest.mark.parametrize("mode", ["quick", "full"])
async def test_sqlite_integrity_check(tmp_path: Path, mode: str) -> None:
    good = tmp_path / "good.db"
    sqlite3.connect(good).execute("CREATE TABLE t (x int)").connection.close()
    ok = await database.verify_integrity(db_target("good", f"sqlite:///{good}", integrity_check=mode))
    pragma = "quick_check" if mode == "quick" else "integrity_check"
    assert ok == {"checks": {"probe_query": "ok", pragma: "ok"}}

    bad = tmp_path / "bad.db"
    corrupt_sqlite(bad)
    with pytest.raises(IntegrityCheckFailed) as info:
        await database.verify_integrity(db_target("bad", f"sqlite:///{bad}", integrity_check=mode))
    assert isinstance(info.value, PermanentError)  # never retried, never "fixed"
    assert str(info.value).startswith(f"database bad: PRAGMA {pragma} failed: ")
    assert "\n" not in str(info.value)
