"""Operator views of the breakers: status of all (or one) targets, and an audited manual reset.

Used by the ``circuit-breaker-status`` / ``reset-circuit-breaker`` flows and by the CLI
(``recovery breaker-status`` reads without Prefect). Both raise ``StateUnavailable`` when the
breaker state cannot be read or written: an operator must not mistake "unknown" for "closed".

A reset probes the target first (the monitor's prober, bounded by ``RESET_PROBE_SECONDS``):
closing the breaker in front of a target that still fails would just send traffic into the
failure. An unhealthy target's reset is refused (``reset_refusal``) unless the caller forces it,
and a forced reset is audited as such (its step detail: ``forced`` and the probe's reason).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from recovery.audit.records import PlannedStep
from recovery.client.breakers import OPEN, breaker_for
from recovery.config.loader import RecoveryConfig
from recovery.jsonable import to_json
from recovery.kinds.base import ProbeResult
from recovery.services import services_for

RESET_WORKFLOW = "reset-circuit-breaker"
RESET_STEP = "reset_circuit_breaker"
# The outer bound of the pre-reset probe (each prober also has its target's own timeouts).
RESET_PROBE_SECONDS = 15.0


def reset_refusal(probe: ProbeResult) -> str | None:
    """Why a reset is refused after ``probe`` of its target (None: healthy, go ahead)."""
    if probe.healthy:
        return None
    return (
        f"{probe.target} is unhealthy ({probe.reason}): breaker not reset "
        "(force: true, with a reason, resets it anyway)"
    )


@dataclass(frozen=True)
class BreakerStatus:
    target: str
    state: str
    fail_counter: int
    fail_max: int
    opened_at: float | None
    reset_timeout_seconds: float
    half_open_in_seconds: float | None  # open: seconds until a probe may run
    probe_holder: str | None
    unverified_by: str | None  # closed by this recovery run, which has not verified the target yet
    reopens_in_seconds: float | None  # ...and re-opens after this unless the run verifies it
    storage: str
    on_state_unavailable: str

    def as_json(self) -> dict[str, Any]:
        opened_at = datetime.fromtimestamp(self.opened_at, UTC).isoformat() if self.opened_at else None
        return to_json(self, opened_at=opened_at)


def _state_url(config: RecoveryConfig) -> str | None:
    return config.state_url.get_secret_value() if config.state_url else None


def breaker_statuses(
    config: RecoveryConfig, target: str | None = None, now: float | None = None
) -> list[BreakerStatus]:
    """Status of every target's breaker (or of ``target``'s; unknown target -> ``ConfigError``)."""
    # "is not None": an empty name is an unknown target, never "all of them" (issue 11).
    targets = [config.target(target)] if target is not None else list(config.targets)
    now = time.time() if now is None else now
    out: list[BreakerStatus] = []
    for t in targets:
        breaker = breaker_for(t.name, t.breaker, _state_url(config))
        snap = breaker.snapshot()
        half_open_in = None
        if snap.state == OPEN:
            opened = snap.opened_at if snap.opened_at is not None else now
            half_open_in = round(max(0.0, opened + t.breaker.reset_timeout_seconds - now), 3)
        out.append(
            BreakerStatus(
                target=t.name,
                state=snap.state,
                fail_counter=snap.fail_counter,
                fail_max=t.breaker.fail_max,
                opened_at=snap.opened_at,
                reset_timeout_seconds=t.breaker.reset_timeout_seconds,
                half_open_in_seconds=half_open_in,
                probe_holder=snap.probe_holder,
                unverified_by=snap.close_lease_owner,
                reopens_in_seconds=round(snap.close_lease_seconds, 3) if snap.close_lease_seconds else None,
                storage=breaker.store.description,
                on_state_unavailable=t.breaker.on_state_unavailable,
            )
        )
    return out


def reset_breaker(
    config: RecoveryConfig,
    target: str,
    *,
    requested_by: str | None,
    reason: str | None,
    run_id: str | None = None,
    flow_run_id: str | None = None,
    probe: ProbeResult | None = None,
) -> dict[str, Any]:
    """Close ``target``'s breaker by hand, audited as a one-step ``reset-circuit-breaker`` run.

    The target's recovery lock is not taken: a reset is an operator override, and it is
    recorded (who, why, state before and after) like any recovery. ``probe``: the pre-reset
    probe; an unhealthy one makes this a forced reset, audited ``forced`` with its reason.
    """
    t = config.target(target)
    audit = services_for(config).audit  # durable: spooled while the audit store is down
    run_id = audit.start_run(
        run_id=run_id or str(uuid.uuid4()),
        target=t.name,
        workflow=RESET_WORKFLOW,
        run_type="manual",
        steps=[PlannedStep(RESET_STEP, False, 1)],
        requested_by=requested_by,
        reason=reason,
        flow_run_id=flow_run_id,
    )
    audit.step_attempt(run_id, RESET_STEP, 1)
    breaker = breaker_for(t.name, t.breaker, _state_url(config))
    try:
        before = breaker.snapshot()
        breaker.close()
        after = breaker.snapshot()
    except Exception as exc:
        audit.step_finished(run_id, RESET_STEP, "failed", exc)
        audit.finish_run(run_id, "failed", exc)
        raise
    detail: dict[str, Any] = {
        "before": before.state,
        "after": after.state,
        "fail_counter_before": before.fail_counter,
    }
    if probe is not None:
        detail.update(forced=not probe.healthy, probe=probe.reason)
    audit.step_finished(run_id, RESET_STEP, "succeeded", detail=detail)
    audit.finish_run(run_id, "succeeded")
    return {"run_id": run_id, "target": t.name, "state": "succeeded", **detail}
