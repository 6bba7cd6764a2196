"""Escalation ladder end to end (issue 12, item 2): `recovery monitor --once` through the real
CLI, a real HTTP fault server, Redis shared state, SQLite audit and the session's Prefect server.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from faultserver import FaultServer
from ladder_helpers import events, write_config


def history(run_cli: Any, config: Path) -> list[dict[str, Any]]:
    result = run_cli("--config", str(config), "history", "--json")
    assert result.returncode == 0, result.stderr
    return list(reversed(json.loads(result.stdout)))  # oldest first


async def test_two_rung_ladder_rung_1_fails_rung_2_succeeds_on_the_next_detection(
    run_cli: Any, prefect_api: str, fault_server: FaultServer, redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    name = f"api-{uuid.uuid4().hex[:6]}"
    target = {
        "kind": "http",
        "name": name,
        "url": f"{fault_server.url}/health",
        "timeout_seconds": 1,
        "verify": {"consecutive_successes": 1, "interval_seconds": 0},
        "escalation": ["rate-limit-recovery", "api-failure-recovery"],
    }
    config = write_config(
        tmp_path / "recovery.yaml", audit_url=sqlite_url, state_url=redis_url, targets=[target]
    )
    started = time.time()
    fault_server.app.set_mode("status:503")  # rung 1 (back off) cannot fix a 503: it fails
    first = run_cli("--config", str(config), "monitor", "--once")
    assert first.returncode == 1, first.stdout + first.stderr
    assert f"{name}: UNHEALTHY (status 503), failures 1, action recover, rung 1/2" in first.stdout
    assert f"rate-limit-recovery of {name}: failed" in first.stdout
    (run1,) = history(run_cli, config)
    assert (run1["workflow"], run1["rung"], run1["state"]) == ("rate-limit-recovery", 1, "failed")
    (failed,) = await events("recovery.failed", name, started)
    assert (failed.payload["rung"], failed.payload["rungs"], failed.payload["run_id"]) == (1, 2, run1["id"])
    status = run_cli("--config", str(config), "status", "--json")
    (row,) = json.loads(status.stdout)
    assert (row["rung"], row["rungs"], row["rung_outcome"]) == (1, 2, "failed")

    # The next detection of the same incident: the service comes back during rung 2's
    # verification (503 for the monitor's probe and the diagnosis, then 200).
    fault_server.app.set_mode("fail-next:2")
    second = run_cli("--config", str(config), "monitor", "--once")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "action recover, rung 2/2" in second.stdout
    assert f"api-failure-recovery of {name}: succeeded" in second.stdout
    run1, run2 = history(run_cli, config)
    assert (run2["workflow"], run2["rung"], run2["state"]) == ("api-failure-recovery", 2, "succeeded")
    # None expected: wait a settle time for one to be persisted, not the 60 s for one to show up.
    assert await events("recovery.escalation-exhausted", name, started, want=0, settle=5) == []


async def test_the_last_rung_failing_escalates_once_and_stops_automatic_recovery(
    run_cli: Any, prefect_api: str, fault_server: FaultServer, redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    name = f"api-{uuid.uuid4().hex[:6]}"
    target = {
        "kind": "http",
        "name": name,
        "url": f"{fault_server.url}/health",
        "timeout_seconds": 1,
        "verify": {"consecutive_successes": 1, "interval_seconds": 0},
        "escalation": ["api-failure-recovery"],
    }
    config = write_config(
        tmp_path / "recovery.yaml", audit_url=sqlite_url, state_url=redis_url, targets=[target]
    )
    started = time.time()
    fault_server.app.set_mode("status:503")
    first = run_cli("--config", str(config), "monitor", "--once")
    assert f"api-failure-recovery of {name}: failed" in first.stdout, first.stdout + first.stderr
    second = run_cli("--config", str(config), "monitor", "--once")
    assert second.returncode == 1
    assert "action escalation-exhausted, rung 1/1" in second.stdout, second.stdout + second.stderr
    (run1,) = history(run_cli, config)  # no second run
    (exhausted,) = await events("recovery.escalation-exhausted", name, started)
    assert (exhausted.payload["run_id"], exhausted.payload["rung"], exhausted.payload["state"]) == (
        run1["id"],
        1,
        "failed",
    )
