"""SQL plumbing of database targets: engines, the driver thread pool, error reasons, timeouts.

Every driver call blocks, so it runs on this module's own thread pool (``run_blocking``): the
event loop stays free and probes of many database targets run concurrently (the default
``asyncio.to_thread`` pool has only ``cpu_count + 4`` threads). Each target has one cached engine
in this process until ``dispose_engine``.

Errors are reduced to short, stable reasons (``connection refused``, ``auth failed``,
``timeout``, ``query error: UndefinedTable (42P01)``...) so a driver message can never carry the
URL's password anywhere. The cache kind's SQL rebuild source uses the same classification.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url

from recovery.config.loader import DatabaseTarget
from recovery.errors import PermanentError, TemporaryError
from recovery.redact import redact

T = TypeVar("T")

RECOVERY_APPLICATION_NAME = "selfheal-recovery"
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


def _take_engines(keys: Iterable[tuple[str, str]] | None = None) -> list[Engine]:
    """Remove the engines at ``keys`` (None: every one) from the cache, atomically."""
    with _engines_lock:
        wanted = list(_engines) if keys is None else [key for key in keys if key in _engines]
        return [_engines.pop(key) for key in wanted]


def _dispose(engines: list[Engine]) -> int:
    # Outside the lock: closing connections can block, and target_engine must not wait for it.
    for engine in engines:
        engine.dispose()
    return len(engines)


def dispose_engine(target: DatabaseTarget) -> bool:
    """Close the pooled connections of ``target``'s engine and forget it; True if there was one."""
    return _dispose(_take_engines([(target.name, target.url.get_secret_value())])) > 0


def dispose_all_engines() -> int:
    """Dispose every cached engine (process shutdown, tests); returns how many there were."""
    return _dispose(_take_engines())


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


def db_error(target: DatabaseTarget, exc: BaseException, doing: str) -> TemporaryError | PermanentError:
    reason = classify_db_error(exc)
    message = f"database {target.name}: {doing}: {reason}"
    return TemporaryError(message) if reason.startswith(TEMPORARY_REASONS) else PermanentError(message)


def set_statement_timeout(conn: Connection, target: DatabaseTarget) -> None:
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


def clear_statement_timeout(conn: Connection) -> None:
    if conn.dialect.name == "sqlite" and conn.connection.driver_connection is not None:
        conn.connection.driver_connection.set_progress_handler(None, 0)


def run_probe_query(conn: Connection, target: DatabaseTarget) -> None:
    """The probe query under the statement timeout, in a transaction that is always rolled back."""
    trans = conn.begin()
    try:
        set_statement_timeout(conn, target)
        conn.execute(text(target.probe_query)).fetchmany(1)
    finally:
        clear_statement_timeout(conn)
        trans.rollback()
