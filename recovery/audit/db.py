"""The audit database's engines (one per URL, per process), their time bounds, and Alembic.

Every audit round trip is bounded by ``audit_timeout_seconds``: PostgreSQL gets a connect
timeout and a server-side ``statement_timeout``, SQLite a busy timeout of the same length, and
network engines are tracked by ``recovery.audit.deadline`` (the client-side bound on a server
that accepts and then never answers).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, make_url, text

from recovery.audit.deadline import track

HEAD_REVISION = "0004"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
DEFAULT_TIMEOUT_SECONDS = 5.0


_engines: dict[str, Engine] = {}
_engine_timeouts: dict[str, float] = {}
_engines_lock = threading.Lock()


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
                track(engine)  # the client-side bound of recovery.audit.deadline
            _engines[url] = engine
            _engine_timeouts[url] = timeout
        return engine


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
