"""Shared fixtures. Services are real: Redis and PostgreSQL on loopback, uvicorn for HTTP.

When a service is unreachable the test is skipped locally but *fails* under CI (``CI=true``):
a CI job that silently skipped every Redis test would report green while testing nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy
from database_helpers import Sessions
from faultserver import FaultServer
from service_guard import service_unavailable
from sqlalchemy.exc import SQLAlchemyError

from recovery.audit import db as audit_store
from recovery.kinds import database
from recovery.services import reset_services

REDIS_HOST = "127.0.0.1"
REDIS_PORT = 6379
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(autouse=True)
def _fresh_services() -> Iterator[None]:
    """Each test builds its own clients (the product's one reset hook), never a previous test's."""
    yield
    reset_services()


# --- Redis -------------------------------------------------------------------------------------


def redis_db_number() -> int:
    """DB per xdist worker (gwN -> N + 1); DB 1 outside xdist. DB 0 is never used by tests."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        return int(worker[2:]) + 1
    return 1


@pytest.fixture
def redis_url() -> Iterator[str]:
    """URL of an empty Redis DB reserved for this xdist worker; flushed before and after."""
    db = redis_db_number()
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_connect_timeout=2, socket_timeout=5)
    try:
        client.flushdb()
    except redis.ResponseError as exc:  # e.g. "DB index is out of range" with many workers
        client.close()
        pytest.fail(f"Redis DB {db} is not usable: {exc}", pytrace=False)
    except redis.RedisError as exc:
        client.close()
        service_unavailable(f"Redis not reachable at {REDIS_HOST}:{REDIS_PORT}: {exc}")
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    finally:
        try:
            client.flushdb()
        finally:
            client.close()


# --- PostgreSQL --------------------------------------------------------------------------------


def _dispose_cached_engines(url: str) -> None:
    """Drop engines ``AuditStore`` cached for ``url`` so no pooled connection blocks DROP SCHEMA."""
    with audit_store._engines_lock:
        engine = audit_store._engines.pop(url, None)
    if engine is not None:
        engine.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A SQLAlchemy URL whose search_path is a fresh schema, dropped (CASCADE) afterwards."""
    schema = f"t_{uuid.uuid4().hex}"
    admin = sqlalchemy.create_engine(
        PG_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    except SQLAlchemyError as exc:
        admin.dispose()
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        service_unavailable(f"PostgreSQL not reachable at {PG_URL}: {exc.__class__.__name__}: {first_line}")
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        _dispose_cached_engines(url)
        try:
            with admin.connect() as conn:
                conn.execute(sqlalchemy.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        finally:
            admin.dispose()


@pytest.fixture
def sessions(pg_url: str) -> Iterator[Sessions]:
    """Raw psycopg sessions in ``pg_url``'s schema, with an ``accounts`` table of two rows."""
    s = Sessions(pg_url)
    setup = s.open(autocommit=True)
    setup.execute("CREATE TABLE accounts (id int PRIMARY KEY, n int NOT NULL)")
    setup.execute("INSERT INTO accounts VALUES (1, 0), (2, 0)")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def dispose_engines() -> Iterator[None]:
    """The recovery caches one engine per target: close their connections to the shared server.

    The database target tests use it for every test (``pytestmark = usefixtures(...)``).
    """
    yield
    database.dispose_all_engines()


# --- SQLite / HTTP -----------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    """A SQLite file URL under ``tmp_path`` (absolute path: four slashes)."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    yield url
    _dispose_cached_engines(url)


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    """A started FaultServer (uvicorn in a thread on loopback), stopped at teardown."""
    server = FaultServer().start()
    try:
        yield server
    finally:
        server.stop()
