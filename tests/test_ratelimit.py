"""Rate limits: reset headers, bounded waits, AIMD in shared state, the application's token bucket.

HTTP is the real fault server (its /ratelimit route answers 429 with Retry-After); shared state
is a real Redis (or the in-process store). Clocks are injected wherever a test asserts timing,
except the end-to-end test, which waits for real (~2 s).
"""

from __future__ import annotations

import email.utils
import json
import threading
import time
from typing import Any

import pytest
import redis
from faultserver import FaultApp, FaultServer, Receive, Scope, Send

from recovery.backends.keys import rate_key
from recovery.backends.rate import RateStore, rate_store_for
from recovery.backends.rate_memory import MemoryRateStore
from recovery.backends.rate_redis import RedisRateStore
from recovery.backends.state import SharedState
from recovery.backends.state_memory import MemoryState
from recovery.backends.state_redis import RedisState
from recovery.client.tokenbucket import TokenBucket, token_bucket_for
from recovery.config.loader import RecoveryConfig, parse_config
from recovery.engine.monitor import decide
from recovery.engine.probing import probe_once, probe_targets
from recovery.engine.runtime import RecoveryRequest, RecoveryRuntime
from recovery.engine.workflows import select_workflow
from recovery.errors import EscalationRequired, TemporaryError
from recovery.kinds.base import ProbeResult
from recovery.kinds.ratelimit import (
    RateLimitConfig,
    adjust_request_rate,
    decreased_rate,
    increased_rate,
    observed_limit,
    parse_ratelimit_reset,
    parse_retry_after,
    plan_wait,
    reset_after_seconds,
    wait_for_rate_limit_reset,
)

NOW = 1_700_000_000.0


# --- headers --------------------------------------------------------------------------------------


def test_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 0.5 ") == 0.5
    date = email.utils.formatdate(NOW + 90, usegmt=True)
    assert parse_retry_after(date, now=NOW) == 90.0
    assert parse_retry_after(email.utils.formatdate(NOW - 90, usegmt=True), now=NOW) == 0.0
    for bad in (None, "", "soon", "nan", "Thu, 99 Foo 2024"):
        assert parse_retry_after(bad, now=NOW) is None


def test_x_ratelimit_reset_epoch_or_delay() -> None:
    assert parse_ratelimit_reset(str(int(NOW + 30)), now=NOW) == 30.0  # GitHub: epoch seconds
    assert parse_ratelimit_reset("45", now=NOW) == 45.0  # IETF draft: seconds
    assert parse_ratelimit_reset("-1", now=NOW) is None
    assert parse_ratelimit_reset("x", now=NOW) is None


def test_retry_after_wins_over_x_ratelimit_reset() -> None:
    headers = {"Retry-After": "3", "X-RateLimit-Reset": str(int(NOW + 60))}
    assert reset_after_seconds(headers, now=NOW) == 3.0
    assert reset_after_seconds({"x-ratelimit-reset": "7"}, now=NOW) == 7.0
    assert reset_after_seconds({}, now=NOW) is None


def test_observed_limit_needs_a_window() -> None:
    assert observed_limit({"X-RateLimit-Limit": "600"}, 60.0) == 10.0
    assert observed_limit({"X-RateLimit-Limit": "600"}, None) is None
    assert observed_limit({"X-RateLimit-Limit": "lots"}, 60.0) is None


# --- pure decisions -----------------------------------------------------------------------------


def test_wait_is_capped_and_escalated_beyond_the_cap() -> None:
    assert plan_wait(2.0, 300).sleep_seconds == 2.0
    beyond = plan_wait(7200.0, 300)
    assert beyond.escalate and beyond.sleep_seconds == 0.0 and "beyond" in beyond.reason
    assert plan_wait(None, 300).sleep_seconds == 0.0 and not plan_wait(None, 300).escalate
    assert plan_wait(300.0, 300).sleep_seconds == 300.0  # the cap itself is still waited


def test_aimd_arithmetic() -> None:
    config = RateLimitConfig(normal_rate_per_second=10, safety_factor=0.5, min_rate_per_second=1)
    assert decreased_rate(10, None, config) == 5.0
    assert decreased_rate(10, 4, config) == 2.0  # the dependency announced a lower limit
    assert decreased_rate(10, 40, config) == 5.0  # a higher announced limit never raises it
    assert decreased_rate(1.5, None, config) == 1.0  # floor
    assert increased_rate(5, 10, 2) == 7
    assert increased_rate(9, 10, 2) == 10


# --- the store ----------------------------------------------------------------------------------


