"""Reconcile: finish what a dead recovery left behind, from outside the process that died.

A recovery records its progress write-ahead and holds its target's lock with a TTL; a process
killed mid-run (``kill -9``, OOM, a lost node) runs no ``finally``. Its audit row would stay
``in_progress`` with a step ``running`` forever. This pass, run at the start of every monitor
cycle and by ``recovery reconcile``, finishes such rows (invariant I1):

* a row is dead when its lock is gone or held by someone else: the lock's TTL is the proof of
  death, so a run whose owner still holds the lock is never touched, however long it takes;
  rows written before the audit recorded ``lock_owner`` count as dead only once the lock is free;
* rows younger than ``grace_seconds`` are left alone (clock skew between the database and this
  host; a row being written right now);
* a dead row becomes ``failed`` with ``error_type`` ``Orphaned`` (or ``Crashed`` when the caller,
  who may ask Prefect, says its flow run crashed), its running step ``failed``, pending steps
  ``skipped``; the update is conditional, so of two reconcilers exactly one reports the row;
* its unverified breaker close is revoked (the breaker re-opens now; its lease would re-open it
  anyway, invariant I2) and a ``breaker_aligned`` probe lease it held is given back.

Prefect-free: ``crashed`` is how a flow passes Prefect's knowledge in (flows/reconcile.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from recovery.audit.records import RunRecord
from recovery.config.loader import RecoveryConfig
from recovery.errors import RecoveryError
from recovery.jsonable import to_json
from recovery.services import Services, services_for

DEFAULT_GRACE_SECONDS = 5.0

# Flow run ids -> the subset whose flow run crashed (the monitor asks Prefect).
CrashedRuns = Callable[[Sequence[str]], Collection[str]]


class Orphaned(RecoveryError):
    """The run's process is gone: its lock expired or another run holds it."""


class Crashed(RecoveryError):
    """Prefect reports the run's flow run as crashed."""


@dataclass(frozen=True)
class ReconciledRun:
    """A run this pass finished as failed."""

    run_id: str
    target: str
    workflow: str
    run_type: str
    error_type: str  # Orphaned | Crashed
    message: str
    step: str | None  # the step that was running when the process died
    breaker_reopened: bool
    started_at: datetime
    first_failure_at: float | None = None  # epoch seconds: the run's incident (engine/incidents.py)

    @property
    def error(self) -> RecoveryError:
        return (Crashed if self.error_type == "Crashed" else Orphaned)(self.message)

    def as_json(self) -> dict[str, Any]:
        return to_json(self)


@dataclass(frozen=True)
class ReconcileReport:
    checked: int  # rows in progress
    finished: tuple[ReconciledRun, ...]
    running: tuple[str, ...]  # run ids whose owner holds the lock: alive, left alone
    young: tuple[str, ...]  # run ids within the grace period, left alone

    def as_json(self) -> dict[str, Any]:
        return to_json(self)


def _dead(run: RunRecord, holder: str | None) -> str | None:
    """Why ``run`` is dead given the lock's current ``holder``; None while its owner holds it."""
    if run.lock_owner is None:  # written before revision 0003, or a lock-less operation
        return None if holder is not None else f"its lock on {run.target} is gone"
    if holder == run.lock_owner:
        return None
    return f"its lock on {run.target} is gone" if holder is None else f"another run holds {run.target}'s lock"


def _crashed_ids(crashed: CrashedRuns | None, runs: Sequence[RunRecord]) -> Collection[str]:
    ids = [r.flow_run_id for r in runs if r.flow_run_id]
    if crashed is None or not ids:
        return ()
    try:
        return crashed(ids)
    except Exception:  # Prefect unreachable: the lock rules alone still finish the rows
        return ()


def _release_breaker(services: Services, run: RunRecord) -> bool:
    """Re-open the breaker if this run's unverified close is still pending; give back its probe.

    Best effort: the close lease lapses and the probe lease expires without us."""
    reopened = False
    with contextlib.suppress(Exception):
        breaker = services.breaker(run.target)
        reopened = breaker.revoke_close(run.id)
        if run.lock_owner is not None:
            breaker.end_probe(run.lock_owner, None)
    return reopened


def reconcile(
    config: RecoveryConfig,
    *,
    crashed: CrashedRuns | None = None,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    now: datetime | None = None,
) -> ReconcileReport:
    """Finish every dead ``in_progress`` row (see the module docstring); raises
    ``AuditUnavailable`` / ``StateUnavailable`` when either store cannot be read."""
    services = services_for(config)
    now = now or datetime.now(UTC)
    runs = services.audit.in_progress()
    young = tuple(r.id for r in runs if r.started_at > now - timedelta(seconds=grace_seconds))
    running: list[str] = []
    dead: list[tuple[RunRecord, str]] = []
    # Rows first, then locks: a run that finishes in between wrote its row before releasing its
    # lock, so the conditional update below finds it finished and leaves it alone.
    for run in runs:
        if run.id in young:
            continue
        why = _dead(run, services.state.lock_owner(run.target))
        if why is None:
            running.append(run.id)
        else:
            dead.append((run, why))
    crashed_ids = set(_crashed_ids(crashed, [run for run, _ in dead]))
    finished: list[ReconciledRun] = []
    for run, why in dead:
        error_type = "Crashed" if run.flow_run_id in crashed_ids else "Orphaned"
        detail = f"Prefect reports flow run {run.flow_run_id} crashed; " if error_type == "Crashed" else ""
        message = f"{detail}the recovery's process died: {why} (found by reconcile)"
        step = next((s.name for s in run.steps if s.state == "running"), None)
        if not services.audit.orphan_run(run.id, error_type, message, now):
            continue  # finished meanwhile, by the run itself or another reconciler
        reopened = _release_breaker(services, run)
        what = (run.id, run.target, run.workflow, run.type)
        first = run.first_failure_at.timestamp() if run.first_failure_at else None
        finished.append(ReconciledRun(*what, error_type, message, step, reopened, run.started_at, first))
    return ReconcileReport(len(runs), tuple(finished), tuple(running), young)
