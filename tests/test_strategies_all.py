"""All six strategies: config union, pinned plans, decisions, properties, and admission.

The strategy objects are pure (a ``StrategyInput`` snapshot with a fake clock reading); the
admission tests run the real ``RecoveryRuntime.begin`` against a real Redis and SQLite.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from recovery.audit.store import AuditStore
from recovery.backends.keys import recoveries_key
from recovery.backends.state_memory import MemoryState
from recovery.backends.state_redis import RedisState
from recovery.backends.window import RecoveryWindow, RedisWindow
from recovery.client.breakers import CircuitBreakerError, breaker_for
from recovery.config.loader import RecoveryConfig, parse_config
from recovery.engine.runtime import RecoveryRequest, RecoveryRuntime
from recovery.errors import ConfigError, RecoveryRefused
from recovery.policy.admission import admit
from recovery.policy.strategies import (
    SINGLE_ATTEMPT,
    AdaptiveStrategyConfig,
    BreakerAlignedStrategyConfig,
    BreakerView,
    CompositeStrategyConfig,
    ExponentialStrategyConfig,
    LinearStrategyConfig,
    PastRun,
    RetryPlan,
    StrategyConfig,
    StrategyInput,
    TimeWindowStrategyConfig,
    WindowSlot,
    build_strategy,
    retry_plan,
)

NOW = 1_000_000.0


def inp(run_type: str = "automatic", **kw: Any) -> StrategyInput:
    return StrategyInput("api", run_type, kw.pop("now", NOW), **kw)


# --- config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "cls"),
    [
        ({"base_seconds": 2}, ExponentialStrategyConfig),  # no kind: the original shape
        ({"kind": "exponential", "jitter": "decorrelated"}, ExponentialStrategyConfig),
        ({"kind": "linear", "increment_seconds": 5}, LinearStrategyConfig),
        ({"kind": "adaptive", "window_seconds": 600}, AdaptiveStrategyConfig),
        ({"kind": "breaker_aligned", "max_attempts": 2}, BreakerAlignedStrategyConfig),
        ({"kind": "time_window", "max_recoveries": 3, "window_seconds": 3600}, TimeWindowStrategyConfig),
        (
            {
                "kind": "composite",
                "strategies": [
                    {"kind": "time_window", "max_recoveries": 3, "window_seconds": 3600},
                    {"kind": "exponential", "base_seconds": 1, "max_delay_seconds": 60, "jitter": "full"},
                ],
            },
            CompositeStrategyConfig,
        ),
    ],
)
def test_config_union_on_kind(strategy: dict[str, Any], cls: type) -> None:
    target = {"kind": "http", "name": "api", "url": "http://127.0.0.1:1/", "strategy": strategy}
    config = parse_config({"strategy": strategy, "targets": [target]})
    assert isinstance(config.strategy, cls)
    assert isinstance(config.strategy_for(config.targets[0]), cls)


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ({"kind": "fibonacci"}, "strategy: unknown kind 'fibonacci' (expected one of: exponential, linear, "),
        (
            {"kind": "linear", "max_delay_seconds": 0},
            "strategy.max_delay_seconds: Input should be greater than 0",
        ),
        ({"kind": "time_window", "max_recoveries": 0}, "strategy.max_recoveries: Input should be greater"),
        (
            {"kind": "adaptive", "min_attempts": 4, "max_attempts": 2},
            "strategy: min_attempts must not exceed",
        ),
        ({"kind": "linear", "cap": 3}, "strategy.cap: unknown field"),
        (
            {
                "kind": "composite",
                "strategies": [{"kind": "linear"}, {"kind": "time_window", "window_seconds": -1}],
            },
            "strategy.strategies[1].window_seconds: Input should be greater than 0",
        ),
        ({"kind": "composite", "strategies": []}, "strategy.strategies: List should have at least 1 item"),
        (
            {"kind": "composite", "strategies": [{"kind": "composite", "strategies": [{"kind": "linear"}]}]},
            "strategy.strategies[0]: unknown kind 'composite'",
        ),
    ],
)
def test_config_errors_are_one_line(strategy: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"strategy": strategy})
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


# --- pinned plans -------------------------------------------------------------------------------


def test_linear_sequence_and_cap() -> None:
    strategy = build_strategy(
        LinearStrategyConfig(base_seconds=1, increment_seconds=2, max_delay_seconds=6, max_attempts=6)
    )
    assert strategy.plan() == RetryPlan(6, (1.0, 3.0, 5.0, 6.0, 6.0))
    assert build_strategy(LinearStrategyConfig(max_attempts=1)).plan() == SINGLE_ATTEMPT


def test_adaptive_clean_history_is_plain_exponential() -> None:
    strategy = build_strategy(
        AdaptiveStrategyConfig(base_seconds=1, factor=2, max_delay_seconds=30, max_attempts=6)
    )
    assert strategy.plan() == RetryPlan(6, (1.0, 2.0, 4.0, 8.0, 16.0))
    assert strategy.plan(inp()) == RetryPlan(6, (1.0, 2.0, 4.0, 8.0, 16.0))


HISTORY = (
    PastRun(NOW - 100, "failed", "ProbeFailed", "verification probe 1/3 failed: status 503"),
    PastRun(NOW - 200, "succeeded"),
    PastRun(NOW - 250, "refused", "RecoveryRefused", "lock held"),  # refusals are not failures
    PastRun(NOW - 300, "failed", "StateUnavailable", "redis down"),
    PastRun(NOW - 5000, "failed", "ProbeFailed", "old, outside the 3600 s window"),
)


def test_adaptive_lengthens_delays_and_lowers_attempts_with_recent_failures() -> None:
    config = AdaptiveStrategyConfig(base_seconds=1, factor=2, max_delay_seconds=30, max_attempts=6)
    # 2 failures in the window: base x (1 + 2), attempts 6 - 2.
    assert build_strategy(config).plan(inp(history=HISTORY)) == RetryPlan(4, (3.0, 6.0, 12.0))
    floor = AdaptiveStrategyConfig(max_attempts=3, min_attempts=2, max_delay_seconds=30)
    assert build_strategy(floor).plan(inp(history=HISTORY)).max_attempts == 2


def test_adaptive_honours_retry_after_and_the_cap() -> None:
    config = AdaptiveStrategyConfig(base_seconds=1, factor=2, max_delay_seconds=30, max_attempts=6)
    strategy = build_strategy(config)
    assert strategy.plan(inp(history=HISTORY, retry_after_seconds=7.5)) == RetryPlan(4, (7.5, 7.5, 12.0))
    assert strategy.plan(inp(retry_after_seconds=600)).delays == (30.0,) * 5  # capped


def test_adaptive_seeded_jitter_is_pinned() -> None:
    config = AdaptiveStrategyConfig(max_delay_seconds=30, jitter="full", seed=42)
    assert build_strategy(config).plan(inp(history=HISTORY)) == RetryPlan(4, (1.918, 0.15, 3.3))


def test_breaker_aligned_plan_spaces_attempts_by_reset_timeout() -> None:
    config = BreakerAlignedStrategyConfig(max_attempts=3, max_delay_seconds=20)
    assert build_strategy(config, breaker_reset_seconds=30).plan() == RetryPlan(3, (20.0, 20.0))
    assert build_strategy(config, breaker_reset_seconds=5).plan() == RetryPlan(3, (5.0, 5.0))
    own = BreakerAlignedStrategyConfig(reset_timeout_seconds=2)
    assert build_strategy(own, breaker_reset_seconds=30).plan() == RetryPlan(3, (2.0, 2.0))


def test_time_window_only_gates() -> None:
    strategy = build_strategy(TimeWindowStrategyConfig())
    assert strategy.plan() is None
    assert retry_plan(strategy) == SINGLE_ATTEMPT


def test_composite_fewest_attempts_and_largest_delays() -> None:
    config = CompositeStrategyConfig(
        strategies=[
            ExponentialStrategyConfig(base_seconds=1, max_delay_seconds=10, max_attempts=5, jitter="none"),
            LinearStrategyConfig(base_seconds=3, increment_seconds=0, max_delay_seconds=10, max_attempts=4),
            TimeWindowStrategyConfig(),
        ]
    )
    # exponential 1, 2, 4, 8 / linear 3, 3, 3 -> 3 retries, max of each
    assert build_strategy(config).plan() == RetryPlan(4, (3.0, 3.0, 4.0))


# --- decisions ----------------------------------------------------------------------------------


def test_retry_shapes_always_allow() -> None:
    for config in (ExponentialStrategyConfig(), LinearStrategyConfig()):
        assert build_strategy(config).decide(inp()).allowed


def test_adaptive_escalates_when_the_same_error_repeats() -> None:
    strategy = build_strategy(AdaptiveStrategyConfig(repeat_threshold=3))
    same = tuple(PastRun(NOW - 60 * i, "failed", "ProbeFailed", "status 503") for i in range(1, 4))
    decision = strategy.decide(inp(history=same))
    assert not decision.allowed and decision.escalate
    assert "same error (ProbeFailed: status 503)" in decision.reason
    # A person asked: run it (the plan is still shortened by the failures).
    assert strategy.decide(inp("manual", history=same)).allowed
    assert strategy.decide(inp("emergency", history=same)).allowed
    # Two of three alike, or the third outside the window: no escalation.
    mixed = (*same[:2], PastRun(NOW - 300, "failed", "StateUnavailable", "redis down"))
    assert strategy.decide(inp(history=mixed)).allowed
    old = (*same[:2], PastRun(NOW - 7200, "failed", "ProbeFailed", "status 503"))
    assert strategy.decide(inp(history=old)).allowed


def view(state: str, opened_ago: float | None = None, holder: str | None = None) -> BreakerView:
    opened = NOW - opened_ago if opened_ago is not None else None
    return BreakerView(state, opened, 30.0, holder)


def test_breaker_aligned_decisions() -> None:
    strategy = build_strategy(BreakerAlignedStrategyConfig(), breaker_reset_seconds=30)
    assert strategy.decide(inp(breaker=view("closed"))).allowed
    assert strategy.decide(inp(breaker=None)).allowed
    closed = strategy.decide(inp(breaker=view("closed")))
    assert not closed.probe_lease

    still_open = strategy.decide(inp(breaker=view("open", opened_ago=10)))
    assert not still_open.allowed and not still_open.escalate
    assert still_open.retry_after_seconds == 20.0
    assert "open" in still_open.reason and "20.0s" in still_open.reason

    elapsed = strategy.decide(inp(breaker=view("open", opened_ago=31)))
    assert elapsed.allowed and elapsed.probe_lease

    orphaned = strategy.decide(inp(breaker=view("half-open")))  # lease expired: probe again
    assert orphaned.allowed and orphaned.probe_lease
    busy = strategy.decide(inp(breaker=view("half-open", holder="worker-7")))
    assert not busy.allowed and "worker-7" in busy.reason

    emergency = strategy.decide(inp("emergency", breaker=view("open", opened_ago=1)))
    assert emergency.allowed and not emergency.probe_lease


def test_time_window_fourth_of_three_is_refused_and_escalated() -> None:
    strategy = build_strategy(TimeWindowStrategyConfig(max_recoveries=3, window_seconds=3600))
    recent = (NOW - 3000, NOW - 1000, NOW - 10)
    assert strategy.decide(inp(recent_recoveries=recent[:2])).allowed
    assert strategy.decide(inp(recent_recoveries=recent[:2])).window_slots == (WindowSlot(3, 3600.0),)
    fourth = strategy.decide(inp(recent_recoveries=recent))
    assert not fourth.allowed and fourth.escalate
    assert fourth.retry_after_seconds == 600.0  # the oldest leaves the window in 600 s
    assert "3 recoveries of api in the last 3600s (max 3)" in fourth.reason
    # The sliding window: an entry older than the window does not count.
    assert strategy.decide(inp(recent_recoveries=(NOW - 3601, *recent[1:]))).allowed
    emergency = strategy.decide(inp("emergency", recent_recoveries=recent))
    assert emergency.allowed and emergency.window_slots == (WindowSlot(3, 3600.0, force=True),)


def test_composite_allows_only_if_all_allow() -> None:
    config = CompositeStrategyConfig(
        strategies=[
            TimeWindowStrategyConfig(max_recoveries=1, window_seconds=60),
            BreakerAlignedStrategyConfig(),
            ExponentialStrategyConfig(),
        ]
    )
    strategy = build_strategy(config, breaker_reset_seconds=30)
    ok = strategy.decide(inp(breaker=view("open", opened_ago=40)))
    assert ok.allowed and ok.probe_lease and ok.window_slots == (WindowSlot(1, 60.0),)
    both = strategy.decide(inp(recent_recoveries=(NOW - 10,), breaker=view("open", opened_ago=5)))
    assert not both.allowed and both.escalate  # the time window escalates
    assert both.retry_after_seconds == 50.0  # the largest wait proposed (window 50 s, breaker 25 s)
    assert "time_window" in both.reason and "breaker_aligned" in both.reason
    one = strategy.decide(inp(breaker=view("open", opened_ago=5)))
    assert not one.allowed and not one.escalate and one.strategy == "breaker_aligned"


# --- properties ---------------------------------------------------------------------------------

caps = st.floats(min_value=1e-3, max_value=1e5, allow_nan=False, allow_infinity=False)
attempts = st.integers(min_value=1, max_value=60)
seconds = st.floats(min_value=0, max_value=1e4, allow_nan=False, allow_infinity=False)
jitters = st.sampled_from(["none", "full", "equal", "decorrelated"])

leaf_configs = st.one_of(
    st.builds(
        ExponentialStrategyConfig,
        base_seconds=st.floats(min_value=1e-3, max_value=1e4),
        factor=st.floats(min_value=1, max_value=100),
        max_delay_seconds=caps,
        max_attempts=attempts,
        jitter=jitters,
        seed=st.none() | st.integers(0, 2**32),
    ),
    st.builds(
        LinearStrategyConfig,
        base_seconds=seconds,
        increment_seconds=seconds,
        max_delay_seconds=caps,
        max_attempts=attempts,
    ),
    st.builds(
        AdaptiveStrategyConfig,
        base_seconds=st.floats(min_value=1e-3, max_value=1e4),
        factor=st.floats(min_value=1, max_value=100),
        max_delay_seconds=caps,
        max_attempts=attempts,
        min_attempts=st.just(1),
        penalty_per_failure=st.floats(min_value=0, max_value=10),
        attempts_drop_per_failure=st.integers(0, 5),
        jitter=jitters,
        seed=st.none() | st.integers(0, 2**32),
    ),
    st.builds(
        BreakerAlignedStrategyConfig,
        max_attempts=attempts,
        max_delay_seconds=caps,
        reset_timeout_seconds=st.none() | st.floats(min_value=1e-3, max_value=1e5),
    ),
    st.builds(TimeWindowStrategyConfig, max_recoveries=st.integers(1, 10), window_seconds=caps),
)
any_config = st.one_of(
    leaf_configs,
    st.builds(CompositeStrategyConfig, strategies=st.lists(leaf_configs, min_size=1, max_size=4)),
)
inputs = st.builds(
    StrategyInput,
    target=st.just("api"),
    run_type=st.sampled_from(["automatic", "manual", "scheduled", "emergency"]),
    now=st.just(NOW),
    recent_recoveries=st.lists(st.floats(NOW - 1e5, NOW), max_size=12).map(tuple),
    history=st.lists(
        st.builds(
            PastRun,
            started_at=st.floats(NOW - 1e4, NOW),
            state=st.sampled_from(["failed", "succeeded", "refused"]),
            error_type=st.sampled_from(["ProbeFailed", "StateUnavailable"]),
            error_message=st.sampled_from(["a", "b"]),
        ),
        max_size=10,
    ).map(tuple),
    retry_after_seconds=st.none() | st.floats(min_value=0, max_value=1e6),
)


def _limits(config: StrategyConfig) -> tuple[int, float] | None:
    """(max attempts, cap) a plan of ``config`` must respect; None for a gate-only config."""
    if isinstance(config, CompositeStrategyConfig):
        found = [x for x in (_limits(c) for c in config.strategies) if x is not None]
        return (min(a for a, _ in found), max(c for _, c in found)) if found else None
    if isinstance(config, TimeWindowStrategyConfig):
        return None
    return config.max_attempts, config.max_delay_seconds


@settings(max_examples=400, deadline=None)
@given(config=any_config, data=inputs, reset=st.floats(min_value=1e-3, max_value=1e5))
def test_property_no_delay_exceeds_cap_and_attempts_never_exceed_max(
    config: StrategyConfig, data: StrategyInput, reset: float
) -> None:
    strategy = build_strategy(config, breaker_reset_seconds=reset)
    for plan_input in (None, data):
        plan = retry_plan(strategy, plan_input)
        assert plan.max_attempts >= 1
        assert len(plan.delays) == plan.max_attempts - 1
        limits = _limits(config)
        if limits is None:
            assert plan == SINGLE_ATTEMPT
            continue
        max_attempts, cap = limits
        assert plan.max_attempts <= max_attempts
        assert all(0 <= d <= cap for d in plan.delays), (plan.delays, cap)
    strategy.decide(data)  # never raises


# --- admission: RecoveryRuntime.begin with real Redis and SQLite --------------------------------


def make_config(audit: str, state_url: str | None, strategy: str, extra: str = "") -> RecoveryConfig:
    import yaml

    text = f"""
