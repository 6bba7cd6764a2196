"""Config-defined workflows through Prefect: each step a task, retried, audited; for real.

A ``command`` step restarts a real local service; a ``deployment`` step runs a deployment that
a real Prefect runner (``flow.serve`` in a process) executes; ``approval`` steps are answered
(or not) through the Prefect REST API as the UI's form does. Every run is started by the real
CLI (``recovery recover``) against the session's Prefect test server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from custom_flow_helpers import CLI, finished, paused_run, resume, start_recover, step, write_config
from custom_steps_helpers import SERVICE, alive, free_port, start_service, stop_pidfile

pytestmark = pytest.mark.prefect

VERIFY = [
    {"name": "test_connectivity", "builtin": "test_connectivity"},
    {"name": "restore_operations", "builtin": "restore_operations"},
]


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A running local service (port, pid file); killed at teardown whoever started it last."""
    port, pidfile = free_port(), tmp_path / "service.pid"
    start_service(port, pidfile)
    yield port, pidfile
    stop_pidfile(pidfile)


def test_command_step_restarts_a_dead_service(
    service: tuple[int, Path], cli_env: dict[str, str], sqlite_url: str, tmp_path: Path
) -> None:
    port, pidfile = service
    old_pid = int(pidfile.read_text())
    os.kill(old_pid, 9)  # the service dies
    deadline = time.monotonic() + 10
    while alive(old_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not healthy(port)
    steps = [
        {"name": "check_service_health", "builtin": "check_service_health"},
        {"name": "restart", "command": [sys.executable, str(SERVICE), str(port), str(pidfile), "--start"]},
        *VERIFY,
    ]
    config = write_config(
        tmp_path / "r.yaml", sqlite_url, f"http://127.0.0.1:{port}/health", steps, "payments-api"
    )

    dry_run = [*CLI, "--config", str(config), "recover", "payments-api", "--dry-run"]
    plan = subprocess.run(dry_run, capture_output=True, text=True, env=cli_env, timeout=60)
    assert plan.returncode == 0, plan.stderr
    assert f"command: {sys.executable} {SERVICE} {port} {pidfile} --start" in plan.stdout  # resolved argv
    assert not healthy(port)  # a dry run touches nothing

    code, row, err = finished(start_recover(config, "payments-api", cli_env))
    assert code == 0, (row, err)
    assert row["state"] == "succeeded" and row["workflow"] == "custom"
    assert step(row, "check_service_health")["detail"]["healthy"] is False  # it was down
    restart = step(row, "restart")
    assert restart["state"] == "succeeded" and restart["detail"]["exit_code"] == 0
    assert restart["detail"]["stdout"] == f"started on port {port}\n"
    assert step(row, "test_connectivity")["state"] == "succeeded"
    assert healthy(port) and int(pidfile.read_text()) != old_pid  # a new process serves it


def test_monitor_recovers_with_the_targets_own_workflow(
    service: tuple[int, Path], run_cli: Any, sqlite_url: str, tmp_path: Path
) -> None:
    """``workflow:`` on a target replaces its kind's default for automatic recoveries too."""
    port, pidfile = service
    os.kill(int(pidfile.read_text()), 9)
    restart = {
        "name": "restart",
        "command": [sys.executable, str(SERVICE), str(port), str(pidfile), "--start"],
    }
    url = f"http://127.0.0.1:{port}/health"
    monitor = {"interval_seconds": 1, "failure_threshold": 1}
    config = write_config(
        tmp_path / "m.yaml", sqlite_url, url, [restart, *VERIFY], "payments-api", monitor=monitor
    )
    result = run_cli("--config", str(config), "monitor", "--once")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "custom of payments-api: succeeded" in result.stdout
    assert healthy(port)


def test_failing_command_is_retried_then_fails_the_run(
    cli_env: dict[str, str], sqlite_url: str, tmp_path: Path
) -> None:
    script = "import sys; print('restart refused: unit masked'); sys.exit(1)"
    steps = [{"name": "restart", "command": [sys.executable, "-c", script]}, *VERIFY]
    config = write_config(tmp_path / "f.yaml", sqlite_url, "http://127.0.0.1:9/health", steps, "masked-api")
    code, row, _ = finished(start_recover(config, "masked-api", cli_env))
    assert code == 1 and row["state"] == "failed"
    restart = step(row, "restart")
    assert restart["state"] == "failed" and restart["attempts"] == 3  # the target's retry plan
    assert restart["detail"] == {
        **restart["detail"],
        "exit_code": 1,
        "stdout": "restart refused: unit masked\n",
    }
    assert step(row, "test_connectivity")["state"] == "skipped"  # never ran


@pytest.fixture
def served_deployment(cli_env: dict[str, str], prefect_api: str) -> Iterator[None]:
    """``rebuild-index/nightly`` served by a real Prefect runner process."""
    env = {**cli_env, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("serve_rebuild.py"))], env=env)
    try:
        deadline = time.monotonic() + 90
        while (
            httpx.get(f"{prefect_api}/deployments/name/rebuild-index/nightly", timeout=10).status_code != 200
        ):
            assert proc.poll() is None and time.monotonic() < deadline, (
                "the runner did not serve the deployment"
            )
            time.sleep(0.3)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_deployment_step_runs_a_served_deployment(
    served_deployment: None, cli_env: dict[str, str], sqlite_url: str, tmp_path: Path, fault_server: object
) -> None:
    marker = tmp_path / "rebuilt.jsonl"
    rebuild = {
        "name": "rebuild-index/nightly",
        "parameters": {"reason": "{target}: {reason}", "marker": str(marker)},
    }
    steps = [{"name": "rebuild", "deployment": {**rebuild, "timeout_seconds": 120}}, *VERIFY]
    url = f"{fault_server.url}/health"  # type: ignore[attr-defined]
    config = write_config(tmp_path / "d.yaml", sqlite_url, url, steps, "search-api")
    code, row, err = finished(start_recover(config, "search-api", cli_env), timeout=240)
    assert code == 0, (row, err)
    detail = step(row, "rebuild")["detail"]
    assert detail["deployment"] == "rebuild-index/nightly" and detail["state"] == "Completed"
    assert [json.loads(line) for line in marker.read_text().splitlines()] == [
        {"reason": "search-api: disk full"}
    ]


