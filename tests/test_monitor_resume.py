"""Invariant I3: the paused flag never outlives both its recovery and the outage.

``decide()`` clears it once the target passed ``monitor.success_threshold`` probes in a row and
no recovery holds the target's lock (one atomic step on Redis: ``resume_if_idle.lua``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from recovery.backends.state import SharedState
from recovery.backends.state_memory import MemoryState
from recovery.backends.state_redis import RedisState
from recovery.config.loader import RecoveryConfig, parse_config
from recovery.engine.monitor import decide
from recovery.kinds.base import ProbeResult


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def state(request: pytest.FixtureRequest) -> Iterator[SharedState]:
    backend = RedisState(request.getfixturevalue("redis_url")) if request.param == "redis" else MemoryState()
    try:
        yield backend
    finally:
        backend.close()


def config(name: str) -> RecoveryConfig:
    return parse_config(
        {
            "monitor": {"failure_threshold": 3, "success_threshold": 2},
            "targets": [{"kind": "http", "name": name, "url": "http://127.0.0.1:9/health"}],
        }
    )


def ok(target: str) -> ProbeResult:
    return ProbeResult(target, "http", True, "ok", 3.0, status=200)


def test_paused_is_cleared_after_success_threshold_with_no_recovery(state: SharedState) -> None:
    name = f"api-{uuid.uuid4().hex[:8]}"
    cfg = config(name)
    state.set_paused(name, "monitor: status 503")  # its recovery was killed before resuming
    [first] = decide(cfg, state, [ok(name)], now=1.0)
    assert not first.resumed and state.paused(name) == "monitor: status 503"  # 1 of 2
    assert state.acquire_lock(name, "a-recovery", 60)
    [second] = decide(cfg, state, [ok(name)], now=2.0)
    assert not second.resumed and state.paused(name) is not None  # a recovery runs: its call
    state.release_lock(name, "a-recovery")
    [third] = decide(cfg, state, [ok(name)], now=3.0)
    assert third.resumed and state.paused(name) is None
    assert third.as_json()["resumed"] is True
    [fourth] = decide(cfg, state, [ok(name)], now=4.0)
    assert not fourth.resumed  # nothing left to clear


def test_resume_if_idle_is_one_step(state: SharedState) -> None:
    assert not state.resume_if_idle("t")  # nothing paused
    state.set_paused("t", "x")
    assert state.acquire_lock("t", "o", 60)
    assert not state.resume_if_idle("t") and state.paused("t") == "x"
    state.release_lock("t", "o")
    assert state.resume_if_idle("t") and state.paused("t") is None
