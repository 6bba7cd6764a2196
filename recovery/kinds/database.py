"""Database targets (PostgreSQL, SQLite): health probe, stuck sessions, pool reset, integrity checks.

Driver calls run on ``recovery.kinds.sql``'s thread pool (``run_blocking``) against the target's
cached engine; ``reset_connection_pool`` disposes that engine and bumps the target's
``pool_generation`` in shared state, which applications watch with
``recovery.client.poolwatch.PoolGenerationWatcher``. Failures reach probe results, exceptions
and the audit only as short, password-free reasons (``recovery.kinds.sql.classify_db_error``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from sqlalchemy import Connection, text

from recovery.backends.state import SharedState
from recovery.config.loader import DatabaseTarget, TargetConfig
from recovery.errors import IntegrityCheckFailed, PermanentError, TemporaryError
from recovery.kinds.base import Detail, Kind, ProbeContext, ProbeResult, StepContext, StepSpec
from recovery.kinds.common import CHECK_HEALTH, VERIFY, manual_workflow, recovery_workflow
from recovery.kinds.sql import (
    classify_db_error,
    db_error,
    dispose_engine,
    run_blocking,
    run_probe_query,
    set_statement_timeout,
    target_engine,
)
from recovery.kinds.sql import dispose_all_engines as dispose_all_engines  # re-exported for callers
from recovery.redact import redact

MAX_LISTED_SESSIONS = 100  # audit detail lists at most this many sessions (the count is exact)


def as_database(target: TargetConfig) -> DatabaseTarget:
    if not isinstance(target, DatabaseTarget):
        raise PermanentError(f"{target.name} is a {target.kind} target, not a database")
    return target


# --- health probe ----------------------------------------------------------------------------


def _probe_sync(target: DatabaseTarget) -> None:
    with target_engine(target).connect() as conn:
        run_probe_query(conn, target)


async def probe_database(target: DatabaseTarget, ctx: ProbeContext) -> ProbeResult:
    """Connect and run ``probe_query`` under the statement timeout; classify any failure."""
    started = time.perf_counter()
    # Hard stop: a server that stops answering mid-query cannot hold the probe batch.
    limit = target.connect_timeout_seconds + target.statement_timeout_seconds + 2.0
    reason = "ok"
    try:
        async with asyncio.timeout(limit):
            await run_blocking(_probe_sync, target)
    except TimeoutError:
        reason = "timeout"
    except Exception as exc:
        reason = classify_db_error(exc)
    latency = (time.perf_counter() - started) * 1000
    return ProbeResult(target.name, "database", reason == "ok", reason, latency)


# --- stuck sessions (PostgreSQL) -------------------------------------------------------------

_STUCK_SQL = """
WITH waits AS (
    SELECT unnest(pg_blocking_pids(w.pid)) AS blocker
    FROM pg_stat_activity w
    WHERE w.wait_event_type = 'Lock'
), sessions AS (
    SELECT a.pid, a.application_name, a.state,
           EXTRACT(EPOCH FROM now() - CASE WHEN a.state LIKE 'idle in transaction%'
                   THEN a.state_change ELSE COALESCE(a.xact_start, a.state_change) END) AS age,
           (SELECT count(*) FROM waits WHERE waits.blocker = a.pid) AS blocking
    FROM pg_stat_activity a
    WHERE a.datname = current_database()
      AND a.pid <> pg_backend_pid()
      AND a.backend_type = 'client backend'
      AND (CAST(:app AS text) IS NULL OR a.application_name = CAST(:app AS text))
), stuck AS (
    SELECT * FROM sessions
    WHERE age > :seconds AND (state LIKE 'idle in transaction%' OR blocking > 0)
)
SELECT pid, application_name, state, age, blocking{terminate} FROM stuck ORDER BY age DESC
"""


def _stuck_sql(conn: Connection, terminate: bool) -> str:
    if not terminate:
        call = ""
    elif (conn.dialect.server_version_info or (0,)) >= (14,):
        call = ", pg_terminate_backend(pid, 5000) AS terminated"  # waits until the backend exits
    else:
        call = ", pg_terminate_backend(pid) AS terminated"
    return _STUCK_SQL.format(terminate=call)


def _stuck_sessions(conn: Connection, target: DatabaseTarget, terminate: bool) -> list[dict[str, Any]]:
    """Find (and optionally terminate) stuck sessions in one statement, so the set cannot drift."""
    trans = conn.begin()
    try:
        set_statement_timeout(conn, target)
        rows = conn.execute(
            text(_stuck_sql(conn, terminate)),
            {"app": target.application_name, "seconds": target.stuck_session_seconds},
        ).mappings()
        sessions = [
            {
                "pid": int(row["pid"]),
                "age_seconds": round(float(row["age"]), 1),
                "state": str(row["state"]),
                "application_name": str(row["application_name"] or ""),
                "blocking": int(row["blocking"]),
                **({"terminated": bool(row["terminated"])} if terminate else {}),
            }
            for row in rows
        ]
        trans.commit()
    except BaseException:
        trans.rollback()
        raise
    return sessions


def _clear_stuck_sync(target: DatabaseTarget) -> Detail:
    engine = target_engine(target)
    if engine.dialect.name != "postgresql":
        return None  # stuck-session clearing is PostgreSQL-only; the step is recorded as skipped
    # Confined: only sessions of the target's own application_name are ever terminated; without
    # one, nobody's session is provably ours, so stuck sessions are listed and left alone.
    terminate = target.application_name is not None
    try:
        with engine.connect() as conn:
            sessions = _stuck_sessions(conn, target, terminate=terminate)
    except Exception as exc:
        raise db_error(target, exc, "clearing stuck sessions") from None
    if not terminate:
        sessions = [{**s, "terminated": False} for s in sessions]
    terminated = [s for s in sessions if s["terminated"]]
    return {
        "threshold_seconds": target.stuck_session_seconds,
        "application_name": target.application_name,
        **({} if terminate else {"not_terminated_because": "application_name is not set"}),
        "found": len(sessions),
        "terminated_pids": [s["pid"] for s in terminated][:MAX_LISTED_SESSIONS],
        "terminated": terminated[:MAX_LISTED_SESSIONS],
        "not_terminated": [s for s in sessions if not s["terminated"]][:MAX_LISTED_SESSIONS],
    }


async def clear_stuck_sessions(target: TargetConfig) -> Detail:
    """Terminate idle-in-transaction and lock-blocking backends older than the threshold, of the
    target's ``application_name`` only (in its own database, never our own backend)."""
    return await run_blocking(_clear_stuck_sync, as_database(target))


