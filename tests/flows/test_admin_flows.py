"""Admin flows in-process against the session's Prefect test API: the manual-trigger window
covers every admin operation, a reused request_id is refused (audited under the flow run's own
id), and every flow loads the config ``RECOVERY_CONFIG`` names (there is no config parameter).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from faultserver import FaultServer

from flows.breaker_flows import reset_circuit_breaker
from flows.manual_flows import recover
from flows.recovery_flows import clear_cache, reconnect_database
from recovery.audit.store import AuditStore

pytestmark = pytest.mark.prefect


def write_config(path: Path, audit_url: str, state_url: str, extra_targets: str = "", limit: int = 1) -> str:
    path.write_text(
        f"audit_url: {audit_url}\nstate_url: {state_url}\n"
        f"manual_triggers: {{max_triggers: {limit}, window_seconds: 600}}\n"
        "targets:\n"
        f"  - {{name: sessions, kind: redis, url: '{state_url}'}}\n"
        "  - {name: orders-db, kind: database, url: 'postgresql+psycopg://u@127.0.0.1:9/db'}\n"
        f"{extra_targets}"
    )
    return str(path)


async def test_manual_trigger_window_covers_every_admin_operation(
    prefect_api: str, redis_url: str, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECOVERY_CONFIG", write_config(tmp_path / "r.yaml", sqlite_url, redis_url))
    who: dict[str, Any] = {"requested_by": "alice", "reason": "INC-1"}
    first = await reset_circuit_breaker(target="sessions", **who)
    assert first["state"] == "succeeded"
    cleared: Any = await clear_cache(target="sessions", pattern="nothing:*", return_state=True, **who)
    assert cleared.name == "Refused" and "manual trigger rate limit" in cleared.message
    await reset_circuit_breaker(target="orders-db", force=True, **who)  # port 9: forced
    reconnect: Any = await reconnect_database(target="orders-db", return_state=True, **who)
    assert reconnect.name == "Refused" and "manual trigger rate limit" in reconnect.message
    again: Any = await reset_circuit_breaker(target="sessions", return_state=True, **who)
    assert again.name == "Refused"
    refused = {(r.target, r.workflow) for r in AuditStore(sqlite_url).history() if r.state == "refused"}
    assert refused == {
        ("sessions", "clear-cache"),
        ("orders-db", "reconnect-database"),
        ("sessions", "reset-circuit-breaker"),
    }


async def test_reused_request_id_is_refused_and_audited_under_its_own_run(
    prefect_api: str,
    fault_server: FaultServer,
    redis_url: str,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = (
        f"  - {{name: payments-api, kind: http, url: '{fault_server.url}/health',"
        " verify: {consecutive_successes: 1, interval_seconds: 0}}\n"
    )
    path = write_config(tmp_path / "r.yaml", sqlite_url, redis_url, api, limit=10)
    monkeypatch.setenv("RECOVERY_CONFIG", path)
    params: dict[str, Any] = {"target": "payments-api", "requested_by": "bot", "request_id": "req-7"}
    first: Any = await recover(return_state=True, **params)
    assert first.is_completed(), first.message
    second: Any = await recover(return_state=True, **params)
    assert second.name == "Refused" and "request_id req-7 was already used" in second.message
    audit = AuditStore(sqlite_url)
    original = audit.run("req-7")
    assert original is not None and original.state == "succeeded"
    assert original.flow_run_id == str(first.state_details.flow_run_id)
    duplicate = audit.run(str(second.state_details.flow_run_id))
    assert duplicate is not None and duplicate.state == "refused"
    assert duplicate.error_message is not None and "req-7" in duplicate.error_message
