"""The fleet breaker's Redis side: key layout, Redis down, operator status and audited reset.

Split from ``tests/test_breakers.py`` (call semantics and concurrency). Times are injected
(``breaker_for(..., clock=)``) wherever a test is about time, not about Redis.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from recovery.audit.store import AuditStore
from recovery.backends.breaker_store import RedisBreakerStore
from recovery.backends.keys import breaker_key, breaker_probe_key
from recovery.client.breakers import (
    CircuitBreakerError,
    FleetBreaker,
    breaker_for,
    breaker_for_target,
    open_breaker,
)
from recovery.config.loader import BreakerConfig, parse_config
from recovery.engine.breaker_admin import breaker_statuses, reset_breaker
from recovery.errors import StateUnavailable

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused


class Boom(Exception):
    pass


def boom() -> None:
    raise Boom("dependency failed")


# --- Redis layout ---------------------------------------------------------------------------------


def test_opened_at_has_sub_second_precision_and_keys_expire(redis_url: str) -> None:
    config = BreakerConfig(fail_max=1, state_ttl_seconds=120)
    breaker = breaker_for("layout", config, redis_url, clock=lambda: 1_700_000_000.123456)
    with pytest.raises(CircuitBreakerError):
        breaker.call(boom)
    opened = breaker.snapshot().opened_at
    assert opened == 1_700_000_000.123456  # pybreaker stores whole seconds (#88)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.keys("*") == [breaker_key("layout")] == ["recovery:breaker:layout"]
    assert 0 < client.pttl(breaker_key("layout")) <= 120_000
    assert breaker.store.opened_at is not None and breaker.store.opened_at.timestamp() == pytest.approx(
        opened
    )


def test_probe_lease_key_expires(redis_url: str) -> None:
    now = [1000.0]
    config = BreakerConfig(reset_timeout_seconds=30, probe_lease_seconds=5)
    breaker = breaker_for("lease", config, redis_url, clock=lambda: now[0])
    breaker.open()
    now[0] += 30  # the lease itself is a real Redis PX expiry; only the reset timeout is clocked
    ticket = breaker.try_probe("worker-1")
    assert ticket.verdict == "probe"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.get(breaker_probe_key("lease")) == "worker-1"
    assert 0 < client.pttl(breaker_probe_key("lease")) <= 5000
    assert breaker.try_probe("worker-2").verdict == "reject"
    breaker.end_probe("worker-1", ok=True)
    assert breaker.current_state == "closed" and client.get(breaker_probe_key("lease")) is None


def test_monitor_reopen_keeps_opened_at(redis_url: str) -> None:
    now = [1000.0]
    breaker = breaker_for("reopen", BreakerConfig(), redis_url, clock=lambda: now[0])
    breaker.open()
    first = breaker.snapshot().opened_at
    now[0] += 10
    open_breaker(breaker)  # the monitor trips it again next cycle: the reset timeout must not move
    assert breaker.snapshot().opened_at == first
    breaker.close()
    open_breaker(breaker)
    assert breaker.snapshot().opened_at != first


def test_factory_shares_state_between_instances(redis_url: str) -> None:
    config = parse_config(
        {
            "state_url": redis_url,
            "targets": [
                {"kind": "http", "name": "payments", "url": "http://127.0.0.1:1/", "breaker": {"fail_max": 1}}
            ],
        }
    )
    app = breaker_for_target(config, "payments")
    assert breaker_for_target(config, "payments") is app  # cached per (target, url, config)
    other_process_view = FleetBreaker(
        "payments", RedisBreakerStore("payments", redis_url, 3600), fail_max=1, reset_timeout=60
    )
    with pytest.raises(CircuitBreakerError):
        app.call(boom)
    assert other_process_view.current_state == "open"
    with pytest.raises(CircuitBreakerError):
        other_process_view.call(lambda: None)


# --- Redis down -----------------------------------------------------------------------------------


def test_building_never_raises_and_fail_open_runs_the_call() -> None:
    breaker = breaker_for("down-open", BreakerConfig(on_state_unavailable="allow"), DEAD_REDIS)
    assert breaker.call(lambda: "ran anyway") == "ran anyway"
    with pytest.raises(Boom):
        breaker.call(boom)  # the dependency's own error still surfaces
    started = time.perf_counter()
    for _ in range(100):
        breaker.call(lambda: None)
    assert time.perf_counter() - started < 1.0  # Redis is not retried on every call


async def test_fail_open_async() -> None:
    breaker = breaker_for("down-open-async", BreakerConfig(), DEAD_REDIS)

    async def fetch() -> str:
        await asyncio.sleep(0)
        return "ok"

    assert await breaker.call_async(fetch) == "ok"


async def test_fail_closed_rejects() -> None:
    breaker = breaker_for("down-closed", BreakerConfig(on_state_unavailable="reject"), DEAD_REDIS)
    ran: list[int] = []
    with pytest.raises(CircuitBreakerError, match="fail-closed"):
        breaker.call(lambda: ran.append(1))

    async def fetch() -> None:
        ran.append(2)

    with pytest.raises(CircuitBreakerError, match="fail-closed"):
        await breaker.call_async(fetch)
    assert ran == []


def test_admin_operations_report_redis_down() -> None:
    breaker = breaker_for("down-admin", BreakerConfig(), DEAD_REDIS)
    with pytest.raises(StateUnavailable):
        breaker.snapshot()
    with pytest.raises(StateUnavailable):
        breaker.close()
    with pytest.raises(StateUnavailable):
        _ = breaker.current_state


def test_bad_url_does_not_raise_until_used() -> None:
    breaker = breaker_for("bad-url", BreakerConfig(), "redis://127.0.0.1:notaport/0")
    assert breaker.call(lambda: 1) == 1


# --- status and audited reset -------------------------------------------------------------------


def test_status_and_audited_reset(redis_url: str, sqlite_url: str) -> None:
    config = parse_config(
        {
            "audit_url": sqlite_url,
            "state_url": redis_url,
            "targets": [
                {
                    "kind": "http",
                    "name": "a",
                    "url": "http://127.0.0.1:1/",
                    "breaker": {"reset_timeout_seconds": 30},
                },
                {"kind": "http", "name": "b", "url": "http://127.0.0.1:1/"},
            ],
        }
    )
    breaker_for_target(config, "a").open()
    statuses = {s.target: s for s in breaker_statuses(config)}
    assert statuses["a"].state == "open" and 29 < (statuses["a"].half_open_in_seconds or 0) <= 30
    assert statuses["b"].state == "closed" and statuses["b"].half_open_in_seconds is None
    assert [s.target for s in breaker_statuses(config, "b")] == ["b"]
    assert statuses["a"].as_json()["opened_at"].endswith("+00:00")

    result = reset_breaker(config, "a", requested_by="alice", reason="provider confirmed fix", run_id="r1")
    assert (result["before"], result["after"]) == ("open", "closed")
    run = AuditStore(sqlite_url).run("r1")
    assert run is not None
    assert (run.workflow, run.type, run.state, run.requested_by, run.reason) == (
        "reset-circuit-breaker",
        "manual",
        "succeeded",
        "alice",
        "provider confirmed fix",
    )
    assert run.steps[0].detail == {"before": "open", "after": "closed", "fail_counter_before": 0}
    assert breaker_for_target(config, "a").current_state == "closed"


def test_failed_reset_is_audited_as_failed(sqlite_url: str) -> None:
    config = parse_config(
        {
            "audit_url": sqlite_url,
            "state_url": DEAD_REDIS,
            "targets": [{"kind": "http", "name": "a", "url": "http://x/"}],
        }
    )
    with pytest.raises(StateUnavailable):
        reset_breaker(config, "a", requested_by="bob", reason="try", run_id="r2")
    run = AuditStore(sqlite_url).run("r2")
    assert run is not None and run.state == "failed" and run.steps[0].state == "failed"


async def test_cancellation_during_first_connect_is_never_swallowed(redis_url: str) -> None:
    """redis-py's asyncio client can swallow a cancel that lands while it connects; we must not."""
    for i in range(40):
        breaker = FleetBreaker(f"cancel-{i}", RedisBreakerStore(f"cancel-{i}", redis_url, 60))
        ran: list[int] = []

        async def call(ran: list[int] = ran) -> None:
            ran.append(1)
            await asyncio.sleep(10)

        task = asyncio.create_task(breaker.call_async(call))
        await asyncio.sleep(i * 0.0005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)
