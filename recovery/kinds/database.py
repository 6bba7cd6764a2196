"""Database targets (PostgreSQL, SQLite): health probe, stuck sessions, pool reset, integrity checks.

Every driver call blocks, so it runs on this module's own thread pool (``run_blocking``): the
event loop stays free and probes of many database targets run concurrently (the default
``asyncio.to_thread`` pool has only ``cpu_count + 4`` threads). Each target has one cached engine
in this process; ``reset_connection_pool`` disposes it and bumps the target's ``pool_generation``
in shared state, which applications watch with ``recovery.client.poolwatch.PoolGenerationWatcher``.

Errors are reduced to short, stable reasons (``connection refused``, ``auth failed``,
``timeout``, ``query error: UndefinedTable (42P01)``...) before they reach a probe result, an
exception or the audit, so a driver message can never carry the URL's password anywhere.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url

from recovery.backends.state import SharedState
from recovery.config.loader import DatabaseTarget, TargetConfig
from recovery.errors import IntegrityCheckFailed, PermanentError, TemporaryError
from recovery.kinds.probing import PROBERS, ProbeContext, ProbeResult
from recovery.redact import redact

Detail = dict[str, Any] | None
T = TypeVar("T")

RECOVERY_APPLICATION_NAME = "selfheal-recovery"
MAX_LISTED_SESSIONS = 100  # audit detail lists at most this many sessions (the count is exact)
# Reasons that retrying may fix; anything else (auth, query errors) is permanent.
TEMPORARY_REASONS = ("connection refused", "connection lost", "timeout", "server starting", "unknown host")

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_engines: dict[tuple[str, str], Engine] = {}
_engines_lock = threading.Lock()


async def run_blocking(fn: Callable[..., T], *args: Any) -> T:
    """Run ``fn(*args)`` on the database thread pool (64 threads, created on first use)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="recovery-db")
        executor = _executor
    return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args))


def as_database(target: TargetConfig) -> DatabaseTarget:
    if not isinstance(target, DatabaseTarget):
        raise PermanentError(f"{target.name} is a {target.kind} target, not a database")
    return target


# --- engines ---------------------------------------------------------------------------------


def _sqlite_busy_timeout(dbapi_conn: Any, _record: Any, seconds: float) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(seconds * 1000)}")
    cursor.close()


def target_engine(target: DatabaseTarget) -> Engine:
    """The recovery's own engine for ``target`` (cached per process until the pool is reset)."""
    raw = target.url.get_secret_value()
    key = (target.name, raw)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is not None:
            return engine
        url = make_url(raw)
        connect_args: dict[str, Any] = {}
        if url.get_backend_name() == "postgresql":
            connect_args["connect_timeout"] = max(2, math.ceil(target.connect_timeout_seconds))
            # A peer that vanishes mid-query (no RST) is noticed in ~10 s, not the OS's 2 hours.
            connect_args.update(keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=3)
            if "application_name" not in url.query:
                connect_args["application_name"] = RECOVERY_APPLICATION_NAME
        elif url.get_backend_name() == "sqlite":
            connect_args["check_same_thread"] = False  # the probe thread pool shares the pool
        engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
        if url.get_backend_name() == "sqlite":
            from sqlalchemy import event

            event.listen(
                engine,
                "connect",
                functools.partial(_sqlite_busy_timeout, seconds=target.statement_timeout_seconds),
            )
        _engines[key] = engine
        return engine


def dispose_engine(target: DatabaseTarget) -> bool:
    """Close the pooled connections of ``target``'s engine and forget it; True if there was one."""
    with _engines_lock:
        engine = _engines.pop((target.name, target.url.get_secret_value()), None)
    if engine is None:
        return False
    engine.dispose()
    return True


def dispose_all_engines() -> int:
    """Dispose every cached engine (process shutdown, tests); returns how many there were."""
    with _engines_lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        engine.dispose()
    return len(engines)


# --- error classification --------------------------------------------------------------------