@pytest.fixture(params=["redis", "memory"])
def store(request: pytest.FixtureRequest) -> RateStore:
    if request.param == "redis":
        return RedisRateStore(
            redis.Redis.from_url(request.getfixturevalue("redis_url"), decode_responses=True), "r"
        )
    return MemoryRateStore()


def test_lower_then_raise_over_healthy_cycles(store: RateStore) -> None:
    config = RateLimitConfig(normal_rate_per_second=4, safety_factor=0.5, increase_per_cycle=1)
    assert store.lower("api", config, NOW, interval=10, reason="429") == (4.0, 2.0)
    assert store.lower("api", config, NOW + 1, interval=10, reason="429 again") == (2.0, 1.0)
    state = store.read("api")
    assert state is not None and (state.allowed, state.normal, state.reason) == (1.0, 4.0, "429 again")
    assert store.raise_rates(["api", "other"], NOW + 5) == {"api": 1.0}  # within the interval
    assert store.raise_rates(["api"], NOW + 11) == {"api": 2.0}
    assert store.raise_rates(["api"], NOW + 21) == {"api": 3.0}
    assert store.raise_rates(["api"], NOW + 31) == {"api": 4.0}
    state = store.read("api")
    assert state is None or state.allowed is None  # back to normal: nothing throttles any more
    assert store.raise_rates(["api"], NOW + 41) == {}


def test_note_limited_keeps_reset_and_limit(store: RateStore) -> None:
    store.note_limited("api", NOW, 2.0, 8.0, ttl_seconds=60)
    state = store.read("api")
    assert state is not None and (state.reset_at, state.observed, state.allowed) == (NOW + 2, 8.0, None)
    store.clear("api")
    assert store.read("api") is None


def test_rate_key_is_namespaced_and_expires(redis_url: str) -> None:
    rates = rate_store_for(redis_url)
    rates.lower("api", RateLimitConfig(ttl_seconds=120), NOW, 0, "429")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.keys("*") == [rate_key("api")] == ["recovery:target:api:rate"]
    assert 0 < client.pttl(rate_key("api")) <= 120_000


# --- probes against the real fault server -------------------------------------------------------


def http_config(
    url: str, state_url: str | None = None, audit_url: str = "sqlite://", **rate: Any
) -> RecoveryConfig:
    target: dict[str, Any] = {
        "name": "api",
        "kind": "http",
        "url": url,
        "timeout_seconds": 2,
        "verify": {"consecutive_successes": 1},
        "rate_limit": {
            "normal_rate_per_second": 4,
            "increase_per_cycle": 1,
            "increase_interval_seconds": 10,
            **rate,
        },
    }
    data: dict[str, Any] = {
        "audit_url": audit_url,
        "monitor": {"failure_threshold": 1},
        "strategy": {"kind": "linear", "base_seconds": 0.2, "increment_seconds": 0.2, "max_attempts": 20},
        "targets": [target],
    }
    if state_url:
        data["state_url"] = state_url
    return parse_config(data)


async def test_429_probe_is_rate_limited_and_selects_rate_limit_recovery(fault_server: FaultServer) -> None:
    config = http_config(f"{fault_server.url}/ratelimit?retry_after=2")
    [result] = await probe_targets(config.targets)
    assert (result.healthy, result.status, result.rate_limited, result.retry_after_seconds) == (
        False,
        429,
        True,
        2.0,
    )
    assert select_workflow(config.targets[0], result).name == "rate-limit-recovery"
    fault_server.app.set_mode("status:503")
    [down] = await probe_targets(http_config(f"{fault_server.url}/health").targets)
    assert select_workflow(config.targets[0], down).name == "api-failure-recovery"
    assert select_workflow(config.targets[0]).name == "api-failure-recovery"


