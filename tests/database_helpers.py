"""Shared by the database target tests: canary password, target builder, probe, raw sessions."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from recovery.config.loader import DatabaseTarget, parse_config
from recovery.engine.probing import probe_targets
from recovery.kinds.base import ProbeResult

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


def alive(conn: psycopg.Connection[Any]) -> bool:
    try:
        conn.execute("SELECT 1").fetchone()
        return True
    except psycopg.OperationalError:
        return False


LOCKING_PROBE = "SELECT n FROM accounts WHERE id = 1 FOR UPDATE"
