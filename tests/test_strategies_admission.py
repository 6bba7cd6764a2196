"""Strategy admission: the real ``RecoveryRuntime.begin`` against a real Redis and SQLite
(time windows, the breaker-aligned half-open probe, adaptive escalation, dry-run plans)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from strategies_helpers import NOW

from recovery.audit.store import AuditStore
from recovery.backends.keys import recoveries_key
from recovery.backends.state_memory import MemoryState
from recovery.backends.state_redis import RedisState
from recovery.backends.window import RecoveryWindow, RedisWindow
from recovery.client.breakers import CircuitBreakerError, breaker_for
from recovery.config.loader import RecoveryConfig, parse_config
from recovery.engine.runtime import RecoveryRequest, RecoveryRuntime
from recovery.errors import RecoveryRefused
from recovery.policy.admission import admit
from recovery.policy.strategies import SINGLE_ATTEMPT, RetryPlan, WindowSlot

# --- admission: RecoveryRuntime.begin with real Redis and SQLite --------------------------------


def make_config(audit: str, state_url: str | None, strategy: str, extra: str = "") -> RecoveryConfig:
    import yaml

    text = f"""
audit_url: {audit}
{"state_url: " + state_url if state_url else ""}
strategy: {strategy}
targets:
  - {{name: api, kind: http, url: "http://127.0.0.1:9/health"{extra}}}
