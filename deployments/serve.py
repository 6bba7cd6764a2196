"""Serve every deployment from one process (``recovery serve``).

``serve()`` pauses its deployments' schedules on shutdown by default; a restart of this process
must not silently switch auto-recovery off, so it is called with ``pause_on_shutdown=False``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.monitor import monitor
from flows.recovery_flows import RECOVERY_FLOWS
from recovery.config import load_config, resolve_config_path


def build_deployments(config_path: str | None = None) -> list[RunnerDeployment]:
    path = str(resolve_config_path(config_path).resolve())
    config = load_config(path)
    # to_deployment is sync-or-async ("async_dispatch"); called from sync code it returns the value.
    deployments: list[RunnerDeployment] = [
        cast(
            RunnerDeployment,
            monitor.to_deployment(
                name="monitor",
                interval=timedelta(seconds=config.monitor.interval_seconds),
                parameters={"config_path": path},
                concurrency_limit=1,  # a slow cycle must not overlap the next one
                tags=["recovery", "monitor"],
            ),
        )
    ]
    for name, flow in RECOVERY_FLOWS.items():
        params: dict[str, Any] = {"config_path": path}
        deployments.append(
            cast(RunnerDeployment, flow.to_deployment(name=name, parameters=params, tags=["recovery"]))
        )
    return deployments


def serve_all(config_path: str | None = None, limit: int | None = None) -> None:
    serve(*build_deployments(config_path), pause_on_shutdown=False, limit=limit)
