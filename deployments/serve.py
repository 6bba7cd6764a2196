"""Every deployment, built from one table and served from one process (``recovery serve``).

The same table is what ``prefect.yaml`` declares (a test keeps the two in step). Notes:
- ``serve()`` pauses its deployments' schedules on shutdown by default; a restart of this
  process must not silently switch auto-recovery off, so it runs with ``pause_on_shutdown=False``.
- ``config_path`` is frozen (read-only in the UI/API): a caller of the REST API chooses the
  target and the reason, never which config file (and so which credentials) the flow loads.
- ``target`` is an enum of the configured target names, so the UI renders a choice and the API
  rejects an unknown target before a flow run is created.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, cast

from prefect import Flow, serve
from prefect.deployments.runner import RunnerDeployment
from prefect.utilities.annotations import freeze

from recovery.config.loader import RecoveryConfig, load_config, resolve_config_path


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    entrypoint: str  # "module:function", the same string prefect.yaml uses (with .py path)
    description: str
    schedule: str | None = None  # "monitor" -> config interval; "hourly"
    concurrency_limit: int | None = None
    tags: tuple[str, ...] = field(default=("recovery",))


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        "monitor",
        "flows.monitor:monitor",
        "Probe every target, apply thresholds, run recoveries as subflows.",
        schedule="monitor",
        concurrency_limit=1,
        tags=("recovery", "monitor"),
    ),
    DeploymentSpec(
        "recover",
        "flows.manual_flows:recover",
        "Recover a target now: manual, scheduled or emergency trigger (the seed's /trigger).",
    ),
    DeploymentSpec(
        "recovery-status",
        "flows.observability_flows:recovery_status",
        "Publish the status board (the seed's /status).",
    ),
    DeploymentSpec(
        "reset-circuit-breaker",
        "flows.breaker_flows:reset_circuit_breaker",
        "Close a target's circuit breaker, audited (/circuit-breaker/reset).",
    ),
    DeploymentSpec(
        "circuit-breaker-status",
        "flows.breaker_flows:circuit_breaker_status",
        "Breaker state of one or all targets (/circuit-breaker/status).",
    ),
    DeploymentSpec(
        "clear-cache",
        "flows.recovery_flows:clear_cache",
        "Clear a cache target's keys, audited (/cache/clear).",
    ),
    DeploymentSpec(
        "reconnect-database",
        "flows.recovery_flows:reconnect_database",
        "Reset a database target's connection pools, audited (/database/reconnect).",
    ),
    DeploymentSpec(
        "recovery-history",
        "flows.observability_flows:recovery_history",
        "Publish the last N recoveries (/history).",
    ),
    DeploymentSpec(
        "recovery-stats",
        "flows.observability_flows:recovery_stats",
        "Publish recovery statistics (/stats); also hourly.",
        schedule="hourly",
    ),
)


def load_flow(entrypoint: str) -> Flow[..., Any]:
    module, _, attr = entrypoint.partition(":")
    return cast(Flow[..., Any], getattr(importlib.import_module(module), attr))


def _deployment(spec: DeploymentSpec, config: RecoveryConfig, path: str) -> RunnerDeployment:
    flow = load_flow(spec.entrypoint)
    params: dict[str, Any] = {}
    if "config_path" in flow.parameters.properties:
        params["config_path"] = freeze(path)
    interval: timedelta | None = None
    if spec.schedule == "monitor":
        interval = timedelta(seconds=config.monitor.interval_seconds)
    elif spec.schedule == "hourly":
        interval = timedelta(hours=1)
    # to_deployment is sync-or-async ("async_dispatch"); called from sync code it returns the value.
    deployment = cast(
        RunnerDeployment,
        flow.to_deployment(
            name=spec.name,
            description=spec.description,
            interval=interval,
            parameters=params,
            concurrency_limit=spec.concurrency_limit,
            tags=list(spec.tags),
        ),
    )
    props = deployment._parameter_openapi_schema.properties
    names = [t.name for t in config.targets]
    if "target" in props and names:
        schema = props["target"]
        # An optional target is anyOf[string, null]: only the string branch gets the choices.
        branches = [b for b in schema.get("anyOf", []) if b.get("type") == "string"]
        for branch in branches or [schema]:
            branch["enum"] = names
    return deployment


def build_deployments(config_path: str | None = None) -> list[RunnerDeployment]:
    path = str(resolve_config_path(config_path).resolve())
    config = load_config(path)
    return [_deployment(spec, config, path) for spec in DEPLOYMENTS]


def serve_all(config_path: str | None = None, limit: int | None = None) -> None:
    serve(*build_deployments(config_path), pause_on_shutdown=False, limit=limit)
