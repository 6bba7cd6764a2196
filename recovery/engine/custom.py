"""Config-defined workflows (``workflows:``) as ``WorkflowSpec``s, and their config checks.

A custom workflow joins the built-in ones wherever a workflow is chosen by name
(``recovery.engine.workflows``), per config: its steps are ``builtin`` steps taken from the kinds
registry and the step types of ``recovery.kinds.custom``. It can recover every kind that has all
of its builtin steps (every registered kind if it has none).

``check_workflows`` runs on every loaded config (registered with the config loader when this
module is imported, which ``recovery.engine.workflows`` does): what the config models cannot
know because the kinds registry sits above them — builtin step names, clashes with built-in
workflow names, importable python refs, a target's ``workflow:`` — each a one-line error naming
the field (exit 2).
"""

from __future__ import annotations

from collections.abc import Mapping

from recovery.config.loader import RecoveryConfig
from recovery.config.workflows import StepConfig, WorkflowConfig, add_config_check
from recovery.errors import ConfigError, clip
from recovery.kinds import kinds
from recovery.kinds.base import StepSpec, WorkflowSpec
from recovery.kinds.custom import FACTORIES, resolve_python


def builtin_workflows() -> dict[str, WorkflowSpec]:
    """Every registered (built-in or plugin) workflow by name, in registration order."""
    return {spec.name: spec for kind in kinds().values() for spec in kind.workflows}


def builtin_steps() -> dict[str, tuple[StepSpec, set[str]]]:
    """Every step of the registered workflows by name, with the kinds whose workflows have it."""
    out: dict[str, tuple[StepSpec, set[str]]] = {}
    for spec in builtin_workflows().values():
        for step in spec.steps:
            found = out.setdefault(step.name, (step, set()))
            found[1].update(spec.kinds)
    return out


def _step_spec(step: StepConfig, builtins: Mapping[str, tuple[StepSpec, set[str]]]) -> StepSpec:
    if step.builtin is not None:
        base = builtins[step.builtin][0]
        return StepSpec(
            step.name, step.description or base.description, base.run,
            optional=step.optional, retryable=base.retryable,
        )  # fmt: skip
    kind = step.step_type
    run, shows = FACTORIES[kind](getattr(step, kind))
    return StepSpec(
        step.name,
        step.description or f"{kind} step",
        run,
        optional=step.optional,
        retryable=kind != "approval",  # a person's answer is not retried; the rest follow the plan
        shows=shows,
    )


def build_workflow(name: str, config: WorkflowConfig) -> WorkflowSpec:
    """The spec of one checked config workflow."""
    builtins = builtin_steps()
    steps = tuple(_step_spec(s, builtins) for s in config.steps)
    needed = [builtins[s.builtin][1] for s in config.steps if s.builtin is not None]
    all_kinds = set(kinds())
    able = set.intersection(all_kinds, *needed) if needed else all_kinds
    ordered = tuple(k for k in kinds() if k in able)
    description = config.description or f"custom workflow {name} ({len(steps)} steps)"
    return WorkflowSpec(name=name, kinds=ordered, steps=steps, description=description)


def custom_workflows(defs: Mapping[str, WorkflowConfig] | None) -> dict[str, WorkflowSpec]:
    """The config's workflows as specs (a handful of objects: built on each call, like the
    registry's, so a config reload is seen at once)."""
    return {name: build_workflow(name, wf) for name, wf in (defs or {}).items()}


def check_workflows(config: RecoveryConfig) -> None:
    """``ConfigError`` naming the field of the first problem the models could not see."""
    if not config.workflows and all(t.workflow is None for t in config.targets):
        return  # nothing to check: the kind modules need not even be imported
    known = builtin_workflows()
    builtins = builtin_steps()
    for name, wf in config.workflows.items():
        if name in known:
            raise ConfigError(f"workflows.{name}", f"'{name}' is a built-in workflow; choose another name")
        for i, step in enumerate(wf.steps):
            where = f"workflows.{name}.steps[{i}]"
            if step.builtin is not None and step.builtin not in builtins:
                shown = clip(", ".join(builtins), 300)
                raise ConfigError(
                    f"{where}.builtin", f"unknown builtin step '{clip(step.builtin)}' (known: {shown})"
                )
            if step.python is not None:
                try:
                    resolve_python(step.python)
                except ValueError as exc:
                    raise ConfigError(f"{where}.python", str(exc)) from None
    for i, target in enumerate(config.targets):
        if target.workflow is None:
            continue
        spec = known.get(target.workflow)
        if spec is None and target.workflow in config.workflows:
            spec = build_workflow(target.workflow, config.workflows[target.workflow])
        if spec is None:
            names = clip(", ".join([*config.workflows, *known]), 300)
            raise ConfigError(
                f"targets[{i}].workflow", f"unknown workflow '{clip(target.workflow)}' (known: {names})"
            )
        if target.kind not in spec.kinds:
            raise ConfigError(
                f"targets[{i}].workflow", f"'{target.workflow}' cannot recover a {target.kind} target"
            )


add_config_check(check_workflows)
