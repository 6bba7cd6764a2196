"""Audit retention: `recovery audit prune --older-than AGE` deletes finished runs (and their
steps) older than AGE, never a run in progress, in batches; bad ages are exit 2 with nothing
deleted. Real SQLite and PostgreSQL stores, the real CLI in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy
from audit_faults import proxied_postgres
from test_audit import STEPS, db_url, raw, rows  # noqa: F401  (fixtures)

from recovery.audit.store import AuditStore

CLI = [sys.executable, "-m", "recovery_cli.main"]
REPO = Path(__file__).resolve().parents[1]


def _run(store: AuditStore, conn: sqlalchemy.Connection, target: str, age_days: float, finish: bool) -> str:
    run_id = store.start_run(target=target, workflow="wf", run_type="manual", steps=STEPS)
    store.step_attempt(run_id, "check_service_health", 1)
    if finish:
        store.finish_run(run_id, "succeeded")
    started = datetime.now(UTC) - timedelta(days=age_days)
    conn.execute(
        sqlalchemy.text("UPDATE recovery_runs SET started_at = :t WHERE id = :id"),
        {"t": started, "id": run_id},
    )
    return run_id


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--config", str(config), "audit", "prune", *args],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip


def test_prune_deletes_old_finished_runs_and_their_steps_only(
    db_url: str,  # noqa: F811
    raw: sqlalchemy.Connection,  # noqa: F811
    tmp_path: Path,
) -> None:
    store = AuditStore(db_url)
    old = [_run(store, raw, "api", 100 + i, finish=True) for i in range(3)]
    stuck = _run(store, raw, "api", 120, finish=False)  # in progress: reconcile's, not prune's
    recent = _run(store, raw, "api", 10, finish=True)
    config = tmp_path / "r.yaml"
    config.write_text(
        f"audit_url: {db_url}\ntargets:\n  - {{name: api, kind: http, url: 'http://127.0.0.1:9/'}}\n"
    )

    counted = _cli(config, "--older-than", "90d", "--dry-run", "--json")
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout)["runs"] == 3 and json.loads(counted.stdout)["dry_run"] is True
    assert {r.id for r in store.history(limit=10)} == {*old, stuck, recent}  # a dry run deletes nothing

    pruned = _cli(config, "--older-than", "90d")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.startswith("deleted 3 finished runs started before "), pruned.stdout
    assert {r.id for r in store.history(limit=10)} == {stuck, recent}
    steps = rows(raw, "SELECT run_id FROM recovery_steps")
    assert {s["run_id"] for s in steps} == {stuck, recent}, "the pruned runs' steps went with them"


def test_prune_works_in_batches(db_url: str, raw: sqlalchemy.Connection) -> None:  # noqa: F811
    store = AuditStore(db_url)
    for i in range(5):
        _run(store, raw, "api", 40 + i, finish=True)
    keep = _run(store, raw, "api", 1, finish=True)
    before = datetime.now(UTC) - timedelta(days=30)
    assert store.prune(before, dry_run=True) == 5
    assert store.prune(before, batch=2) == 5  # three transactions: 2 + 2 + 1
    assert [r.id for r in store.history(limit=10)] == [keep]
    assert store.prune(before) == 0


@pytest.mark.parametrize(
    ("age", "problem"),
    [
        ("1h", "--older-than: at least 1d, got '1h'"),
        ("abc", "--older-than: expected a duration like 30m, 24h or 7d, got 'abc'"),
        ("0d", "--older-than: expected a duration like 30m, 24h or 7d, got '0d'"),
        ("99999999d", "--older-than: at most 3650d (ten years), got '99999999d'"),
    ],
)
def test_bad_ages_are_exit_2_with_nothing_deleted(
    sqlite_url: str, tmp_path: Path, age: str, problem: str
) -> None:
    store = AuditStore(sqlite_url)
    engine = sqlalchemy.create_engine(sqlite_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        run_id = _run(store, conn, "api", 400, finish=True)
    engine.dispose()
    config = tmp_path / "r.yaml"
    config.write_text(
        f"audit_url: {sqlite_url}\ntargets:\n  - {{name: api, kind: http, url: 'http://127.0.0.1:9/'}}\n"
    )
    result = _cli(config, "--older-than", age)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [f"recovery: error: {problem}"], result.stderr
    assert [r.id for r in store.history()] == [run_id]


@pytest.mark.postgres
@pytest.mark.parametrize("fault", ["refused", "frozen"])
def test_prune_with_the_audit_store_down_fails_in_bounded_time_with_one_line(
    pg_url: str, tmp_path: Path, fault: str
) -> None:
    """Nothing to delete while the store is away: exit 1 within the audit timeout, one line
    naming the store (no password), no traceback; the old run is still there afterwards."""
    engine = sqlalchemy.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        run_id = _run(AuditStore(pg_url), conn, "api", 400, finish=True)
    engine.dispose()
    with proxied_postgres(pg_url) as (url, proxy):
        config = tmp_path / "r.yaml"
        config.write_text(
            f"audit_url: {url}\naudit_timeout_seconds: 2\naudit_spool: {tmp_path / 'spool'}\n"
            "targets:\n  - {name: api, kind: http, url: 'http://127.0.0.1:9/'}\n"
        )
        if fault == "frozen":
            proxy.freeze()
        else:
            proxy.stop()
        started = time.monotonic()
        result = _cli(config, "--older-than", "90d")
        took = time.monotonic() - started
    assert result.returncode == 1, result.stdout + result.stderr
    assert took < 20, took  # connect/statement timeouts of 2 s, not a hang
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("recovery: error: audit store postgresql") and "Traceback" not in result.stderr
    assert [r.id for r in AuditStore(pg_url).history()] == [run_id]
