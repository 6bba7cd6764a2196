"""All six strategies, property-based: no plan exceeds its cap or its attempts, whatever the
config (composites included) and the input; ``decide`` never raises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from strategies_helpers import NOW

from recovery.policy.strategies import (
    SINGLE_ATTEMPT,
    AdaptiveStrategyConfig,
    BreakerAlignedStrategyConfig,
    CompositeStrategyConfig,
    ExponentialStrategyConfig,
    LinearStrategyConfig,
    PastRun,
    StrategyConfig,
    StrategyInput,
    TimeWindowStrategyConfig,
    build_strategy,
    retry_plan,
)

# --- properties ---------------------------------------------------------------------------------

# Caps up to the config bound (1 day).
caps = st.floats(min_value=1e-3, max_value=86400.0, allow_nan=False, allow_infinity=False)
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
        reset_timeout_seconds=st.none() | st.floats(min_value=1e-3, max_value=86400.0),
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
