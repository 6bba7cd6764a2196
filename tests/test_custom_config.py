"""Config validation of ``workflows:`` and a target's ``workflow:``: one line naming the field.

Plus the examples/ configs: every one validates with the real CLI (exit 0), and a broken one
exits 2 with the field named and no traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import recovery.engine.custom  # noqa: F401  (registers the checks that need the kinds registry)
from recovery.config.loader import parse_config
from recovery.engine.workflows import select_workflow, workflow_named, workflows
from recovery.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
HTTP = {"name": "payments-api", "kind": "http", "url": "http://127.0.0.1:9/health"}
DB = {"name": "orders-db", "kind": "database", "url": "postgresql+psycopg://u@127.0.0.1/db"}
VERIFY = {"name": "verify", "builtin": "test_connectivity"}


def with_steps(*steps: dict[str, Any], name: str = "restart-api", **target: Any) -> dict[str, Any]:
    return {"workflows": {name: {"steps": list(steps)}}, "targets": [{**HTTP, **target}]}


S = "workflows.restart-api.steps[0]"
BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("unknown step type", with_steps({"name": "x", "shell": "ls"}), S + ".shell", "unknown field"),
    ("no action", with_steps({"name": "x"}), S, "exactly one of"),
    (
        "two actions",
        with_steps({"name": "x", "builtin": "test_connectivity", "python": "a:b"}),
        S,
        "exactly one of",
    ),
    (
        "unknown builtin",
        with_steps({"name": "x", "builtin": "reboot_everything"}),
        S + ".builtin",
        "unknown builtin step 'reboot_everything'",
    ),
    ("empty argv", with_steps({"name": "x", "command": []}), S + ".command.argv", "must not be empty"),
    (
        "non-string argv",
        with_steps({"name": "x", "command": ["echo", 3]}),
        S + ".command.argv",
        "argv[1] must be a string",
    ),
    (
        "blank program",
        with_steps({"name": "x", "command": {"argv": [" "]}}),
        S + ".command.argv",
        "must not be blank",
    ),
    (
        "python ref syntax",
        with_steps({"name": "x", "python": "os.system('x')"}),
        S + ".python",
        "expected 'package.module:function'",
    ),
    (
        "python module",
        with_steps({"name": "x", "python": "no_such_module_xyz:f"}),
        S + ".python",
        "cannot import module",
    ),
    (
        "python function",
        with_steps({"name": "x", "python": "custom_step_funcs:NOT_CALLABLE"}),
        S + ".python",
        "has no function",
    ),
    (
        "built-in name",
        with_steps(VERIFY, name="api-failure-recovery"),
        "workflows.api-failure-recovery",
        "is a built-in workflow",
    ),
    ("bad workflow name", with_steps(VERIFY, name="Restart_API"), "workflows.Restart_API", "1-63 characters"),
    ("duplicate step", with_steps(VERIFY, VERIFY), "workflows.restart-api", "duplicate step name 'verify'"),
    (
        "http url",
        with_steps({"name": "x", "http": {"url": "ftp://h/{target}"}}),
        S + ".http.url",
        "invalid URL",
    ),
    (
        "json and body",
        with_steps({"name": "x", "http": {"url": "http://h/", "json": {}, "body": "b"}}),
        S + ".http",
        "json or body",
    ),
    (
        "deployment name",
        with_steps({"name": "x", "deployment": {"name": "no-slash"}}),
        S + ".deployment.name",
        "<flow name>/<deployment name>",
    ),
    (
        "timeout above lock",
        with_steps({"name": "x", "approval": {"timeout_seconds": 900}}),
        S + ".approval.timeout_seconds",
        "below monitor.lock_ttl_seconds",
    ),
    (
        "unknown target workflow",
        with_steps(VERIFY, workflow="nope"),
        "targets[0].workflow",
        "unknown workflow 'nope'",
    ),
]


@pytest.mark.parametrize(("data", "field", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_workflow_config_names_the_field(data: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.field == field
    assert message in info.value.message


def test_a_workflow_for_the_wrong_kind_is_refused() -> None:
    data = {"workflows": {"flush": {"steps": [{"name": "x", "builtin": "clear_error_cache"}]}}}
    with pytest.raises(ConfigError) as info:
        parse_config({**data, "targets": [{**DB, "workflow": "flush"}]})
    assert (info.value.field, info.value.message) == (
        "targets[0].workflow",
        "'flush' cannot recover a database target",
    )


def test_config_workflows_are_selectable_by_name_per_config() -> None:
    steps = [{"name": "restart", "command": ["true"]}, VERIFY]
    config = parse_config(with_steps(*steps, workflow="restart-api"))
    target = config.targets[0]
    assert select_workflow(target).name == "restart-api"  # the target's own workflow: no config needed
    assert select_workflow(target, config=config).name == "restart-api"
    assert workflow_named("restart-api", target, config).kinds == ("http", "database", "redis")
    assert "restart-api" in workflows(config) and "restart-api" not in workflows()
    plain = parse_config({"targets": [HTTP]})
    assert select_workflow(plain.targets[0]).name == "api-failure-recovery"
    with pytest.raises(ConfigError, match="unknown workflow 'restart-api'"):
        workflow_named("restart-api", plain.targets[0], plain)  # another config does not have it


def test_short_command_form_takes_its_options_beside_the_name() -> None:
    config = parse_config(
        with_steps({"name": "restart", "command": ["systemctl", "restart", "x"], "timeout_seconds": 7})
    )
    command = config.workflows["restart-api"].steps[0].command
    assert (
        command is not None and command.argv == ["systemctl", "restart", "x"] and command.timeout_seconds == 7
    )


CLI = [sys.executable, "-m", "recovery_cli.main"]


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.yaml")))
def test_examples_validate(example: str) -> None:
    done = subprocess.run(
        [*CLI, "--config", f"examples/{example}", "validate"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert ": ok (" in done.stdout


def test_cli_exits_2_naming_the_field(tmp_path: Path) -> None:
    text = (REPO / "examples" / "restart-a-service.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("builtin: test_connectivity", "builtin: test_connectivty"))
    done = subprocess.run(
        [*CLI, "--config", str(bad), "validate"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "workflows.restart-api.steps[4].builtin: unknown builtin step 'test_connectivty'" in done.stderr
    assert "Traceback" not in done.stderr


def test_recover_deployment_offers_config_workflows_for_the_kinds_they_recover() -> None:
    from deployments.schemas import caller_schema

    config = parse_config({**with_steps(VERIFY), "targets": [HTTP, DB]})
    flow_schema = {
        "properties": {
            "target": {"type": "string"},
            "workflow": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        }
    }
    schema = caller_schema(flow_schema, config)
    assert "restart-api" in schema["properties"]["workflow"]["anyOf"][0]["enum"]
    by_target = {
        r["if"]["properties"]["target"]["enum"][0]: r["then"]["properties"]["workflow"]["enum"]
        for r in schema["allOf"]
    }
    assert "restart-api" in by_target["payments-api"] and "restart-api" in by_target["orders-db"]


def test_env_values_in_workflows_are_secrets_in_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    from recovery.engine.workflows import describe_plan

    monkeypatch.setenv("DEPLOY_TOKEN", "tok-argv-secret-8812")
    argv = ["deployctl", "--token", "${DEPLOY_TOKEN}", "restart", "{target}", "{reason}"]
    config = parse_config(with_steps({"name": "restart", "command": argv}, workflow="restart-api"))
    target = config.targets[0]
    plan = "\n".join(describe_plan(config, target, select_workflow(target), reason="oom"))
    assert "command: deployctl --token *** restart payments-api oom (timeout 60s)" in plan
    assert "tok-argv-secret-8812" not in plan


def test_a_ladder_rung_may_name_a_config_workflow() -> None:
    from recovery.engine.escalation import check_escalation

    steps = [{"name": "restart", "command": ["true"]}, VERIFY]
    config = parse_config(with_steps(*steps, escalation=["api-failure-recovery", "restart-api"]))
    check_escalation(config)  # the config's own workflow is a valid rung
    other = parse_config({"targets": [{**HTTP, "escalation": ["api-failure-recovery", "restart-api"]}]})
    with pytest.raises(ConfigError, match="restart-api"):
        check_escalation(other)  # ...but not in a config that does not define it
