"""Helpers of the durable-audit tests: PostgreSQL behind a TcpProxy (stop = refused, freeze =
silent), the spool's lines, the audit tables as plain data, and the child processes of the
concurrency tests (module level, so ``multiprocessing`` can start them)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy
from dbcache_services import TcpProxy

from recovery.audit import db as audit_db
from recovery.audit.durable import DurableAudit
from recovery.audit.records import PlannedStep

PG_HOST_PORT = "@127.0.0.1:5432/"
STEPS_SQL = "SELECT * FROM recovery_steps ORDER BY run_id, position"


@contextmanager
def proxied_postgres(pg_url: str) -> Iterator[tuple[str, TcpProxy]]:
    """``pg_url`` (a private schema) reached through a TcpProxy the test can stop or freeze."""
    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    url = pg_url.replace(PG_HOST_PORT, f"@127.0.0.1:{proxy.port}/")
    assert url != pg_url
    try:
        yield url, proxy
    finally:
        proxy.thaw()
        proxy.stop()  # drops every proxied connection: nothing holds the schema when it is dropped
        with audit_db._engines_lock:
            engine = audit_db._engines.pop(url, None)
        if engine is not None:
            engine.dispose()


def spool_records(directory: Path) -> list[dict[str, Any]]:
    """Every complete record of every spool file in ``directory``, in file order."""
    out: list[dict[str, Any]] = []
    for path in sorted(directory.glob("audit-*.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines()]
    return out


def dump(url: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The audit tables as sorted plain rows (an independent engine: committed data only)."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            runs = [dict(r._mapping) for r in conn.execute(sqlalchemy.text("SELECT * FROM recovery_runs"))]
            steps = [dict(r._mapping) for r in conn.execute(sqlalchemy.text(STEPS_SQL))]
    finally:
        engine.dispose()
    for step in steps:
        step.pop("id")  # a surrogate key: equal rows, whatever order they were inserted in
    return sorted(runs, key=lambda r: str(r["id"])), steps


def spool_runs(url: str, spool: str, prefix: str, runs: int, timeout: float = 2.0) -> None:
    """A child process: ``runs`` complete runs written through a DurableAudit (store down: spooled)."""
    audit = DurableAudit(url, spool, timeout_seconds=timeout)
    for i in range(runs):
        run_id = f"{prefix}-{i:04d}"
        audit.start_run(
            run_id=run_id, target=prefix, workflow="wf", run_type="manual", steps=[PlannedStep("a")]
        )
        audit.step_attempt(run_id, "a", 1)
        audit.step_finished(run_id, "a", "succeeded", detail={"i": i})
        audit.finish_run(run_id, "succeeded")
