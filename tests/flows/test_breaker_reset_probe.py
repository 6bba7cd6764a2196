"""`reset-circuit-breaker` probes the target first: an unhealthy target's breaker stays open
(run ``Refused``, audited ``refused`` with the probe's reason) unless the caller forces the reset
(audited as forced, with the probe's reason); a healthy target's breaker is closed.

Real services: the session's Prefect test server, Redis, SQLite, the uvicorn fault server.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from faultserver import FaultServer

from flows.breaker_flows import reset_circuit_breaker
from recovery.audit.store import AuditStore
from recovery.client.breakers import breaker_for_target
from recovery.config.loader import load_config

WHO: dict[str, Any] = {"requested_by": "alice", "reason": "provider says it is fixed"}


@pytest.fixture
def config_path(
    prefect_api: str,
    fault_server: FaultServer,
    redis_url: str,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(
        f"audit_url: {sqlite_url}\nstate_url: {redis_url}\n"
        "targets:\n"
        f"  - {{name: payments-api, kind: http, url: '{fault_server.url}/health', timeout_seconds: 1}}\n"
    )
    monkeypatch.setenv("RECOVERY_CONFIG", str(path))  # the flows load the worker's config
    return str(path)


def step_detail(sqlite_url: str, run_id: str) -> dict[str, Any]:
    run = AuditStore(sqlite_url).run(run_id)
    assert run is not None and run.state == "succeeded", run
    [step] = run.steps
    assert step.detail is not None
    return step.detail


async def test_unhealthy_target_is_refused_unless_forced(
    config_path: str, fault_server: FaultServer, sqlite_url: str
) -> None:
    breaker = breaker_for_target(load_config(config_path), "payments-api")
    breaker.open()
    fault_server.app.set_mode("status:503")

    state: Any = await reset_circuit_breaker(target="payments-api", return_state=True, **WHO)
    assert state.name == "Refused" and state.is_failed(), state
    assert "payments-api is unhealthy (status 503)" in state.message
    assert breaker.current_state == "open", "a refused reset closed the breaker"
    [refused] = AuditStore(sqlite_url).history("payments-api")
    assert (refused.workflow, refused.state, refused.requested_by, refused.reason) == (
        "reset-circuit-breaker",
        "refused",
        "alice",
        WHO["reason"],
    )
    assert refused.error_message is not None and "status 503" in refused.error_message
    assert refused.flow_run_id == str(state.state_details.flow_run_id)

    forced = await reset_circuit_breaker(target="payments-api", force=True, **WHO)
    assert (forced["before"], forced["after"], forced["forced"], forced["probe"]) == (
        "open",
        "closed",
        True,
        "status 503",
    )
    detail = step_detail(sqlite_url, forced["run_id"])
    assert (detail["forced"], detail["probe"], detail["before"]) == (True, "status 503", "open")
    assert breaker.current_state == "closed"


async def test_healthy_target_is_reset_and_force_is_not_recorded_as_needed(
    config_path: str, fault_server: FaultServer, sqlite_url: str
) -> None:
    breaker = breaker_for_target(load_config(config_path), "payments-api")
    breaker.open()
    result = await reset_circuit_breaker(target="payments-api", **WHO)
    assert (result["before"], result["after"], result["forced"]) == ("open", "closed", False)
    assert step_detail(sqlite_url, result["run_id"])["forced"] is False
    assert breaker.current_state == "closed"
    # force on a healthy target: nothing was overridden, so it is not audited as forced.
    breaker.open()
    again = await reset_circuit_breaker(target="payments-api", force=True, **WHO)
    assert again["forced"] is False


async def test_the_probe_is_bounded_by_the_targets_timeout(
    config_path: str, fault_server: FaultServer, sqlite_url: str
) -> None:
    breaker = breaker_for_target(load_config(config_path), "payments-api")
    breaker.open()
    fault_server.app.set_mode("hang")
    started = time.monotonic()
    state: Any = await reset_circuit_breaker(target="payments-api", return_state=True, **WHO)
    assert time.monotonic() - started < 10, "the probe of a hanging target was not bounded"
    assert state.name == "Refused" and "unhealthy" in state.message, state
    assert breaker.current_state == "open"
