"""A database error never carries SQL text or bound values into a message (state, log, artifact).

What a caller sent (a NUL byte, an over-long id, a password typed into a reason) is a bound
value of the audit INSERT; SQLAlchemy's str(exc) appends the statement and those values.
"""

from __future__ import annotations

import pytest

from recovery.audit.records import AuditUnavailable, PlannedStep, error_text
from recovery.audit.store import AuditStore

CANARY = "caller-typed-THIS-into-a-field"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


def assert_clean(message: str) -> None:
    for leak in ("[SQL", "INSERT", "[parameters", "sqlalche.me", CANARY):
        assert leak not in message, (leak, message)


def test_duplicate_id_is_class_and_first_line_only(db_url: str) -> None:
    store = AuditStore(db_url)
    store.start_run(run_id="run-1", target="t", workflow="w", run_type="manual", steps=(), reason=CANARY)
    with pytest.raises(AuditUnavailable) as info:
        store.start_run(
            run_id="run-1",
            target="t",
            workflow="w",
            run_type="manual",
            steps=[PlannedStep("s")],
            reason=CANARY,
        )
    message = str(info.value)
    assert_clean(message)
    assert "IntegrityError: " in message and ("UNIQUE" in message or "duplicate key" in message), message
    assert "\n" not in message


@pytest.mark.postgres
def test_postgres_nul_byte_and_overlong_id_name_no_values(pg_url: str) -> None:
    store = AuditStore(pg_url)
    with pytest.raises(AuditUnavailable) as info:
        store.start_run(target="t", workflow="w", run_type="manual", steps=(), requested_by=f"{CANARY}\x00")
    assert_clean(str(info.value))
    with pytest.raises(AuditUnavailable) as info:
        store.start_run(run_id=CANARY * 3, target="t", workflow="w", run_type="manual", steps=())
    assert_clean(str(info.value))
    assert "DataError" in str(info.value) or "StringDataRightTruncation" in str(info.value), str(info.value)


def test_error_text_strips_sql_sections_copied_into_other_errors() -> None:
    copied = RuntimeError(f"wrapped: (x) boom\n[SQL: INSERT INTO t VALUES (?)]\n[parameters: ('{CANARY}',)]")
    text = error_text(copied)
    assert text == "wrapped: (x) boom"
