"""All six strategies, pure: config union, pinned plans and decisions.

The strategy objects are pure (a ``StrategyInput`` snapshot with a fake clock reading).
"""

from __future__ import annotations

from typing import Any

import pytest
from strategies_helpers import NOW, inp

from recovery.config.loader import parse_config
from recovery.errors import ConfigError
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
    TimeWindowStrategyConfig,
    WindowSlot,
    build_strategy,
    retry_plan,
)

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
