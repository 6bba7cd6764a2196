"""Recovery workflows as data: which steps, in which order, which are optional.

The Prefect flows execute these specs; the CLI's ``--dry-run`` prints them. Keeping the step list
here (not in the flow body) means the plan shown to a person is the plan that runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from recovery.config import RecoveryConfig, TargetConfig
from recovery.probes import ProbeResult
from recovery.strategies import RetryPlan, build_strategy


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

WORKFLOWS: dict[str, WorkflowSpec] = {API_FAILURE.name: API_FAILURE}


def select_workflow(target: TargetConfig, probe: ProbeResult | None = None) -> WorkflowSpec:
    """The workflow that recovers ``target`` given what its last probe saw."""
    for spec in WORKFLOWS.values():
        if target.kind in spec.kinds:
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


def step_plans(config: RecoveryConfig, target: TargetConfig, spec: WorkflowSpec) -> list[PlannedStepRetry]:
    """Each step with the retries/delays the target's strategy gives it."""
    plan = build_strategy(config.strategy_for(target)).plan()
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
