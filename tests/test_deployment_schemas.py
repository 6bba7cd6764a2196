"""Every deployment's parameter schema, as `recovery serve` publishes it, built without a server.

The schemas come from deployments/serve.py (``deployment_schema``); parameters are checked with
``prefect.utilities.schema_tools.validation.validate``, the function the Prefect server calls
on ``POST /deployments/{id}/create_flow_run`` before a flow run exists.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from prefect.utilities.schema_tools.validation import ValidationError, validate

from deployments.serve import DEPLOYMENTS, DeploymentSpec, deployment_schema
from deployments.table import render
from recovery.config.loader import RecoveryConfig, parse_config

ADMIN = ("recover", "reset-circuit-breaker", "clear-cache", "reconnect-database")
INTERNAL = {"run_type", "lock_token", "detected_reason", "first_failure_at", "config_path"}
CONFIG = parse_config(
    {
        "targets": [
            {"name": "payments-api", "kind": "http", "url": "http://127.0.0.1:9/health"},
            {"name": "sessions", "kind": "redis", "url": "redis://127.0.0.1:6379/9"},
            {"name": "orders-db", "kind": "database", "url": "postgresql://u@127.0.0.1/db"},
            {"name": "search", "kind": "http", "url": "http://127.0.0.1:9/search"},
        ]
    }
)


def spec(name: str) -> DeploymentSpec:
    [found] = [s for s in DEPLOYMENTS if s.name == name]
    return found


def schema(name: str, config: RecoveryConfig = CONFIG) -> dict[str, Any]:
    return deployment_schema(spec(name), config)


def accepts(name: str, parameters: dict[str, Any]) -> bool:
    try:
        validate(parameters, schema(name), raise_on_error=True)
    except ValidationError:
        return False
    return True


def choices(prop: dict[str, Any]) -> list[Any]:
    for branch in [prop, *prop.get("anyOf", [])]:
        if "enum" in branch:
            return list(branch["enum"])
    raise AssertionError(f"no choices in {prop}")


@pytest.mark.parametrize("name", [s.name for s in DEPLOYMENTS])
def test_every_parameter_has_help_and_nothing_internal_or_extra(name: str) -> None:
    s = schema(name)
    assert s["additionalProperties"] is False
    props = s["properties"]
    assert not INTERNAL & set(props), f"{name} exposes {INTERNAL & set(props)}"
    for param, prop in props.items():
        assert prop.get("description"), f"{name}.{param} has no help text"
    assert not any("path" in p or "config" in p for p in props), "no file path is a parameter"


@pytest.mark.parametrize("name", ADMIN)
def test_admin_deployments_take_caller_facing_typed_parameters(name: str) -> None:
    s = schema(name)
    assert {"target", "requested_by"} <= set(s["required"])
    for param in ("requested_by", "reason"):
        prop = s["properties"][param]
        branch = next((b for b in prop.get("anyOf", []) if b.get("type") == "string"), prop)
        assert branch["maxLength"] == 200 and branch["pattern"], (name, param)
    base = {"target": choices(s["properties"]["target"])[0], "requested_by": "ops-bot"}
    if name == "reset-circuit-breaker":
        base["reason"] = "INC-1"
    assert accepts(name, base)
    for bad in ("   ", "ops\x00bot", "ops\nbot", "x" * 201, ""):
        assert not accepts(name, {**base, "requested_by": bad}), repr(bad)
    assert not accepts(name, {k: v for k, v in base.items() if k != "requested_by"})
    for extra in ("config_path", "run_type", "lock_token", "whatever"):
        assert not accepts(name, {**base, extra: "x"}), extra


def test_target_choices_are_per_kind() -> None:
    every = ["payments-api", "sessions", "orders-db", "search"]
    assert choices(schema("recover")["properties"]["target"]) == every
    assert choices(schema("reset-circuit-breaker")["properties"]["target"]) == every
    assert choices(schema("circuit-breaker-status")["properties"]["target"]) == every
    assert choices(schema("clear-cache")["properties"]["target"]) == ["sessions"]
    assert choices(schema("reconnect-database")["properties"]["target"]) == ["orders-db"]
    assert not accepts("clear-cache", {"target": "payments-api", "requested_by": "ops"})
    assert not accepts("reconnect-database", {"target": "sessions", "requested_by": "ops"})
    # No target of the kind configured: the deployment accepts no target at all.
    only_http = parse_config({"targets": [{"name": "a", "kind": "http", "url": "http://127.0.0.1:9/"}]})
    assert choices(schema("clear-cache", only_http)["properties"]["target"]) == []


def test_recover_type_workflow_reason_and_request_id() -> None:
    props = schema("recover")["properties"]
    assert choices(props["type"]) == ["manual", "emergency"]  # scheduled: only a schedule's runs
    assert set(choices(props["workflow"])) == {
        "api-failure-recovery",
        "rate-limit-recovery",
        "database-recovery",
        "reconnect-database",
        "cache-recovery",
        "clear-cache",
    }
    ok = {"target": "payments-api", "requested_by": "ops"}
    assert accepts("recover", {**ok, "workflow": "rate-limit-recovery"})
    assert not accepts("recover", {**ok, "workflow": "clear-cache"})  # not a workflow of http
    assert accepts("recover", {"target": "sessions", "requested_by": "ops", "workflow": "clear-cache"})
    assert not accepts("recover", {**ok, "type": "scheduled"})
    assert not accepts("recover", {**ok, "type": "automatic"})
    assert not accepts("recover", {**ok, "type": "emergency"})
    assert not accepts("recover", {**ok, "type": "emergency", "reason": None})
    assert not accepts("recover", {**ok, "type": "emergency", "reason": "  "})
    assert accepts("recover", {**ok, "type": "emergency", "reason": "INC-4711"})
    assert accepts("recover", {**ok, "reason": None})  # a manual run may leave the reason out
    assert accepts("recover", {**ok, "request_id": "3f0c2b1e-8d7a-4c55-9e2f-0a1b2c3d4e5f"})
    for bad in ("x" * 37, "a.2", "-lead", "id with space", "a\x00"):
        assert not accepts("recover", {**ok, "request_id": bad}), bad


def test_internal_recovery_flows_are_not_deployments() -> None:
    entrypoints = {s.entrypoint.partition(":")[2] for s in DEPLOYMENTS}
    internal = {"api_failure_recovery", "database_recovery", "cache_recovery", "rate_limit_recovery"}
    assert not entrypoints & internal


def test_readme_deployments_table_is_the_generated_one() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert render() in readme, "README's deployments table is stale: python -m deployments.table"


def test_security_doc_parameter_table_lists_the_real_parameters() -> None:
    """docs/security.md's "the caller chooses" column names exactly each deployment's parameters."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "security.md").read_text()
    header = "| deployment | the caller chooses | fixed by the deployment |"
    rows = doc[doc.index(header) :].split("\n\n", 1)[0].splitlines()[2:]
    params = {s.name: set(schema(s.name)["properties"]) for s in DEPLOYMENTS}
    every = set().union(*params.values())
    documented: set[str] = set()
    for row in rows:
        _, names, chooses, _fixed, _ = row.split("|")
        for name in re.findall(r"`([^`]+)`", names):
            documented.add(name)
            # Backticked words that are some deployment's parameter names (values are not).
            assert set(re.findall(r"`([^`]+)`", chooses)) & every == params[name], (name, chooses)
    assert documented == set(params), "a deployment is missing from docs/security.md's table"
