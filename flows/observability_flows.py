"""Observability flows: stats, history and the status board as Prefect artifacts.

recovery-stats     per target/workflow stats over a window (``recovery-stats`` table +
                   ``recovery-stats-summary`` markdown), cross-checked with Prefect's history
recovery-history   the last N runs (``recovery-history`` table) linking to their flow runs
recovery-status    the status board (``recovery-status``); the monitor also updates it every cycle
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.settings import PREFECT_UI_URL
from pydantic import Field

from flows import signals
from flows.recovery_flows import OPERATION_FLOWS, RECOVERY_FLOWS
from recovery.config.loader import load_config
from recovery.redact import install_log_redaction
from recovery.reporting.stats import parse_window
from tasks.stats import compute_stats, publish_history, publish_stats
from tasks.status import publish_status

# Flows whose runs are recoveries: one per workflow, plus ``recover`` (manual triggers).
RECOVERY_FLOW_NAMES = [*RECOVERY_FLOWS, *OPERATION_FLOWS, "recover"]
# A window: a number and a unit (recovery.reporting.stats.parse_window checks the range).
Window = Annotated[str, Field(max_length=16, pattern=r"^[0-9]{1,6}(\.[0-9]{1,3})?[smhdw]$")]


@flow(name="recovery-stats", log_prints=False)
async def recovery_stats(since: Window = "24h") -> list[dict[str, Any]]:
    """Stats of the recovery runs started in the last ``since`` (table + markdown artifacts).

    Args:
        since: Window, e.g. 30m, 24h, 7d.
    """
    install_log_redaction()
    until = datetime.now(UTC)
    config = load_config()
    flow_names = [*RECOVERY_FLOW_NAMES, *config.workflows]  # + the flows of config-defined workflows
    report = await compute_stats(config, until - parse_window(since), until, flow_names)
    await publish_stats(report)
    unaudited = sum(g.unaudited for g in report.groups)
    get_run_logger().info(
        "stats since %s: %d runs in %d target/workflow groups (%d known only to Prefect)",
        since,
        sum(g.runs for g in report.groups),
        len(report.groups),
        unaudited,
    )
    return report.as_json()


def ui_url() -> str | None:
    """Prefect UI base URL (``PREFECT_UI_URL``; derived from a local API URL when unset)."""
    value = PREFECT_UI_URL.value()
    return str(value) if value else None


@flow(name="recovery-history", log_prints=False)
async def recovery_history(limit: Annotated[int, Field(ge=1, le=1000)] = 20) -> int:
    """The last ``limit`` recovery runs as a table artifact, linking to their flow runs.

    Args:
        limit: How many runs, newest first (1-1000).
    """
    install_log_redaction()
    return await publish_history(load_config(), limit, ui_url())


@flow(name="recovery-status", log_prints=False)
async def recovery_status() -> list[dict[str, Any]]:
    """Publish the status board now (the monitor does it every cycle)."""
    install_log_redaction()
    rows = await publish_status(load_config())
    signals.monitor_cycle([], rows)
    return [r.as_json() for r in rows]


OBSERVABILITY_FLOWS = {
    "recovery-stats": recovery_stats,
    "recovery-history": recovery_history,
    "recovery-status": recovery_status,
}
