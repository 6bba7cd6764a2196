"""Retry strategies: small pure objects that turn config into retry plans and admission decisions.

A strategy answers three questions (tenacity style, no sleeping and no I/O inside):

* ``plan(inp)``: how many attempts a step gets and how long to wait before each retry. Prefect
  applies the plan through a task's ``retries`` and ``retry_delay_seconds``; jitter is computed
  here so it is seeded and testable, and every delay is capped (Prefect's own
  ``exponential_backoff`` has no cap).
* ``decide(inp)``: may a recovery of the target start now (allow/deny, reason, when to retry,
  whether to escalate)?
* what it must reserve if allowed (a slot in the time window, the breaker's half-open lease).

Everything a strategy looks at arrives in a ``StrategyInput`` snapshot (clock reading, run type,
recent recoveries, audit history, breaker state), so strategies are pure functions of data and
unit-testable with a fake clock. ``recovery.policy.admission`` gathers the snapshot from shared state
and the audit store and commits the reservations atomically.

Config is a pydantic discriminated union on ``kind``; see docs/strategies.md for a worked
example of each strategy.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, overload

from recovery.config.strategy import SINGLE_ATTEMPT as SINGLE_ATTEMPT
from recovery.config.strategy import STRATEGY_KINDS as STRATEGY_KINDS
from recovery.config.strategy import AdaptiveStrategyConfig as AdaptiveStrategyConfig
from recovery.config.strategy import BreakerAlignedStrategyConfig as BreakerAlignedStrategyConfig
from recovery.config.strategy import BreakerView as BreakerView
from recovery.config.strategy import CompositeStrategyConfig as CompositeStrategyConfig
from recovery.config.strategy import ExponentialStrategyConfig as ExponentialStrategyConfig
from recovery.config.strategy import Jitter as Jitter
from recovery.config.strategy import LeafStrategyConfig as LeafStrategyConfig
from recovery.config.strategy import LinearStrategyConfig as LinearStrategyConfig
from recovery.config.strategy import PastRun as PastRun
from recovery.config.strategy import RetryPlan as RetryPlan
from recovery.config.strategy import StrategyConfig as StrategyConfig
from recovery.config.strategy import StrategyDecision as StrategyDecision
from recovery.config.strategy import StrategyInput as StrategyInput
from recovery.config.strategy import TimeWindowStrategyConfig as TimeWindowStrategyConfig
from recovery.config.strategy import WindowSlot as WindowSlot
from recovery.enums import RunType
from recovery.testing import is_testing

# Run types that may skip the time window and breaker alignment (never the target lock).
BYPASS_RUN_TYPES = frozenset({RunType.EMERGENCY})
# Run types a strategy may refuse for repeating errors (a person asked for the others).
UNATTENDED_RUN_TYPES = frozenset(t for t in RunType if t.unattended)


class Strategy(Protocol):
    @property
    def kind(self) -> str: ...

    def plan(self, inp: StrategyInput | None = None) -> RetryPlan | None:
        """Attempts and delays for each step; ``None`` = no opinion (gates only)."""
        ...

    def decide(self, inp: StrategyInput) -> StrategyDecision:
        """Allow or deny a recovery starting at ``inp.now``."""
        ...


def _cap(delay: float, cap: float) -> float:
    # Round to the millisecond *before* capping: rounding after could push a delay over the cap.
    return float(min(round(max(delay, 0.0), 3), cap))


# --- strategies --------------------------------------------------------------------------------


class _FixedSchedule:
    """A backoff whose delays depend only on its config: always allows, plans ``delays()``."""

    kind: str
    max_attempts: int

    def delays(self) -> tuple[float, ...]:
        raise NotImplementedError

    def plan(self, inp: StrategyInput | None = None) -> RetryPlan:
        return RetryPlan(self.max_attempts, self.delays())

    def decide(self, inp: StrategyInput) -> StrategyDecision:
        return StrategyDecision.allow(self.kind)


@dataclass(frozen=True)
class ExponentialBackoff(_FixedSchedule):
    base_seconds: float
    factor: float
    max_delay_seconds: float
    max_attempts: int
    jitter: Jitter
    seed: int | None = None
    kind: str = "exponential"

    def raw_delay(self, retry: int) -> float:
        """Un-jittered delay before retry ``retry`` (0-based), capped."""
        # Compute in a way that cannot overflow for large retry counts.
        delay = self.base_seconds
        for _ in range(retry):
            delay *= self.factor
            if delay >= self.max_delay_seconds:
                return self.max_delay_seconds
        return min(delay, self.max_delay_seconds)

    def delays(self) -> tuple[float, ...]:
        rng = random.Random(self.seed)
        out: list[float] = []
        previous = self.base_seconds
        for retry in range(self.max_attempts - 1):
            raw = self.raw_delay(retry)
            if self.jitter is Jitter.full:
                delay = rng.uniform(0, raw)
            elif self.jitter is Jitter.equal:
                delay = raw / 2 + rng.uniform(0, raw / 2)
            elif self.jitter is Jitter.decorrelated:
                # AWS "decorrelated jitter": grows from the previous delay, not the attempt number.
                delay = rng.uniform(self.base_seconds, max(self.base_seconds, previous * 3))
            else:
                delay = raw
            delay = _cap(delay, self.max_delay_seconds)
            previous = delay
            out.append(delay)
        return tuple(out)


@dataclass(frozen=True)
class LinearBackoff(_FixedSchedule):
    base_seconds: float
    increment_seconds: float
    max_delay_seconds: float
    max_attempts: int
    kind: str = "linear"

    def delays(self) -> tuple[float, ...]:
        return tuple(
            _cap(self.base_seconds + self.increment_seconds * retry, self.max_delay_seconds)
            for retry in range(self.max_attempts - 1)
        )


@dataclass(frozen=True)
class AdaptiveBackoff:
    config: AdaptiveStrategyConfig
    kind: str = "adaptive"

    def recent_failures(self, inp: StrategyInput | None) -> list[PastRun]:
        """Failed recoveries within the window, most recent first."""
        if inp is None:
            return []
        since = inp.now - self.config.window_seconds
        return [r for r in inp.history if r.state == "failed" and r.started_at >= since]

    def repeating_error(self, inp: StrategyInput | None) -> tuple[str | None, str | None] | None:
        """The error the last ``repeat_threshold`` failures share, if they all share one."""
        failures = self.recent_failures(inp)[: self.config.repeat_threshold]
        if len(failures) < self.config.repeat_threshold:
            return None
        signatures = {r.signature for r in failures}
        return failures[0].signature if len(signatures) == 1 else None

    def plan(self, inp: StrategyInput | None = None) -> RetryPlan:
        c = self.config
        failures = len(self.recent_failures(inp))
        attempts = max(c.min_attempts, c.max_attempts - c.attempts_drop_per_failure * failures)
        base = min(c.base_seconds * (1 + c.penalty_per_failure * failures), c.max_delay_seconds)
        delays = ExponentialBackoff(base, c.factor, c.max_delay_seconds, attempts, c.jitter, c.seed).delays()
        retry_after = inp.retry_after_seconds if inp is not None else None
        if retry_after is not None and retry_after > 0:
            floor = _cap(retry_after, c.max_delay_seconds)
            delays = tuple(max(d, floor) for d in delays)
        return RetryPlan(attempts, delays)

    def decide(self, inp: StrategyInput) -> StrategyDecision:
        repeated = self.repeating_error(inp)
        if repeated is None or inp.run_type not in UNATTENDED_RUN_TYPES:
            return StrategyDecision.allow(self.kind)
        error_type, message = repeated
        what = f"{error_type or 'error'}: {message}" if message else (error_type or "unknown error")
        window = f"{self.config.window_seconds:g}s"
        reason = (
            f"adaptive: the last {self.config.repeat_threshold} recoveries of {inp.target} within "
            f"{window} failed with the same error ({what}); escalating instead of retrying"
        )
        return StrategyDecision.deny(self.kind, reason, escalate=True)


@dataclass(frozen=True)
class BreakerAligned:
    max_attempts: int
    max_delay_seconds: float
    reset_timeout_seconds: float
    kind: str = "breaker_aligned"

    def plan(self, inp: StrategyInput | None = None) -> RetryPlan:
        delay = _cap(self.reset_timeout_seconds, self.max_delay_seconds)
        return RetryPlan(self.max_attempts, (delay,) * (self.max_attempts - 1))

    def decide(self, inp: StrategyInput) -> StrategyDecision:
        breaker = inp.breaker
        if inp.run_type in BYPASS_RUN_TYPES:
            return StrategyDecision.allow(self.kind, f"{inp.run_type} run: breaker alignment bypassed")
        if breaker is None or breaker.state == "closed":
            return StrategyDecision.allow(self.kind, "breaker closed")
        if breaker.state == "open":
            opened = breaker.opened_at if breaker.opened_at is not None else inp.now
            remaining = opened + breaker.reset_timeout_seconds - inp.now
            if remaining > 0:
                why = f"breaker_aligned: the circuit breaker of {inp.target} is open; its reset timeout"
                return StrategyDecision.deny(
                    self.kind, f"{why} elapses in {remaining:.1f}s", retry_after=round(remaining, 3)
                )
        elif breaker.probe_holder is not None:
            why = f"breaker_aligned: the circuit breaker of {inp.target} is half-open and another worker"
            return StrategyDecision.deny(
                self.kind,
                f"{why} holds its probe ({breaker.probe_holder})",
                retry_after=breaker.reset_timeout_seconds,
            )
        return StrategyDecision(
            True,
            "breaker reset timeout elapsed: this recovery is the half-open probe",
            self.kind,
            probe_lease=True,
        )


@dataclass(frozen=True)
class TimeWindow:
    max_recoveries: int
    window_seconds: float
    unattended_only: bool = False  # an exponential strategy's budget: people's runs are not counted
    kind: str = "time_window"

    def plan(self, inp: StrategyInput | None = None) -> None:
        return None  # a gate only: combine it with a retry strategy in a composite

    def in_window(self, inp: StrategyInput) -> list[float]:
        since = inp.now - self.window_seconds
        return sorted(t for t in inp.recent_recoveries if t > since)

    def decide(self, inp: StrategyInput) -> StrategyDecision:
        slot = WindowSlot(self.max_recoveries, self.window_seconds)
        if self.unattended_only and inp.run_type not in UNATTENDED_RUN_TYPES:
            return StrategyDecision.allow(self.kind)
        if inp.run_type in BYPASS_RUN_TYPES:
            forced = WindowSlot(self.max_recoveries, self.window_seconds, force=True)
            return StrategyDecision(
                True, f"{inp.run_type} run: time window bypassed", self.kind, window_slots=(forced,)
            )
        recent = self.in_window(inp)
        if len(recent) < self.max_recoveries:
            return StrategyDecision(True, "allowed", self.kind, window_slots=(slot,))
        frees_in = recent[len(recent) - self.max_recoveries] + self.window_seconds - inp.now
        what = "budget" if self.unattended_only else self.kind
        runs = "automatic recoveries" if self.unattended_only else "recoveries"
        reason = (
            f"{what}: {len(recent)} {runs} of {inp.target} in the last "
            f"{self.window_seconds:g}s (max {self.max_recoveries}); escalating"
        )
        return StrategyDecision.deny(
            self.kind, reason, retry_after=round(max(frees_in, 0.0), 3), escalate=True
        )


@dataclass(frozen=True)
class Composite:
    strategies: tuple[Strategy, ...]
    kind: str = "composite"

    def plan(self, inp: StrategyInput | None = None) -> RetryPlan | None:
        plans = [p for p in (s.plan(inp) for s in self.strategies) if p is not None]
        if not plans:
            return None
        attempts = min(p.max_attempts for p in plans)
        delays = tuple(max(p.delays[i] for p in plans) for i in range(attempts - 1))
        return RetryPlan(attempts, delays)

    def decide(self, inp: StrategyInput) -> StrategyDecision:
        decisions = [s.decide(inp) for s in self.strategies]
        denied = [d for d in decisions if not d.allowed]
        if not denied:
            return StrategyDecision(
                True,
                "; ".join(d.reason for d in decisions if d.reason != "allowed") or "allowed",
                self.kind,
                window_slots=tuple(slot for d in decisions for slot in d.window_slots),
                probe_lease=any(d.probe_lease for d in decisions),
            )
        waits = [d.retry_after_seconds for d in denied if d.retry_after_seconds is not None]
        return StrategyDecision(
            False,
            "; ".join(d.reason for d in denied),
            ",".join(d.strategy for d in denied),
            retry_after_seconds=max(waits) if waits else None,
            escalate=any(d.escalate for d in denied),
        )


AnyStrategy = ExponentialBackoff | LinearBackoff | AdaptiveBackoff | BreakerAligned | TimeWindow | Composite


@overload
def build_strategy(
    config: ExponentialStrategyConfig, *, breaker_reset_seconds: float | None = None
) -> ExponentialBackoff: ...


@overload
def build_strategy(config: StrategyConfig, *, breaker_reset_seconds: float | None = None) -> AnyStrategy: ...


def build_strategy(config: StrategyConfig, *, breaker_reset_seconds: float | None = None) -> AnyStrategy:
    """The strategy object for ``config``; ``breaker_reset_seconds`` is the target's breaker's."""
    if isinstance(config, ExponentialStrategyConfig):
        return ExponentialBackoff(
            config.base_seconds,
            config.factor,
            config.max_delay_seconds,
            config.max_attempts,
            config.jitter,
            config.seed,
        )
    if isinstance(config, LinearStrategyConfig):
        return LinearBackoff(
            config.base_seconds, config.increment_seconds, config.max_delay_seconds, config.max_attempts
        )
    if isinstance(config, AdaptiveStrategyConfig):
        return AdaptiveBackoff(config)
    if isinstance(config, BreakerAlignedStrategyConfig):
        reset = config.reset_timeout_seconds or breaker_reset_seconds or 60.0
        return BreakerAligned(config.max_attempts, config.max_delay_seconds, reset)
    if isinstance(config, TimeWindowStrategyConfig):
        return TimeWindow(config.max_recoveries, config.window_seconds, config.unattended_only)
    if isinstance(config, CompositeStrategyConfig):
        return Composite(
            tuple(build_strategy(c, breaker_reset_seconds=breaker_reset_seconds) for c in config.strategies)
        )
    raise TypeError(f"unsupported strategy {config!r}")  # pragma: no cover - union is exhaustive


def retry_plan(strategy: Strategy, inp: StrategyInput | None = None) -> RetryPlan:
    """The strategy's plan; a gate-only strategy (time_window) gives each step one attempt.

    In testing mode (``recovery.testing``) the attempts stay and every delay becomes 0 s.
    """
    plan = strategy.plan(inp) or SINGLE_ATTEMPT
    if is_testing():
        return RetryPlan(plan.max_attempts, tuple(0.0 for _ in plan.delays))
    return plan


def with_budget(config: StrategyConfig) -> StrategyConfig:
    """``config`` with each exponential strategy's ``budget`` spelled out as an unattended-only
    time window beside it (a composite): what admission decides with. Plans are unchanged (a
    time window has no plan); ``budget: null`` or another kind is returned as is."""
    leaves = leaf_configs(config)
    if not any(isinstance(c, ExponentialStrategyConfig) and c.budget for c in leaves):
        return config
    out: list[Any] = []
    for leaf in leaves:
        if isinstance(leaf, ExponentialStrategyConfig) and leaf.budget is not None:
            budget = leaf.budget
            out.append(leaf.model_copy(update={"budget": None}))
            out.append(
                TimeWindowStrategyConfig(
                    max_recoveries=budget.max_recoveries,
                    window_seconds=budget.window_seconds,
                    unattended_only=True,
                )
            )
        else:
            out.append(leaf)
    return CompositeStrategyConfig(strategies=out)


def strategy_kinds(config: StrategyConfig) -> frozenset[str]:
    """Every kind in ``config`` (composites expanded): tells admission what to read."""
    if isinstance(config, CompositeStrategyConfig):
        return frozenset(c.kind for c in config.strategies) | {"composite"}
    return frozenset({config.kind})


def leaf_configs(config: StrategyConfig) -> Sequence[StrategyConfig]:
    return list(config.strategies) if isinstance(config, CompositeStrategyConfig) else [config]
