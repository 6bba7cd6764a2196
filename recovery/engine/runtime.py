"""One recovery run: lock, write-ahead audit, step execution, finish.

The Prefect flow drives a ``RecoveryRuntime``; everything that decides or records lives here so
it is testable without Prefect. Order of one run:

    begin()     take the target's lock (or adopt the monitor's) -> audit row ``in_progress``
    run_step()  per step and attempt: audit attempt, refresh lock, act, audit outcome
    finish()    audit final state, release the lock

Async callers (the flows) use ``abegin()`` and ``afinish()``, and ``run_step`` does its own
bookkeeping the same way: every audit and state call runs on ``recovery.blocking``'s threads,
so a slow or frozen store delays only this run, never the other recoveries in the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from recovery.audit.records import AuditUnavailable, PlannedStep
from recovery.audit.store import AuditStore
from recovery.backends.state import SharedState
from recovery.blocking import CancelledAfter, blocking, blocking_to_end
from recovery.client.breakers import FleetBreaker, breaker_for_target, open_breaker
from recovery.config.loader import RecoveryConfig, TargetConfig
from recovery.engine import escalation
from recovery.engine.probing import probe_once
from recovery.engine.takeover import TAKEN_OVER, LockHolder, can_take_over, lock_holder, take_over
from recovery.engine.workflows import (
    PlannedStepRetry,
    WorkflowSpec,
    select_workflow,
    step_plans,
    workflow_named,
)
from recovery.enums import RunType
from recovery.errors import LockLost, PermanentError, RecoveryRefused, StateUnavailable, TemporaryError
from recovery.kinds.base import Detail, ProbeResult
from recovery.policy.admission import Admission, admit
from recovery.policy.strategies import RetryPlan
from recovery.services import services_for


@dataclass(frozen=True)
class RecoveryRequest:
    """What a recovery flow is asked to do (the flow's parameters, validated)."""

    target: str
    workflow: str | None = None
    run_type: str = "manual"
    requested_by: str | None = None
    reason: str | None = None
    lock_token: str | None = None  # set when the monitor already holds the lock for this run
    detected_reason: str | None = None
    first_failure_at: float | None = None  # epoch seconds of the first failed probe
    detected_at: float | None = None  # epoch seconds the monitor decided to recover (its Decision)
    dry_run: bool = False
    options: dict[str, str] | None = None  # workflow parameters, e.g. clear-cache's "pattern"


def _ts(epoch: float | None) -> datetime | None:
    return datetime.fromtimestamp(epoch, UTC) if epoch else None


def _detected_at(request: RecoveryRequest) -> datetime | None:
    """When the fault was detected: the monitor's decision time when it passed one, else now
    for an automatic run (a caller without a decision), none for a manual one."""
    if request.run_type != "automatic":
        return None
    return _ts(request.detected_at) or datetime.now(UTC)


class RecoveryRuntime:
    def __init__(
        self,
        config: RecoveryConfig,
        target: TargetConfig,
        spec: WorkflowSpec,
        state: SharedState,
        audit: AuditStore,
        run_id: str,
        owner: str,
        plan: RetryPlan | None = None,
    ) -> None:
        self.config = config
        self.target = target
        self.spec = spec
        self.state = state
        self.audit = audit
        self.run_id = run_id
        self.owner = owner
        self.options: dict[str, str] = {}  # the request's workflow parameters
        self.workflow = spec.name
        self.reason: str | None = None  # the request's reason, else what the monitor detected
        self.breaker_closed_by_us = False  # set when our reset step closed the breaker
        # ``plan``: what admission computed from the target's history (adaptive strategies).
        self.plans: dict[str, PlannedStepRetry] = {
            p.step.name: p for p in step_plans(config, target, spec, plan)
        }
        self.admission: Admission | None = None  # the strategy decision; settled by finish()
        self.rung: int | None = None  # escalation ladder: which rung this run is (None: none)
        self.rungs = len(target.escalation)
        self.took_over: LockHolder | None = None  # the automatic run this emergency took over
        self.lost_lock = False  # another run holds the lock now: it owns the row's end and the breaker

    @classmethod
    def begin(
        cls,
        config: RecoveryConfig,
        request: RecoveryRequest,
        run_id: str | None = None,
        flow_run_id: str | None = None,
    ) -> RecoveryRuntime:
        """Lock the target and write the audit row; raise ``RecoveryRefused`` if locked."""
        if request.run_type not in RunType.__members__.values():
            raise PermanentError(f"invalid recovery type {request.run_type!r}")
        target = config.target(request.target)
        spec = (
            workflow_named(request.workflow, target, config)
            if request.workflow
            else select_workflow(target, config=config)
        )
        services = services_for(config)
        audit, state = services.audit, services.state
        run_id = run_id or str(uuid.uuid4())
        owner = request.lock_token or run_id
        # The monitor recorded the rung it started under its token (engine/escalation.py).
        rung = escalation.rung_of(state, target, request.lock_token)

        def refused(reason: str, escalate: bool = False) -> RecoveryRefused:
            refuse(audit, request, spec.name, reason, run_id, flow_run_id, rung=rung)
            escalation.end_rung(state, target, request.lock_token, "refused")  # next detection: next rung
            return RecoveryRefused(reason, escalate=escalate, rung=rung, rungs=len(target.escalation))

        took_over: LockHolder | None = None
        if request.lock_token is None:
            took_over = _lock_or_take_over(config, target.name, request, owner, state, audit, refused)
        elif state.lock_owner(target.name) != owner:
            # The monitor hands over the lock it took; a token nobody holds (expired, forged, a
            # stale retry) must not let a run act unlocked beside another recovery.
            raise refused(f"lock token for {target.name} is not held (expired or not ours); not started")
        # The target's strategy: allow/deny (time window, breaker alignment, repeating errors) and
        # the retry plan. Decided under the lock; an emergency bypasses the window and breaker only.
        try:
            admission = admit(config, target, request.run_type, owner, state, audit)
        except Exception:
            state.release_lock(target.name, owner)
            raise
        if not admission.allowed:
            state.release_lock(target.name, owner)
            raise refused(admission.decision.reason, admission.decision.escalate)
        rt = cls(config, target, spec, state, audit, run_id, owner, plan=admission.plan)
        rt.admission = admission
        rt.rung = rung
        rt.took_over = took_over
        rt.options = dict(request.options or {})
        rt.reason = request.reason or request.detected_reason
        try:
            audit.start_run(
                run_id=run_id,
                target=target.name,
                workflow=spec.name,
                run_type=request.run_type,
                steps=[
                    PlannedStep(p.step.name, p.step.optional, p.plan.max_attempts) for p in rt.plans.values()
                ],
                requested_by=request.requested_by,
                reason=request.reason,
                detected_reason=request.detected_reason,
                first_failure_at=_ts(request.first_failure_at),
                detected_at=_detected_at(request),
                flow_run_id=flow_run_id,
                lock_owner=owner,  # reconcile: the row is alive exactly while this token holds the lock
                rung=rung,
            )
        except Exception:
            admission.settle("not-started")
            state.release_lock(target.name, owner)  # never hold a lock for a run that is not audited
            raise
        return rt

    @classmethod
    async def abegin(
        cls, config: RecoveryConfig, request: RecoveryRequest, **ids: str | None
    ) -> RecoveryRuntime:
        """``begin`` off the event loop (``ids``: its ``run_id`` and ``flow_run_id``). A
        cancellation waits for it and finishes the run it began as ``cancelled``: nobody else
        would ever finish that row or release that lock."""
        try:
            return await blocking_to_end(cls.begin, config, request, **ids)
        except CancelledAfter as exc:
            if isinstance(exc.result, RecoveryRuntime):
                await blocking_to_end(exc.result.finish, "cancelled", asyncio.CancelledError())
            raise

    def _start_attempt(self, name: str, attempt: int) -> None:
        self.audit.step_attempt(self.run_id, name, attempt)
        if not self.state.refresh_lock(self.target.name, self.owner, self.config.monitor.lock_ttl_seconds):
            # Taken over by an emergency (or expired): stop before acting again. The step row
            # is finished unless the takeover already finished the whole row.
            self.lost_lock = True
            error = LockLost(f"lost the recovery lock of {self.target.name}; stopping")
            self.audit.step_finished(self.run_id, name, "failed", error)
            raise error
        if self.admission is not None:
            self.admission.refresh()  # breaker_aligned: keep holding the half-open probe
        if self.breaker_closed_by_us:
            # The unverified close lives as long as the lock: extended together, lapsing together.
            self._close_lease("extend")

    async def run_step(self, name: str, attempt: int) -> Detail:
        """Run one attempt of step ``name``; the caller (a Prefect task) retries on TemporaryError."""
        planned = self.plans[name]
        await blocking(self._start_attempt, name, attempt)
        try:
            detail = await planned.step.run(self)
        except TemporaryError as exc:
            if attempt < planned.plan.max_attempts:
                raise  # the step stays "running"; Prefect retries after the planned delay
            detail = getattr(exc, "detail", None)
            await blocking(self.audit.step_finished, self.run_id, name, "failed", exc, detail=detail)
            raise
        except Exception as exc:
            # A custom step's failure carries its detail (exit code, output tail, approver).
            detail = getattr(exc, "detail", None)
            await blocking(self.audit.step_finished, self.run_id, name, "failed", exc, detail=detail)
            raise
        outcome = "skipped" if detail is None else "succeeded"
        await blocking(self.audit.step_finished, self.run_id, name, outcome, detail=detail)
        if name == "reset_circuit_breaker" and detail is not None:
            self.breaker_closed_by_us = True
        return detail

    # --- StepContext (recovery.kinds.base): what step functions may use of a running recovery.

    async def probe(self) -> ProbeResult:
        """Probe this run's target once with its kind's prober."""
        return await probe_once(self.target)

    def breaker(self) -> FleetBreaker:
        """The target's fleet-wide breaker (the same instance the application's factory returns)."""
        return services_for(self.config).breaker(self.target)

    async def afinish(self, state: str, error: BaseException | None = None) -> None:
        """``finish`` off the event loop; completes even if the caller is being cancelled."""
        await blocking_to_end(self.finish, state, error)

    def taken_over_by(self) -> str | None:
        """After ``LockLost``: the takeover message if an emergency finished this row, else None."""
        record = self.audit.run(self.run_id)
        if record is None or record.state != "cancelled" or record.error_type != TAKEN_OVER:
            return None
        return record.error_message

    def finish(self, state: str, error: BaseException | None = None) -> None:
        try:
            if not (self.lost_lock and self.taken_over_by() is not None):
                self.audit.finish_run(self.run_id, state, error)  # a takeover's "cancelled" stands
        finally:
            if self.admission is not None:
                self.admission.settle(state)  # a breaker_aligned probe closes or re-opens the breaker
            if self.lost_lock:
                pass  # the lock's new holder owns the breaker; an unverified close of ours lapses
            elif state != "succeeded" and self.breaker_closed_by_us:
                self._reopen_breaker()
            elif self.breaker_closed_by_us:
                self._close_lease("confirm")  # verified: the close stands (else it lapses to open)
            if self.rung is not None:  # before the lock goes: the next detection reads it
                # Never keep the lock for it: an unrecorded end counts as failed.
                with contextlib.suppress(StateUnavailable):
                    escalation.end_rung(self.state, self.target, self.owner, state)
            self.state.release_lock(self.target.name, self.owner)

    def _close_lease(self, action: str) -> None:
        """Extend or confirm this run's unverified close of the breaker (``reset_circuit_breaker``).

        Best effort: if Redis cannot be reached the lease lapses and the breaker re-opens, which is
        the safe direction (the application fails fast until a half-open probe closes it again).
        """
        try:
            breaker = self.breaker()
            if action == "extend":
                breaker.extend_close(self.run_id, self.config.monitor.lock_ttl_seconds)
            else:
                breaker.confirm_close(self.run_id)
        except Exception:
            return

    def _reopen_breaker(self) -> None:
        """Never leave a breaker closed in front of an unverified target.

        The reset step closes the breaker before verification; if the run then fails or is
        cancelled, the target is still paused and the application must keep failing fast, so
        the breaker goes back to open. Best effort: Redis trouble must not mask the run's error.
        """
        try:
            open_breaker(breaker_for_target(self.config, self.target.name))
        except Exception:
            return


def _lock_or_take_over(
    config: RecoveryConfig,
    target: str,
    request: RecoveryRequest,
    owner: str,
    state: SharedState,
    audit: AuditStore,
    refused: Callable[[str], RecoveryRefused],
) -> LockHolder | None:
    """Take ``target``'s lock for ``owner``; an emergency takes it over from an automatic run
    (returned: the caller cancels its flow run). Otherwise ``refused`` naming the holder's flow
    run and audit ids. Two tries: the lock may change hands between reading and taking it."""
    ttl = config.monitor.lock_ttl_seconds
    holder: LockHolder | None = None
    for _ in range(2):
        if state.acquire_lock(target, owner, ttl):
            return None
        holder = lock_holder(state, audit, target)
        if holder is None:
            continue  # released meanwhile: try again
        if holder.token == owner:  # our SET landed but its reply was lost; the retry found it set
            return None
        if not can_take_over(request.run_type, holder):
            break
        why = f"taken over by {request.requested_by}: {request.reason}"
        try:
            if take_over(state, audit, target, holder, owner, ttl, why):
                return holder
        except AuditUnavailable:  # the lock went back (take_over): refused below, audited (spooled)
            holder = replace(holder, unaudited=True)
            break
    what = holder.describe() if holder else "lock held"
    hint = ""
    if holder and holder.run_type == RunType.AUTOMATIC and request.run_type != RunType.EMERGENCY:
        hint = "; an emergency trigger (with a reason) takes it over"
    raise refused(f"recovery already in progress for {target} ({what}){hint}")


def refuse(
    audit: AuditStore,
    request: RecoveryRequest,
    workflow: str,
    reason: str,
    run_id: str | None,
    flow_run_id: str | None = None,
    rung: int | None = None,
) -> None:
    """Audit a refused request (state ``refused``, the reason as its error message)."""
    audit.refuse(
        target=request.target,
        workflow=workflow,
        run_type=request.run_type,
        reason=reason,
        requested_by=request.requested_by,
        flow_run_id=flow_run_id,
        run_id=run_id,
        request_reason=request.reason,
        rung=rung,
        first_failure_at=_ts(request.first_failure_at),  # the incident (engine/incidents.py)
    )


def record_dry_run(
    config: RecoveryConfig, request: RecoveryRequest, details: dict[str, Detail] | None = None
) -> str:
    """Audit a dry run: the plan is recorded, nothing is locked or touched. ``details``: what a
    step found without acting (clear-cache's count), kept on its skipped step row."""
    target = config.target(request.target)
    spec = (
        workflow_named(request.workflow, target, config)
        if request.workflow
        else select_workflow(target, config=config)
    )
    audit = services_for(config).audit
    # Written in_progress first when steps carry details: a finished row's steps are final.
    run_id = audit.start_run(
        target=target.name,
        workflow=spec.name,
        run_type=request.run_type,
        dry_run=True,
        state="in_progress" if details else "succeeded",
        requested_by=request.requested_by,
        reason=request.reason,
        steps=[
            PlannedStep(p.step.name, p.step.optional, p.plan.max_attempts)
            for p in step_plans(config, target, spec)
        ],
    )
    if details:
        for name, detail in details.items():
            audit.step_finished(run_id, name, "skipped", detail=detail)
        audit.finish_run(run_id, "succeeded")
    return run_id
