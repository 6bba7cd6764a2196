"""Fleet-safe circuit breakers: pybreaker's Redis pitfalls, checked against a real Redis.

Each pybreaker issue the breaker fixes has a test here: async callables, concurrent calls not
serialised, cancellation not counted, atomic transitions, sub-second ``opened_at``, namespaced
expiring keys, Redis down (fail-open / fail-closed, constructing never raises) and exactly one
half-open probe across six real processes.
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

from recovery.audit.store import AuditStore
from recovery.backends.breaker_memory import MemoryBreakerStore
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
