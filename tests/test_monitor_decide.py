"""monitor.decide(): thresholds, one lock per target under races, pause + breaker on recover."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from recovery.backends.state import SharedState
from recovery.backends.state_memory import MemoryState
from recovery.backends.state_redis import RedisState
from recovery.client.breakers import breaker_for, breaker_state
from recovery.config.loader import RecoveryConfig, parse_config
from recovery.engine.monitor import Decision, decide
from recovery.kinds.base import ProbeResult


@dataclass
class Env:
    config: RecoveryConfig
    state: SharedState
    state_url: str | None
    name: str  # unique target name: in-process breakers are process-wide, keyed by name

    def new_state(self) -> SharedState:
        """Another monitor's view: a new client for Redis, the same object in-process."""
        return RedisState(self.state_url) if self.state_url else self.state


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    name = f"api-{uuid.uuid4().hex[:8]}"
    state_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    data: dict[str, object] = {
        "monitor": {"failure_threshold": 3, "lock_ttl_seconds": 60},
        "targets": [
            {"kind": "http", "name": name, "url": "http://127.0.0.1:9/health"},
            {"kind": "http", "name": f"{name}-b", "url": "http://127.0.0.1:9/b"},
        ],
    }
    if state_url:
        data["state_url"] = state_url
    config = parse_config(data)
    state: SharedState = RedisState(state_url) if state_url else MemoryState()
    try:
        yield Env(config, state, state_url, name)
    finally:
        state.close()


def failed(target: str, reason: str = "status 503") -> ProbeResult:
    return ProbeResult(target, "http", False, reason, 12.0, status=503)


def ok(target: str) -> ProbeResult:
    return ProbeResult(target, "http", True, "ok", 3.0, status=200)


def only(decisions: list[Decision]) -> Decision:
    assert len(decisions) == 1
    return decisions[0]


def test_healthy_probe_needs_no_action(env: Env) -> None:
    decision = only(decide(env.config, env.state, [ok(env.name)], now=10.0))
    assert (decision.action, decision.healthy, decision.successes, decision.failures) == ("none", True, 1, 0)
    assert decision.workflow is None and decision.lock_token is None
    assert env.state.lock_owner(env.name) is None


def test_threshold_then_recover_then_in_progress(env: Env) -> None:
    actions = []
    for i in range(2):
        d = only(decide(env.config, env.state, [failed(env.name)], now=100.0 + i))
        actions.append((d.action, d.failures, d.first_failure_at))
    assert actions == [("below-threshold", 1, 100.0), ("below-threshold", 2, 100.0)]
    assert env.state.lock_owner(env.name) is None
    assert env.state.paused(env.name) is None

    third = only(decide(env.config, env.state, [failed(env.name)], now=102.0))
    assert third.action == "recover"
    assert third.failures == 3
    assert third.workflow == "api-failure-recovery"
    assert third.first_failure_at == 100.0
    assert third.lock_token is not None
    assert env.state.lock_owner(env.name) == third.lock_token

    # While that recovery holds the lock, further failures do not start another one.
    fourth = only(decide(env.config, env.state, [failed(env.name)], now=103.0))
    assert (fourth.action, fourth.failures, fourth.lock_token) == ("in-progress", 4, None)
    assert env.state.lock_owner(env.name) == third.lock_token


def test_success_resets_the_streak(env: Env) -> None:
    for i in range(2):
        decide(env.config, env.state, [failed(env.name)], now=float(i))
    assert only(decide(env.config, env.state, [ok(env.name)], now=3.0)).action == "none"
    after = [only(decide(env.config, env.state, [failed(env.name)], now=4.0 + i)) for i in range(2)]
    assert [(d.action, d.failures) for d in after] == [("below-threshold", 1), ("below-threshold", 2)]
    assert after[0].first_failure_at == 4.0


def test_batch_decides_each_target(env: Env) -> None:
    other = f"{env.name}-b"
    for i in range(2):
        decide(env.config, env.state, [failed(env.name), ok(other)], now=float(i))
    decisions = decide(env.config, env.state, [failed(env.name), failed(other)], now=2.0)
    assert [(d.target, d.action, d.failures) for d in decisions] == [
        (env.name, "recover", 3),
        (other, "below-threshold", 1),
    ]
    assert (
        decisions[0].as_json().items()
        >= {
            "target": env.name,
            "healthy": False,
            "reason": "status 503",
            "failures": 3,
            "successes": 0,
            "action": "recover",
            "workflow": "api-failure-recovery",
        }.items()
    )


def test_recover_pauses_target_and_opens_breaker(env: Env) -> None:
    target = env.config.target(env.name)
    breaker = breaker_for(env.name, target.breaker, env.state_url)
    assert breaker_state(breaker) == "closed"
    for i in range(3):
        last = only(decide(env.config, env.state, [failed(env.name, "timeout")], now=float(i)))
    assert last.action == "recover"
    assert env.state.paused(env.name) == "monitor: timeout"
    # A freshly built breaker (what the application would build) sees it open: for Redis this
    # goes through the shared storage, not this process's object.
    assert breaker_state(breaker_for(env.name, target.breaker, env.state_url)) == "open"
    assert env.state.paused(f"{env.name}-b") is None


def test_racing_monitors_take_the_lock_once(env: Env) -> None:
    # Both monitors see the 3rd consecutive failure at the same moment.
    for i in range(2):
        decide(env.config, env.state, [failed(env.name)], now=float(i))
    contenders = 2
    states = [env.new_state() for _ in range(contenders)]
    barrier = threading.Barrier(contenders)
    decisions: list[Decision] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def monitor(state: SharedState) -> None:
        try:
            barrier.wait(timeout=10)
            decision = only(decide(env.config, state, [failed(env.name)], now=5.0))
            with lock:
                decisions.append(decision)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=monitor, args=(s,)) for s in states]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    try:
        assert not errors
        assert sorted(d.action for d in decisions) == ["in-progress", "recover"]
        assert sorted(d.failures for d in decisions) == [3, 4]  # no lost counter update
        [winner] = [d for d in decisions if d.action == "recover"]
        assert env.state.lock_owner(env.name) == winner.lock_token
    finally:
        if env.state_url:
            for state in states:
                state.close()


@pytest.mark.redis
def test_racing_monitors_many_rounds_redis(redis_url: str) -> None:
    """Repeat the race with 8 monitors and fresh targets: never two recoveries for one target."""
    name = f"race-{uuid.uuid4().hex[:8]}"
    config = parse_config(
        {
            "state_url": redis_url,
            "monitor": {"failure_threshold": 1},
            "targets": [{"kind": "http", "name": f"{name}-{r}", "url": "http://h/"} for r in range(10)],
        }
    )
    states = [RedisState(redis_url) for _ in range(8)]
    try:
        for r in range(10):
            target = f"{name}-{r}"
            barrier = threading.Barrier(len(states))
            actions: list[str] = []

            def monitor(
                state: SharedState,
                target: str = target,
                barrier: threading.Barrier = barrier,
                actions: list[str] = actions,
            ) -> None:
                barrier.wait(timeout=10)
                actions.append(only(decide(config, state, [failed(target)])).action)

            threads = [threading.Thread(target=monitor, args=(s,)) for s in states]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            assert sorted(actions) == ["in-progress"] * 7 + ["recover"], f"round {r}: {actions}"
    finally:
        for state in states:
            state.close()
