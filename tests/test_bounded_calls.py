"""Issue 10: every dependency call is bounded, and what cannot be done is reported, not hung.

Real faults only: a TCP proxy in front of Redis that accepts and never answers (frozen), a
throwaway redis-server that is killed, a fault server whose /hang never answers, sync calls that
block a real thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dbcache_services import RedisServer, TcpProxy
from faultserver import FaultServer
from loopwatch import LoopWatch

from recovery.backends.state_redis import RedisState
from recovery.blocking import CancelledAfter, blocking, blocking_to_end
from recovery.config.loader import RecoveryConfig, parse_config
from recovery.engine.monitor import (
    CYCLE_DEADLINE,
    PROBE_CUT_OFF,
    STATE_UNAVAILABLE,
    decide,
    decide_by,
)
from recovery.engine.probing import PROBE_TIMED_OUT, probe_targets
from recovery.engine.runtime import RecoveryRequest, RecoveryRuntime
from recovery.errors import StateUnavailable
from recovery.kinds.base import ProbeResult
from recovery.services import services_for

pytestmark = pytest.mark.redis


def _config(state_url: str, audit_url: str, names: list[str], **extra: Any) -> RecoveryConfig:
    return parse_config(
        {
            "audit_url": audit_url,
            "state_url": state_url,
            "monitor": {"failure_threshold": 1, "lock_ttl_seconds": 60},
            "targets": [{"name": n, "kind": "http", "url": "http://127.0.0.1:9/h"} for n in names],
            **extra,
        }
    )


def _failed(name: str) -> ProbeResult:
    return ProbeResult(name, "http", False, "status 503", 5.0, status=503)


@pytest.fixture
def frozen_redis(redis_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy to the test Redis DB (URL returned); ``.blackhole()`` it to make Redis hang."""
    db = redis_url.rsplit("/", 1)[1]
    proxy = TcpProxy(("127.0.0.1", 6379)).start()
    try:
        yield proxy, f"redis://127.0.0.1:{proxy.port}/{db}"
    finally:
        proxy.stop()


def test_state_timeout_reaches_every_state_client(redis_url: str, sqlite_url: str) -> None:
    config = _config(redis_url, sqlite_url, ["api"], state_timeout_seconds=0.7)
    services = services_for(config)
    state = services.state
    assert isinstance(state, RedisState)
    kwargs = state.client.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.7, 0.7)
    assert services.rates.client is state.client, "the rate store shares the state's pool"  # type: ignore[attr-defined]
    assert state.windows.client is state.client
    store = services.breaker("api").store
    assert store.timeout == 0.7  # type: ignore[attr-defined]
    default = _config(redis_url, sqlite_url, ["api"])
    assert default.state_timeout_seconds == 2.0


