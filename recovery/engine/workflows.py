"""Recovery workflows as data: which steps, in which order, which are optional.

The Prefect flows execute these specs; the CLI's ``--dry-run`` prints them. Keeping the step list
here (not in the flow body) means the plan shown to a person is the plan that runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from recovery.config.loader import RecoveryConfig, TargetConfig
from recovery.kinds.probing import ProbeResult
from recovery.policy.strategies import RetryPlan, build_strategy, retry_plan


@dataclass(frozen=True)
class StepSpec:
    name: str
    description: str
    optional: bool = False  # an optional step's failure is audited but does not fail the run
    retryable: bool = True  # False: one attempt only (diagnostics)


@dataclass(frozen=True)
class WorkflowSpec:
    name: str
    kinds: tuple[str, ...]
    steps: tuple[StepSpec, ...]
    description: str
    manual: bool = False  # a manual operation: run on request, never chosen by select_workflow


API_FAILURE = WorkflowSpec(
    name="api-failure-recovery",
    kinds=("http",),
    description="Recover an HTTP dependency: clear cached errors, reset its breaker, verify, resume.",
    steps=(
        StepSpec("check_service_health", "Probe once and record the diagnosis.", retryable=False),
        StepSpec("clear_error_cache", "Delete cached error responses (SCAN + UNLINK).", optional=True),
        StepSpec("reset_circuit_breaker", "Close the target's circuit breaker."),
        StepSpec("test_connectivity", "N consecutive good probes; retried with backoff."),
        StepSpec("restore_operations", "Clear the target's paused flag."),
    ),
)

DATABASE_RECOVERY = WorkflowSpec(
    name="database-recovery",
    kinds=("database",),
    description="Recover a SQL database: clear stuck sessions, reset pools, check integrity, resume.",
    steps=(
        StepSpec("check_service_health", "Probe once and record the diagnosis.", retryable=False),
        StepSpec(
            "clear_stuck_sessions",
            "PostgreSQL: terminate idle-in-transaction / lock-blocking sessions over the threshold.",
        ),
        StepSpec("reset_connection_pool", "Dispose the recovery's engine; bump pool_generation for apps."),
        StepSpec(
            "verify_integrity",
            "Probe query, rolled-back canary write/read, no stuck sessions (SQLite: PRAGMA check).",
        ),
        StepSpec("reset_circuit_breaker", "Close the target's circuit breaker."),
        StepSpec("test_connectivity", "N consecutive good probes; retried with backoff."),
        StepSpec("restore_operations", "Clear the target's paused flag."),
    ),
)

CACHE_RECOVERY = WorkflowSpec(
    name="cache-recovery",
    kinds=("redis",),
    description="Recover a Redis cache: delete corrupted entries, rebuild them, verify, resume.",
    steps=(
        StepSpec("check_cache_health", "PING latency, memory vs maxmemory, evictions.", retryable=False),
        StepSpec("clear_corrupted_entries", "SCAN validate.key_pattern; delete invalid values (pipelined)."),
        # Optional: a cold but correct cache can serve traffic; a source outage must not keep it paused.
        StepSpec("rebuild_cache", "Warm missing keys from the rebuild source (pipelined).", optional=True),
        StepSpec("reset_circuit_breaker", "Close the target's circuit breaker."),
        StepSpec("test_connectivity", "N consecutive good probes; retried with backoff."),
        StepSpec("restore_operations", "Clear the target's paused flag."),
    ),
)

CLEAR_CACHE = WorkflowSpec(
    name="clear-cache",
    kinds=("redis",),
    manual=True,
    description="Manual: delete every key matching a pattern (default: validate.key_pattern).",
    steps=(StepSpec("clear_cache_keys", "SCAN + UNLINK the pattern in batches."),),
)

RECONNECT_DATABASE = WorkflowSpec(
    name="reconnect-database",
    kinds=("database",),
    manual=True,
    description="Manual: drop pooled connections everywhere (pool_generation) and verify.",
    steps=(
        StepSpec("check_service_health", "Probe once and record the diagnosis.", retryable=False),
        StepSpec("reset_connection_pool", "Dispose the recovery's engine; bump pool_generation for apps."),
        StepSpec("test_connectivity", "N consecutive good probes; retried with backoff."),
    ),
)

RATE_LIMIT = WorkflowSpec(
    name="rate-limit-recovery",
    kinds=("http",),
    description="Back off a rate-limited HTTP dependency: lower the request rate, wait, resume.",
    steps=(
        StepSpec("check_service_health", "Probe once and record the diagnosis.", retryable=False),
        StepSpec("adjust_request_rate", "Allowed rate in shared state = observed limit x safety factor."),
        StepSpec(
            "wait_for_rate_limit_reset",
            "Sleep until Retry-After / X-RateLimit-Reset, at most max_wait_seconds (longer: escalate).",
            retryable=False,
        ),
        StepSpec("reset_circuit_breaker", "Close the target's circuit breaker."),
        StepSpec("test_connectivity", "N consecutive good probes; retried with backoff."),
        StepSpec("restore_operations", "Clear the target's paused flag."),
    ),
)

WORKFLOWS: dict[str, WorkflowSpec] = {
    spec.name: spec
    for spec in (API_FAILURE, DATABASE_RECOVERY, CACHE_RECOVERY, CLEAR_CACHE, RECONNECT_DATABASE, RATE_LIMIT)
}


def select_workflow(target: TargetConfig, probe: ProbeResult | None = None) -> WorkflowSpec:
    """The workflow that recovers ``target`` given what its last probe saw."""
    if probe is not None and probe.rate_limited and target.kind in RATE_LIMIT.kinds:
        return RATE_LIMIT  # 429 / X-RateLimit-Remaining: 0: back off, do not "repair" the API
    for spec in WORKFLOWS.values():
        if target.kind in spec.kinds and not spec.manual and spec is not RATE_LIMIT:
            return spec
    raise LookupError(f"no recovery workflow for target kind {target.kind!r}")


def workflow_named(name: str, target: TargetConfig) -> WorkflowSpec:
    from recovery.errors import ConfigError

    spec = WORKFLOWS.get(name)
    if spec is None:
        raise ConfigError("workflow", f"unknown workflow '{name}' (known: {', '.join(WORKFLOWS)})")
    if target.kind not in spec.kinds:
        raise ConfigError("workflow", f"'{name}' cannot recover a {target.kind} target")
    return spec


@dataclass(frozen=True)
class PlannedStepRetry:
    step: StepSpec
    plan: RetryPlan


def step_plans(
    config: RecoveryConfig, target: TargetConfig, spec: WorkflowSpec, plan: RetryPlan | None = None
) -> list[PlannedStepRetry]:
    """Each step with the retries/delays the target's strategy gives it (``plan``: admission's,
    computed from the target's history; default: the strategy's plan with no history)."""
    if plan is None:
        strategy = build_strategy(
            config.strategy_for(target), breaker_reset_seconds=target.breaker.reset_timeout_seconds
        )
        plan = retry_plan(strategy)
    single = RetryPlan(1, ())
    return [PlannedStepRetry(step, plan if step.retryable else single) for step in spec.steps]


def describe_plan(config: RecoveryConfig, target: TargetConfig, spec: WorkflowSpec) -> list[str]:
    lines = [f"{spec.name} for {target.name} ({target.kind}):"]
    for i, item in enumerate(step_plans(config, target, spec), 1):
        delays = ", ".join(f"{d:g}s" for d in item.plan.delays) or "none"
        flag = " [optional]" if item.step.optional else ""
        lines.append(
            f"  {i}. {item.step.name}{flag}: {item.step.description} "
            f"(attempts {item.plan.max_attempts}, retry delays: {delays})"
        )
    return lines
