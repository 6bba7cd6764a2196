"""Shared state, both backends: probe counters, owner-only locks with TTL, paused flags."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from faultserver import free_port

from recovery.backends.keys import health_key, lock_key
from recovery.backends.state import SharedState, open_state
from recovery.backends.state_memory import MemoryState
from recovery.backends.state_redis import RedisState
from recovery.errors import StateUnavailable


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


def test_record_probe_counts_consecutive_results(state: SharedState) -> None:
    assert state.health("api") is None

    first = state.record_probe("api", False, "status 503", 100.0)
    assert (first.failures, first.successes, first.healthy) == (1, 0, False)
    assert first.reason == "status 503"
    assert first.first_failure_at == 100.0

    second = state.record_probe("api", False, "timeout", 130.0)
    assert (second.failures, second.successes) == (2, 0)
    assert second.first_failure_at == 100.0  # the streak started at the first failure
    assert second.reason == "timeout"
    assert second.probed_at == 130.0

    ok = state.record_probe("api", True, "ok", 160.0)
    assert (ok.failures, ok.successes, ok.healthy) == (0, 1, True)
    assert ok.first_failure_at is None
    assert state.record_probe("api", True, "ok", 190.0).successes == 2

    again = state.record_probe("api", False, "connection refused", 220.0)
    assert (again.failures, again.successes) == (1, 0)
    assert again.first_failure_at == 220.0  # a new streak, not the old one

    stored = state.health("api")
    assert stored == again
    assert state.health("other") is None  # targets are independent


def test_lock_only_owner_can_refresh_or_release(state: SharedState) -> None:
    assert state.lock_owner("api") is None
    assert state.acquire_lock("api", "run-a", 30)
    assert not state.acquire_lock("api", "run-b", 30)
    assert not state.acquire_lock("api", "run-a", 30)  # not re-entrant either
    assert state.lock_owner("api") == "run-a"

    assert state.refresh_lock("api", "run-a", 30)
    assert not state.refresh_lock("api", "run-b", 30)
    assert not state.release_lock("api", "run-b")
    assert state.lock_owner("api") == "run-a"

    assert state.acquire_lock("db", "run-b", 30)  # another target's lock is independent

    assert state.release_lock("api", "run-a")
    assert state.lock_owner("api") is None
    assert not state.release_lock("api", "run-a")  # already released
    assert not state.refresh_lock("api", "run-a", 30)
    assert state.acquire_lock("api", "run-b", 30)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def clocked(request: pytest.FixtureRequest) -> Iterator[tuple[SharedState, Callable[[float], None], float]]:
    """A state, how to let time pass, and a TTL unit: a fake clock in memory (exact, instant);
    Redis expires keys on its own clock, so its TTLs are long enough to leave wide margins."""
    if request.param == "memory":
        clock = FakeClock()
        yield MemoryState(clock=clock), clock.sleep, 1.0
        return
    backend = RedisState(request.getfixturevalue("redis_url"))
    try:
        yield backend, time.sleep, 0.6
    finally:
        backend.close()


def test_lock_expires_after_ttl(clocked: tuple[SharedState, Callable[[float], None], float]) -> None:
    state, sleep, unit = clocked
    assert state.acquire_lock("api", "crashed-run", unit)
    assert not state.acquire_lock("api", "next-run", unit)
    sleep(unit * 2)
    assert state.lock_owner("api") is None
    assert not state.refresh_lock("api", "crashed-run", 10)  # an expired lock cannot be revived
    assert not state.release_lock("api", "crashed-run")
    assert state.acquire_lock("api", "next-run", 10)
    assert state.lock_owner("api") == "next-run"


def test_refresh_extends_ttl(clocked: tuple[SharedState, Callable[[float], None], float]) -> None:
    state, sleep, unit = clocked
    assert state.acquire_lock("api", "run-a", unit)
    for _ in range(3):
        sleep(unit / 2)
        assert state.refresh_lock("api", "run-a", unit)
    # 1.5 TTLs after acquiring, the lock is still held thanks to the refreshes.
    assert state.lock_owner("api") == "run-a"
    sleep(unit * 2)
    assert state.lock_owner("api") is None


def test_paused_flags(state: SharedState) -> None:
    assert state.paused("api") is None
    assert not state.clear_paused("api")
    state.set_paused("api", "monitor: status 503")
    assert state.paused("api") == "monitor: status 503"
    assert state.paused("db") is None
    state.set_paused("api", "manual: maintenance")  # overwrite keeps the latest reason
    assert state.paused("api") == "manual: maintenance"
    assert state.clear_paused("api")
    assert state.paused("api") is None
    assert not state.clear_paused("api")


@pytest.mark.redis
def test_redis_key_layout(redis_url: str) -> None:
    import redis

    backend = RedisState(redis_url)
    raw = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        backend.record_probe("payments-api", False, "timeout", 5.0)
        backend.acquire_lock("payments-api", "tok", 5)
        assert raw.hgetall(health_key("payments-api"))["failures"] == "1"
        assert raw.get(lock_key("payments-api")) == "tok"
        assert 0 < raw.pttl(lock_key("payments-api")) <= 5000
        assert set(raw.keys("*")) == {
            "recovery:target:payments-api:health",
            "recovery:target:payments-api:lock",
        }
    finally:
        raw.close()
        backend.close()


@pytest.mark.redis
def test_redis_concurrent_acquire_exactly_one_wins(redis_url: str) -> None:
    contenders = 8
    backends = [RedisState(redis_url) for _ in range(contenders)]
    for backend in backends:  # connect first so the race is on SET NX, not on connecting
        backend.client.ping()
    barrier = threading.Barrier(contenders)
    results: dict[int, bool] = {}
    errors: list[BaseException] = []

    def contend(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = backends[i].acquire_lock("api", f"owner-{i}", 30)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    try:
        assert not errors
        winners = [i for i, won in results.items() if won]
        assert len(results) == contenders
        assert len(winners) == 1
        assert backends[0].lock_owner("api") == f"owner-{winners[0]}"
    finally:
        for backend in backends:
            backend.close()


@pytest.mark.redis
def test_redis_concurrent_record_probe_loses_no_update(redis_url: str) -> None:
    workers, per_worker = 8, 25
    backends = [RedisState(redis_url) for _ in range(workers)]
    barrier = threading.Barrier(workers)

    def hammer(backend: RedisState) -> None:
        barrier.wait(timeout=10)
        for _ in range(per_worker):
            backend.record_probe("api", False, "timeout", time.time())

    threads = [threading.Thread(target=hammer, args=(b,)) for b in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    try:
        counters = backends[0].health("api")
        assert counters is not None
        assert counters.failures == workers * per_worker
    finally:
        for backend in backends:
            backend.close()


def test_state_unavailable_on_closed_port_is_redacted() -> None:
    password = f"RedisPw{uuid.uuid4().hex[:8]}"
    port = free_port()  # nothing listens here
    backend = RedisState(f"redis://:{password}@127.0.0.1:{port}/0")
    assert password not in backend.description
    started = time.monotonic()
    try:
        with pytest.raises(StateUnavailable) as info:
            backend.record_probe("api", False, "timeout", 1.0)
    finally:
        backend.close()
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert message.startswith(f"shared state redis://***@127.0.0.1:{port}/***: ")
    assert password not in message
    assert "\n" not in message
    # Raised "from None": no chained redis-py traceback behind it.
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.health("api"),
        lambda s: s.acquire_lock("api", "o", 1),
        lambda s: s.refresh_lock("api", "o", 1),
        lambda s: s.release_lock("api", "o"),
        lambda s: s.lock_owner("api"),
        lambda s: s.set_paused("api", "x"),
        lambda s: s.clear_paused("api"),
        lambda s: s.paused("api"),
    ],
    ids=["health", "acquire", "refresh", "release", "owner", "set_paused", "clear_paused", "paused"],
)
def test_every_redis_operation_maps_errors(call: object) -> None:
    backend = RedisState(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(StateUnavailable):
            call(backend)  # type: ignore[operator]
    finally:
        backend.close()


def test_open_state_selects_backend(redis_url: str) -> None:
    assert isinstance(open_state(None), MemoryState)
    assert open_state(None) is open_state(None)  # one in-process state shared by flows
    backend = open_state(redis_url)
    try:
        assert isinstance(backend, RedisState)
    finally:
        backend.close()