"""
    return parse_config(yaml.safe_load(text))


def request(run_type: str = "automatic", **kw: Any) -> RecoveryRequest:
    return RecoveryRequest(
        target="api", workflow="api-failure-recovery", run_type=run_type, requested_by="t", **kw
    )


def test_fourth_recovery_in_time_window_of_three_is_refused_and_audited(
    redis_url: str, sqlite_url: str
) -> None:
    config = make_config(
        sqlite_url,
        redis_url,
        "{kind: composite, strategies: [{kind: time_window, max_recoveries: 3, window_seconds: 3600},"
        " {kind: exponential, base_seconds: 1, max_delay_seconds: 8, max_attempts: 4, jitter: none}]}",
    )
    for _ in range(3):
        rt = RecoveryRuntime.begin(config, request())
        assert rt.plans["test_connectivity"].plan == RetryPlan(4, (1.0, 2.0, 4.0))
        rt.finish("succeeded")
    with pytest.raises(RecoveryRefused) as info:
        RecoveryRuntime.begin(config, request(reason="4th"), run_id="fourth")
    assert info.value.escalate
    assert "time_window: 3 recoveries of api in the last 3600s (max 3)" in info.value.reason
    row = AuditStore(sqlite_url).run("fourth")
    assert row is not None and row.state == "refused" and row.error_type == "RecoveryRefused"
    assert row.error_message == info.value.reason and row.reason == "4th"
    state = RedisState(redis_url)
    assert state.lock_owner("api") is None  # a refused run never keeps the lock
    assert redis.Redis.from_url(redis_url).zcard(recoveries_key("api")) == 3
    assert 0 < redis.Redis.from_url(redis_url).pttl(recoveries_key("api")) <= 3_600_000
    # An emergency bypasses the window (it is counted) but not the lock.
    rt = RecoveryRuntime.begin(config, request("emergency", reason="customer outage"))
    with pytest.raises(RecoveryRefused, match="already in progress"):
        RecoveryRuntime.begin(config, request("emergency", reason="again"))
    rt.finish("succeeded")
    assert redis.Redis.from_url(redis_url).zcard(recoveries_key("api")) == 4


def test_time_window_in_process_state(sqlite_url: str) -> None:
    config = make_config(sqlite_url, None, "{kind: time_window, max_recoveries: 1, window_seconds: 60}")
    state = MemoryState()
    first = admit(config, config.targets[0], "automatic", "run-1", state, clock=lambda: NOW)
    assert first.allowed and first.plan == SINGLE_ATTEMPT
    second = admit(config, config.targets[0], "automatic", "run-2", state, clock=lambda: NOW + 30)
    assert not second.allowed and second.decision.escalate
    assert admit(config, config.targets[0], "automatic", "run-3", state, clock=lambda: NOW + 61).allowed


def test_window_take_is_atomic_across_threads(redis_url: str) -> None:
    window = RecoveryWindow(RedisWindow(redis.Redis.from_url(redis_url, decode_responses=True)))
    taken: list[str] = []
    barrier = threading.Barrier(12)

    def worker(i: int) -> None:
        barrier.wait()
        if window.take("api", f"run-{i}", NOW, (WindowSlot(3, 3600.0),)) is None:
            taken.append(f"run-{i}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 3
    assert len(window.recent("api", NOW + 1, 3600.0)) == 3
    window.give_back("api", taken[0], NOW)
    assert len(window.recent("api", NOW + 1, 3600.0)) == 2


def test_breaker_aligned_recovery_is_the_single_half_open_probe(redis_url: str, sqlite_url: str) -> None:
    config = make_config(
        sqlite_url,
        redis_url,
        "{kind: breaker_aligned, max_attempts: 2}",
        extra=", breaker: {reset_timeout_seconds: 0.3}",
    )
    target = config.targets[0]
    breaker = breaker_for("api", target.breaker, redis_url)
    breaker.open()
    with pytest.raises(RecoveryRefused) as info:
        RecoveryRuntime.begin(config, request(), run_id="too-early")
    assert not info.value.escalate and "circuit breaker of api is open" in info.value.reason
    assert AuditStore(sqlite_url).run("too-early").state == "refused"  # type: ignore[union-attr]
    assert breaker.snapshot().state == "open"

    time.sleep(0.35)
    rt = RecoveryRuntime.begin(config, request(), run_id="probe-run")
    assert rt.plans["test_connectivity"].plan == RetryPlan(2, (0.3,))
    snap = breaker.snapshot()
    assert snap.state == "half-open" and snap.probe_holder == "probe-run"
    # While the recovery probes, the application's calls fail fast: one probe across all workers.
    with pytest.raises(CircuitBreakerError, match="half-open"):
        breaker.call(lambda: "app call")
    rt.finish("failed", RuntimeError("still down"))
    snap = breaker.snapshot()
    assert snap.state == "open" and snap.probe_holder is None  # failed probe: a new reset timeout

    time.sleep(0.35)
    rt = RecoveryRuntime.begin(config, request())
    rt.finish("succeeded")
    assert breaker.snapshot().state == "closed"


def test_adaptive_escalates_repeating_error_from_the_audit_store(redis_url: str, sqlite_url: str) -> None:
    config = make_config(sqlite_url, redis_url, "{kind: adaptive, repeat_threshold: 2, max_attempts: 5}")
    for _ in range(2):
        rt = RecoveryRuntime.begin(config, request())
        rt.finish("failed", ConnectionError("connection refused"))
    with pytest.raises(RecoveryRefused) as info:
        RecoveryRuntime.begin(config, request(), run_id="third")
    assert info.value.escalate and "same error (ConnectionError: connection refused)" in info.value.reason
    assert AuditStore(sqlite_url).run("third").state == "refused"  # type: ignore[union-attr]
    rt = RecoveryRuntime.begin(config, request("manual"))  # a person asked: allowed, fewer attempts
    assert rt.plans["test_connectivity"].plan.max_attempts == 3
    rt.finish("succeeded")


def test_dry_run_plan_uses_the_strategy(sqlite_url: str) -> None:
    config = make_config(
        sqlite_url, None, "{kind: linear, base_seconds: 2, increment_seconds: 1, max_attempts: 3}"
    )
    from recovery.engine.workflows import describe_plan, workflow_named

    lines = describe_plan(
        config, config.targets[0], workflow_named("api-failure-recovery", config.targets[0])
    )
    assert any("test_connectivity" in line and "retry delays: 2s, 3s" in line for line in lines)