def test_a_frozen_state_redis_fails_each_call_after_its_timeout(
    frozen_redis: tuple[TcpProxy, str], sqlite_url: str
) -> None:
    proxy, url = frozen_redis
    services = services_for(_config(url, sqlite_url, ["api"], state_timeout_seconds=0.5))
    services.state.set_paused("api", "warm the pool")  # a pooled connection that will go silent
    proxy.blackhole()
    calls = {
        "state": lambda: services.state.paused("api"),
        "lock": lambda: services.state.acquire_lock("api", "x", 10),
        "rates": lambda: services.rates.read("api"),
        "breaker": lambda: services.breaker("api").snapshot(),
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(StateUnavailable):
            call()
        took = time.monotonic() - started
        # One timeout, not redis-py's default 10 retries with backoff.
        assert 0.4 < took < 1.5, (name, took)


def test_decide_defers_every_target_when_state_redis_is_down(sqlite_url: str) -> None:
    server = RedisServer().start()
    try:
        names = [f"t{i}" for i in range(5)]
        config = _config(server.url(), sqlite_url, names)
        state = services_for(config).state
        server.kill()
        started = time.monotonic()
        decisions = decide(config, state, [_failed(n) for n in names])
        assert time.monotonic() - started < 1.0
        assert [(d.target, d.action, d.note) for d in decisions] == [
            (n, "deferred", STATE_UNAVAILABLE) for n in names
        ]
        assert all(not d.healthy and d.reason == "status 503" for d in decisions), "probe results kept"
        server.start()  # the same port: the pooled client reconnects on its own
        [d] = decide(config, state, [_failed("t0")])
        assert (d.action, d.failures) == ("recover", 1)
        state.release_lock("t0", d.lock_token or "")
    finally:
        server.stop()


def test_decide_on_a_frozen_redis_costs_one_timeout_not_one_per_target(
    frozen_redis: tuple[TcpProxy, str], sqlite_url: str
) -> None:
    proxy, url = frozen_redis
    names = [f"t{i}" for i in range(10)]
    config = _config(url, sqlite_url, names, state_timeout_seconds=0.5)
    proxy.blackhole()
    started = time.monotonic()
    decisions = decide(config, services_for(config).state, [_failed(n) for n in names])
    assert time.monotonic() - started < 1.5
    assert {d.note for d in decisions} == {STATE_UNAVAILABLE}


def test_targets_past_the_deadline_are_deferred_and_not_recorded(redis_url: str, sqlite_url: str) -> None:
    config = _config(redis_url, sqlite_url, ["a", "b"])
    state = services_for(config).state
    decisions = decide(config, state, [_failed("a"), _failed("b")], deadline=time.monotonic() - 1)
    assert [(d.action, d.note) for d in decisions] == [("deferred", CYCLE_DEADLINE)] * 2
    assert state.health("a") is None and state.lock_owner("a") is None


async def test_decide_by_answers_by_its_deadline_and_off_the_loop(
    frozen_redis: tuple[TcpProxy, str], sqlite_url: str
) -> None:
    proxy, url = frozen_redis
    config = _config(url, sqlite_url, ["a", "b"], state_timeout_seconds=0.5)
    proxy.blackhole()
    gaps = LoopWatch()
    async with gaps:
        started = time.monotonic()
        results = [_failed("a"), _failed("b")]
        decisions = await decide_by(config, services_for(config).state, results, started + 5)
        took = time.monotonic() - started
    assert took < 1.5 and {d.note for d in decisions} == {STATE_UNAVAILABLE}
    # A blocked loop would show the whole 1 s timeout; 0.5 s leaves room for a GC pause on a busy box.
    assert gaps.longest < 0.5, f"the event loop was blocked for {gaps.longest:.2f}s"


async def test_probes_still_running_at_the_deadline_are_reported_timed_out_and_not_counted(
    fault_server: FaultServer, redis_url: str, sqlite_url: str
) -> None:
    config = parse_config(
        {
            "audit_url": sqlite_url,
            "state_url": redis_url,
            "monitor": {"failure_threshold": 1},
            "targets": [
                {"name": "hung", "kind": "http", "url": f"{fault_server.url}/hang", "timeout_seconds": 30},
                {"name": "fine", "kind": "http", "url": f"{fault_server.url}/status/200"},
            ],
        }
    )
    started = time.monotonic()
    results = await probe_targets(config.targets, timeout=0.5)
    assert time.monotonic() - started < 2.0
    assert [(r.target, r.healthy, r.reason) for r in results] == [
        ("hung", False, PROBE_TIMED_OUT),
        ("fine", True, "ok"),
    ]
    hung, fine = decide(config, services_for(config).state, results)
    assert (hung.action, hung.note) == ("deferred", PROBE_CUT_OFF)
    assert fine.action == "none"
    assert services_for(config).state.health("hung") is None, "a cut-off probe is not a failed probe"


async def test_runtime_bookkeeping_never_blocks_the_event_loop(
    frozen_redis: tuple[TcpProxy, str], sqlite_url: str
) -> None:
    """begin() against a frozen state Redis: it fails after the timeout, and meanwhile the loop
    (every other recovery in the process) keeps running."""
    proxy, url = frozen_redis
    config = _config(url, sqlite_url, ["api"], state_timeout_seconds=1.0)
    proxy.blackhole()
    gaps = LoopWatch()
    async with gaps:
        started = time.monotonic()
        with pytest.raises(StateUnavailable):
            await RecoveryRuntime.abegin(config, RecoveryRequest(target="api", requested_by="test"))
        took = time.monotonic() - started
    assert 0.9 < took < 3.0
    # A blocked loop would show the whole 1 s timeout; 0.5 s leaves room for a GC pause on a busy box.
    assert gaps.longest < 0.5, f"the event loop was blocked for {gaps.longest:.2f}s"
    proxy.unblackhole()
    services_for(config).close()  # the frozen connections are dead: start afresh
    rt = await RecoveryRuntime.abegin(config, RecoveryRequest(target="api", requested_by="test"))
    await rt.afinish("cancelled")
    record = rt.audit.run(rt.run_id)
    assert record is not None and record.state == "cancelled"
    assert rt.state.lock_owner("api") is None


async def test_blocking_to_end_outlives_a_cancellation_and_hands_back_the_result() -> None:
    finished = threading.Event()

    def slow() -> str:
        time.sleep(0.3)  # a real blocking call on a real thread
        finished.set()
        return "done"

    task = asyncio.ensure_future(blocking_to_end(slow))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(CancelledAfter) as info:
        await task
    assert finished.is_set() and info.value.result == "done"
    assert await blocking(str.upper, "x") == "X"


def test_config_timeouts_and_the_cycle_budget() -> None:
    from recovery.errors import ConfigError

    with pytest.raises(ConfigError, match="state_timeout_seconds"):
        parse_config({"state_timeout_seconds": 0})
    with pytest.raises(ConfigError, match=r"monitor\.cycle_timeout_seconds"):
        parse_config({"monitor": {"cycle_timeout_seconds": -1}})
    with pytest.raises(ConfigError, match=r"monitor\.cycle_timeout_seconds"):
        parse_config({"monitor": {"cycle_timeout_seconds": 3}})  # below the 5 s floor
    assert parse_config({"monitor": {"interval_seconds": 7}}).monitor.cycle_budget_seconds == 7
    assert parse_config({"monitor": {"cycle_timeout_seconds": 6}}).monitor.cycle_budget_seconds == 6
    # An interval of 1 s does not make a 1 s deadline: late is not hung.
    assert parse_config({"monitor": {"interval_seconds": 1}}).monitor.cycle_budget_seconds == 5
