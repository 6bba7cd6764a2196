"""What the flows tell the outside world: Prometheus metrics and escalation events.

Events (``prefect.events.emit_event``), each about the resource ``recovery.target.<name>`` so a
Prefect automation can page someone (docs/automations.md):

    recovery.failed    a recovery run ended without success: failed, cancelled (by a person or
                       the runtime, e.g. SIGTERM), crashed, or orphaned (its process died and
                       reconcile finished its row); the target is still unrecovered
    recovery.refused   a recovery was refused and a person must look (budget exhausted, the
                       same error repeating: ``RecoveryRefused.escalate``); a refusal because
                       another run holds the lock is normal operation and emits nothing
    target.flapping    a target started flapping, or a recovery was held off because it flaps
    recovery.escalation-exhausted
                       the last rung of a target's escalation ladder ended failed, cancelled or
                       refused: nothing automatic is left for this incident (once per incident:
                       the monitor starts no more rungs until the target is healthy again)

Neither metrics nor events may break a flow: failures here are logged and swallowed.

``recovery.failed`` / ``recovery.refused`` carry an event id derived from the audit run id: the
flow's ``finally``, a crash hook run by a Prefect worker and the monitor's reconcile pass may
each report one dead run, and Prefect stores (and triggers automations on) an id only once.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from prefect.events import emit_event

from recovery.blocking import blocking
from recovery.config.loader import load_config
from recovery.engine.incidents import first_report, incident_id, reason_tag
from recovery.engine.lifecycle import Phase, RunDetails, add_hook
from recovery.engine.monitor import Decision
from recovery.enums import RunState
from recovery.redact import redact
from recovery.reporting import metrics
from recovery.reporting.status import TargetStatus
from recovery.services import services_for

logger = logging.getLogger("recovery.signals")

RESOURCE_PREFIX = "recovery.target."
EVENT_ID_NAMESPACE = uuid.UUID("5b0f3c8e-6a4e-4f43-9d0e-6f1d2c7a9b10")  # fixed: ids must be stable


def run_event_id(event: str, run_id: str | None) -> uuid.UUID | None:
    """The one id of ``event`` about audit run ``run_id`` (None: no run id, a random id)."""
    return uuid.uuid5(EVENT_ID_NAMESPACE, f"{event}:{run_id}") if run_id else None


def target_resource(target: str, incident: str | None = None) -> dict[str, str]:
    resource = {"prefect.resource.id": f"{RESOURCE_PREFIX}{target}", "prefect.resource.name": target}
    if incident:  # automations may group on it (docs/automations.md)
        resource["recovery.incident"] = incident
    return resource


def _emit(
    event: str,
    target: str,
    payload: dict[str, Any],
    event_id: uuid.UUID | None = None,
    incident: str | None = None,
) -> None:
    clean = {k: redact(v) if isinstance(v, str) else v for k, v in payload.items()}
    try:
        resource = target_resource(target, incident)
        emit_event(event=event, resource=resource, payload=clean, id=event_id)
    except Exception as exc:  # an escalation problem must not fail the recovery it reports
        logger.warning("could not emit %s for %s: %s", event, target, redact(str(exc)))


def _metrics(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except Exception as exc:
        logger.warning("could not update metrics: %s", redact(str(exc)))


def metrics_hook(details: RunDetails) -> None:
    """Count every finished run (refusals included) and observe its duration."""
    if details.phase is Phase.FINISHED:
        metrics.record_run(
            details.target, details.workflow, details.run_type, details.state, details.duration_seconds
        )


def _first_report(details: RunDetails) -> bool:
    """Whether this end is its incident's (or ladder rung's) first of its kind
    (engine/incidents.py); True when the audit store cannot say (better a second page than none)."""
    try:
        audit = services_for(load_config()).audit
        return first_report(
            audit,
            details.target,
            details.first_failure_at,
            details.run_id,
            details.state,
            details.reason,
            rung=details.rung,
        )
    except Exception as exc:
        logger.warning("incident of %s not checked: %s", details.target, redact(str(exc)))
        return True


async def events_hook(details: RunDetails) -> None:
    """``recovery.failed`` for a run that ended failed or cancelled; ``recovery.refused`` for a
    refusal a person must see. Once per incident and ladder rung: the first such end emits
    (``incident`` in the payload and on the resource), later ones of the same outage and rung do
    not; the event id is the incident's (and rung's), so two processes reporting one end still
    make one event. The last rung of a ladder ending badly also emits
    ``recovery.escalation-exhausted`` (its id from the run: the monitor starts nothing after it)."""
    if details.phase is not Phase.FINISHED or details.extra.get("taken_over"):
        return  # a person's emergency took this run over: nothing to page about
    incident = incident_id(details.target, details.first_failure_at, details.run_id)
    base: dict[str, Any] = {"target": details.target, "workflow": details.workflow, "type": details.run_type}
    base["incident"] = incident
    if details.rung is not None:
        base.update(rung=details.rung, rungs=details.rungs)
    if details.ladder_exhausted:
        exhausted = {**base, "state": details.state, "run_id": details.run_id}
        event = "recovery.escalation-exhausted"
        _emit(event, details.target, exhausted, run_event_id(event, details.run_id), incident)
    failed = details.state in (RunState.FAILED, RunState.CANCELLED)
    if not (failed or (details.state is RunState.REFUSED and details.escalate)):
        return
    if not await blocking(_first_report, details):
        logger.info("%s of %s: incident already reported; no new event", details.state, details.target)
        return
    key = incident if details.rung is None else f"{incident}:rung{details.rung}"
    if failed:
        payload = {
            **base,
            "state": details.state,
            "run_id": details.run_id,
            "error_type": details.error_type or "Error",
            "error": details.error_text,
        }
        _emit("recovery.failed", details.target, payload, run_event_id("recovery.failed", key), incident)
    else:
        payload = {**base, "run_id": details.run_id, "reason": details.reason}
        event_id = run_event_id(f"recovery.refused:{reason_tag(details.reason)}", key)
        _emit("recovery.refused", details.target, payload, event_id, incident)


def install_hooks() -> None:
    """Register the flows' run hooks (idempotent; every recovery flow calls it at start)."""
    add_hook(metrics_hook)
    add_hook(events_hook)


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
