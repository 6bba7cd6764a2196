"""Applying audit ops: load the runs they touch, fold the ops in order in memory, write back.

The one implementation of what an op does to the rows, for a live write (one op) and a replay
(hundreds of spooled ops): a batch costs a handful of statements whatever its size, so a
spool fills the store again far faster than recoveries can fill the spool.

Replay may apply a record more than once (a crash between its commit and the spool's cursor; a
live commit whose answer was lost, then spooled). Every op is therefore idempotent, and the
step ops are monotonic, so a late or repeated one never undoes a newer write:

* ``start_run``/``refuse`` insert the run once: on replay an existing row with the same target,
  workflow and start time is this record, already applied (anything else is rejected);
* ``step_attempt`` and ``step_finished`` only touch a step still ``pending``/``running``;
* ``finish_run`` and ``set_flow_run_id`` set absolute values (same record, same result).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from recovery.audit.models import RecoveryRun, RecoveryStep
from recovery.audit.ops import START_OPS, AuditOp, when
from recovery.audit.records import AuditRejected, aware

RUNS = cast(Table, RecoveryRun.__table__)
STEPS = cast(Table, RecoveryStep.__table__)
OPEN_STEP_STATES = ("pending", "running")
# What ops change after the insert (written back; nothing else is, so a concurrent writer's
# other columns are never overwritten).
RUN_MUTABLE = ("state", "finished_at", "duration_seconds", "error_type", "error_message", "flow_run_id")
STEP_MUTABLE = (
    "state", "attempts", "started_at", "finished_at", "duration_seconds", "error_type",
    "error_message", "detail",
)  # fmt: skip
DATETIMES = ("first_failure_at", "detected_at", "started_at", "finished_at")


@dataclass
class _Run:
    row: dict[str, Any]
    steps: list[dict[str, Any]]  # by position
    new: bool  # not in the database yet: inserted at the end
    dirty: bool = False
    dirty_steps: set[int] = field(default_factory=set)

    def step(self, name: str) -> dict[str, Any]:
        for step in self.steps:
            if step["name"] == name:
                return step
        raise AuditRejected(f"audit step {name!r} of run {self.row['id']} not found")


def _aware_row(row: Any, columns: Iterable[str]) -> dict[str, Any]:
    out = dict(row._mapping)
    for name in columns:
        if name in out:
            out[name] = aware(out[name])  # SQLite gives naive UTC back
    return out


def _load(session: Session, run_ids: set[str]) -> dict[str, _Run]:
    if not run_ids:
        return {}
    # FOR UPDATE (PostgreSQL): two writers of one run (a run and its crash hook) take turns.
    query = select(RUNS).where(RUNS.c.id.in_(run_ids)).with_for_update()
    runs = {r.id: _Run(_aware_row(r, DATETIMES), [], False) for r in session.execute(query)}
    if runs:
        steps = session.execute(
            select(STEPS).where(STEPS.c.run_id.in_(list(runs))).order_by(STEPS.c.run_id, STEPS.c.position)
        )
        for s in steps:
            runs[s.run_id].steps.append(_aware_row(s, DATETIMES))
    return runs


def _start_run(runs: dict[str, _Run], op: AuditOp) -> None:
    d = op.data
    existing = runs.get(op.run_id)
    if existing is not None:
        row = existing.row
        started = row["started_at"]
        same = (row["target"], row["workflow"]) == (d["target"], d["workflow"])
        if same and started is not None and abs((started - op.at).total_seconds()) < 0.001:
            return  # this very record, applied before (live, or by an interrupted replay)
        raise AuditRejected(f"audit run id {op.run_id} is already used by another run")
    finished = d["state"] != "in_progress"
    row = {
        "id": op.run_id,
        "target": d["target"],
        "workflow": d["workflow"],
        "type": d["type"],
        "state": d["state"],
        "dry_run": d["dry_run"],
        "requested_by": d["requested_by"],
        "reason": d["reason"],
        "detected_reason": d["detected_reason"],
        "first_failure_at": when(d["first_failure_at"]),
        "detected_at": when(d["detected_at"]),
        "started_at": op.at,
        "finished_at": op.at if finished else None,
        "duration_seconds": 0.0 if finished else None,
        "error_type": d["error_type"],
        "error_message": d["error_message"],
        "flow_run_id": d["flow_run_id"],
        "lock_owner": d.get("lock_owner"),  # absent from records spooled before revision 0003
        "rung": d.get("rung"),  # absent from records spooled before revision 0004
    }
    steps = [
        {
            "run_id": op.run_id,
            "position": i,
            "name": name,
            "optional": optional,
            "state": "skipped" if finished else "pending",
            "attempts": 0,
            "max_attempts": max_attempts,
            "started_at": None,
            "finished_at": None,
            "duration_seconds": None,
            "error_type": None,
            "error_message": None,
            "detail": None,
        }
        for i, (name, optional, max_attempts) in enumerate(d["steps"])
    ]
    runs[op.run_id] = _Run(row, steps, new=True)


def _run(runs: dict[str, _Run], op: AuditOp, what: str) -> _Run:
    run = runs.get(op.run_id)
    if run is None:
        raise AuditRejected(what)
    return run


def _fold(runs: dict[str, _Run], op: AuditOp) -> None:
    """Apply one op to the in-memory rows (the only place that says what an op does)."""
    d = op.data
    if op.op in START_OPS:
        _start_run(runs, op)
    elif op.op in ("step_attempt", "step_finished"):
        run = _run(runs, op, f"audit step {d['step']!r} of run {op.run_id} not found")
        step = run.step(d["step"])
        if step["state"] not in OPEN_STEP_STATES:
            return  # a late or repeated op never re-opens (or re-finishes) a finished step
        if op.op == "step_attempt":
            step["state"] = "running"
            step["attempts"] = max(step["attempts"], d["attempt"])
            step["started_at"] = step["started_at"] or op.at
        else:
            started: datetime | None = step["started_at"]
            step.update(
                state=d["state"],
                finished_at=op.at,
                duration_seconds=(op.at - started).total_seconds() if started else 0.0,
                error_type=d["error_type"],
                error_message=d["error_message"],
            )
            if d["detail"] is not None:
                step["detail"] = d["detail"]
        run.dirty_steps.add(step["position"])
    elif op.op == "finish_run":
        run = _run(runs, op, f"audit row {op.run_id} not found")
        row = run.row
        row.update(state=d["state"], finished_at=op.at)
        row["duration_seconds"] = (op.at - row["started_at"]).total_seconds()
        if d["has_error"]:
            row.update(error_type=d["error_type"], error_message=d["error_message"])
        run.dirty = True
        for step in run.steps:  # steps that never ran stay visible as skipped, not pending forever
            if step["state"] in OPEN_STEP_STATES:
                step["state"] = "skipped"
                run.dirty_steps.add(step["position"])
    elif op.op == "set_flow_run_id":
        run = _run(runs, op, f"audit row {op.run_id} not found")
        run.row["flow_run_id"] = d["flow_run_id"]
        run.dirty = True
    else:
        raise ValueError(f"unknown audit op {op.op!r}")


def _store(session: Session, runs: Iterable[_Run]) -> None:
    """Write back what the ops changed: inserts, then executemany updates (few statements)."""
    new_runs, new_steps, run_updates, step_updates = [], [], [], []
    for run in runs:
        if run.new:
            new_runs.append(run.row)
            new_steps += run.steps
            continue
        if run.dirty:
            run_updates.append({"b_id": run.row["id"], **{k: run.row[k] for k in RUN_MUTABLE}})
        for position in sorted(run.dirty_steps):
            step = run.steps[position]
            step_updates.append(
                {"b_run": run.row["id"], "b_pos": position, **{k: step[k] for k in STEP_MUTABLE}}
            )
    _executemany(session, insert(RUNS), new_runs)
    _executemany(session, insert(STEPS), new_steps)
    _executemany(session, update(RUNS).where(RUNS.c.id == bindparam("b_id")), run_updates)
    where = (STEPS.c.run_id == bindparam("b_run")) & (STEPS.c.position == bindparam("b_pos"))
    _executemany(session, update(STEPS).where(where), step_updates)


def _executemany(session: Session, statement: Any, rows: list[dict[str, Any]]) -> None:
    """One executemany per set of keys: a ``detail`` of ``None`` is left out, so the column stays
    SQL NULL (the JSON type would store the text ``null``) or keeps what it holds."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for row in rows:
        if "detail" in row and row["detail"] is None:
            row = {k: v for k, v in row.items() if k != "detail"}
        groups.setdefault(tuple(row), []).append(row)
    for group in groups.values():
        session.execute(statement, group)


def apply_ops(
    session: Session, ops: Sequence[AuditOp], *, replay: bool = False, gone: set[str] | None = None
) -> list[tuple[int, str]]:
    """Apply ``ops`` in order inside the caller's transaction.

    ``replay``: the records may have been applied before (see the module docstring). Returns
    the ops the store can never take, ``(index, why)``: an unknown run or step, a run id used by
    another run, and every later op of a run in ``gone`` (whose start was refused); live
    (``replay=False``) the first such op raises ``AuditRejected`` instead.
    """
    gone = set() if gone is None else gone
    loadable = {op.run_id for op in ops if replay or op.op not in START_OPS}
    runs = _load(session, loadable)
    rejected: list[tuple[int, str]] = []
    for i, op in enumerate(ops):
        try:
            if op.run_id in gone:
                raise AuditRejected(f"run {op.run_id} was rejected")
            _fold(runs, op)
        except AuditRejected as exc:
            if not replay:
                if op.op == "set_flow_run_id":
                    continue  # live, an unknown run was never an error (an UPDATE of no row)
                raise
            rejected.append((i, str(exc)))
            if op.op in START_OPS:
                gone.add(op.run_id)
    _store(session, runs.values())
    return rejected
