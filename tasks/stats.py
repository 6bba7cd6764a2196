"""Stats and history tasks: SQL aggregation in the core, cross-checked with Prefect's run history.

``compute_stats`` adds to the audit's numbers the recovery flow runs that Prefect saw end
Failed/Crashed/Cancelled but that never wrote an audit row (a crash before ``begin()``, an
audit database that was down): those count as failed (cancelled). Every run of these flows
loads the worker's config (no run chooses its own), so a run counts when its target is one of
this config's targets; nothing here opens a path found in another run's parameters.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from prefect import task
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterId,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort

from recovery.audit.store import AuditStore
from recovery.config.loader import RecoveryConfig
from recovery.engine.workflows import select_workflow
from recovery.redact import redact
from recovery.reporting import stats as core
from recovery.reporting import unaudited as merge
from recovery.reporting.report import history_markdown, history_table, stats_markdown, stats_table
from recovery.services import services_for

STATS_KEY = "recovery-stats"
STATS_SUMMARY_KEY = "recovery-stats-summary"
HISTORY_KEY = "recovery-history"
PAGE = 200
ENDED_BADLY = (StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)


async def _ended_badly(names: list[str], since: datetime, until: datetime) -> dict[str, list[FlowRun]]:
    """Flow runs of the named flows that ended Failed/Crashed/Cancelled in the window, by flow."""
    async with get_client() as client:
        flows = await client.read_flows(flow_filter=FlowFilter(name=FlowFilterName(any_=names)))
        by_id = {f.id: f.name for f in flows}
        if not by_id:
            return {}
        out: dict[str, list[FlowRun]] = {}
        offset = 0
        while True:
            page = await client.read_flow_runs(
                flow_filter=FlowFilter(id=FlowFilterId(any_=list(by_id))),
                flow_run_filter=FlowRunFilter(
                    expected_start_time=FlowRunFilterExpectedStartTime(after_=since, before_=until),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(ENDED_BADLY))),
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=PAGE,
                offset=offset,
            )
            for run in page:
                out.setdefault(by_id[run.flow_id], []).append(run)
            if len(page) < PAGE:
                return out
            offset += PAGE


def _workflow(config: RecoveryConfig, flow_name: str, params: dict[str, Any]) -> str:
    if flow_name != "recover":
        return flow_name
    return str(params.get("workflow") or select_workflow(config.target(str(params["target"]))).name)


async def prefect_only_runs(
    config: RecoveryConfig, store: AuditStore, flow_names: list[str], since: datetime, until: datetime
) -> list[merge.UnauditedRun]:
    """Recovery flow runs that ended badly in the window and have no audit row."""
    ended = await _ended_badly(flow_names, since, until)
    runs = [(name, run) for name, items in ended.items() for run in items]
    audited = await asyncio.to_thread(merge.audited_flow_run_ids, store, [str(r.id) for _, r in runs])
    known = {t.name for t in config.targets}
    out: list[merge.UnauditedRun] = []
    for name, run in runs:
        params = run.parameters or {}
        if str(run.id) in audited or params.get("target") not in known:
            continue
        state_type = run.state.type if run.state else StateType.CRASHED
        at = run.end_time or run.start_time or run.expected_start_time or until
        out.append(
            merge.UnauditedRun(
                flow_run_id=str(run.id),
                target=str(params["target"]),
                workflow=_workflow(config, name, params),
                state="cancelled" if state_type == StateType.CANCELLED else "failed",
                at=at,
                error_type=f"Flow{state_type.value.title()}",
                message=redact(run.state.message) if run.state and run.state.message else None,
            )
        )
    return out


@task(name="compute-stats", cache_policy=NO_CACHE)
async def compute_stats(
    config: RecoveryConfig, since: datetime, until: datetime, flow_names: list[str]
) -> core.StatsReport:
    """Audit stats (SQL) for the window, plus the runs only Prefect's history knows about."""
    store = services_for(config).audit
    report = await asyncio.to_thread(core.compute_stats, store, since, until)
    unaudited = await prefect_only_runs(config, store, flow_names, since, until)
    return merge.merge_unaudited(report, unaudited)


@task(name="publish-stats", cache_policy=NO_CACHE)
async def publish_stats(report: core.StatsReport) -> None:
    """The ``recovery-stats`` table artifact and its markdown summary."""
    window = f"{report.since:%Y-%m-%d %H:%M} to {report.until:%Y-%m-%d %H:%M} UTC"
    await acreate_table_artifact(
        table=stats_table(report) or [{"target": "—", "workflow": "—", "runs": "0"}],
        key=STATS_KEY,
        description=f"Recovery runs per target and workflow, {window}",
    )
    await acreate_markdown_artifact(
        markdown=stats_markdown(report), key=STATS_SUMMARY_KEY, description=f"Recovery summary, {window}"
    )


@task(name="publish-history", cache_policy=NO_CACHE)
async def publish_history(config: RecoveryConfig, limit: int, ui_url: str | None) -> int:
    """The last ``limit`` runs as the ``recovery-history`` table artifact (links to flow runs)."""
    store = services_for(config).audit
    runs = await asyncio.to_thread(store.history, None, limit)
    table = history_table(runs, ui_url)
    links = history_markdown(runs, ui_url)
    await acreate_table_artifact(
        table=table or [{"started": "—", "target": "—", "state": "no recoveries recorded"}],
        key=HISTORY_KEY,
        description=f"Last {limit} recovery runs, newest first."
        + (f" Flow runs in the Prefect UI:\n\n{links}" if links else ""),
    )
    return len(runs)