class HeaderApp(FaultApp):
    """The fault server plus a route announcing limits the GitHub way (no Retry-After)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != "/quota":
            await super().__call__(scope, receive, send)
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"x-ratelimit-limit", b"600"),
            (b"x-ratelimit-remaining", b"0"),
            (b"x-ratelimit-reset", str(int(time.time()) + 30).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps({"ok": True}).encode()})


async def test_x_ratelimit_headers_from_a_real_server() -> None:
    with FaultServer(app=HeaderApp()) as server:
        config = http_config(f"{server.url}/quota", limit_window_seconds=60)
        [result] = await probe_targets(config.targets)
    assert result.rate_limited and result.status == 200
    assert result.retry_after_seconds is not None and 28 <= result.retry_after_seconds <= 30
    assert result.rate_limit_per_second == 10.0


# --- the workflow's steps -------------------------------------------------------------------------


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


async def test_wait_uses_the_monitors_record_and_a_fake_clock() -> None:
    state = MemoryState()
    config = http_config("http://127.0.0.1:9/health")
    rate_store_for(state).note_limited("api", NOW, 2.0, None, 60)
    sleep = FakeSleep()
    detail = await wait_for_rate_limit_reset(state, config.targets[0], sleep=sleep, clock=lambda: NOW + 0.5)
    assert sleep.calls == [1.5]
    assert detail == {
        "reset_in_seconds": 1.5,
        "waited_seconds": 1.5,
        "max_wait_seconds": 300.0,
        "source": "monitor",
    }


async def test_wait_beyond_the_cap_escalates_without_sleeping() -> None:
    state = MemoryState()
    config = http_config("http://127.0.0.1:9/health", max_wait_seconds=60)
    rate_store_for(state).note_limited("api-big", NOW, 3600.0, None, 60)
    target = config.targets[0].model_copy(update={"name": "api-big"})
    sleep = FakeSleep()
    with pytest.raises(EscalationRequired, match=r"resets in 3600s, beyond max_wait_seconds \(60s\)"):
        await wait_for_rate_limit_reset(state, target, sleep=sleep, clock=lambda: NOW)
    assert sleep.calls == []


async def test_wait_without_a_record_asks_the_server(fault_server: FaultServer) -> None:
    state = MemoryState()
    config = http_config(f"{fault_server.url}/ratelimit?retry_after=2")
    target = config.targets[0].model_copy(update={"name": "api-fresh"})
    sleep = FakeSleep()
    detail = await wait_for_rate_limit_reset(state, target, lambda: probe_once(target), sleep=sleep)
    assert sleep.calls == [2.0] and detail is not None and detail["source"] == "probe"
    healthy = config.targets[0].model_copy(update={"name": "api-ok", "url": f"{fault_server.url}/health"})
    probe_healthy = lambda: probe_once(healthy)  # noqa: E731
    assert await wait_for_rate_limit_reset(state, healthy, probe_healthy, sleep=sleep) is None  # not limited


def test_adjust_uses_the_announced_limit() -> None:
    state = MemoryState()
    config = http_config("http://127.0.0.1:9/health", normal_rate_per_second=50)
    target = config.targets[0].model_copy(update={"name": "api-adjust"})
    rate_store_for(state).note_limited("api-adjust", NOW, None, 10.0, 60)
    detail = adjust_request_rate(config, state, target, now=NOW)
    assert detail == {
        "before_per_second": 50.0,
        "allowed_per_second": 5.0,
        "normal_per_second": 50.0,
        "observed_per_second": 10.0,
    }


# --- end to end in the core: 429 + Retry-After: 2 -> waited ~2 s, lowered, raised back ------------


async def run_workflow(rt: RecoveryRuntime) -> dict[str, Any]:
    """What the Prefect flow does, without Prefect: each step, TemporaryError retried per plan."""
    import asyncio

    details: dict[str, Any] = {}
    for name, planned in rt.plans.items():
        for attempt in range(1, planned.plan.max_attempts + 1):
            started = time.perf_counter()
            try:
                detail = await rt.run_step(name, attempt)
                details[name] = (detail, time.perf_counter() - started, time.time())
                break
            except TemporaryError:
                if attempt == planned.plan.max_attempts:
                    raise
                await asyncio.sleep(planned.plan.delays[attempt - 1])
    rt.finish("succeeded")
    return details


@pytest.mark.parametrize("backend", ["redis", "memory"])
async def test_rate_limited_target_waits_lowers_and_recovers(
    fault_server: FaultServer, sqlite_url: str, request: pytest.FixtureRequest, backend: str
) -> None:
    state_url = request.getfixturevalue("redis_url") if backend == "redis" else None
    config = http_config(f"{fault_server.url}/health", state_url, sqlite_url)
    state: SharedState = RedisState(state_url) if state_url else MemoryState()
    import recovery.backends.state as state_module

    if state_url is None:  # the runtime opens the process-wide in-memory state
        state = state_module.open_state(None)
    rate_store_for(state).clear("api")
    fault_server.app.set_mode("ratelimit:2")

    limited_at = time.time()
    [probe] = await probe_targets(config.targets)
    [decision] = decide(config, state, [probe])
    assert (decision.action, decision.workflow) == ("recover", "rate-limit-recovery")

    # The dependency lifts its limit after ~1.5 s; the workflow waits for the announced 2 s.
    threading.Timer(1.5, fault_server.app.set_mode, args=("ok",)).start()
    rt = RecoveryRuntime.begin(
        config,
        RecoveryRequest(
            target="api", workflow=decision.workflow, run_type="automatic", lock_token=decision.lock_token
        ),
    )
    details = await run_workflow(rt)
    wait_detail, waited, wait_ended = details["wait_for_rate_limit_reset"]
    assert wait_detail["source"] == "monitor"
    # Waited until ~2 s after the 429 (Retry-After: 2), less what detection and setup took.
    assert 1.9 <= wait_ended - limited_at <= 4.0
    assert 0.3 <= wait_detail["waited_seconds"] <= 2.0 and waited >= wait_detail["waited_seconds"] - 0.05
    adjust, _, _ = details["adjust_request_rate"]
    assert (adjust["before_per_second"], adjust["allowed_per_second"]) == (4.0, 2.0)
    record = rt.audit.run(rt.run_id)
    assert record is not None and record.state == "succeeded" and record.workflow == "rate-limit-recovery"

    rates = rate_store_for(state)
    assert rates.read("api").allowed == 2.0  # type: ignore[union-attr]
    if state_url:
        raw = redis.Redis.from_url(state_url, decode_responses=True).hget(rate_key("api"), "allowed")
        assert raw is not None and float(raw) == 2.0  # the rate the application fleet reads
    # Healthy monitor cycles raise it additively (fake clock: one cycle every 10 s).
    healthy = ProbeResult("api", "http", True, "ok", 1.0, 200)
    start = time.time()
    seen = []
    for cycle in range(1, 4):
        decide(config, state, [healthy], now=start + 10 * cycle)
        current = rates.read("api")
        seen.append(current.allowed if current is not None and current.allowed is not None else 4.0)
    assert seen == [3.0, 4.0, 4.0]


# --- the application's token bucket --------------------------------------------------------------


class Clock:
    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def bucket(store: RateStore, mono: Clock, wall: Clock, **kw: Any) -> TokenBucket:
    return TokenBucket("api", store, normal_rate=kw.pop("normal", 10.0), monotonic=mono, wall=wall, **kw)


def test_token_bucket_follows_the_shared_rate(store: RateStore) -> None:
    mono, wall = Clock(), Clock(NOW)
    b = bucket(store, mono, wall)
    assert b.rate == 10.0
    assert sum(b.try_acquire() for _ in range(20)) == 10  # a burst of one second
    mono.now += 0.1
    assert b.try_acquire() and not b.try_acquire()
    store.lower("api", RateLimitConfig(normal_rate_per_second=10), NOW, 0, "429")
    mono.now += 1.0  # next refresh reads the lowered rate
    assert b.rate == 5.0
    assert sum(b.try_acquire() for _ in range(20)) == 5
    store.raise_rates(["api"], NOW + 100)
    mono.now += 1.0
    assert b.rate == 6.0


def test_token_bucket_holds_until_the_announced_reset(store: RateStore) -> None:
    mono, wall = Clock(), Clock(NOW)
    store.note_limited("api", NOW, 5.0, None, 60)
    b = bucket(store, mono, wall)
    assert not b.try_acquire()
    waits: list[float] = []

    def fake_sleep(seconds: float) -> None:
        waits.append(seconds)
        mono.now += seconds
        wall.now += seconds

    assert b.acquire(sleep=fake_sleep) == pytest.approx(5.0)
    assert all(w <= 1.0 for w in waits)  # re-reads the shared rate at least every refresh


def test_token_bucket_shares_the_rate_between_workers(store: RateStore) -> None:
    b = bucket(store, Clock(), Clock(NOW), workers=4)
    assert b.rate == 2.5
    assert [b.try_acquire() for _ in range(3)] == [True, True, False]
    with pytest.raises(TimeoutError):
        b.acquire(timeout=0.1)  # the next token is 0.2 s away
    b2 = bucket(store, Clock(), Clock(NOW), burst=1)
    assert b2.try_acquire() and not b2.try_acquire()


def test_token_bucket_keeps_working_when_redis_is_down() -> None:
    b = bucket(rate_store_for("redis://127.0.0.1:1/0"), Clock(), Clock(NOW))
    assert b.rate == 10.0 and b.try_acquire()


async def test_token_bucket_paces_async_callers(redis_url: str) -> None:
    config = http_config("http://127.0.0.1:9/health", redis_url, normal_rate_per_second=50)
    b = token_bucket_for(config, "api", burst=1)
    started = time.perf_counter()
    for _ in range(6):
        await b.aacquire()
    assert time.perf_counter() - started >= 5 / 50 * 0.9  # 1 burst token + 5 at 50/s
