"""Invariant I1 (core): ``reconcile`` finishes the rows of dead recoveries and nothing else.

Real Redis locks with real TTLs, real audit rows written by ``RecoveryRuntime.begin`` (SQLite and
PostgreSQL). A run "dies" by its lock expiring, which is all a dead process leaves behind; the
``kill -9`` of a real process is in tests/flows/test_invariants_flows.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from faultserver import FaultServer

from recovery.audit.records import PlannedStep
from recovery.backends.breaker_core import CLOSED, OPEN
from recovery.config.loader import RecoveryConfig, parse_config
from recovery.engine.reconcile import reconcile
from recovery.engine.runtime import RecoveryRequest, RecoveryRuntime
from recovery.services import services_for

TTL = 3.0  # the lock (and unverified close) TTL: begin + three steps must fit in it on a loaded CI box


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def audit_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@pytest.fixture
def config(fault_server: FaultServer, redis_url: str, audit_url: str) -> RecoveryConfig:
    fault_server.app.set_mode("status:503")
    return parse_config(
        {
            "audit_url": audit_url,
            "state_url": redis_url,
            "monitor": {"lock_ttl_seconds": TTL},
            "strategy": {"kind": "exponential", "max_attempts": 3, "jitter": "none"},
            "targets": [
                {
                    "name": name,
                    "kind": "http",
                    "url": f"{fault_server.url}/health",
                    "verify": {"consecutive_successes": 1, "interval_seconds": 0},
                }
                for name in ("api", "db-api")
            ],
        }
    )


def later(seconds: float = 60.0) -> datetime:
    """A reconcile clock past every grace period."""
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def started(config: RecoveryConfig, target: str = "api", token: str | None = None) -> RecoveryRuntime:
    """A recovery inside verification: breaker closed unverified, test_connectivity running."""
    if token is not None:
        assert services_for(config).state.acquire_lock(target, token, TTL)  # what the monitor does
    rt = RecoveryRuntime.begin(
        config,
        RecoveryRequest(target=target, requested_by="test", lock_token=token),
        run_id=str(uuid.uuid4()),
    )
    for step in ("check_service_health", "clear_error_cache", "reset_circuit_breaker"):
        await rt.run_step(step, 1)
    rt.audit.step_attempt(rt.run_id, "test_connectivity", 1)  # the attempt the process died in
    return rt


def wait_for_lock_expiry(config: RecoveryConfig, target: str = "api") -> None:
    state = services_for(config).state
    deadline = time.monotonic() + TTL + 2
    while state.lock_owner(target) is not None:
        assert time.monotonic() < deadline, "the lock never expired"
        time.sleep(0.05)


async def test_a_dead_run_is_orphaned_its_running_step_failed(config: RecoveryConfig) -> None:
    rt = await started(config)
    record = rt.audit.run(rt.run_id)
    assert record is not None and record.lock_owner == rt.run_id  # a manual run owns its lock
    wait_for_lock_expiry(config)

    report = reconcile(config, now=later())
    [done] = report.finished
    assert (done.run_id, done.error_type, done.step) == (rt.run_id, "Orphaned", "test_connectivity")
    assert "lock on api is gone" in done.message
    row = rt.audit.run(rt.run_id)
    assert row is not None and (row.state, row.error_type) == ("failed", "Orphaned")
    assert row.finished_at is not None and row.duration_seconds is not None
    steps = {s.name: s for s in row.steps}
    assert (steps["test_connectivity"].state, steps["test_connectivity"].error_type) == ("failed", "Orphaned")
    assert steps["restore_operations"].state == "skipped"
    assert steps["reset_circuit_breaker"].state == "succeeded"  # what happened stays recorded
    # Done once: a second pass (another monitor) finds nothing to do.
    assert reconcile(config, now=later()).finished == ()


async def test_a_run_whose_owner_holds_the_lock_is_untouched(config: RecoveryConfig) -> None:
    token = str(uuid.uuid4())
    rt = await started(config, token=token)  # the monitor's token, not the run id, owns the lock
    record = rt.audit.run(rt.run_id)
    assert record is not None and record.lock_owner == token
    report = reconcile(config, now=later())
    assert report.finished == () and report.running == (rt.run_id,)
    row = rt.audit.run(rt.run_id)
    assert row is not None and row.state == "in_progress"
    assert services_for(config).breaker("api").current_state == CLOSED  # its close stands
    rt.finish("cancelled")


async def test_a_young_row_is_untouched_even_without_a_lock(config: RecoveryConfig) -> None:
    audit = services_for(config).audit
    run_id = audit.start_run(
        target="api", workflow="api-failure-recovery", run_type="manual", steps=[PlannedStep("x")]
    )
    report = reconcile(config, grace_seconds=5.0)
    assert report.young == (run_id,) and report.finished == ()
    assert reconcile(config, grace_seconds=5.0, now=later(6.0)).finished[0].run_id == run_id


async def test_a_row_whose_lock_another_run_took_is_orphaned(config: RecoveryConfig) -> None:
    rt = await started(config)
    wait_for_lock_expiry(config)
    assert services_for(config).state.acquire_lock("api", "next-run", 60)
    [done] = reconcile(config, now=later()).finished
    assert done.run_id == rt.run_id and "another run holds api's lock" in done.message
    assert services_for(config).state.lock_owner("api") == "next-run"  # never someone else's lock


def test_a_row_without_lock_owner_waits_for_a_free_lock(config: RecoveryConfig) -> None:
    """Rows written before revision 0003 (or lock-less operations) have no owner: only a free
    lock proves their run dead."""
    audit, state = services_for(config).audit, services_for(config).state
    run_id = audit.start_run(target="api", workflow="api-failure-recovery", run_type="automatic", steps=[])
    assert state.acquire_lock("api", "someone", 60)
    assert reconcile(config, now=later()).running == (run_id,)
    state.release_lock("api", "someone")
    assert [r.run_id for r in reconcile(config, now=later()).finished] == [run_id]


async def test_crashed_flow_runs_are_reported_as_crashed(config: RecoveryConfig) -> None:
    flow_run_id = str(uuid.uuid4())
    rt = RecoveryRuntime.begin(
        config, RecoveryRequest(target="api", requested_by="t"), run_id=flow_run_id, flow_run_id=flow_run_id
    )
    other = await started(config, target="db-api")
    wait_for_lock_expiry(config)
    wait_for_lock_expiry(config, "db-api")
    asked: list[list[str]] = []

    def crashed(ids: list[str]) -> set[str]:
        asked.append(list(ids))
        return {flow_run_id}

    report = reconcile(config, crashed=crashed, now=later())  # type: ignore[arg-type]
    kinds = {r.run_id: r.error_type for r in report.finished}
    assert kinds == {rt.run_id: "Crashed", other.run_id: "Orphaned"}
    assert asked == [[flow_run_id]]  # only dead rows with a flow run are asked about


async def test_prefect_unreachable_still_orphans(config: RecoveryConfig) -> None:
    rt = await started(config)
    wait_for_lock_expiry(config)

    def down(ids: object) -> set[str]:
        raise ConnectionError("prefect api down")

    rt.audit.set_flow_run_id(rt.run_id, str(uuid.uuid4()))
    [done] = reconcile(config, crashed=down, now=later()).finished  # type: ignore[arg-type]
    assert done.error_type == "Orphaned"


async def test_reconcile_reopens_a_pending_close_and_never_a_verified_one(config: RecoveryConfig) -> None:
    breaker = services_for(config).breaker("api")
    rt = await started(config)
    state = services_for(config).state
    state.release_lock("api", rt.run_id)  # the lock is gone before the close lease lapses
    assert breaker.snapshot().close_lease_owner == rt.run_id
    [done] = reconcile(config, now=later()).finished
    assert done.breaker_reopened and breaker.current_state == OPEN

    # A close an operator made (no lease) is nobody's to revoke.
    second = await started(config)
    breaker.close()
    state.release_lock("api", second.run_id)
    [done] = reconcile(config, now=later()).finished
    assert not done.breaker_reopened and breaker.current_state == CLOSED


def test_two_reconcilers_finish_a_row_once(config: RecoveryConfig) -> None:
    audit = services_for(config).audit
    ids = [
        audit.start_run(
            target="api", workflow="api-failure-recovery", run_type="manual", steps=[], lock_owner=f"gone-{i}"
        )
        for i in range(5)
    ]
    reports = []
    barrier = threading.Barrier(2)

    def run() -> None:
        barrier.wait()
        reports.append(reconcile(config, now=later()))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    finished = sorted(r.run_id for report in reports for r in report.finished)
    assert finished == sorted(ids)
