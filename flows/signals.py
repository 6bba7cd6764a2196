"""What the flows tell the outside world: Prometheus metrics and escalation events.

Events (``prefect.events.emit_event``), each about the resource ``recovery.target.<name>`` so a
Prefect automation can page someone (docs/automations.md):

    recovery.failed    a recovery run ended failed (or its flow run crashed)
    recovery.refused   a recovery was refused and a person must look (budget exhausted, the
                       same error repeating: ``RecoveryRefused.escalate``); a refusal because
                       another run holds the lock is normal operation and emits nothing
    target.flapping    a target started flapping, or a recovery was held off because it flaps

Neither metrics nor events may break a flow: failures here are logged and swallowed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from prefect.events import emit_event

from recovery.engine.monitor import Decision
from recovery.redact import redact
from recovery.reporting import metrics
from recovery.reporting.status import TargetStatus

logger = logging.getLogger("recovery.signals")

RESOURCE_PREFIX = "recovery.target."


def target_resource(target: str) -> dict[str, str]:
    return {"prefect.resource.id": f"{RESOURCE_PREFIX}{target}", "prefect.resource.name": target}


def _emit(event: str, target: str, payload: dict[str, Any]) -> None:
    clean = {k: redact(v) if isinstance(v, str) else v for k, v in payload.items()}
    try:
        emit_event(event=event, resource=target_resource(target), payload=clean)
    except Exception as exc:  # an escalation problem must not fail the recovery it reports
        logger.warning("could not emit %s for %s: %s", event, target, redact(str(exc)))


def _metrics(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:
        logger.warning("could not update metrics: %s", redact(str(exc)))


def run_finished(
    target: str,
    workflow: str,
    run_type: str,
    state: str,
    duration_seconds: float | None,
    run_id: str | None = None,
    error: BaseException | str | None = None,
) -> None:
    """A recovery run ended (succeeded/failed/cancelled): count it; escalate a failure."""
    _metrics(metrics.record_run, target, workflow, run_type, state, duration_seconds)
    if state == "failed":
        _emit(
            "recovery.failed",
            target,
            {
                "target": target,
                "workflow": workflow,
                "type": run_type,
                "run_id": run_id,
                "error_type": type(error).__name__ if isinstance(error, BaseException) else "Error",
                "error": str(error) if error is not None else None,
            },
        )


def run_refused(target: str, workflow: str, run_type: str, reason: str, escalate: bool) -> None:
    """A recovery was refused: count it; escalate when a person must act."""
    _metrics(metrics.record_run, target, workflow, run_type, "refused", None)
    if escalate:
        _emit(
            "recovery.refused",
            target,
            {"target": target, "workflow": workflow, "type": run_type, "reason": reason},
        )


def monitor_cycle(decisions: Sequence[Decision], board: Iterable[TargetStatus]) -> list[str]:
    """After a monitor cycle: gauges from decisions and the board; flapping escalations.

    Returns the targets a ``target.flapping`` event was emitted for.
    """
    _metrics(metrics.observe_decisions, decisions)
    _metrics(metrics.observe_status, list(board))
    flapping = []
    for d in decisions:
        if d.flap_started or d.action == "flapping":
            flapping.append(d.target)
            _emit(
                "target.flapping",
                d.target,
                {
                    "target": d.target,
                    "percent_state_change": d.flap_percent,
                    "held_off_recovery": d.action == "flapping",
                    "healthy": d.healthy,
                    "reason": d.reason,
                    "consecutive_failures": d.failures,
                },
            )
    return flapping
