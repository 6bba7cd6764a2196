"""The sliding-window store: one contract, run against the Redis and the in-memory backend.

Times are passed in (``now``), never read from the wall clock, so no test depends on timing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis

from recovery.backends.keys import recoveries_key, window_key
from recovery.backends.state import SharedState
from recovery.backends.state_memory import MemoryState
from recovery.backends.state_redis import RedisState
from recovery.backends.window import Limit, MemoryWindow, RecoveryWindow, RedisWindow, SlidingWindow
from recovery.config.strategy import WindowSlot

NOW = 1_700_000_000.123456  # microseconds: the script must not round them away


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def state(request: pytest.FixtureRequest) -> Iterator[SharedState]:
    if request.param == "memory":
        yield MemoryState()
        return
    backend = RedisState(request.getfixturevalue("redis_url"))
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture
def store(state: SharedState) -> SlidingWindow:
    return state.windows


def test_window_hit_admits_up_to_the_limit_and_refused_hits_do_not_count(state: SharedState) -> None:
    results = [state.window_hit("manual:api", 2, 60.0, NOW + i) for i in range(4)]
    assert [(r.allowed, r.count) for r in results] == [(True, 1), (True, 2), (False, 2), (False, 2)]
    assert results[0].retry_after_seconds == 0.0
    assert results[2].retry_after_seconds == pytest.approx(58.0)  # the first hit leaves at NOW + 60
    # Refused hits were not counted: the window frees as soon as the first admitted hit ages out.
    assert state.window_hit("manual:api", 2, 60.0, NOW + 60.5).allowed
    assert not state.window_hit("manual:api", 2, 60.0, NOW + 60.6).allowed
    assert state.window_hit("manual:other", 2, 60.0, NOW).allowed  # windows are per name


def test_a_hit_exactly_one_window_old_has_left(state: SharedState) -> None:
    assert state.window_hit("w", 1, 10.0, NOW).allowed
    assert not state.window_hit("w", 1, 10.0, NOW + 9.999).allowed
    assert state.window_hit("w", 1, 10.0, NOW + 10.0).allowed


def test_several_limits_report_the_first_full_one(store: SlidingWindow) -> None:
    limits = [Limit(5, 3600.0), Limit(2, 60.0)]
    assert store.add("k", "a", NOW, limits).full is None
    assert store.add("k", "b", NOW + 1, limits).full is None
    refused = store.add("k", "c", NOW + 2, limits)
    assert (refused.full, refused.count) == (1, 2)
    assert refused.retry_after_seconds == pytest.approx(58.0)
    assert store.add("k", "c", NOW + 61, limits).full is None  # the 60 s window has room again
    assert store.times("k", NOW - 1) == pytest.approx([NOW, NOW + 1, NOW + 61])


def test_force_adds_past_a_full_limit(store: SlidingWindow) -> None:
    assert store.add("k", "a", NOW, [Limit(1, 60.0)]).full is None
    forced = store.add("k", "emergency", NOW + 1, [Limit(1, 60.0)], force=True)
    assert forced.full is None and forced.count == 2


def test_hits_older_than_the_longest_window_are_dropped(store: SlidingWindow) -> None:
    store.add("k", "old", NOW, [Limit(10, 60.0)])
    store.add("k", "new", NOW + 100, [Limit(10, 60.0)])
    assert store.times("k", 0.0) == pytest.approx([NOW + 100])


def test_remove_owner_drops_only_that_owner(store: SlidingWindow) -> None:
    store.add("k", "run-1", NOW, [Limit(10, 60.0)])
    store.add("k", "run-10", NOW + 1, [Limit(10, 60.0)])
    assert store.remove_owner("k", "run-1") == 1
    assert store.remove_owner("k", "run-1") == 0
    assert store.times("k", 0.0) == pytest.approx([NOW + 1])


def test_recovery_window_take_recent_give_back(state: SharedState) -> None:
    from recovery.backends.window import recovery_window

    window = recovery_window(state)
    slot = WindowSlot(2, 600.0)
    assert window.take("api", "run-1", NOW, (slot,)) is None
    assert window.take("api", "run-2", NOW + 1, (slot,)) is None
    assert window.take("api", "run-3", NOW + 2, (slot,)) is slot
    assert window.take("api", "run-4", NOW + 3, (WindowSlot(2, 600.0, force=True),)) is None
    assert window.recent("api", NOW + 10, 600.0) == pytest.approx((NOW, NOW + 1, NOW + 3))
    assert window.recent("api", NOW + 10, 9.5) == pytest.approx((NOW + 1, NOW + 3))
    window.give_back("api", "run-2", NOW + 10)
    assert window.recent("api", NOW + 10, 600.0) == pytest.approx((NOW, NOW + 3))
    assert recovery_window(state).recent("api", NOW + 10, 600.0) == pytest.approx((NOW, NOW + 3))


@pytest.mark.redis
def test_redis_layout_and_ttl(redis_url: str) -> None:
    state = RedisState(redis_url)
    try:
        state.window_hit("manual:api", 5, 30.0, NOW)
        RecoveryWindow(state.windows).take("api", "run-1", NOW, (WindowSlot(3, 3600.0),))
        raw = redis.Redis.from_url(redis_url, decode_responses=True)
        assert sorted(raw.keys("*")) == [recoveries_key("api"), window_key("manual:api")]
        assert 0 < raw.pttl(window_key("manual:api")) <= 30_000
        assert 0 < raw.pttl(recoveries_key("api")) <= 3_600_000
        [(member, score)] = raw.zrange(recoveries_key("api"), 0, -1, withscores=True)
        assert member == f"{NOW!r}|run-1" and score == pytest.approx(NOW)
    finally:
        state.close()


@pytest.mark.redis
def test_redis_window_hit_is_atomic_across_clients(redis_url: str) -> None:
    allowed: list[bool] = []
    barrier = threading.Barrier(20)

    def worker() -> None:
        state = RedisState(redis_url)  # one client each, as separate workers would have
        try:
            barrier.wait()
            allowed.append(state.window_hit("manual:api", 5, 60.0, NOW).allowed)
        finally:
            state.close()

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed.count(True) == 5


@pytest.mark.redis
def test_redis_registers_the_script_once_per_client(redis_url: str) -> None:
    state = RedisState(redis_url)
    try:
        assert state.windows is state.windows
        state.window_hit("w", 1, 1.0, NOW)
        assert state.scripts("sliding_window") is state.windows.scripts("sliding_window")
    finally:
        state.close()


def test_memory_window_stands_alone() -> None:
    window = RecoveryWindow(MemoryWindow())
    assert window.take("api", "r", NOW, (WindowSlot(1, 5.0),)) is None
    assert window.recent("api", NOW + 1, 5.0) == pytest.approx((NOW,))


@pytest.mark.redis
def test_redis_window_stands_alone(redis_url: str) -> None:
    window = RedisWindow(redis.Redis.from_url(redis_url, decode_responses=True))
    assert window.add("k", "o", NOW, [Limit(1, 5.0)]).full is None
    assert window.add("k", "o", NOW + 1, [Limit(1, 5.0)]).full == 0
