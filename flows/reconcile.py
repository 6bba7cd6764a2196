"""The monitor's reconcile pass: the core's ``reconcile`` plus what only Prefect knows.

``recovery.engine.reconcile`` is Prefect-free; here it learns which flow runs Prefect reports
as crashed (their rows become ``Crashed`` rather than ``Orphaned``), and every run it finishes
is reported through the run hooks like any other end (``recovery.failed``, metrics). The event
id is the run's (flows/signals.py), so a run the dead process or a crash hook already reported
is still one event.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Collection, Sequence

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterState
from prefect.client.schemas.filters import FlowRunFilterStateType as StateTypeFilter
from prefect.client.schemas.objects import StateType

from flows import signals
from recovery.config.loader import RecoveryConfig
from recovery.engine.lifecycle import Phase, RunDetails, emit
from recovery.engine.reconcile import ReconciledRun, reconcile
from recovery.enums import RunState, RunType
from recovery.redact import redact

logger = logging.getLogger("recovery.reconcile")


def crashed_flow_runs(flow_run_ids: Sequence[str]) -> Collection[str]:
    """Those of ``flow_run_ids`` whose flow run Prefect reports as crashed (sync: the core's
    callback runs in a worker thread)."""
    ids = []
    for value in flow_run_ids:
        try:
            ids.append(uuid.UUID(value))
        except ValueError:  # a caller's request_id that is no flow run id
            continue
    if not ids:
        return set()
    flt = FlowRunFilter(
        id=FlowRunFilterId(any_=ids), state=FlowRunFilterState(type=StateTypeFilter(any_=[StateType.CRASHED]))
    )
    with get_client(sync_client=True) as client:
        return {str(run.id) for run in client.read_flow_runs(flow_run_filter=flt, limit=len(ids))}


async def reconcile_runs(config: RecoveryConfig) -> list[ReconciledRun]:
    """Finish the rows of dead recoveries and report each end; never raises (a monitor cycle
    must run even when the audit store or Redis cannot be read: it is logged)."""
    try:
        report = await asyncio.to_thread(reconcile, config, crashed=crashed_flow_runs)
    except Exception as exc:
        logger.warning("reconcile skipped: %s", redact(str(exc)))
        return []
    signals.install_hooks()
    for run in report.finished:
        run_type = RunType(run.run_type) if run.run_type in RunType.__members__.values() else RunType.MANUAL
        details = RunDetails(
            Phase.FINISHED,
            run.target,
            run.workflow,
            run_type,
            run.run_id,
            RunState.FAILED,
            error=run.error,
            first_failure_at=run.first_failure_at,
        )
        await emit(details)
    return list(report.finished)
