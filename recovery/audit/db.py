"""The audit database's engines (one per URL, per process) and its Alembic migrations."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text

HEAD_REVISION = "0003"
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers (history, stats) run while a monitor writes; busy_timeout makes two
    # concurrent writers wait for each other instead of failing with "database is locked".
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def get_engine(url: str) -> Engine:
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = create_engine(url, pool_pre_ping=True)
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _sqlite_pragmas)
            _engines[url] = engine
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
