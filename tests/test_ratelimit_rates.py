"""Rate limits, the arithmetic and the shared rates: reset headers, bounded waits, AIMD in
shared state, the application's token bucket.

Shared state is a real Redis (or the in-process store); clocks are injected wherever a test
asserts timing.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

import pytest
import redis
from ratelimit_helpers import NOW, http_config

from recovery.backends.keys import rate_key
from recovery.backends.rate import RateStore, rate_store_for
from recovery.backends.rate_memory import MemoryRateStore
from recovery.backends.rate_redis import RedisRateStore
from recovery.client.tokenbucket import TokenBucket, token_bucket_for
from recovery.kinds.ratelimit import (
    RateLimitConfig,
    decreased_rate,
    increased_rate,
    observed_limit,
    parse_ratelimit_reset,
    parse_retry_after,
    plan_wait,
    reset_after_seconds,
)

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
