"""Helpers of tests/flows/test_custom_flows.py: configs, the Prefect REST calls of an approver."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "recovery_cli.main"]


def write_config(
    path: Path, audit_url: str, url: str, steps: list[dict[str, Any]], name: str, **extra: Any
) -> Path:
    """One http target ``name`` whose workflow ``custom`` is ``steps`` (JSON is valid YAML)."""
    config = {
        "audit_url": audit_url,
        "strategy": {"kind": "exponential", "base_seconds": 0.2, "max_attempts": 3, "jitter": "none"},
        "workflows": {"custom": {"steps": steps}},
        "targets": [
            {
                "name": name,
                "kind": "http",
                "url": url,
                "timeout_seconds": 1,
                "workflow": "custom",
                "verify": {"consecutive_successes": 2, "interval_seconds": 0.05},
            }
        ],
        **extra,
    }
    path.write_text(json.dumps(config, indent=1))
    return path


def start_recover(config: Path, target: str, env: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    args = [*CLI, "--config", str(config), "recover", target, "--reason", "disk full", "--json", *extra]
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO
    )


def finished(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, dict[str, Any], str]:
    out, err = proc.communicate(timeout=timeout)
    try:
        row = json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"no JSON row (exit {proc.returncode}):\n{out}\n{err}") from None
    return proc.returncode, row, err


def step(row: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in row["steps"] if s["name"] == name)


def paused_run(api: str, target: str, timeout: float = 60) -> str:
    """The id of the ``recover`` flow run for ``target`` once it is paused (waiting for input)."""
    deadline = time.monotonic() + timeout
    body = {"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}, "sort": "START_TIME_DESC", "limit": 20}
    while time.monotonic() < deadline:
        answer = httpx.post(f"{api}/flow_runs/filter", json=body, timeout=10)
        # The shared test server answers 503 "database is locked" under load now and then: ask again.
        for run in answer.json() if answer.status_code == 200 else []:
            if run["parameters"].get("target") == target:
                return str(run["id"])
        time.sleep(0.3)
    raise AssertionError(f"no paused recover run for {target} within {timeout}s")


def resume(api: str, flow_run_id: str, run_input: dict[str, Any], timeout: float = 30) -> None:
    """``POST /flow_runs/{id}/resume`` with the form's answer, as the UI does; retried while the
    paused run has not saved its form's schema yet (the server answers REJECT until then)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx.post(
            f"{api}/flow_runs/{flow_run_id}/resume", json={"run_input": run_input}, timeout=10
        )
        if answer.status_code < 500:  # 503 "database is locked" from the shared test server: again
            answer.raise_for_status()
            if answer.json()["status"] == "ACCEPT":
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"resume not accepted: {answer.text}")
        time.sleep(0.3)
