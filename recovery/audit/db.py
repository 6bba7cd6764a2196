"""The audit database's engines (one per URL, per process), their time bounds, and Alembic.

Every audit round trip is bounded by ``audit_timeout_seconds``: PostgreSQL gets a connect
timeout and a server-side ``statement_timeout``, SQLite a busy timeout of the same length. A
server that accepts and then never answers (a frozen host, a stalled network) is invisible to
both, so ``deadline`` also arms a client-side watchdog that severs the engine's sockets when
the bound passes: the blocked call fails at once instead of hanging the recovery.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, make_url, text

HEAD_REVISION = "0002"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
DEFAULT_TIMEOUT_SECONDS = 5.0


_engines: dict[str, Engine] = {}
_engine_timeouts: dict[str, float] = {}
_engines_lock = threading.Lock()
# The DBAPI connections each engine opened (weak: a closed connection drops out by itself).
_connections: weakref.WeakKeyDictionary[Engine, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()


def _sqlite_pragmas(busy_ms: int) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        # WAL lets readers (history, stats) run while a monitor writes; busy_timeout makes two
        # concurrent writers wait for each other (up to the audit bound) instead of failing at once.
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return on_connect


def _postgres_args(url: str, timeout: float) -> dict[str, Any]:
    """libpq connect timeout and statement timeout, unless the URL sets its own."""
    query = make_url(url).query
    args: dict[str, Any] = {}
    if "connect_timeout" not in query:
        args["connect_timeout"] = max(2, math.ceil(timeout))  # libpq: whole seconds, at least 2
    options = query.get("options")
    options = " ".join(options) if isinstance(options, tuple) else options or ""
    if "statement_timeout" not in options:
        # connect_args replace the URL's query values: keep the URL's own options (search_path...).
        args["options"] = f"{options} -c statement_timeout={int(timeout * 1000)}".strip()
    return args


def get_engine(url: str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> Engine:
    """The process's engine for ``url`` (rebuilt if asked for with another time bound)."""
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None or _engine_timeouts.get(url) != timeout:
            if engine is not None:
                engine.dispose()  # its holders keep a working engine; its idle connections go
            backend = make_url(url).get_backend_name()
            connect_args = _postgres_args(url, timeout) if backend == "postgresql" else {}
            engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
            if engine.dialect.name == "sqlite":
                busy_ms = min(30_000, max(1, int(timeout * 1000)))
                event.listen(engine, "connect", _sqlite_pragmas(busy_ms))
            else:
                opened: weakref.WeakSet[Any] = weakref.WeakSet()
                _connections[engine] = opened
                event.listen(engine, "connect", lambda dbapi_conn, _rec: opened.add(dbapi_conn))
                event.listen(engine, "do_connect", _within_deadline)
            _engines[url] = engine
            _engine_timeouts[url] = timeout
        return engine


@dataclass
class Deadline:
    seconds: float
    ends_at: float = 0.0
    expired: bool = False


_current = threading.local()  # the calling thread's Deadline, while inside ``deadline()``


def _within_deadline(dialect: Any, _rec: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
    """A (re)connect inside a deadline gets only the time left, and none once it expired: pre-ping
    reconnects after the watchdog severed a stalled connection, which must not wait a second bound."""
    bound: Deadline | None = getattr(_current, "deadline", None)
    if bound is None:
        return
    left = bound.ends_at - time.monotonic()
    if bound.expired or left <= 0:
        raise dialect.loaded_dbapi.OperationalError(f"no answer within {bound.seconds:g}s")
    cparams["connect_timeout"] = min(int(cparams.get("connect_timeout", 2)), max(2, math.ceil(left)))


def _sever(engine: Engine, deadline: Deadline) -> None:
    """The bound passed: shut every socket of ``engine`` down so blocked calls fail now.

    All of them, not only the caller's: a server that did not answer one query within the bound
    is not trusted with the others, and the pool reconnects (pre-ping) when it answers again.
    """
    deadline.expired = True
    for conn in list(_connections.get(engine, ())):
        with contextlib.suppress(Exception):  # closed meanwhile, or no socket: nothing to sever
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            with sock:
                sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def deadline(engine: Engine, seconds: float) -> Iterator[Deadline]:
    """Bound everything done on ``engine`` inside the block by ``seconds`` (client side)."""
    bound = Deadline(seconds, time.monotonic() + seconds)
    if engine not in _connections:  # SQLite: the busy timeout bounds it, there is no socket
        yield bound
        return
    timer = threading.Timer(seconds, _sever, (engine, bound))
    timer.daemon = True
    outer, _current.deadline = getattr(_current, "deadline", None), bound
    timer.start()
    try:
        yield bound
    finally:
        timer.cancel()
        _current.deadline = outer


def _at_head(engine: Engine) -> bool:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        return bool(conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD_REVISION)


# Alembic keeps its ``context``/``op`` proxies in module globals: two threads migrating at once
# corrupt each other, so one migration runs per process at a time.
_migrate_lock = threading.Lock()


@contextmanager
def _cross_process_lock(engine: Engine) -> Iterator[None]:
    """Serialise migrations across processes. SQLite DDL is not transactional enough to race."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        yield  # PostgreSQL serialises inside the transaction (advisory lock) instead
        return
    import fcntl

    with open(f"{database}.migrate-lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def migrate(engine: Engine) -> None:
    """Bring the schema to head with Alembic (skipped, without importing Alembic, at head)."""
    if _at_head(engine):
        return
    from alembic import command
    from alembic.config import Config

    with _migrate_lock, _cross_process_lock(engine):
        if _at_head(engine):  # another thread/process finished while we waited
            return
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # Two processes migrating at once serialise here instead of racing on DDL.
                conn.execute(text("SELECT pg_advisory_xact_lock(7265441)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
