"""The status board task: ``recovery.reporting.status`` rows published as the ``recovery-status`` artifact."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import task
from prefect.artifacts import acreate_table_artifact
from prefect.cache_policies import NO_CACHE

from recovery.blocking import blocking
from recovery.config.loader import RecoveryConfig
from recovery.reporting.board import BoardGate
from recovery.reporting.status import TargetStatus, collect_status, status_table

STATUS_KEY = "recovery-status"


def board_table(rows: list[TargetStatus]) -> list[dict[str, str]]:
    return status_table(rows) or [{"target": "—", "health": "no targets configured"}]


@task(name="publish-status", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
async def publish_table(table: list[dict[str, str]], targets: int, unhealthy: int) -> None:
    """Publish one version of the board (a new version of the ``recovery-status`` artifact)."""
    await acreate_table_artifact(
        table=table,
        key=STATUS_KEY,
        description=(
            f"Recovery status board, {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC: "
            f"{targets} targets, {unhealthy} unhealthy. Updated by the monitor when a row changes."
        ),
    )


async def publish_status(config: RecoveryConfig, gate: BoardGate | None = None) -> list[TargetStatus]:
    """Build the board from shared state + audit and publish it (one row per target).

    With a ``gate`` (the served monitor's), an unchanged board is not published again until
    its heartbeat is due; the rows are returned either way (gauges, flapping escalations)."""
    rows = await blocking(collect_status, config)  # Redis + SQL: never on the event loop
    table = board_table(rows)
    if gate is None or gate.due(table):
        await publish_table(table, len(rows), sum(r.health == "unhealthy" for r in rows))
        if gate is not None:
            gate.published(table)
    return rows
