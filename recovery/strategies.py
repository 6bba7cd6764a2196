"""Retry strategies: small pure objects that turn config into Prefect retry settings.

A strategy answers two questions (tenacity style, no sleeping inside): how many attempts a step
gets and how long to wait before each retry. Prefect applies them through a task's ``retries``
and ``retry_delay_seconds``; jitter is computed here so it is seeded and testable, and every
delay is capped (Prefect's own ``exponential_backoff`` has no cap).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Jitter(StrEnum):
    none = "none"
    full = "full"
    equal = "equal"
    decorrelated = "decorrelated"


class ExponentialStrategyConfig(BaseModel):
    """Exponential backoff: delay_n = min(cap, base * factor**n), then jitter."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["exponential"] = "exponential"
    base_seconds: float = Field(1.0, gt=0, description="Delay before the first retry.")
    factor: float = Field(2.0, ge=1, description="Multiplier applied per retry.")
    max_delay_seconds: float = Field(60.0, gt=0, description="Cap on any single delay.")
    max_attempts: int = Field(5, ge=1, le=100, description="Attempts per step, first included.")
    jitter: Jitter = Field(Jitter.full, description="How delays are randomised.")
    seed: int | None = Field(None, description="Seed for jitter (tests, reproducible runs).")


StrategyConfig = ExponentialStrategyConfig


@dataclass(frozen=True)
class RetryPlan:
    """What a Prefect task needs: retries after the first attempt and the delay before each."""

    max_attempts: int
    delays: tuple[float, ...]

    @property
    def retries(self) -> int:
        return self.max_attempts - 1


@dataclass(frozen=True)
class ExponentialBackoff:
    base_seconds: float
    factor: float
    max_delay_seconds: float
    max_attempts: int
    jitter: Jitter
    seed: int | None = None

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
            delay = round(min(delay, self.max_delay_seconds), 3)
            previous = delay
            out.append(delay)
        return tuple(out)

    def plan(self) -> RetryPlan:
        return RetryPlan(self.max_attempts, self.delays())


def build_strategy(config: StrategyConfig) -> ExponentialBackoff:
    if isinstance(config, ExponentialStrategyConfig):
        return ExponentialBackoff(
            base_seconds=config.base_seconds,
            factor=config.factor,
            max_delay_seconds=config.max_delay_seconds,
            max_attempts=config.max_attempts,
            jitter=config.jitter,
            seed=config.seed,
        )
    raise TypeError(f"unsupported strategy {config!r}")  # pragma: no cover - union is exhaustive
