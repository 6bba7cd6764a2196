"""Database recovery steps against the real local PostgreSQL and SQLite files: stuck sessions,
pool reset, integrity checks. Faults are real: row locks held by idle-in-transaction sessions,
a closed port, a read-only database, a corrupted SQLite file.

Every test that opens sessions gives them a unique ``application_name`` and configures the
target to terminate only that name, so a test can never kill another engineer's sessions on
the shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from database_helpers import CANARY, Sessions, alive, db_target, probe, with_password
from dbcache_services import corrupt_sqlite
from faultserver import free_port
from sqlalchemy import create_engine, text

from recovery.backends.state_memory import MemoryState
from recovery.backends.state_redis import RedisState
from recovery.client.poolwatch import PoolGenerationWatcher
from recovery.errors import IntegrityCheckFailed, PermanentError, TemporaryError
from recovery.kinds import database

pytestmark = pytest.mark.usefixtures("dispose_engines")


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
