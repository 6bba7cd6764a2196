"""Fleet-safe circuit breakers: pybreaker's Redis pitfalls, checked against a real Redis.

Call semantics (on Redis and in process), async callables, concurrent calls not serialised,
cancellation not counted, atomic transitions, and exactly one half-open probe across six real
processes. Key layout, Redis down and the operator commands: ``tests/test_breaker_redis.py``;
the pure state machine: ``tests/test_breaker_core.py``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pybreaker
import pytest
import redis

from recovery.backends.breaker_memory import MemoryBreakerStore
from recovery.backends.breaker_store import RedisBreakerStore
from recovery.client.breakers import (
    CircuitBreakerError,
    FleetBreaker,
    breaker_for,
)
from recovery.config.loader import BreakerConfig


class Boom(Exception):
    pass


class NotMyProblem(Exception):
    pass


def boom() -> None:
    raise Boom("dependency failed")


@pytest.fixture(params=["redis", "memory"])
def make(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Build breakers on Redis (the fleet case) or in process, with a fresh store each time."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    counter = iter(range(1000))

    def build(**kw: Any) -> FleetBreaker:
        name = f"t{next(counter)}"
        ttl = kw.pop("ttl", 3600.0)
        clock = kw.pop("clock", time.time)
        store = RedisBreakerStore(name, url, ttl, clock) if url else MemoryBreakerStore(name, ttl, clock)
        return FleetBreaker(name, store, **kw)

    yield build


def test_trips_at_fail_max_then_rejects(make: Any) -> None:
    breaker = make(fail_max=3, reset_timeout=60)
    with pytest.raises(Boom):
        breaker.call(boom)
    with pytest.raises(Boom):
        breaker.call(boom)
    assert breaker.snapshot().fail_counter == 2
    with pytest.raises(CircuitBreakerError, match="opened"):
        breaker.call(boom)  # the third failure trips it (pybreaker's throw_new_error_on_trip)
    ran: list[int] = []
    with pytest.raises(CircuitBreakerError, match="is open"):
        breaker.call(lambda: ran.append(1))
    assert ran == [] and breaker.current_state == "open"


def test_success_resets_consecutive_failures(make: Any) -> None:
    breaker = make(fail_max=2)
    with pytest.raises(Boom):
        breaker.call(boom)
    assert breaker.call(lambda: 7) == 7
    assert breaker.snapshot().fail_counter == 0
    with pytest.raises(Boom):
        breaker.call(boom)
    assert breaker.current_state == "closed"


def test_half_open_probe_closes_or_reopens(make: Any) -> None:
    now = [1000.0]
    breaker = make(fail_max=1, reset_timeout=30, clock=lambda: now[0])
    with pytest.raises(CircuitBreakerError):
        breaker.call(boom)
    assert breaker.snapshot().opened_at == 1000.0
    now[0] = 1029.9
    with pytest.raises(CircuitBreakerError, match=r"half-open in 0\.1s"):
        breaker.call(lambda: None)
    now[0] = 1030.0
    with pytest.raises(CircuitBreakerError, match="half-open trial call failed"):
        breaker.call(boom)  # the probe failed: open again, with a new opened_at
    snap = breaker.snapshot()
    assert (snap.state, snap.opened_at, snap.probe_holder) == ("open", 1030.0, None)
    now[0] = 1060.5
    assert breaker.call(lambda: "probe ok") == "probe ok"
    assert breaker.snapshot().state == "closed" and breaker.snapshot().opened_at is None


def test_success_threshold_needs_that_many_probes(make: Any) -> None:
    now = [0.0]
    breaker = make(fail_max=1, reset_timeout=1, success_threshold=2, clock=lambda: now[0])
    breaker.open()
    now[0] = 2.0
    breaker.call(lambda: None)
    assert breaker.current_state == "half-open"
    breaker.call(lambda: None)
    assert breaker.current_state == "closed"


async def test_async_failures_count(make: Any) -> None:
    breaker = make(fail_max=2)

    async def failing() -> None:
        await asyncio.sleep(0)
        raise Boom("inside the coroutine")

    with pytest.raises(Boom):
        await breaker.call_async(failing)
    assert breaker.snapshot().fail_counter == 1
    with pytest.raises(CircuitBreakerError):
        await breaker.call_async(failing)
    assert breaker.current_state == "open"


async def test_decorator_guards_async_and_sync_functions(make: Any) -> None:
    breaker: FleetBreaker = make(fail_max=1)

    @breaker
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    @breaker
    def compute(x: int) -> int:
        return x + 1

    assert await fetch(21) == 42
    assert compute(1) == 2
    with pytest.raises(TypeError, match="call_async"):
        breaker.call(fetch.__wrapped__, 1)  # type: ignore[attr-defined]


async def test_cancellation_and_keyboard_interrupt_are_not_failures(make: Any) -> None:
    breaker = make(fail_max=2)
    with pytest.raises(Boom):
        breaker.call(boom)

    for _ in range(3):
        running = asyncio.Event()

        async def slow(running: asyncio.Event = running) -> None:
            running.set()
            await asyncio.sleep(10)

        task = asyncio.create_task(breaker.call_async(slow))
        await running.wait()  # admitted and running: the cancel lands inside the guarded call
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        breaker.call(interrupted)
    # Not failures (no trip), and not successes either (the earlier failure still counts).
    snap = breaker.snapshot()
    assert (snap.state, snap.fail_counter) == ("closed", 1)


async def test_cancelled_probe_gives_the_lease_back(make: Any) -> None:
    now = [0.0]
    breaker = make(fail_max=1, reset_timeout=1, clock=lambda: now[0])
    breaker.open()
    now[0] = 5.0

    running = asyncio.Event()

    async def slow() -> None:
        running.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(breaker.call_async(slow))
    await running.wait()
    assert breaker.snapshot().probe_holder is not None
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    snap = breaker.snapshot()
    assert (snap.state, snap.probe_holder) == ("half-open", None)
    assert breaker.call(lambda: "next probe") == "next probe"  # another caller may probe now
    assert breaker.current_state == "closed"


def test_excluded_exceptions_are_successes(make: Any) -> None:
    breaker = make(fail_max=1, exclude=[NotMyProblem])

    def business_error() -> None:
        raise NotMyProblem("404 is an answer")

    for _ in range(3):
        with pytest.raises(NotMyProblem):
            breaker.call(business_error)
    assert breaker.current_state == "closed"


def test_listeners_see_transitions(make: Any) -> None:
    seen: list[tuple[str, str]] = []

    class Listener(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: Any, old: Any, new: Any) -> None:
            seen.append((old.name if old else "", new.name))

    breaker = make(fail_max=1, listeners=[Listener()])
    with pytest.raises(CircuitBreakerError):
        breaker.call(boom)
    breaker.close()
    assert seen == [("closed", "open"), ("open", "closed")]


def test_context_manager(make: Any) -> None:
    breaker = make(fail_max=1)
    with breaker.calling():
        pass
    with pytest.raises(CircuitBreakerError), breaker.calling():
        raise Boom
    assert breaker.current_state == "open"


def test_only_the_owner_refreshes_the_probe_lease(make: Any) -> None:
    now = [0.0]
    breaker = make(fail_max=1, reset_timeout=1, probe_lease_seconds=5, clock=lambda: now[0])
    breaker.open()
    now[0] = 2.0
    assert breaker.try_probe("recovery-run").verdict == "probe"
    assert breaker.refresh_probe("recovery-run", 60)
    assert not breaker.refresh_probe("someone-else", 60)
    ttl = breaker.snapshot().probe_ttl_seconds
    assert ttl is not None and 5 < ttl <= 60
    breaker.end_probe("recovery-run", None)  # cancelled: lease back, still half-open
    assert (breaker.snapshot().state, breaker.snapshot().probe_holder) == ("half-open", None)


# --- concurrency ----------------------------------------------------------------------------------


async def test_eight_concurrent_async_calls_run_concurrently(redis_url: str) -> None:
    breaker = breaker_for("concurrent-async", BreakerConfig(), redis_url)

    async def call_50ms() -> str:
        await asyncio.sleep(0.05)
        return "ok"

    await breaker.call_async(call_50ms)  # connect first: the comparison is about the calls
    best_one, best_eight = 1e9, 1e9
    for _ in range(3):  # best of three: a loaded 2-core machine has hiccups
        started = time.perf_counter()
        await breaker.call_async(call_50ms)
        best_one = min(best_one, time.perf_counter() - started)
        started = time.perf_counter()
        results = await asyncio.gather(*(breaker.call_async(call_50ms) for _ in range(8)))
        best_eight = min(best_eight, time.perf_counter() - started)
        assert results == ["ok"] * 8
    assert best_eight < 2 * best_one, (best_one, best_eight)  # serialised would be ~8x


def test_eight_concurrent_threads_are_not_serialised(redis_url: str) -> None:
    """pybreaker holds its lock around the whole call (#69); the fleet breaker does not."""
    breaker = breaker_for("concurrent-sync", BreakerConfig(), redis_url)
    breaker.call(time.sleep, 0)
    best = 1e9
    with ThreadPoolExecutor(8) as pool:
        for _ in range(3):
            started = time.perf_counter()
            list(pool.map(lambda _: breaker.call(time.sleep, 0.05), range(8)))
            best = min(best, time.perf_counter() - started)
    assert best < 0.2, best  # 8 x 50 ms serialised = 0.4 s


def test_concurrent_failures_trip_exactly_once(redis_url: str) -> None:
    """Counting and tripping are one Lua script: 40 racing failures open it once."""
    breaker = breaker_for("racing", BreakerConfig(fail_max=5), redis_url)
    barrier = threading.Barrier(40)
    outcomes: list[str] = []

    def fail() -> None:
        barrier.wait()
        try:
            breaker.call(boom)
        except CircuitBreakerError as exc:
            outcomes.append("tripped" if "opened" in str(exc) else "rejected")
        except Boom:
            outcomes.append("failed")

    threads = [threading.Thread(target=fail) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("tripped") == 1
    assert breaker.current_state == "open"


PROBE_WORKER = """
import json, sys, time
import redis
from recovery.client.breakers import CircuitBreakerError, breaker_for
from recovery.config.loader import BreakerConfig

url, name, reset, mode = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
client = redis.Redis.from_url(url, decode_responses=True)
breaker = breaker_for(name, BreakerConfig(fail_max=1, reset_timeout_seconds=reset), url)
client.incr("test:ready")
while not client.get("test:go"):
    time.sleep(0.002)
deadline = breaker.snapshot().opened_at + reset + 0.8 * reset

def probe():
    state = client.hget("recovery:breaker:" + name, "state")
    client.rpush("test:calls", state)
    time.sleep(0.3)
    if mode == "fail":
        raise RuntimeError("still down")
    return state

outcomes = {"ran": 0, "rejected": 0, "failed": 0}
while time.time() < deadline:
    try:
        breaker.call(probe)
        outcomes["ran"] += 1
        break
    except CircuitBreakerError as exc:
        outcomes["failed" if "opened" in str(exc) else "rejected"] += 1
    except RuntimeError:
        outcomes["failed"] += 1
    time.sleep(0.002)
print(json.dumps(outcomes))
"""


@pytest.mark.parametrize("mode", ["succeed", "fail"])
def test_six_processes_exactly_one_half_open_probe(redis_url: str, tmp_path: Path, mode: str) -> None:
    script = tmp_path / "worker.py"
    script.write_text(PROBE_WORKER)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    reset = 1.5
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), redis_url, "fleet", str(reset), mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    try:
        deadline = time.monotonic() + 90
        while int(client.get("test:ready") or 0) < 6:
            assert time.monotonic() < deadline, "workers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.05)
        breaker = breaker_for("fleet", BreakerConfig(fail_max=1, reset_timeout_seconds=reset), redis_url)
        breaker.open()
        client.set("test:go", "1")
        results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    finally:
        for p in procs:
            p.kill()
    calls = client.lrange("test:calls", 0, -1)
    # Every process hammered the breaker across the moment its reset timeout elapsed.
    assert all(r["rejected"] > 0 for r in results), results
    if mode == "fail":
        assert calls == ["half-open"], calls  # one probe; it failed and re-opened the breaker
        assert sum(r["failed"] for r in results) == 1
        assert breaker.current_state == "open"
    else:
        assert calls.count("half-open") == 1, calls  # one probe; it closed the breaker ...
        assert all(state == "closed" for state in calls if state != "half-open")  # ... then normal calls
        assert breaker.current_state == "closed"
