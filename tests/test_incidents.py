"""Incidents (issue 14): a stable id from target + first_failure_at, and "is this the incident's
first failure / first escalation of its kind?" read from the audit rows of the incident, on
SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from recovery.audit.records import PlannedStep
from recovery.audit.store import AuditStore
from recovery.engine.incidents import first_report, incident_id
from recovery.engine.takeover import TAKEN_OVER
from recovery.enums import RunState

FIRST = 1_764_662_400.123456  # epoch seconds of the first failed probe, as Redis hands it over


def test_incident_id_is_stable_and_per_outage() -> None:
    a = incident_id("api", FIRST, "run-1")
    assert a == incident_id("api", float(str(FIRST)), "run-2")  # every run of the outage agrees
    assert a != incident_id("api", FIRST + 60, "run-1")  # the next outage is a new incident
    assert a != incident_id("db", FIRST, "run-1")
    assert incident_id("api", None, "run-1") != incident_id("api", None, "run-2")  # a person's run: its own


@pytest.fixture(params=["sqlite", "postgres"])
def audit(request: pytest.FixtureRequest) -> AuditStore:
    return AuditStore(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


def _run(audit: AuditStore, run_id: str, first: float | None, target: str = "api") -> str:
    when = datetime.fromtimestamp(first, UTC) if first is not None else None
    return audit.start_run(
        run_id=run_id,
        target=target,
        workflow="api-failure-recovery",
        run_type="automatic",
        steps=[PlannedStep("test_connectivity", False, 1)],
        first_failure_at=when,
    )


def test_one_failure_report_per_incident(audit: AuditStore) -> None:
    _run(audit, "r1", FIRST)
    audit.finish_run("r1", "failed", "503")
    assert first_report(audit, "api", FIRST, "r1", RunState.FAILED)  # the first: reported
    _run(audit, "r2", FIRST)
    audit.finish_run("r2", "failed", "503")
    assert not first_report(audit, "api", FIRST, "r2", RunState.FAILED)  # same outage: not again
    assert [r.id for r in audit.incident_runs("api", datetime.fromtimestamp(FIRST, UTC))] == ["r1", "r2"]
    # Another outage of the same target, or another target: reported.
    _run(audit, "r3", FIRST + 600)
    audit.finish_run("r3", "failed", "503")
    assert first_report(audit, "api", FIRST + 600, "r3", RunState.FAILED)
    _run(audit, "r4", FIRST, target="db")
    audit.finish_run("r4", "failed", "down")
    assert first_report(audit, "db", FIRST, "r4", RunState.FAILED)
    assert first_report(audit, "api", None, "manual-1", RunState.FAILED)  # no incident: its own


def test_a_takeover_is_not_a_failure_and_escalations_count_per_check(audit: AuditStore) -> None:
    _run(audit, "auto", FIRST)
    assert audit.orphan_run("auto", TAKEN_OVER, "taken over by alice: INC-1", state="cancelled")
    _run(audit, "next", FIRST)
    audit.finish_run("next", "cancelled", "SIGTERM")
    assert first_report(audit, "api", FIRST, "next", RunState.CANCELLED)  # the takeover did not count
    when = datetime.fromtimestamp(FIRST, UTC)
    budget = "budget: 3 automatic recoveries of api in the last 3600s (max 3); escalating"
    for run_id in ("ref-1", "ref-2"):
        audit.refuse(
            target="api",
            workflow="w",
            run_type="automatic",
            reason=budget,
            run_id=run_id,
            first_failure_at=when,
        )
    assert first_report(audit, "api", FIRST, "ref-1", RunState.REFUSED, budget) is False
    assert first_report(audit, "api", FIRST, "ref-3", RunState.REFUSED, "adaptive: same error 3 times")