def approval_config(tmp_path: Path, sqlite_url: str, url: str, target: str, timeout: float) -> Path:
    ask = {
        "name": "approve",
        "approval": {"timeout_seconds": timeout, "message": "restart {target}? ({reason})"},
    }
    return write_config(tmp_path / f"{target}.yaml", sqlite_url, url, [ask, *VERIFY], target)


def test_approval_approved_through_the_rest_api(
    cli_env: dict[str, str], prefect_api: str, sqlite_url: str, tmp_path: Path, fault_server: object
) -> None:
    url = f"{fault_server.url}/health"  # type: ignore[attr-defined]
    proc = start_recover(
        approval_config(tmp_path, sqlite_url, url, "approve-api", 120), "approve-api", cli_env
    )
    try:
        flow_run_id = paused_run(prefect_api, "approve-api")
        resume(prefect_api, flow_run_id, {"approve": True, "comment": "go ahead", "approver": "alice"})
        code, row, err = finished(proc)
    finally:
        proc.kill() if proc.poll() is None else None
    assert code == 0, (row, err)
    assert row["state"] == "succeeded"
    assert step(row, "approve")["detail"] == {
        "approved": True,
        "approver": "alice",
        "comment": "go ahead",
        "message": "restart approve-api? (disk full)",
    }


def test_approval_rejected_ends_the_run_refused(
    cli_env: dict[str, str], prefect_api: str, sqlite_url: str, tmp_path: Path, fault_server: object
) -> None:
    url = f"{fault_server.url}/health"  # type: ignore[attr-defined]
    proc = start_recover(approval_config(tmp_path, sqlite_url, url, "reject-api", 120), "reject-api", cli_env)
    try:
        resume(
            prefect_api,
            paused_run(prefect_api, "reject-api"),
            {"approve": False, "comment": "not now", "approver": "bob"},
        )
        code, row, _ = finished(proc)
    finally:
        proc.kill() if proc.poll() is None else None
    assert code == 1 and row["state"] == "refused"
    assert row["error_message"] == "rejected by bob: not now"
    approve = step(row, "approve")
    assert approve["state"] == "failed" and approve["detail"]["approver"] == "bob"
    assert step(row, "test_connectivity")["state"] == "skipped"  # nothing after a refusal ran


def test_approval_timing_out_ends_the_run_refused(
    cli_env: dict[str, str], prefect_api: str, sqlite_url: str, tmp_path: Path, fault_server: object
) -> None:
    url = f"{fault_server.url}/health"  # type: ignore[attr-defined]
    proc = start_recover(approval_config(tmp_path, sqlite_url, url, "late-api", 2), "late-api", cli_env)
    try:
        paused_run(prefect_api, "late-api")  # it did pause and wait for a person
        code, row, _ = finished(proc)
    finally:
        proc.kill() if proc.poll() is None else None
    assert code == 1 and row["state"] == "refused"
    assert row["error_message"] == "approval timed out after 2s"
    approve = step(row, "approve")
    assert approve["state"] == "failed" and approve["detail"]["timed_out"] is True