audit_url: {audit}
{"state_url: " + state_url if state_url else ""}
strategy: {strategy}
targets:
  - {{name: api, kind: http, url: "http://127.0.0.1:9/health"{extra}}}
"""
    return parse_config(yaml.safe_load(text))


def request(run_type: str = "automatic", **kw: Any) -> RecoveryRequest:
    return RecoveryRequest(
        target="api", workflow="api-failure-recovery", run_type=run_type, requested_by="t", **kw
    )


def test_fourth_recovery_in_time_window_of_three_is_refused_and_audited(
    redis_url: str, sqlite_url: str
) -> None:
    config = make_config(
        sqlite_url,
        redis_url,
        "{kind: composite, strategies: [{kind: time_window, max_recoveries: 3, window_seconds: 3600},"
        " {kind: exponential, base_seconds: 1, max_delay_seconds: 8, max_attempts: 4, jitter: none}]}",
    )
    for _ in range(3):
        rt = RecoveryRuntime.begin(config, request())
        assert rt.plans["test_connectivity"].plan == RetryPlan(4, (1.0, 2.0, 4.0))
        rt.finish("succeeded")
    with pytest.raises(RecoveryRefused) as info:
        RecoveryRuntime.begin(config, request(reason="4th"), run_id="fourth")
    assert info.value.escalate
    assert "time_window: 3 recoveries of api in the last 3600s (max 3)" in info.value.reason
    row = AuditStore(sqlite_url).run("fourth")
    assert row is not None and row.state == "refused" and row.error_type == "RecoveryRefused"
    assert row.error_message == info.value.reason and row.reason == "4th"
    state = RedisState(redis_url)
    assert state.lock_owner("api") is None  # a refused run never keeps the lock
    assert redis.Redis.from_url(redis_url).zcard(recoveries_key("api")) == 3
    assert 0 < redis.Redis.from_url(redis_url).pttl(recoveries_key("api")) <= 3_600_000
    # An emergency bypasses the window (it is counted) but not the lock.
    rt = RecoveryRuntime.begin(config, request("emergency", reason="customer outage"))
    with pytest.raises(RecoveryRefused, match="already in progress"):
        RecoveryRuntime.begin(config, request("emergency", reason="again"))
    rt.finish("succeeded")
    assert redis.Redis.from_url(redis_url).zcard(recoveries_key("api")) == 4


def test_time_window_in_process_state(sqlite_url: str) -> None:
    config = make_config(sqlite_url, None, "{kind: time_window, max_recoveries: 1, window_seconds: 60}")
    state = MemoryState()
    first = admit(config, config.targets[0], "automatic", "run-1", state, clock=lambda: NOW)
    assert first.allowed and first.plan == SINGLE_ATTEMPT
    second = admit(config, config.targets[0], "automatic", "run-2", state, clock=lambda: NOW + 30)
    assert not second.allowed and second.decision.escalate
    assert admit(config, config.targets[0], "automatic", "run-3", state, clock=lambda: NOW + 61).allowed


def test_window_take_is_atomic_across_threads(redis_url: str) -> None:
    window = RecoveryWindow(RedisWindow(redis.Redis.from_url(redis_url, decode_responses=True)))
    taken: list[str] = []
    barrier = threading.Barrier(12)

    def worker(i: int) -> None:
        barrier.wait()
        if window.take("api", f"run-{i}", NOW, (WindowSlot(3, 3600.0),)) is None:
            taken.append(f"run-{i}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(taken) == 3
    assert len(window.recent("api", NOW + 1, 3600.0)) == 3
    window.give_back("api", taken[0], NOW)
    assert len(window.recent("api", NOW + 1, 3600.0)) == 2


def test_breaker_aligned_recovery_is_the_single_half_open_probe(redis_url: str, sqlite_url: str) -> None:
    config = make_config(
        sqlite_url,
        redis_url,
        "{kind: breaker_aligned, max_attempts: 2}",
        extra=", breaker: {reset_timeout_seconds: 0.3}",
    )
    target = config.targets[0]
    breaker = breaker_for("api", target.breaker, redis_url)
    breaker.open()
    with pytest.raises(RecoveryRefused) as info:
        RecoveryRuntime.begin(config, request(), run_id="too-early")
    assert not info.value.escalate and "circuit breaker of api is open" in info.value.reason
    assert AuditStore(sqlite_url).run("too-early").state == "refused"  # type: ignore[union-attr]
    assert breaker.snapshot().state == "open"

    time.sleep(0.35)
    rt = RecoveryRuntime.begin(config, request(), run_id="probe-run")
    assert rt.plans["test_connectivity"].plan == RetryPlan(2, (0.3,))
    snap = breaker.snapshot()
    assert snap.state == "half-open" and snap.probe_holder == "probe-run"
    # While the recovery probes, the application's calls fail fast: one probe across all workers.
    with pytest.raises(CircuitBreakerError, match="half-open"):
        breaker.call(lambda: "app call")
    rt.finish("failed", RuntimeError("still down"))
    snap = breaker.snapshot()
    assert snap.state == "open" and snap.probe_holder is None  # failed probe: a new reset timeout

    time.sleep(0.35)
    rt = RecoveryRuntime.begin(config, request())
    rt.finish("succeeded")
    assert breaker.snapshot().state == "closed"


def test_adaptive_escalates_repeating_error_from_the_audit_store(redis_url: str, sqlite_url: str) -> None:
    config = make_config(sqlite_url, redis_url, "{kind: adaptive, repeat_threshold: 2, max_attempts: 5}")
    for _ in range(2):
        rt = RecoveryRuntime.begin(config, request())
        rt.finish("failed", ConnectionError("connection refused"))
    with pytest.raises(RecoveryRefused) as info:
        RecoveryRuntime.begin(config, request(), run_id="third")
    assert info.value.escalate and "same error (ConnectionError: connection refused)" in info.value.reason
    assert AuditStore(sqlite_url).run("third").state == "refused"  # type: ignore[union-attr]
    rt = RecoveryRuntime.begin(config, request("manual"))  # a person asked: allowed, fewer attempts
    assert rt.plans["test_connectivity"].plan.max_attempts == 3
    rt.finish("succeeded")


def test_dry_run_plan_uses_the_strategy(sqlite_url: str) -> None:
    config = make_config(
        sqlite_url, None, "{kind: linear, base_seconds: 2, increment_seconds: 1, max_attempts: 3}"
    )
    from recovery.engine.workflows import describe_plan, workflow_named

    lines = describe_plan(
        config, config.targets[0], workflow_named("api-failure-recovery", config.targets[0])
    )
    assert any("test_connectivity" in line and "retry delays: 2s, 3s" in line for line in lines)
