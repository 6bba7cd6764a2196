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
from flows.recovery_flows import RECOVERY_FLOWS
from recovery.config.loader import load_config
from recovery.redact import install_log_redaction
from recovery.reporting.stats import parse_window
from tasks.stats import compute_stats, publish_history, publish_stats
from tasks.status import publish_status

# Flows whose runs are recoveries: one per workflow, plus ``recover`` (manual triggers).
RECOVERY_FLOW_NAMES = [*RECOVERY_FLOWS, "recover"]


@flow(name="recovery-stats", log_prints=False)
async def recovery_stats(
    since: Annotated[str, Field(description="Window, e.g. 1h, 24h, 7d.")] = "24h",
    config_path: str | None = None,
) -> list[dict[str, Any]]:
    """Stats of the recovery runs started in the last ``since`` (table + markdown artifacts)."""
    install_log_redaction()
    until = datetime.now(UTC)
    report = await compute_stats(config_path, until - parse_window(since), until, RECOVERY_FLOW_NAMES)
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
async def recovery_history(
    limit: Annotated[int, Field(ge=1, le=1000, description="How many runs.")] = 20,
    config_path: str | None = None,
) -> int:
    """The last ``limit`` recovery runs as a table artifact, linking to their flow runs."""
    install_log_redaction()
    return await publish_history(config_path, limit, ui_url())


@flow(name="recovery-status", log_prints=False)
async def recovery_status(config_path: str | None = None) -> list[dict[str, Any]]:
    """Publish the status board now (the monitor does it every cycle)."""
    install_log_redaction()
    rows = await publish_status(load_config(config_path))
    signals.monitor_cycle([], rows)
    return [r.as_json() for r in rows]


OBSERVABILITY_FLOWS = {
    "recovery-stats": recovery_stats,
    "recovery-history": recovery_history,
    "recovery-status": recovery_status,
}
