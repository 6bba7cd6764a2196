"""Recovery workflows as data: which steps, in which order, which are optional.

Each kind module defines its workflow specs (``recovery.kinds``); this module selects among them
and plans their retries. The Prefect flows execute these specs; the CLI's ``--dry-run`` prints
them, so the plan shown to a person is the plan that runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from recovery.config.loader import RecoveryConfig, TargetConfig
from recovery.config.workflows import WorkflowConfig
from recovery.engine.custom import builtin_workflows, custom_workflows
from recovery.kinds.base import ProbeResult, StepSpec, WorkflowSpec
from recovery.policy.strategies import RetryPlan, build_strategy, retry_plan

__all__ = [
    "PlannedStepRetry",
    "StepSpec",
    "WorkflowSpec",
    "describe_plan",
    "select_workflow",
    "step_plans",
    "workflow_named",
    "workflows",
]


def workflows(config: RecoveryConfig | None = None) -> dict[str, WorkflowSpec]:
    """Every registered workflow by name, kind by kind in registration order, then ``config``'s
    own (``workflows:``; their names never clash with a registered one: checked on load).

    Built on each call (a handful of specs), so a kind registered later, e.g. by a plugin or a
    test, or a reloaded config, is selectable without anything here changing.
    """
    return _known(config.workflows if config is not None else None)


def _known(defs: Mapping[str, WorkflowConfig] | None) -> dict[str, WorkflowSpec]:
    return {**builtin_workflows(), **custom_workflows(defs)}


def _defs(target: TargetConfig, config: RecoveryConfig | None) -> Mapping[str, WorkflowConfig] | None:
    """The custom workflows of ``config``, else of the config ``target`` was loaded with."""
    if config is not None:
        return config.workflows
    defs: Mapping[str, WorkflowConfig] | None = getattr(target, "_workflows", None)
    return defs


def select_workflow(
    target: TargetConfig, probe: ProbeResult | None = None, config: RecoveryConfig | None = None
) -> WorkflowSpec:
    """The workflow that recovers ``target`` given what its last probe saw: its own
    ``workflow:`` if it names one, else its kind's default; a conditional workflow matching the
    probe (rate-limit-recovery for a 429) comes first either way. ``config``: where custom
    workflows come from (default: the config the target was loaded with)."""
    candidates = [s for s in builtin_workflows().values() if target.kind in s.kinds and not s.manual]
    if probe is not None:
        for spec in candidates:  # conditional workflows first: rate-limit-recovery for a 429
            if spec.when is not None and spec.when(probe):
                return spec
    own: str | None = getattr(target, "workflow", None)  # a plugin's target model may lack it
    if own is not None:  # replaces the kind's default (checked when the config loaded)
        return workflow_named(own, target, config)
    for spec in candidates:
        if spec.when is None:
            return spec
    raise LookupError(f"no recovery workflow for target kind {target.kind!r}")


def workflow_named(name: str, target: TargetConfig, config: RecoveryConfig | None = None) -> WorkflowSpec:
    from recovery.errors import ConfigError, clip

    known = _known(_defs(target, config))
    spec = known.get(name)
    if spec is None:
        raise ConfigError("workflow", f"unknown workflow '{clip(name)}' (known: {', '.join(known)})")
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


def describe_plan(
    config: RecoveryConfig, target: TargetConfig, spec: WorkflowSpec, reason: str | None = None
) -> list[str]:
    """The plan as text; custom steps show their action with ``{target}``, ``{workflow}`` and
    ``{reason}`` filled in (``{run_id}`` is only known when the run starts)."""
    values = {"target": target.name, "workflow": spec.name, "reason": reason or ""}
    lines = [f"{spec.name} for {target.name} ({target.kind}):"]
    for i, item in enumerate(step_plans(config, target, spec), 1):
        delays = ", ".join(f"{d:g}s" for d in item.plan.delays) or "none"
        flag = " [optional]" if item.step.optional else ""
        lines.append(
            f"  {i}. {item.step.name}{flag}: {item.step.description} "
            f"(attempts {item.plan.max_attempts}, retry delays: {delays})"
        )
        if item.step.shows is not None:  # a custom step: its resolved argv/url/deployment, redacted
            lines.append(f"     {item.step.shows(values)}")
    return lines
