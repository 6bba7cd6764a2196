"""R2: hundreds of recoveries while the audit PostgreSQL goes away and comes back.

Each recovery is a real ``RecoveryRuntime`` run (lock in Redis, probes of a real HTTP server,
its breaker, its error cache) driven in-process; the audit store sits behind a TcpProxy that a
controller thread stops (connections dropped, new ones refused) and freezes (accepts, never
answers) in the middle of the runs. Afterwards the spool is replayed and every run must have
exactly one complete row: its final state, every step's state and attempts, its own times.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from audit_faults import dump, proxied_postgres
from dbcache_services import TcpProxy
from faultserver import FaultServer

from recovery.config.loader import RecoveryConfig, parse_config
from recovery.engine.runtime import RecoveryRequest, RecoveryRuntime
from recovery.errors import TemporaryError
from recovery.services import services_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

MIN_RUNS = 200
PACE = 0.06  # seconds between recovery starts
TIMEOUT = 2.0
# (what the audit store does, for how long): down twice, one way each, in the middle of the runs.
SCHEDULE: list[tuple[str, float]] = [("up", 2.0), ("stopped", 3.0), ("up", 3.0), ("frozen", 6.0), ("up", 3.0)]
Expected = dict[str, Any]


class Controller(threading.Thread):
    """Plays ``SCHEDULE`` on the proxy; ``phase`` is what the store is doing now."""

    def __init__(self, proxy: TcpProxy) -> None:
        super().__init__(daemon=True)
        self.proxy = proxy
        self.phase = "up"
        self.done = threading.Event()

    def run(self) -> None:
        actions: dict[str, Callable[[], None]] = {
            "stopped": self.proxy.stop,
            "frozen": self.proxy.freeze,
        }
        for phase, seconds in SCHEDULE:
            if phase == "up":
                if self.phase == "stopped":
                    self.proxy.start()
                elif self.phase == "frozen":
                    self.proxy.thaw()
            else:
                actions[phase]()
            self.phase = phase
            time.sleep(seconds)
        self.done.set()


async def recover(config: RecoveryConfig, target: str) -> Expected:
    """One recovery, as the flow drives it (Prefect's retries played by the loop below)."""
    began = datetime.now(UTC)
    rt = RecoveryRuntime.begin(config, RecoveryRequest(target=target, requested_by="r2", run_type="manual"))
    steps = {name: ("skipped", 0) for name in rt.plans}  # never ran: finish_run marks them skipped
    state, error = "succeeded", None
    try:
        for name, planned in rt.plans.items():
            for attempt in range(1, planned.plan.max_attempts + 1):
                try:
                    detail = await rt.run_step(name, attempt)
                    steps[name] = ("skipped" if detail is None else "succeeded", attempt)
                    break
                except TemporaryError:
                    steps[name] = ("failed", attempt)
                    if attempt == planned.plan.max_attempts:
                        raise
    except Exception as exc:
        state, error = "failed", exc
    rt.finish(state, error)
    return {"id": rt.run_id, "state": state, "steps": steps, "began": began, "ended": datetime.now(UTC)}


def check(expected: Expected, row: dict[str, Any] | None, steps: list[dict[str, Any]]) -> bool:
    """The row says exactly what the recovery did, with the times it did it."""
    if row is None or row["state"] != expected["state"] or row["finished_at"] is None:
        return False
    slack = timedelta(milliseconds=5)
    if not (
        expected["began"] - slack <= row["started_at"] <= row["finished_at"] <= expected["ended"] + slack
    ):
        return False  # a replayed row carries the time of the write, not of the replay
    return {s["name"]: (s["state"], s["attempts"]) for s in steps} == expected["steps"] and len(steps) == len(
        expected["steps"]
    )


async def test_r2_no_audit_record_lost_or_duplicated_while_the_store_fails(
    pg_url: str, redis_url: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    with proxied_postgres(pg_url) as (url, proxy):
        config = parse_config(
            {
                "audit_url": url,
                "state_url": redis_url,
                "audit_spool": str(tmp_path / "spool"),
                "audit_timeout_seconds": TIMEOUT,
                "strategy": {"kind": "exponential", "max_attempts": 2, "jitter": "none"},
                "targets": [
                    {
                        "name": name,
                        "kind": "http",
                        "url": f"{fault_server.url}{path}",
                        "error_cache_pattern": f"errors:{name}:*",
                        "verify": {"consecutive_successes": 1, "interval_seconds": 0},
                    }
                    for name, path in (("api", "/health"), ("broken", "/status/503"))
                ],
            }
        )
        audit = services_for(config).audit  # built (and migrated) while the store is up
        controller = Controller(proxy)
        runs: list[tuple[Expected, str, str, float]] = []  # expected, phase at start/end, seconds
        started = time.monotonic()
        controller.start()
        next_start = time.monotonic()
        while len(runs) < MIN_RUNS or not controller.done.is_set():
            # A steady stream, as a busy monitor starts them (not a tight loop the replay can
            # never catch up with: spooling is cheaper than writing, so it would only grow).
            await asyncio.sleep(max(0.0, next_start - time.monotonic()))
            next_start = max(next_start + PACE, time.monotonic())
            phase = controller.phase
            t0 = time.monotonic()
            expected = await recover(config, "broken" if len(runs) % 4 == 3 else "api")
            runs.append((expected, phase, controller.phase, time.monotonic() - t0))
        acting = time.monotonic() - started

        pending_at_end = audit.pending()
        replay_started = time.monotonic()
        audit.catch_up()  # the store is back: whatever is still spooled goes in now
        result = audit.summary()
        replay_seconds = time.monotonic() - replay_started
        assert result.pending == 0 and result.rejected == 0 and result.error is None, result

        rows, steps = dump(url)
        by_run: dict[str, list[dict[str, Any]]] = {}
        for step in steps:
            by_run.setdefault(step["run_id"], []).append(step)
        row_by_id = {r["id"]: r for r in rows}
        attempted = len(runs)
        audited = sum(check(e, row_by_id.get(e["id"]), by_run.get(e["id"], [])) for e, *_ in runs)
        ids = [e["id"] for e, *_ in runs]
        duplicated = (len(rows) - len(set(r["id"] for r in rows))) + sum(
            max(0, len(by_run.get(i, [])) - 5) for i in ids
        )
        unknown = len(set(row_by_id) - set(ids))
        lost = attempted - audited
        under = {
            phase: [s for _, p0, p1, s in runs if phase in (p0, p1)] for phase in ("up", "stopped", "frozen")
        }
        figures = {
            "attempted": attempted,
            "audited": audited,
            "lost": lost,
            "duplicated": duplicated,
            "rows_not_attempted": unknown,
            "runs_while_stopped": len(under["stopped"]),
            "runs_while_frozen": len(under["frozen"]),
            "records_replayed": audit.replayed,
            "longest_recovery_frozen_s": round(max(under["frozen"], default=0.0), 2),
            "longest_recovery_stopped_s": round(max(under["stopped"], default=0.0), 2),
            "median_recovery_up_s": round(statistics.median(under["up"]), 3),
            "acting_s": round(acting, 1),
            "pending_when_runs_ended": pending_at_end,
            "final_replay_s": round(replay_seconds, 2),
        }
        print(f"\nR2 figures: {figures}")
        assert (lost, duplicated, unknown) == (0, 0, 0), figures
        assert attempted >= MIN_RUNS and under["stopped"] and under["frozen"], figures
        assert audit.replayed > 0, "some records went through the spool"
        # One frozen write costs at most about one bound (then the retry pause spools at once).
        assert figures["longest_recovery_frozen_s"] < 2 * TIMEOUT + 1.5, figures
