"""The parameter schema of each deployment: what the API accepts before a flow run exists.

Prefect derives a deployment's schema from its flow's signature: types, lengths, patterns,
``Literal`` choices, and help text from the docstring's ``Args:``. This adds what depends on
the config or spans two parameters:

- ``target``: a choice of the configured targets; for an operation deployment (``clear-cache``,
  ``reconnect-database``) only the targets of its workflow's kinds.
- ``workflow`` (``recover``): a choice of the configured kinds' workflows, and for a target of
  kind K only K's workflows (``if``/``then``).
- ``reason`` is required when ``type`` is ``emergency`` (``if``/``then``).
- ``additionalProperties: false``: an unknown parameter is rejected (409), not a crashed run.

The Prefect server checks a new flow run's parameters against the whole schema with jsonschema
Draft 2020-12 (``prefect.utilities.schema_tools.validation.validate``), which honours all of it.
"""

from __future__ import annotations

import copy
from typing import Any

from recovery.config.loader import RecoveryConfig
from recovery.engine.workflows import workflows

EMERGENCY_NEEDS_REASON: dict[str, Any] = {
    # ``required: [type]``: without it an absent ``type`` (default manual) would match the ``if``.
    "if": {"properties": {"type": {"const": "emergency"}}, "required": ["type"]},
    "then": {"required": ["reason"], "properties": {"reason": {"type": "string"}}},
}


def _string_branches(prop: dict[str, Any]) -> list[dict[str, Any]]:
    """The schema(s) a string value meets: ``prop`` itself, or the string branch of an optional."""
    branches = [b for b in prop.get("anyOf", []) if b.get("type") == "string"]
    return branches or [prop]


def _choices(props: dict[str, Any], name: str, values: list[Any]) -> None:
    if name in props:
        for branch in _string_branches(props[name]):
            branch["enum"] = values  # empty: no configured target fits, every value is refused


def _kind_workflows(config: RecoveryConfig) -> dict[str, list[str]]:
    """Configured kinds -> their workflows, in registry order, then the config's own (``workflows:``)."""
    present = {t.kind for t in config.targets}
    out: dict[str, list[str]] = {}
    for spec in workflows(config).values():
        for kind in spec.kinds:
            if kind in present:
                out.setdefault(kind, []).append(spec.name)
    return out


def caller_schema(
    flow_schema: dict[str, Any], config: RecoveryConfig, target_kinds: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """``flow_schema`` (Prefect's, from the signature) with the config's choices and the rules
    above; ``target_kinds``: the kinds an operation deployment accepts (None: every kind)."""
    schema = copy.deepcopy(flow_schema)
    props: dict[str, Any] = schema.setdefault("properties", {})
    targets = [t for t in config.targets if target_kinds is None or t.kind in target_kinds]
    _choices(props, "target", [t.name for t in targets])
    rules: list[dict[str, Any]] = []
    if "workflow" in props:
        by_kind = _kind_workflows(config)
        _choices(props, "workflow", [w for names in by_kind.values() for w in names])
        for kind, names in by_kind.items():
            of_kind = [t.name for t in targets if t.kind == kind]
            rules.append(
                {
                    "if": {"properties": {"target": {"enum": of_kind}}, "required": ["target"]},
                    "then": {"properties": {"workflow": {"enum": [*names, None]}}},
                }
            )
    if "type" in props and "emergency" in props["type"].get("enum", ()):
        rules.append(copy.deepcopy(EMERGENCY_NEEDS_REASON))
    if rules:
        schema["allOf"] = rules
    schema["additionalProperties"] = False
    return schema


def operation_kinds(workflow: str | None) -> tuple[str, ...] | None:
    """The target kinds ``workflow`` can act on (None: not an operation deployment)."""
    return workflows()[workflow].kinds if workflow else None
