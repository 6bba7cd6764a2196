"""Prefect's view merged into the audit's: recovery flow runs that ended badly without a row.

A crash before ``begin()`` or an audit database that was down leaves a flow run Prefect saw
Failed/Crashed/Cancelled and no audit row; ``recovery stats`` counts those as failed
(cancelled) so an outage of the audit store cannot make the numbers look better.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from recovery.audit.models import RecoveryRun
from recovery.audit.records import AuditUnavailable, error_text
from recovery.audit.store import AuditStore
from recovery.reporting.stats import GroupStats, LastFailure, StatsReport, _utc


def audited_flow_run_ids(store: AuditStore, flow_run_ids: Iterable[str], chunk: int = 500) -> set[str]:
    """Which of these Prefect flow run ids have an audit row (as ``id`` or ``flow_run_id``)."""
    ids = sorted(set(flow_run_ids))
    found: set[str] = set()
    try:
        with store.engine.connect() as conn:
            for i in range(0, len(ids), chunk):
                part = ids[i : i + chunk]
                by_flow = select(RecoveryRun.flow_run_id).where(RecoveryRun.flow_run_id.in_(part))
                by_id = select(RecoveryRun.id).where(RecoveryRun.id.in_(part))
                found.update(str(v) for v in conn.execute(by_flow).scalars())
                found.update(str(v) for v in conn.execute(by_id).scalars())
    except SQLAlchemyError as exc:
        raise AuditUnavailable(f"audit store {store.description}: {error_text(exc)}") from None
    return found


@dataclass(frozen=True)
class UnauditedRun:
    """A recovery flow run Prefect knows ended badly and the audit has no row for."""

    flow_run_id: str
    target: str
    workflow: str
    state: str  # "failed" (Failed/Crashed in Prefect) or "cancelled"
    at: datetime
    error_type: str  # e.g. "FlowCrashed"
    message: str | None = None


def merge_unaudited(report: StatsReport, runs: Sequence[UnauditedRun]) -> StatsReport:
    """Count runs that never wrote an audit row: a crash before the row counts as failed."""
    groups = {(g.target, g.workflow): g for g in report.groups}
    for run in runs:
        if run.state not in ("failed", "cancelled"):
            raise ValueError(f"unaudited run {run.flow_run_id}: unexpected state {run.state!r}")
        k = (run.target, run.workflow)
        g = groups.get(k) or GroupStats(target=run.target, workflow=run.workflow)
        errors = dict(g.error_types)
        errors[run.error_type] = errors.get(run.error_type, 0) + 1
        last = g.last_failure
        if run.state == "failed" and (last is None or _utc(run.at) > _utc(last.at)):
            message = error_text(run.message) if run.message else None
            last = LastFailure(_utc(run.at), run.flow_run_id, run.error_type, message)
        groups[k] = replace(
            g,
            runs=g.runs + 1,
            failed=g.failed + (run.state == "failed"),
            cancelled=g.cancelled + (run.state == "cancelled"),
            error_types=errors,
            last_failure=last,
            unaudited=g.unaudited + 1,
        )
    merged = tuple(sorted(groups.values(), key=lambda g: (g.target, g.workflow)))
    return replace(report, groups=merged)
