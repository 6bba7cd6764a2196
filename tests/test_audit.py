"""Audit store on SQLite and PostgreSQL: migrations, write-ahead rows, history, redaction."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from alembic.config import Config
from alembic.script import ScriptDirectory

from recovery.audit.db import HEAD_REVISION, MIGRATIONS_DIR
from recovery.audit.records import AuditUnavailable, PlannedStep
from recovery.audit.store import AuditStore
from recovery.errors import ProbeFailed

CANARY = "S3cretCanary"
SECRET_URL = f"postgresql://u:{CANARY}@h/db"

STEPS = (
    PlannedStep("check_service_health"),
    PlannedStep("clear_error_cache", optional=True, max_attempts=3),
    PlannedStep("test_connectivity", max_attempts=3),
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def raw(db_url: str) -> Iterator[sqlalchemy.Connection]:
    """An independent connection (own engine, autocommit): sees only what was committed."""
    engine = sqlalchemy.create_engine(db_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def rows(conn: sqlalchemy.Connection, sql: str, **params: object) -> list[dict[str, object]]:
    return [dict(r._mapping) for r in conn.execute(sqlalchemy.text(sql), params)]


def test_head_revision_matches_alembic_scripts() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(cfg).get_heads() == [HEAD_REVISION]


def test_migrations_create_schema(db_url: str, raw: sqlalchemy.Connection) -> None:
    AuditStore(db_url)
    inspector = sqlalchemy.inspect(raw)
    assert {"alembic_version", "recovery_runs", "recovery_steps"} <= set(inspector.get_table_names())
    if raw.dialect.name == "postgresql":
        # The tables live in the per-test schema from pg_url, not in public.
        schema = raw.execute(sqlalchemy.text("SELECT current_schema()")).scalar()
        assert str(schema).startswith("t_")
        assert {"alembic_version", "recovery_runs", "recovery_steps"} <= set(
            inspector.get_table_names(schema=str(schema))
        )
    assert rows(raw, "SELECT version_num FROM alembic_version") == [{"version_num": HEAD_REVISION}]
    # A second store on a migrated database skips Alembic and works.
    AuditStore(db_url).history()
    assert rows(raw, "SELECT count(*) AS n FROM alembic_version") == [{"n": 1}]


def test_start_run_is_written_ahead(db_url: str, raw: sqlalchemy.Connection) -> None:
    store = AuditStore(db_url)
    run_id = store.start_run(
        target="payments-api",
        workflow="api-failure-recovery",
        run_type="automatic",
        steps=STEPS,
        requested_by="monitor",
        reason="3 consecutive failures",
        detected_reason="status 503",
        flow_run_id="7d7b8f3e-0000-4000-8000-000000000001",
    )
    # Committed and visible to another connection before any step has run.
    [run] = rows(raw, "SELECT * FROM recovery_runs WHERE id = :id", id=run_id)
    assert run["state"] == "in_progress"
    assert run["target"] == "payments-api"
    assert run["type"] == "automatic"
    assert run["finished_at"] is None
    steps = rows(
        raw,
        "SELECT name, state, attempts, max_attempts, optional FROM recovery_steps "
        "WHERE run_id = :id ORDER BY position",
        id=run_id,
    )
    assert steps == [
        {
            "name": "check_service_health",
            "state": "pending",
            "attempts": 0,
            "max_attempts": 1,
            "optional": False,
        },
        {"name": "clear_error_cache", "state": "pending", "attempts": 0, "max_attempts": 3, "optional": True},
        {
            "name": "test_connectivity",
            "state": "pending",
            "attempts": 0,
            "max_attempts": 3,
            "optional": False,
        },
    ]
    record = store.run(run_id)
    assert record is not None
    assert record.state == "in_progress"
    assert record.started_at.tzinfo is not None
    assert [s.state for s in record.steps] == ["pending"] * 3


def test_step_lifecycle_and_finish(db_url: str) -> None:
    store = AuditStore(db_url)
    run_id = store.start_run(target="api", workflow="wf", run_type="manual", steps=STEPS)

    store.step_attempt(run_id, "check_service_health", 1)
    running = store.run(run_id)
    assert running is not None
    assert running.steps[0].state == "running"
    assert running.steps[0].attempts == 1
    assert running.steps[0].started_at is not None
    store.step_finished(run_id, "check_service_health", "succeeded", detail={"healthy": False, "reason": "x"})

    store.step_attempt(run_id, "test_connectivity", 1)
    store.step_attempt(run_id, "test_connectivity", 2)
    store.step_attempt(run_id, "test_connectivity", 2)  # a re-delivered attempt does not double count
    store.step_finished(run_id, "test_connectivity", "failed", ProbeFailed("verification probe 1/3 failed"))
    store.finish_run(run_id, "failed", ProbeFailed("step test_connectivity failed"))

    record = store.run(run_id)
    assert record is not None
    assert record.state == "failed"
    assert record.error_type == "ProbeFailed"
    assert record.error_message == "step test_connectivity failed"
    assert record.finished_at is not None and record.finished_at >= record.started_at
    assert record.duration_seconds is not None and record.duration_seconds >= 0
    check, cache, verify = record.steps
    assert (check.state, check.attempts, check.detail) == ("succeeded", 1, {"healthy": False, "reason": "x"})
    assert check.duration_seconds is not None and check.duration_seconds >= 0
    assert cache.state == "skipped"  # never ran: not left "pending" forever
    assert cache.attempts == 0
    assert (verify.state, verify.attempts) == ("failed", 2)
    assert verify.error_type == "ProbeFailed"
    assert verify.error_message == "verification probe 1/3 failed"
    assert record.as_json()["steps"][2]["state"] == "failed"


def test_finish_run_success_and_string_error(db_url: str) -> None:
    store = AuditStore(db_url)
    ok = store.start_run(target="api", workflow="wf", run_type="manual", steps=STEPS[:1])
    store.step_attempt(ok, "check_service_health", 1)
    store.step_finished(ok, "check_service_health", "succeeded")
    store.finish_run(ok, "succeeded")
    record = store.run(ok)
    assert record is not None
    assert (record.state, record.error_type, record.error_message) == ("succeeded", None, None)

    cancelled = store.start_run(target="api", workflow="wf", run_type="manual", steps=STEPS)
    store.finish_run(cancelled, "cancelled", "cancelled by operator", error_type="Cancelled")
    record = store.run(cancelled)
    assert record is not None
    assert (record.state, record.error_type) == ("cancelled", "Cancelled")
    assert [s.state for s in record.steps] == ["skipped"] * 3


def test_invalid_states_and_unknown_rows(db_url: str) -> None:
    store = AuditStore(db_url)
    with pytest.raises(ValueError):
        store.start_run(target="api", workflow="wf", run_type="manual", steps=(), state="bogus")
    run_id = store.start_run(target="api", workflow="wf", run_type="manual", steps=STEPS)
    with pytest.raises(ValueError):
        store.finish_run(run_id, "done")
    with pytest.raises(AuditUnavailable, match="not found"):
        store.finish_run("00000000-0000-0000-0000-000000000000", "failed")
    with pytest.raises(AuditUnavailable, match="'nope'"):
        store.step_attempt(run_id, "nope", 1)
    assert store.run("00000000-0000-0000-0000-000000000000") is None


def test_refuse(db_url: str) -> None:
    store = AuditStore(db_url)
    run_id = store.refuse(
        target="api",
        workflow="api-failure-recovery",
        run_type="manual",
        reason="recovery already in progress for api (run abc)",
        requested_by="alice",
        request_reason="customers report 502s",
    )
    record = store.run(run_id)
    assert record is not None
    assert record.state == "refused"
    assert record.error_type == "RecoveryRefused"
    # Why it was refused is the error; why it was asked for stays the run's reason.
    assert record.error_message == "recovery already in progress for api (run abc)"
    assert record.reason == "customers report 502s"
    assert record.requested_by == "alice"
    assert record.finished_at is not None
    assert record.duration_seconds == 0.0
    assert record.steps == ()


def test_history_order_limit_and_filter(db_url: str) -> None:
    store = AuditStore(db_url)
    ids = []
    for i in range(5):
        ids.append(
            store.start_run(
                target="api" if i % 2 == 0 else "db", workflow="wf", run_type="manual", steps=STEPS
            )
        )
        time.sleep(0.002)  # distinct started_at even on coarse clocks
    assert [r.id for r in store.history()] == ids[::-1]
    assert [r.id for r in store.history(limit=2)] == [ids[4], ids[3]]
    assert [r.id for r in store.history(target="api")] == [ids[4], ids[2], ids[0]]
    assert [r.id for r in store.history(target="db", limit=1)] == [ids[3]]
    assert store.history(target="unknown") == []
    # Steps come back in planned order on history rows too.
    assert [s.name for s in store.history(limit=1)[0].steps] == [s.name for s in STEPS]


def test_secrets_never_stored(db_url: str, raw: sqlalchemy.Connection) -> None:
    store = AuditStore(db_url)
    run_id = store.start_run(
        target="api",
        workflow="wf",
        run_type="automatic",
        steps=STEPS,
        reason=f"probe of {SECRET_URL} failed",
        detected_reason=f"connection error to {SECRET_URL}",
    )
    store.step_attempt(run_id, "clear_error_cache", 1)
    store.step_finished(
        run_id,
        "clear_error_cache",
        "failed",
        ConnectionError(f'connection to server at "h" failed: {SECRET_URL}'),
        detail={"url": SECRET_URL, "deleted": 0},
    )
    store.finish_run(run_id, "failed", RuntimeError(f"could not reach {SECRET_URL}"))
    refused = store.refuse(
        target="api",
        workflow="wf",
        run_type="manual",
        reason=f"locked via {SECRET_URL}",
        request_reason=f"operator saw {SECRET_URL} failing",
    )

    dump = repr(rows(raw, "SELECT * FROM recovery_runs")) + repr(rows(raw, "SELECT * FROM recovery_steps"))
    assert CANARY not in dump
    assert "postgresql://***@h/" in dump  # the message is kept, only the URL's secrets are masked
    for rid in (run_id, refused):
        record = store.run(rid)
        assert record is not None
        assert CANARY not in repr(record.as_json())


def test_long_error_messages_are_truncated(db_url: str) -> None:
    store = AuditStore(db_url)
    run_id = store.start_run(target="api", workflow="wf", run_type="manual", steps=STEPS)
    store.finish_run(run_id, "failed", "x" * 10_000)
    record = store.run(run_id)
    assert record is not None
    assert record.error_message == "x" * 2000


def test_unreachable_database_is_audit_unavailable_and_redacted() -> None:
    from faultserver import free_port

    url = f"postgresql+psycopg://u:{CANARY}@127.0.0.1:{free_port()}/db?connect_timeout=2"
    with pytest.raises(AuditUnavailable) as info:
        AuditStore(url)
    assert CANARY not in str(info.value)
    assert str(info.value).startswith("audit store postgresql+psycopg://***@127.0.0.1:")
    assert info.value.__cause__ is None


def test_two_stores_created_concurrently_on_fresh_sqlite(tmp_path: Path) -> None:
    # Repeated on several fresh files: without the migration locks the race was lost on nearly
    # every attempt (Alembic's module-global proxies, non-transactional SQLite DDL).
    for attempt in range(5):
        url = f"sqlite:///{tmp_path / f'fresh-{attempt}.db'}"
        barrier = threading.Barrier(2)
        errors: list[str] = []
        run_ids: list[str] = []

        def open_and_write(
            url: str = url,
            barrier: threading.Barrier = barrier,
            errors: list[str] = errors,
            run_ids: list[str] = run_ids,
        ) -> None:
            try:
                barrier.wait(timeout=10)
                store = AuditStore(url)
                run_ids.append(store.start_run(target="api", workflow="wf", run_type="manual", steps=STEPS))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=open_and_write) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == [], f"attempt {attempt}: {errors}"
        assert len(AuditStore(url).history()) == 2
