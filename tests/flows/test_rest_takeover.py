"""Taking over from a looping automatic recovery, as an admin does in the Prefect UI (issue 14;
docs/runbooks/takeover.md): a real `prefect server start`, a real `recovery serve`, a target
answering 503 (tests/faultserver.py), raw REST calls as the UI sends them.

1. the monitor's automatic recovery retries against the 503;
2. a `manual` recover is refused (state `Refused`), naming the automatic run's flow run id,
   which the REST API knows (`GET /api/flow_runs/{id}`: the UI link works), and its audit id;
3. an `emergency` recover takes over: the automatic flow run ends `Cancelled` (no crash, no
   traceback in its logs), its row `cancelled` "taken over by ..."; the emergency run
   `Completed` once the target answers again; both audited.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultserver import FaultServer
from served_stack import Api, serving

from recovery.audit.records import RunRecord
from recovery.audit.store import AuditStore

Served = tuple[Api, dict[str, Any]]


@pytest.fixture
def served(
    tmp_path: Path, fault_server: FaultServer, redis_url: str, sqlite_url: str, prefect_server: Api
) -> Iterator[Served]:
    config = tmp_path / "recovery.yaml"
    # A long automatic recovery (100 attempts, delays up to 1 s) that the test interrupts; the
    # monitor runs when the test asks (its schedule is an hour away).
    config.write_text(
        f"audit_url: {sqlite_url}\nstate_url: {redis_url}\n"
        "monitor: {interval_seconds: 3600, failure_threshold: 1}\n"
        "manual_triggers: {max_triggers: 50, window_seconds: 60}\n"
        "strategy: {kind: exponential, base_seconds: 0.5, factor: 2, max_delay_seconds: 1,"
        " max_attempts: 100, jitter: none}\n"
        "targets:\n"
        f"  - {{name: payments-api, kind: http, url: '{fault_server.url}/health', timeout_seconds: 1,\n"
        "     verify: {consecutive_successes: 1, interval_seconds: 0}}\n"
    )
    with serving(prefect_server, config) as api:
        yield api, {"fault": fault_server, "audit": AuditStore(sqlite_url)}


def _running_automatic(audit: AuditStore, timeout: float = 120) -> RunRecord:
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in audit.in_progress() if r.target == "payments-api" and r.type == "automatic"]
        if rows and rows[0].steps and any(s.attempts >= 2 for s in rows[0].steps):
            return rows[0]  # retrying against the 503
        assert time.monotonic() < deadline, "no automatic recovery started"
        time.sleep(0.3)


def _logs(api: Api, flow_run_id: str) -> list[str]:
    body = {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200}
    return [str(entry["message"]) for entry in api.call("POST", "/logs/filter", json=body)]


def test_manual_is_refused_with_the_flow_run_and_emergency_takes_over(served: Served) -> None:
    api, ctx = served
    audit: AuditStore = ctx["audit"]
    ctx["fault"].app.set_mode("status:503")
    api.trigger(api.deployment_id("monitor-period", "monitor"), {})
    auto = _running_automatic(audit)
    assert auto.flow_run_id is not None
    recover = api.deployment_id("recover", "recover")

    manual = api.wait(api.trigger(recover, {"target": "payments-api", "requested_by": "bob"}))
    assert (manual["state"]["type"], manual["state"]["name"]) == ("FAILED", "Refused")
    message = manual["state"]["message"]
    assert f"/runs/flow-run/{auto.flow_run_id}" in message and f"audit run {auto.id}" in message
    linked = api.call("GET", f"/flow_runs/{auto.flow_run_id}")  # the UI link resolves
    assert linked["state"]["type"] == "RUNNING"
    assert not any("Traceback" in line for line in _logs(api, manual["id"]))

    emergency_id = api.trigger(
        recover, {"target": "payments-api", "requested_by": "oncall", "type": "emergency", "reason": "INC-9"}
    )
    automatic = api.wait(auto.flow_run_id, timeout=60)  # stops at its next step attempt
    assert automatic["state"]["type"] == "CANCELLED", automatic["state"]
    assert "taken over by oncall: INC-9" in automatic["state"]["message"]
    ctx["fault"].app.set_mode("ok")
    emergency = api.wait(emergency_id)
    assert emergency["state"]["type"] == "COMPLETED", emergency["state"]

    taken = audit.run(auto.id)
    assert taken is not None and (taken.state, taken.error_type) == ("cancelled", "TakenOver")
    assert taken.error_message == "taken over by oncall: INC-9"
    [row] = [r for r in audit.history("payments-api") if r.flow_run_id == emergency_id]
    assert (row.type, row.requested_by, row.reason) == ("emergency", "oncall", "INC-9")
    assert row.state == "succeeded"
    logs = _logs(api, auto.flow_run_id)
    assert not any("Crash detected" in line or "Traceback" in line for line in logs), logs
