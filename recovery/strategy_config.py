"""Strategy configuration: a pydantic discriminated union on ``kind``.

``strategy: {kind: exponential, ...}`` per target and at the top level of the config file;
``recovery.strategies`` turns each model into a pure strategy object. docs/strategies.md has a
worked example of each.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Jitter(StrEnum):
    none = "none"
    full = "full"
    equal = "equal"
    decorrelated = "decorrelated"


class _StrategyModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExponentialStrategyConfig(_StrategyModel):
    """Exponential backoff: delay_n = min(cap, base * factor**n), then jitter."""

    kind: Literal["exponential"] = "exponential"
    base_seconds: float = Field(1.0, gt=0, description="Delay before the first retry.")
    factor: float = Field(2.0, ge=1, description="Multiplier applied per retry.")
    max_delay_seconds: float = Field(60.0, gt=0, description="Cap on any single delay.")
    max_attempts: int = Field(5, ge=1, le=100, description="Attempts per step, first included.")
    jitter: Jitter = Field(Jitter.full, description="How delays are randomised.")
    seed: int | None = Field(None, description="Seed for jitter (tests, reproducible runs).")


class LinearStrategyConfig(_StrategyModel):
    """Linear backoff: delay_n = min(cap, base + increment * n)."""

    kind: Literal["linear"]
    base_seconds: float = Field(1.0, ge=0, description="Delay before the first retry.")
    increment_seconds: float = Field(1.0, ge=0, description="Added to the delay per retry.")
    max_delay_seconds: float = Field(60.0, gt=0, description="Cap on any single delay.")
    max_attempts: int = Field(5, ge=1, le=100, description="Attempts per step, first included.")


class AdaptiveStrategyConfig(_StrategyModel):
    """Exponential backoff that reacts to the target's recent history.

    Each failed recovery of the target within ``window_seconds`` multiplies the base delay by
    ``1 + penalty_per_failure`` more and removes ``attempts_drop_per_failure`` attempts (never
    below ``min_attempts``); a known ``Retry-After`` is a floor under every delay; when the last
    ``repeat_threshold`` failed recoveries in the window failed with the same error, an unattended
    recovery is refused and escalated instead of being retried once more.
    """

    kind: Literal["adaptive"]
    base_seconds: float = Field(1.0, gt=0, description="First delay with a clean history.")
    factor: float = Field(2.0, ge=1, description="Multiplier applied per retry.")
    max_delay_seconds: float = Field(60.0, gt=0, description="Cap on any single delay.")
    max_attempts: int = Field(6, ge=1, le=100, description="Attempts with a clean history.")
    min_attempts: int = Field(1, ge=1, le=100, description="Attempts never drop below this.")
    window_seconds: float = Field(3600.0, gt=0, description="How far back the history is read.")
    penalty_per_failure: float = Field(1.0, ge=0, description="Base delay grows by this per failure.")
    attempts_drop_per_failure: int = Field(1, ge=0, le=100, description="Attempts lost per failure.")
    repeat_threshold: int = Field(
        3, ge=2, le=100, description="Same error this many times in a row -> refuse and escalate."
    )
    jitter: Jitter = Field(Jitter.none, description="How delays are randomised.")
    seed: int | None = Field(None, description="Seed for jitter (tests, reproducible runs).")

    @model_validator(mode="after")
    def _attempts_order(self) -> AdaptiveStrategyConfig:
        if self.min_attempts > self.max_attempts:
            raise ValueError("min_attempts must not exceed max_attempts")
        return self


class BreakerAlignedStrategyConfig(_StrategyModel):
    """No recovery while the target's breaker is open; one worker probes when it half-opens.

    Retries are spaced by the breaker's reset timeout (capped), so every attempt lands when the
    breaker would allow a probe anyway.
    """

    kind: Literal["breaker_aligned"]
    max_attempts: int = Field(3, ge=1, le=100, description="Attempts per step, first included.")
    max_delay_seconds: float = Field(300.0, gt=0, description="Cap on any single delay.")
    reset_timeout_seconds: float | None = Field(
        None, gt=0, description="Delay between attempts; default: the target's breaker reset timeout."
    )


class TimeWindowStrategyConfig(_StrategyModel):
    """At most ``max_recoveries`` recoveries of a target per sliding window (Monit's N in M)."""

    kind: Literal["time_window"]
    max_recoveries: int = Field(3, ge=1, le=10_000, description="Recoveries allowed per window.")
    window_seconds: float = Field(3600.0, gt=0, description="Length of the sliding window.")


LeafStrategyConfig = Annotated[
    ExponentialStrategyConfig
    | LinearStrategyConfig
    | AdaptiveStrategyConfig
    | BreakerAlignedStrategyConfig
    | TimeWindowStrategyConfig,
    Field(discriminator="kind"),
]


class CompositeStrategyConfig(_StrategyModel):
    """All of ``strategies`` must allow; the plan takes the fewest attempts and largest delays."""

    kind: Literal["composite"]
    strategies: list[LeafStrategyConfig] = Field(..., min_length=1, description="Strategies combined.")


StrategyConfig = Annotated[
    ExponentialStrategyConfig
    | LinearStrategyConfig
    | AdaptiveStrategyConfig
    | BreakerAlignedStrategyConfig
    | TimeWindowStrategyConfig
    | CompositeStrategyConfig,
    Field(discriminator="kind"),
]
STRATEGY_KINDS = ("exponential", "linear", "adaptive", "breaker_aligned", "time_window", "composite")
