"""The served monitor's flow run in-process: cycles go on while a recovery subflow runs.

One period run (interval 1 s, period 6 s) against a target answering 503 whose recovery keeps
retrying its verification for longer than an interval: the later cycles still run on time (the
recovery is not awaited by them), the lock makes them report ``in-progress`` instead of a
second recovery, the run waits for the recovery before it ends, and its final state message
says how it went. Real Prefect test server, Redis, SQLite and HTTP server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from faultserver import FaultServer
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

from flows.monitor_period import monitor_period
from recovery.audit.store import AuditStore
from recovery.backends.state_redis import RedisState

pytestmark = pytest.mark.prefect

PATIENT = (
    "{kind: exponential, base_seconds: 0.5, factor: 1, max_delay_seconds: 0.5, max_attempts: 8, jitter: none}"
)


def _config(path: Path, audit_url: str, state_url: str, url: str, period: float) -> str:
    path.write_text(
        f"audit_url: {audit_url}\nstate_url: {state_url}\n"
        f"monitor: {{interval_seconds: 1, period_seconds: {period}, failure_threshold: 1,\n"
        "          flap_detection: false}\n"
        f"strategy: {PATIENT}\n"
        f"targets:\n  - {{name: payments-api, kind: http, url: '{url}/health', timeout_seconds: 1,\n"
        "     verify: {consecutive_successes: 1, interval_seconds: 0.05}}\n"
    )
    return str(path)


async def _children(run_id: Any) -> list[Any]:
    async with get_client() as client:
        return list(
            await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id]))
            )
        )


async def test_period_run_cycles_beside_its_recovery(
    prefect_api: str,
    fault_server: FaultServer,
    redis_url: str,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Period 14 s, drain 3.5 s: room for a subflow start of 5 s on a loaded box plus the retries.
    path = _config(tmp_path / "r.yaml", sqlite_url, redis_url, fault_server.url, period=14)
    monkeypatch.setenv("RECOVERY_CONFIG", path)
    fault_server.app.set_mode("fail-next:8")  # the recovery verifies for several intervals
    state: Any = await monitor_period(return_state=True)
    assert state.is_completed(), state.message
    report = await state.result()
    assert report["cycles"] >= 5, report  # cycles went on while the recovery retried
    # One recovery although the target failed in several cycles: the lock, not a queue.
    assert state.message == f"{report['cycles']} cycles; 1 recovery: 1 succeeded", state.message
    (child,) = await _children(state.state_details.flow_run_id)  # its own flow run
    assert child.state is not None and child.state.is_completed()
    (row,) = [r for r in AuditStore(sqlite_url).history() if r.flow_run_id == str(child.id)]
    assert row.type == "automatic" and row.state == "succeeded"
    assert row.detected_at is not None and row.first_failure_at is not None
    assert row.first_failure_at <= row.detected_at <= row.started_at


async def test_period_run_cancels_recoveries_it_cannot_wait_for(
    prefect_api: str,
    fault_server: FaultServer,
    redis_url: str,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A recovery still running a quarter period after the last cycle is cancelled: audited,
    lock released (the next period's cycles start it again), and the run says so."""
    path = _config(tmp_path / "r.yaml", sqlite_url, redis_url, fault_server.url, period=4)
    monkeypatch.setenv("RECOVERY_CONFIG", path)
    fault_server.app.set_mode("status:503")
    state: Any = await monitor_period(return_state=True)
    assert state.is_completed(), state.message
    assert state.message.endswith("; 1 recovery: 1 cancelled"), state.message
    rows = {r.flow_run_id: r for r in AuditStore(sqlite_url).history()}
    # On a slow machine the cancel may come before the subflow's run exists: then nothing was
    # done and there is no row; a recovery that began is audited cancelled.
    for child in await _children(state.state_details.flow_run_id):
        assert rows[str(child.id)].state == "cancelled"
    assert all(r.state == "cancelled" for r in rows.values()), rows
    assert RedisState(redis_url).lock_owner("payments-api") is None
