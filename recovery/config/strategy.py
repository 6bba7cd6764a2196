"""Strategy configuration (a pydantic discriminated union on ``kind``) and the data strategies
exchange with ``recovery.policy.admission``: ``StrategyInput`` in, ``RetryPlan``/``StrategyDecision`` out.

``strategy: {kind: exponential, ...}`` per target and at the top level of the config file;
``recovery.policy.strategies`` turns each model into a pure strategy object. docs/strategies.md has a
worked example of each.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from recovery.config.limits import MAX_DELAY, MAX_FACTOR, MAX_LIST, MAX_SEED, MAX_TIMEOUT, MAX_WINDOW


class Jitter(StrEnum):
    none = "none"
    full = "full"
    equal = "equal"
    decorrelated = "decorrelated"


class _StrategyModel(BaseModel):
    # Finite numbers only: an infinite delay or window validates but stalls every recovery.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def check_not_above(low: float, high: float, message: str) -> None:
    """An order check of a model validator (here and in the other config models)."""
    if low > high:
        raise ValueError(message)


# The fields several strategies share (each strategy picks its own default).
def _max_delay(default: float) -> Any:
    return Field(default, gt=0, le=MAX_DELAY, description="Cap on any single delay.")


def _attempts_per_step(default: int) -> Any:
    return Field(default, ge=1, le=100, description="Attempts per step, first included.")


def _jitter(default: Jitter) -> Any:
    return Field(default, description="How delays are randomised.")


def _seed() -> Any:
    return Field(None, ge=-MAX_SEED, le=MAX_SEED, description="Seed for jitter (tests, reproducible runs).")


class RecoveryBudget(_StrategyModel):
    """At most ``max_recoveries`` automatic (unattended) recoveries of a target per sliding
    window; then they are refused and escalated (``recovery.refused``) instead of starting one
    per monitor cycle forever. Manual and emergency runs neither count nor are refused."""

    max_recoveries: int = Field(3, ge=1, le=10_000, description="Automatic recoveries per window.")
    window_seconds: float = Field(3600.0, gt=0, le=MAX_WINDOW, description="Length of the sliding window.")


class ExponentialStrategyConfig(_StrategyModel):
    """Exponential backoff: delay_n = min(cap, base * factor**n), then jitter; and a budget of
    automatic recoveries (``budget: null`` turns it off)."""

    kind: Literal["exponential"] = "exponential"
    base_seconds: float = Field(1.0, gt=0, le=MAX_DELAY, description="Delay before the first retry.")
    factor: float = Field(2.0, ge=1, le=MAX_FACTOR, description="Multiplier applied per retry.")
    max_delay_seconds: float = _max_delay(60.0)
    max_attempts: int = _attempts_per_step(5)
    jitter: Jitter = _jitter(Jitter.full)
    seed: int | None = _seed()
    budget: RecoveryBudget | None = Field(
        default_factory=lambda: RecoveryBudget(),
        description="Automatic recoveries per window before escalating; null: unbounded.",
    )


class LinearStrategyConfig(_StrategyModel):
    """Linear backoff: delay_n = min(cap, base + increment * n)."""

    kind: Literal["linear"] = "linear"
    base_seconds: float = Field(1.0, ge=0, le=MAX_DELAY, description="Delay before the first retry.")
    increment_seconds: float = Field(1.0, ge=0, le=MAX_DELAY, description="Added to the delay per retry.")
    max_delay_seconds: float = _max_delay(60.0)
    max_attempts: int = _attempts_per_step(5)


class AdaptiveStrategyConfig(_StrategyModel):
    """Exponential backoff that reacts to the target's recent history.

    Each failed recovery of the target within ``window_seconds`` multiplies the base delay by
    ``1 + penalty_per_failure`` more and removes ``attempts_drop_per_failure`` attempts (never
    below ``min_attempts``); a known ``Retry-After`` is a floor under every delay; when the last
    ``repeat_threshold`` failed recoveries in the window failed with the same error, an unattended
    recovery is refused and escalated instead of being retried once more.
    """

    kind: Literal["adaptive"] = "adaptive"
    base_seconds: float = Field(1.0, gt=0, le=MAX_DELAY, description="First delay with a clean history.")
    factor: float = Field(2.0, ge=1, le=MAX_FACTOR, description="Multiplier applied per retry.")
    max_delay_seconds: float = _max_delay(60.0)
    max_attempts: int = Field(6, ge=1, le=100, description="Attempts with a clean history.")
    min_attempts: int = Field(1, ge=1, le=100, description="Attempts never drop below this.")
    window_seconds: float = Field(
        3600.0, gt=0, le=MAX_WINDOW, description="How far back the history is read."
    )
    penalty_per_failure: float = Field(
        1.0, ge=0, le=MAX_FACTOR, description="Base delay grows by this per failure."
    )
    attempts_drop_per_failure: int = Field(1, ge=0, le=100, description="Attempts lost per failure.")
    repeat_threshold: int = Field(
        3, ge=2, le=100, description="Same error this many times in a row -> refuse and escalate."
    )
    jitter: Jitter = _jitter(Jitter.none)
    seed: int | None = _seed()

    @model_validator(mode="after")
    def _attempts_order(self) -> AdaptiveStrategyConfig:
        check_not_above(self.min_attempts, self.max_attempts, "min_attempts must not exceed max_attempts")
        return self


class BreakerAlignedStrategyConfig(_StrategyModel):
    """No recovery while the target's breaker is open; one worker probes when it half-opens.

    Retries are spaced by the breaker's reset timeout (capped), so every attempt lands when the
    breaker would allow a probe anyway.
    """

    kind: Literal["breaker_aligned"] = "breaker_aligned"
    max_attempts: int = _attempts_per_step(3)
    max_delay_seconds: float = _max_delay(300.0)
    reset_timeout_seconds: float | None = Field(
        None,
        gt=0,
        le=MAX_TIMEOUT,
        description="Delay between attempts; default: the target's breaker reset timeout.",
    )


class TimeWindowStrategyConfig(_StrategyModel):
    """At most ``max_recoveries`` recoveries of a target per sliding window (Monit's N in M)."""

    kind: Literal["time_window"] = "time_window"
    max_recoveries: int = Field(3, ge=1, le=10_000, description="Recoveries allowed per window.")
    window_seconds: float = Field(3600.0, gt=0, le=MAX_WINDOW, description="Length of the sliding window.")
    unattended_only: bool = Field(
        False, description="Count and refuse only unattended (automatic, scheduled) recoveries."
    )


def _strategy_kind(value: Any) -> str | None:
    """The discriminator; a mapping without ``kind`` is exponential (the original config shape)."""
    if isinstance(value, dict):
        kind = value.get("kind", "exponential")
        return kind if isinstance(kind, str) else None
    kind = getattr(value, "kind", None)
    return kind if isinstance(kind, str) else None


LeafStrategyConfig = Annotated[
    Annotated[ExponentialStrategyConfig, Tag("exponential")]
    | Annotated[LinearStrategyConfig, Tag("linear")]
    | Annotated[AdaptiveStrategyConfig, Tag("adaptive")]
    | Annotated[BreakerAlignedStrategyConfig, Tag("breaker_aligned")]
    | Annotated[TimeWindowStrategyConfig, Tag("time_window")],
    Discriminator(_strategy_kind),
]


class CompositeStrategyConfig(_StrategyModel):
    """All of ``strategies`` must allow; the plan takes the fewest attempts and largest delays."""

    kind: Literal["composite"] = "composite"
    strategies: list[LeafStrategyConfig] = Field(
        ..., min_length=1, max_length=MAX_LIST, description="Strategies combined."
    )


StrategyConfig = Annotated[
    Annotated[ExponentialStrategyConfig, Tag("exponential")]
    | Annotated[LinearStrategyConfig, Tag("linear")]
    | Annotated[AdaptiveStrategyConfig, Tag("adaptive")]
    | Annotated[BreakerAlignedStrategyConfig, Tag("breaker_aligned")]
    | Annotated[TimeWindowStrategyConfig, Tag("time_window")]
    | Annotated[CompositeStrategyConfig, Tag("composite")],
    Discriminator(_strategy_kind),
]
STRATEGY_KINDS = ("exponential", "linear", "adaptive", "breaker_aligned", "time_window", "composite")


# --- what strategies read and answer ------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPlan:
    """What a Prefect task needs: retries after the first attempt and the delay before each."""

    max_attempts: int
    delays: tuple[float, ...]

    @property
    def retries(self) -> int:
        return self.max_attempts - 1


SINGLE_ATTEMPT = RetryPlan(1, ())


@dataclass(frozen=True)
class PastRun:
    """One earlier recovery of the target, as the audit store recorded it."""

    started_at: float  # epoch seconds
    state: str  # succeeded | failed | cancelled | refused | in_progress
    error_type: str | None = None
    error_message: str | None = None

    @property
    def signature(self) -> tuple[str | None, str | None]:
        return (self.error_type, self.error_message)


@dataclass(frozen=True)
class BreakerView:
    """The target's breaker as shared state holds it right now."""

    state: str  # closed | open | half-open
    opened_at: float | None
    reset_timeout_seconds: float
    probe_holder: str | None = None  # owner of the half-open probe lease, if any


@dataclass(frozen=True)
class StrategyInput:
    """Everything a strategy may look at; gathered by ``recovery.policy.admission``."""

    target: str
    run_type: str
    now: float  # epoch seconds, from the injected clock
    recent_recoveries: tuple[float, ...] = ()  # start times kept by the time-window store
    history: tuple[PastRun, ...] = ()  # most recent first
    breaker: BreakerView | None = None
    retry_after_seconds: float | None = None  # the target's last known rate-limit reset


@dataclass(frozen=True)
class WindowSlot:
    """A time-window strategy's reservation: one more recovery in the window, if still free."""

    max_recoveries: int
    window_seconds: float
    force: bool = False  # emergency runs count in the window but are never refused by it


@dataclass(frozen=True)
class StrategyDecision:
    """Allow or deny a recovery start, and what to reserve when allowed."""

    allowed: bool
    reason: str
    strategy: str
    retry_after_seconds: float | None = None  # when asking again may succeed
    escalate: bool = False  # a person must look (budget exhausted, error keeps repeating)
    window_slots: tuple[WindowSlot, ...] = ()
    probe_lease: bool = False  # take the breaker's half-open probe lease across all workers

    @classmethod
    def allow(cls, strategy: str, reason: str = "allowed") -> StrategyDecision:
        return cls(True, reason, strategy)

    @classmethod
    def deny(
        cls, strategy: str, reason: str, *, retry_after: float | None = None, escalate: bool = False
    ) -> StrategyDecision:
        return cls(False, reason, strategy, retry_after_seconds=retry_after, escalate=escalate)