def find_stuck_sessions(target: DatabaseTarget) -> list[dict[str, Any]]:
    """The stuck sessions ``clear_stuck_sessions`` would terminate now (read-only)."""
    with target_engine(target).connect() as conn:
        return _stuck_sessions(conn, target, terminate=False)


# --- pool reset ------------------------------------------------------------------------------


async def reset_connection_pool(state: SharedState, target: TargetConfig) -> Detail:
    """Dispose the recovery's own engine and bump ``pool_generation`` so applications reconnect."""
    db = as_database(target)
    disposed = await run_blocking(dispose_engine, db)
    generation = await run_blocking(state.bump_pool_generation, db.name)
    return {"disposed_engine": disposed, "pool_generation": generation}


# --- integrity checks ------------------------------------------------------------------------


def _canary_round_trip(conn: Connection, target: DatabaseTarget) -> None:
    """Write a random token to the canary table and read it back; the transaction is rolled back."""
    table = target.canary_table  # validated identifier
    token = uuid.uuid4().hex
    trans = conn.begin()
    try:
        set_statement_timeout(conn, target)
        conn.execute(
            text(
                f'CREATE TABLE IF NOT EXISTS "{table}" '
                "(token text PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT now())"
            )
        )
        conn.execute(text(f'INSERT INTO "{table}" (token) VALUES (:token)'), {"token": token})
        read = conn.execute(text(f'SELECT token FROM "{table}" WHERE token = :token'), {"token": token})
        if read.scalar() != token:
            raise IntegrityCheckFailed(f"database {target.name}: canary write/read round trip mismatch")
    finally:
        trans.rollback()


