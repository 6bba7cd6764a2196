"""The status board task: ``recovery.reporting.status`` rows published as the ``recovery-status`` artifact."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import task
from prefect.artifacts import acreate_table_artifact
from prefect.cache_policies import NO_CACHE

from recovery.blocking import blocking
from recovery.config.loader import RecoveryConfig
from recovery.reporting.status import TargetStatus, collect_status, status_table

STATUS_KEY = "recovery-status"


@task(name="publish-status", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=1)
async def publish_status(config: RecoveryConfig) -> list[TargetStatus]:
    """Build the board from shared state + audit and publish it (one row per target)."""
    rows = await blocking(collect_status, config)  # Redis + SQL: never on the event loop
    table = status_table(rows) or [{"target": "—", "health": "no targets configured"}]
    unhealthy = sum(r.health == "unhealthy" for r in rows)
    await acreate_table_artifact(
        table=table,
        key=STATUS_KEY,
        description=(
            f"Recovery status board, {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC: "
            f"{len(rows)} targets, {unhealthy} unhealthy. Updated by every monitor cycle."
        ),
    )
    return rows