def classify_db_error(exc: BaseException) -> str:
    """A short, stable, password-free reason for a driver/SQLAlchemy error."""
    orig = getattr(exc, "orig", None) or exc
    sqlstate = getattr(orig, "sqlstate", None)
    message = str(orig).lower()
    if isinstance(sqlstate, str) and sqlstate:
        if sqlstate.startswith("28"):
            return "auth failed"
        if sqlstate in ("57014", "55P03"):  # query_canceled (statement_timeout), lock_not_available
            return "timeout"
        if sqlstate in ("57P01", "57P02") or sqlstate.startswith("08"):
            return "connection lost"
        if sqlstate == "57P03":
            return "server starting"
        return f"query error: {type(orig).__name__} ({sqlstate})"
    if "connection refused" in message:
        return "connection refused"
    if "authentication failed" in message or ("role" in message and "does not exist" in message):
        return "auth failed"
    if "starting up" in message or "shutting down" in message:
        return "server starting"
    if "timeout" in message or "timed out" in message or "interrupted" in message or "is locked" in message:
        return "timeout"
    lost = ("server closed the connection", "eof detected", "terminating connection", "connection is closed")
    if any(s in message for s in lost) or "consuming input failed" in message:
        return "connection lost"
    if "could not translate host name" in message or "name or service not known" in message:
        return "unknown host"
    if "database" in message and "does not exist" in message:
        return "database does not exist"
    if message.startswith("connection failed"):
        return "connection error"
    if "unable to open database file" in message:
        return "connection error: unable to open database file"
    if type(orig).__module__.startswith(("sqlite3", "psycopg", "sqlalchemy")):
        first_line = str(orig).splitlines()[0] if str(orig) else type(orig).__name__
        return f"query error: {redact(first_line)[:120]}"
    return f"connection error: {type(orig).__name__}"


def _error(target: DatabaseTarget, exc: BaseException, doing: str) -> TemporaryError | PermanentError:
    reason = classify_db_error(exc)
    message = f"database {target.name}: {doing}: {reason}"
    return TemporaryError(message) if reason.startswith(TEMPORARY_REASONS) else PermanentError(message)


def _set_statement_timeout(conn: Connection, target: DatabaseTarget) -> None:
    """Bound every statement of the current transaction by ``statement_timeout_seconds``."""
    milliseconds = max(1, int(target.statement_timeout_seconds * 1000))
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT set_config('statement_timeout', :ms, true)"), {"ms": f"{milliseconds}ms"})
    elif conn.dialect.name == "sqlite":
        deadline = time.monotonic() + target.statement_timeout_seconds
        driver = conn.connection.driver_connection
        assert driver is not None
        # A non-zero return aborts the running statement with "interrupted" (-> timeout).
        driver.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)


def _clear_statement_timeout(conn: Connection) -> None:
    if conn.dialect.name == "sqlite" and conn.connection.driver_connection is not None:
        conn.connection.driver_connection.set_progress_handler(None, 0)


def _run_probe_query(conn: Connection, target: DatabaseTarget) -> None:
    """The probe query under the statement timeout, in a transaction that is always rolled back."""
    trans = conn.begin()
    try:
        _set_statement_timeout(conn, target)
        conn.execute(text(target.probe_query)).fetchmany(1)
    finally:
        _clear_statement_timeout(conn)
        trans.rollback()


# --- health probe ----------------------------------------------------------------------------


def _probe_sync(target: DatabaseTarget) -> None:
    with target_engine(target).connect() as conn:
        _run_probe_query(conn, target)


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


PROBERS["database"] = probe_database


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
        _set_statement_timeout(conn, target)
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
    try:
        with engine.connect() as conn:
            sessions = _stuck_sessions(conn, target, terminate=True)
    except Exception as exc:
        raise _error(target, exc, "clearing stuck sessions") from None
    terminated = [s for s in sessions if s["terminated"]]
    return {
        "threshold_seconds": target.stuck_session_seconds,
        "application_name": target.application_name,
        "found": len(sessions),
        "terminated_pids": [s["pid"] for s in terminated][:MAX_LISTED_SESSIONS],
        "terminated": terminated[:MAX_LISTED_SESSIONS],
        "not_terminated": [s for s in sessions if not s["terminated"]][:MAX_LISTED_SESSIONS],
    }


async def clear_stuck_sessions(target: TargetConfig) -> Detail:
    """Terminate idle-in-transaction and lock-blocking backends older than the threshold."""
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
        _set_statement_timeout(conn, target)
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
            _run_probe_query(conn, target)
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
        error = _error(target, exc, f"integrity check ({step})")
        if isinstance(error, TemporaryError):
            raise error from None  # unreachable / timed out: retry with backoff
        raise IntegrityCheckFailed(str(error)) from None  # the database answered "broken"
    return {"checks": checks}


async def verify_integrity(target: TargetConfig) -> Detail:
    """Probe query, canary round trip and no stuck sessions (PostgreSQL); PRAGMA check (SQLite)."""
    return await run_blocking(_integrity_sync, as_database(target))
