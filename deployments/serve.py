"""Every deployment, built from one table and served from one process (``recovery serve``).

The same table is what ``prefect.yaml`` declares (a test keeps the two in step). Notes:
- ``serve()`` pauses its deployments' schedules on shutdown by default; a restart of this
  process must not silently switch auto-recovery off, so it runs with ``pause_on_shutdown=False``.
- No parameter names a config file: ``serve_all`` puts the config's path in ``RECOVERY_CONFIG``
  of this process, which every flow run it starts inherits and loads. A caller chooses the
  target and the reason, never the config (and so the credentials); a PATCH of a deployment
  cannot change that, there is no parameter to unfreeze.
- Each deployment's parameter schema is ``deployments.schemas.caller_schema``: the configured
  targets (per kind for operations) and workflows as choices, unknown parameters rejected, an
  emergency needs a reason; the API checks it before a flow run is created.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from prefect import Flow, serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import IntervalSchedule
from prefect.deployments.runner import RunnerDeployment
from prefect.utilities.callables import ParameterSchema
from pydantic import ConfigDict

from deployments.schemas import caller_schema, operation_kinds
from recovery.config.loader import CONFIG_ENV_VAR, RecoveryConfig, load_config, resolve_config_path
from recovery.engine.period import Period

MONITOR_START_SECONDS = 10  # the server schedules a new deployment's runs within ~5 s


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    entrypoint: str  # "module:function", the same string prefect.yaml uses (with .py path)
    description: str
    schedule: str | None = None  # "monitor" -> config period; "hourly"
    concurrency_limit: int | None = None
    cancel_new: bool = False  # a run that finds the limit full is cancelled, never queued
    tags: tuple[str, ...] = field(default=("recovery",))
    workflow: str | None = None  # an operation: its targets are those of this workflow's kinds


DEPLOYMENTS: tuple[DeploymentSpec, ...] = (
    DeploymentSpec(
        "monitor",
        "flows.monitor_period:monitor_period",
        "Probe every target every interval for one period, in one process; recoveries run as "
        "subflows beside later cycles.",
        schedule="monitor",
        # This period's run draining its recoveries + the next one cycling; a third is dropped
        # (CANCEL_NEW), never queued: no AwaitingConcurrencySlot backlog (flows/monitor_period.py).
        concurrency_limit=2,
        cancel_new=True,
        tags=("recovery", "monitor"),
    ),
    DeploymentSpec(
        "recover",
        "flows.manual_flows:recover",
        "Recover a target now: manual or emergency trigger (the seed's /trigger).",
    ),
    DeploymentSpec(
        "recovery-status",
        "flows.observability_flows:recovery_status",
        "Publish the status board (the seed's /status).",
    ),
    DeploymentSpec(
        "reset-circuit-breaker",
        "flows.breaker_flows:reset_circuit_breaker",
        "Close a target's circuit breaker if its probe passes (or forced), audited (/circuit-breaker/reset).",
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
        workflow="clear-cache",
    ),
    DeploymentSpec(
        "reconnect-database",
        "flows.recovery_flows:reconnect_database",
        "Reset a database target's connection pools, audited (/database/reconnect).",
        workflow="reconnect-database",
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


class _Schema(ParameterSchema):
    """Prefect's ParameterSchema keeps five keys; this one also keeps ``allOf`` and
    ``additionalProperties``, which the server stores and validates against."""

    model_config = ConfigDict(extra="allow")


def deployment_schema(spec: DeploymentSpec, config: RecoveryConfig) -> dict[str, Any]:
    """The parameter schema ``spec``'s deployment is served with (no server needed)."""
    flow_schema = load_flow(spec.entrypoint).parameters.model_dump_for_openapi()
    return caller_schema(flow_schema, config, operation_kinds(spec.workflow))


def _deployment(spec: DeploymentSpec, config: RecoveryConfig) -> RunnerDeployment:
    flow = load_flow(spec.entrypoint)
    schedules: list[IntervalSchedule] | None = None
    if spec.schedule == "monitor":
        # Anchored just ahead of now: the first period starts seconds after `recovery serve`
        # (Prefect's default anchor, the creation time, is already past when the server
        # schedules, so the first run would come one whole period later).
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=MONITOR_START_SECONDS)
        period = timedelta(seconds=config.monitor.period_budget_seconds)
        schedules = [IntervalSchedule(interval=period, anchor_date=start)]
    elif spec.schedule == "hourly":
        schedules = [IntervalSchedule(interval=timedelta(hours=1))]
    limit: int | ConcurrencyLimitConfig | None = spec.concurrency_limit
    if limit is not None and spec.cancel_new:
        limit = ConcurrencyLimitConfig(limit=limit, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    # to_deployment is sync-or-async ("async_dispatch"); called from sync code it returns the value.
    deployment = cast(
        RunnerDeployment,
        flow.to_deployment(
            name=spec.name,
            description=spec.description,
            schedules=schedules,
            concurrency_limit=limit,
            tags=list(spec.tags),
        ),
    )
    # No public argument takes a schema; RunnerDeployment sends this attribute as the deployment's
    # parameter_openapi_schema (model_dump(exclude_unset=True): every key given here is sent).
    deployment._parameter_openapi_schema = _Schema.model_validate(deployment_schema(spec, config))
    return deployment


def build_deployments(config: RecoveryConfig) -> list[RunnerDeployment]:
    return [_deployment(spec, config) for spec in DEPLOYMENTS]


def serve_all(config_path: str | None = None, limit: int | None = None) -> None:
    path = str(resolve_config_path(config_path).resolve())
    # The one config every flow run of this process loads: runs inherit this environment.
    os.environ[CONFIG_ENV_VAR] = path
    config = load_config(path).require_resolved()  # serving runs the monitor: every target
    # The monitor's period runs start early enough to be waiting at their anchor (no gap).
    m = config.monitor
    prefetch = Period(0.0, m.interval_seconds, m.period_budget_seconds).prefetch_seconds
    serve(*build_deployments(config), pause_on_shutdown=False, limit=limit, prefetch_seconds=prefetch)
