"""Shared by the database/cache flow tests: the CLI, canary password, strategies, config writer,
and audit readers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recovery.audit.store import AuditStore

CliRunner = Callable[..., subprocess.CompletedProcess[str]]
CLI = [sys.executable, "-m", "recovery_cli.main"]
CLI_TIMEOUT = 240
CANARY = "FlowCanaryPw8231"
FAST = (
    "{kind: exponential, base_seconds: 0.3, factor: 1.5, max_delay_seconds: 1, max_attempts: 4, jitter: none}"
)
PATIENT = (
    "{kind: exponential, base_seconds: 0.5, factor: 1.5, max_delay_seconds: 1.5, max_attempts: 40, "
    "jitter: none}"
)


def q(value: Any) -> str:
    return json.dumps(value)  # a JSON scalar is a valid YAML flow scalar


def with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{CANARY}@", 1)


def write_config(
    path: Path, *, audit_url: str, state_url: str, targets: list[dict[str, Any]], strategy: str = FAST
) -> Path:
    lines = [
        f"audit_url: {q(audit_url)}",
        f"state_url: {q(state_url)}",
        "monitor: {interval_seconds: 1, failure_threshold: 1}",
        f"strategy: {strategy}",
        "targets:",
    ]
    lines += [f"  - {json.dumps(t)}" for t in targets]
    path.write_text("\n".join(lines) + "\n")
    return path


def only_run(audit_url: str, target: str) -> dict[str, Any]:
    runs = AuditStore(audit_url).history(target)
    assert len(runs) == 1, [r.as_json() for r in runs]
    return runs[0].as_json()


def steps_of(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in run["steps"]}
