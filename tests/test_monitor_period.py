"""The served monitor's pieces without Prefect: period grid, summary, board gate, detected_at."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from recovery.backends.state_memory import MemoryState
from recovery.config.loader import parse_config
from recovery.engine.monitor import decide
from recovery.engine.period import Period, summarize
from recovery.engine.runtime import RecoveryRequest, RecoveryRuntime
from recovery.enums import MonitorAction
from recovery.kinds.base import ProbeResult
from recovery.reporting.board import BoardGate
from recovery.services import services_for


def test_period_slots_continue_one_grid_across_runs() -> None:
    first = Period(anchor=1000.0, interval=10.0, length=60.0)
    second = Period(anchor=first.end, interval=10.0, length=60.0)
    assert first.first_slot(990.0) == 1000.0  # started early (runner prefetch): waits
    slots = []
    slot = first.first_slot(1000.0)
    while slot is not None:
        slots.append(slot)
        slot = first.next_slot(slot + 0.5)  # each cycle takes 0.5 s
    assert slots == [1000.0, 1010.0, 1020.0, 1030.0, 1040.0, 1050.0]
    # The next run's first slot is the grid's next one: no gap, no double cycle, even when
    # its process started late (it waits for the grid instead of cycling at once).
    assert second.first_slot(1052.0) == 1060.0 == slots[-1] + 10.0
    assert second.first_slot(1063.0) == 1070.0
    assert first.next_slot(1059.9) is None


def test_period_hands_over_on_the_grid_within_a_bound() -> None:
    period = Period(anchor=0.0, interval=10.0, length=60.0)
    # No successor cycling yet: the run keeps its grid past its end, for a quarter period.
    assert period.next_slot(55.0, handing_over=True) == 60.0
    assert period.next_slot(65.0, handing_over=True) == 70.0
    assert period.next_slot(71.0, handing_over=True) is None  # 80 >= 60 + 15
    assert period.handover_by == 75.0


def test_period_skips_missed_slots_and_bounds_the_run() -> None:
    period = Period(anchor=0.0, interval=10.0, length=60.0)
    assert period.next_slot(23.0) == 30.0  # an overrunning cycle skips 20, never queues it
    assert period.next_slot(30.0) == 30.0
    assert period.first_slot(61.0) is None
    assert period.drain_seconds == 15.0
    assert period.prefetch_seconds == 20.0
    # The previous run is gone (hand-over + drain) before the next prefetch starts a third.
    assert period.handover_by + period.drain_seconds < 2 * period.length - period.prefetch_seconds
    assert Period(0.0, 30.0, 600.0).prefetch_seconds == 60.0


def test_summary_counts_outcomes() -> None:
    assert summarize(1, []) == "1 cycle; no recoveries"
    outcomes = [{"state": "succeeded"}, {"state": "refused"}]
    assert summarize(60, outcomes) == "60 cycles; 2 recoveries: 1 succeeded, 1 refused"
    assert summarize(3, [{"state": "failed"}]) == "3 cycles; 1 recovery: 1 failed"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_board_gate_publishes_changes_and_heartbeats_only() -> None:
    clock = Clock()
    gate = BoardGate(heartbeat_seconds=300, clock=clock)
    healthy = [{"target": "a", "health": "healthy"}]
    down = [{"target": "a", "health": "unhealthy (status 503)"}]
    assert gate.due(healthy)  # nothing published yet
    gate.published(healthy)
    clock.now = 10
    assert not gate.due([dict(r) for r in healthy])  # same rows: no new version
    assert gate.due(down)  # a row changed: published by the cycle that sees it
    gate.published(down)
    clock.now = 309
    assert not gate.due(down)
    clock.now = 310
    assert gate.due(down)  # heartbeat: the board's timestamp stays fresh


def test_board_gate_retries_a_failed_publication() -> None:
    gate = BoardGate(heartbeat_seconds=300, clock=Clock())
    table = [{"target": "a", "health": "healthy"}]
    assert gate.due(table)
    # publication failed: published() not called, so the next cycle tries again
    assert gate.due(table)


@pytest.fixture
def config_data(tmp_path: Path) -> dict[str, object]:
    name = f"api-{uuid.uuid4().hex[:8]}"
    return {
        "audit_url": f"sqlite:///{tmp_path / 'audit.db'}",
        "monitor": {"failure_threshold": 1, "lock_ttl_seconds": 60},
        "targets": [{"kind": "http", "name": name, "url": "http://127.0.0.1:9/health"}],
    }


def test_detected_at_is_stamped_by_the_decision_and_audited(config_data: dict[str, object]) -> None:
    """MTTD ends where the monitor decides, not when the recovery flow got round to starting."""
    config = parse_config(config_data)
    name = config.targets[0].name
    state = MemoryState()
    before = time.time()
    (d,) = decide(config, state, [ProbeResult(name, "http", False, "status 503", 1.0, status=503)])
    after = time.time()
    assert d.action is MonitorAction.RECOVER
    assert d.detected_at is not None and before <= d.detected_at <= after
    assert "detected_at" not in d.as_json()  # the report is unchanged
    # The subflow starts later (simulated: 5 s); the row keeps the decision's time.
    services = services_for(config)
    assert services.state.acquire_lock(name, "tok", 60)
    request = RecoveryRequest(
        name, run_type="automatic", lock_token="tok", first_failure_at=d.first_failure_at,
        detected_at=d.detected_at - 5.0,
    )  # fmt: skip
    rt = RecoveryRuntime.begin(config, request)
    try:
        row = services.audit.run(rt.run_id)
        assert row is not None and row.detected_at is not None
        assert row.detected_at == datetime.fromtimestamp(d.detected_at - 5.0, UTC)
        assert row.detected_at < row.started_at
    finally:
        rt.finish("cancelled")


def test_detected_at_without_a_decision(config_data: dict[str, object]) -> None:
    """An automatic run without a decision time is stamped at its start; a manual one never."""
    config = parse_config(config_data)
    name = config.targets[0].name
    audit = services_for(config).audit
    for run_type, stamped in (("automatic", True), ("manual", False)):
        rt = RecoveryRuntime.begin(config, RecoveryRequest(name, run_type=run_type, requested_by="t"))
        try:
            row = audit.run(rt.run_id)
            assert row is not None and (row.detected_at is not None) is stamped
        finally:
            rt.finish("cancelled")
