"""No backlog, ever: a real `prefect server` + `recovery serve`, a target failing for a while.

The issue's scenario is a target failing for 5 minutes at interval 10 s. Here it is 84 s at
interval 3 s with a 42 s period: ~28 cycles and two period hand-overs (the default 10-minute
period would have none), in under a third of the time (the suite must stay fast on 2 cores). Each recovery
keeps retrying its verification for several intervals (a patient strategy), which is what piled
up ``AwaitingConcurrencySlot`` runs when one flow run per cycle waited for its recoveries.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from faultserver import FaultServer
from served_stack import Api, serving

from recovery.audit.store import AuditStore

INTERVAL, PERIOD, FAILING = 3, 42, 84


def _config(path: Path, audit_url: str, state_url: str, url: str) -> Path:
    path.write_text(
        f"audit_url: {audit_url}\nstate_url: {state_url}\n"
        f"monitor: {{interval_seconds: {INTERVAL}, period_seconds: {PERIOD}, failure_threshold: 2,\n"
        "          flap_detection: false}\n"
        "strategy: {kind: exponential, base_seconds: 1, factor: 1.5, max_delay_seconds: 2, "
        "max_attempts: 5, jitter: none}\n"
        f"targets:\n  - {{name: payments-api, kind: http, url: '{url}/health', timeout_seconds: 1,\n"
        "     verify: {consecutive_successes: 2, interval_seconds: 0.05}}\n"
    )
    return path


@pytest.fixture
def served_monitor(
    tmp_path: Path, fault_server: FaultServer, redis_url: str, sqlite_url: str, prefect_server: Api
) -> Iterator[tuple[Api, str, FaultServer]]:
    config = _config(tmp_path / "recovery.yaml", sqlite_url, redis_url, fault_server.url)
    fault_server.app.set_mode("status:503")  # failing from the first cycle on
    with serving(prefect_server, config, limit=None) as api:
        yield api, sqlite_url, fault_server


def _runs(api: Api, **flt: Any) -> list[dict[str, Any]]:
    return list(api.call("POST", "/flow_runs/filter", json={"limit": 200, **flt}))


def _wait_first_period(api: Api, monitor_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any(
        r["start_time"] for r in _runs(api, deployments={"id": {"any_": [monitor_id]}})
    ):  # fmt: skip
        assert time.monotonic() < deadline, "no period run started"
        time.sleep(1)


def test_failing_target_leaves_no_backlog(
    served_monitor: tuple[Api, str, FaultServer], redis_url: str
) -> None:
    api, audit_url, fault = served_monitor
    monitor_id = api.deployment_id("monitor-period", "monitor")
    _wait_first_period(api, monitor_id)  # `recovery serve` schedules the first period at once
    time.sleep(FAILING)
    fault.app.set_mode("ok")
    time.sleep(2 * INTERVAL + 2)  # the last recovery verifies

    period_runs = _runs(api, deployments={"id": {"any_": [monitor_id]}})
    states = Counter(r["state"]["name"] for r in period_runs)
    # The backlog the issue saw: queued runs waiting for a slot, or runs gone late.
    assert states["AwaitingConcurrencySlot"] == 0, states
    assert states["Late"] == 0, states
    # Nothing was dropped either: each period run hands over to the next.
    assert states["Cancelled"] == 0, states
    started = [r for r in period_runs if r["start_time"]]
    assert len(started) >= 1 + FAILING // PERIOD, states

    # Every cycle is visible (a probe task run per cycle), on one grid across the hand-overs:
    # no gap of a missed cycle, no slot probed twice.
    tasks = api.call(
        "POST",
        "/task_runs/filter",
        json={"flow_runs": {"id": {"any_": [r["id"] for r in started]}}, "limit": 200},
    )
    probes = sorted(
        datetime.fromisoformat(t["start_time"]).timestamp()
        for t in tasks
        if t["name"].endswith(": probe-targets") and t["start_time"]
    )
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    assert len(probes) >= FAILING / INTERVAL, len(probes)
    assert max(gaps) < 2 * INTERVAL, gaps  # every slot had its cycle
    # and only one: a cycle off the grid (the first run cycles at once) is followed by the next
    # slot at least half an interval later (less the jitter of task start times)
    assert min(gaps) > INTERVAL / 2 - 0.25, gaps
    # Each cycle claimed its grid slot in shared state: where two period runs overlap (the
    # hand-over, a late start) the first claim cycles the slot and the other run skips it.
    # A claim lives two periods; every cycle since then cycled a slot it claimed (on time, or
    # late for it by less than an interval).
    keys = redis.Redis.from_url(redis_url).keys(f"recovery:monitor:{monitor_id}:slot:*")
    claimed = sorted(int(k.rsplit(b":", 1)[1]) / 1000 for k in keys)
    recent = [t for t in probes if t > time.time() - 2 * PERIOD + 10]
    assert recent and len(claimed) <= len(probes), (claimed, probes)
    assert all(any(-0.5 < t - c < INTERVAL for c in claimed) for t in recent), (claimed, recent)

    # Recoveries ran as their own flow runs, subflows of the period runs, audited with them.
    recoveries = _runs(
        api,
        flows={"name": {"any_": ["api-failure-recovery"]}},
        flow_runs={"parent_flow_run_id": {"any_": [r["id"] for r in started]}},
    )
    assert len(recoveries) >= 2, Counter(r["state"]["name"] for r in recoveries)
    assert all(r["parent_task_run_id"] for r in recoveries)
    rows = {r.flow_run_id: r for r in AuditStore(audit_url).history(limit=200)}
    for run in recoveries:
        row = rows.get(run["id"])
        assert row is not None and row.type == "automatic", run["id"]
        if row.state == "refused":  # the default budget (3 automatic recoveries an hour) is spent
            assert "budget" in (row.error_message or ""), row
            continue
        # detected by the monitor's decision, before the recovery flow started
        assert row.detected_at is not None and row.detected_at <= row.started_at
    assert any(rows[r["id"]].state != "refused" for r in recoveries)

    # The finished period runs say what their recoveries did.
    messages = [
        r["state"]["message"] or "" for r in period_runs if r["state"]["type"] in {"COMPLETED", "FAILED"}
    ]
    assert messages and all(" cycles; " in m for m in messages), messages
    assert any("recover" in m and ("succeeded" in m or "failed" in m) for m in messages), messages