def _sqlite_check(conn: Connection, target: DatabaseTarget) -> str:
    pragma = "quick_check" if target.integrity_check == "quick" else "integrity_check"
    rows = [str(r[0]) for r in conn.exec_driver_sql(f"PRAGMA {pragma}")]
    if rows != ["ok"]:
        problems = "; ".join(rows[:5]).replace("\n", "; ")
        raise IntegrityCheckFailed(
            f"database {target.name}: PRAGMA {pragma} failed: {redact(problems)[:500]}"
        )
    return pragma


def _integrity_sync(target: DatabaseTarget) -> Detail:
    checks: dict[str, Any] = {}
    step = "probe query"
    try:
        with target_engine(target).connect() as conn:
            run_probe_query(conn, target)
            checks["probe_query"] = "ok"
            if conn.dialect.name == "postgresql":
                step = "canary write/read"
                _canary_round_trip(conn, target)
                checks["canary_round_trip"] = "ok"
                step = "stuck sessions"
                remaining = _stuck_sessions(conn, target, terminate=False)
                if remaining:
                    pids = ", ".join(str(s["pid"]) for s in remaining[:20])
                    raise IntegrityCheckFailed(
                        f"database {target.name}: {len(remaining)} stuck session(s) remain (pids {pids})"
                    )
                checks["stuck_sessions"] = 0
            elif conn.dialect.name == "sqlite":
                step = "sqlite integrity check"
                checks[_sqlite_check(conn, target)] = "ok"
    except IntegrityCheckFailed:
        raise
    except Exception as exc:
        error = db_error(target, exc, f"integrity check ({step})")
        if isinstance(error, TemporaryError):
            raise error from None  # unreachable / timed out: retry with backoff
        raise IntegrityCheckFailed(str(error)) from None  # the database answered "broken"
    return {"checks": checks}


async def verify_integrity(target: TargetConfig) -> Detail:
    """Probe query, canary round trip and no stuck sessions (PostgreSQL); PRAGMA check (SQLite)."""
    return await run_blocking(_integrity_sync, as_database(target))


# --- workflows -------------------------------------------------------------------------------
# Steps bind the functions above to a StepContext; the functions keep plain arguments so they
# can be called (and tested) without a running recovery.


async def _clear_stuck_step(ctx: StepContext) -> Detail:
    return await clear_stuck_sessions(ctx.target)


async def _reset_pool_step(ctx: StepContext) -> Detail:
    return await reset_connection_pool(ctx.state, ctx.target)


async def _integrity_step(ctx: StepContext) -> Detail:
    return await verify_integrity(ctx.target)


RESET_POOL = StepSpec(
    "reset_connection_pool", "Dispose the recovery's engine; bump pool_generation for apps.", _reset_pool_step
)

DATABASE_RECOVERY = recovery_workflow(
    "database-recovery",
    "database",
    "Recover a SQL database: clear stuck sessions, reset pools, check integrity, resume.",
    StepSpec(
        "clear_stuck_sessions",
        "PostgreSQL: terminate idle-in-transaction / lock-blocking sessions over the threshold.",
        _clear_stuck_step,
    ),
    RESET_POOL,
    StepSpec(
        "verify_integrity",
        "Probe query, rolled-back canary write/read, no stuck sessions (SQLite: PRAGMA check).",
        _integrity_step,
    ),
)

RECONNECT_DATABASE = manual_workflow(
    "reconnect-database",
    "database",
    "Manual: drop pooled connections everywhere (pool_generation) and verify.",
    CHECK_HEALTH,
    RESET_POOL,
    VERIFY,
)

KIND = Kind("database", probe_database, (DATABASE_RECOVERY, RECONNECT_DATABASE))
