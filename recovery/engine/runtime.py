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
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from recovery.audit.records import PlannedStep
from recovery.audit.store import AuditStore
from recovery.backends.state import SharedState
from recovery.blocking import CancelledAfter, blocking, blocking_to_end
from recovery.client.breakers import FleetBreaker, breaker_for_target, open_breaker
from recovery.config.loader import RecoveryConfig, TargetConfig
from recovery.engine.probing import probe_once
from recovery.engine.workflows import (
    PlannedStepRetry,
    WorkflowSpec,
    select_workflow,
    step_plans,
    workflow_named,
)
from recovery.enums import RunType
from recovery.errors import PermanentError, RecoveryRefused, TemporaryError
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
        self.breaker_closed_by_us = False  # set when our reset step closed the breaker
        # ``plan``: what admission computed from the target's history (adaptive strategies).
        self.plans: dict[str, PlannedStepRetry] = {
            p.step.name: p for p in step_plans(config, target, spec, plan)
        }
        self.admission: Admission | None = None  # the strategy decision; settled by finish()

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
        spec = workflow_named(request.workflow, target) if request.workflow else select_workflow(target)
        services = services_for(config)
        audit, state = services.audit, services.state
        run_id = run_id or str(uuid.uuid4())
        owner = request.lock_token or run_id

        def refused(reason: str, escalate: bool = False) -> RecoveryRefused:
            refuse(audit, request, spec.name, reason, run_id, flow_run_id)
            return RecoveryRefused(reason, escalate=escalate)

        if request.lock_token is None:
            if not state.acquire_lock(target.name, owner, config.monitor.lock_ttl_seconds):
                holder = state.lock_owner(target.name) or "unknown"
                raise refused(f"recovery already in progress for {target.name} (run {holder})")
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
        rt.options = dict(request.options or {})
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
            )
        except Exception:
            admission.settle("not-started")
            state.release_lock(target.name, owner)  # never hold a lock for a run that is not audited
            raise
        return rt

    @classmethod
    async def abegin(
        cls,
        config: RecoveryConfig,
        request: RecoveryRequest,
        run_id: str | None = None,
        flow_run_id: str | None = None,
    ) -> RecoveryRuntime:
        """``begin`` off the event loop. A cancellation waits for it and finishes the run it
        began as ``cancelled``: nobody else would ever finish that row or release that lock."""
        try:
            return await blocking_to_end(cls.begin, config, request, run_id, flow_run_id)
        except CancelledAfter as exc:
            if isinstance(exc.result, RecoveryRuntime):
                await blocking_to_end(exc.result.finish, "cancelled", asyncio.CancelledError())
            raise

    def _start_attempt(self, name: str, attempt: int) -> None:
        self.audit.step_attempt(self.run_id, name, attempt)
        if not self.state.refresh_lock(self.target.name, self.owner, self.config.monitor.lock_ttl_seconds):
            error = PermanentError(f"lost the recovery lock of {self.target.name}; stopping")
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
            await blocking(self.audit.step_finished, self.run_id, name, "failed", exc)
            raise
        except Exception as exc:
            await blocking(self.audit.step_finished, self.run_id, name, "failed", exc)
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

    def finish(self, state: str, error: BaseException | None = None) -> None:
        try:
            self.audit.finish_run(self.run_id, state, error)
        finally:
            if self.admission is not None:
                self.admission.settle(state)  # a breaker_aligned probe closes or re-opens the breaker
            if state != "succeeded" and self.breaker_closed_by_us:
                self._reopen_breaker()
            elif self.breaker_closed_by_us:
                self._close_lease("confirm")  # verified: the close stands (else it lapses to open)
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


def refuse(
    audit: AuditStore,
    request: RecoveryRequest,
    workflow: str,
    reason: str,
    run_id: str | None,
    flow_run_id: str | None = None,
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
    )


def record_dry_run(
    config: RecoveryConfig, request: RecoveryRequest, details: dict[str, Detail] | None = None
) -> str:
    """Audit a dry run: the plan is recorded, nothing is locked or touched. ``details``: what a
    step found without acting (clear-cache's count), kept on its skipped step row."""
    target = config.target(request.target)
    spec = workflow_named(request.workflow, target) if request.workflow else select_workflow(target)
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
