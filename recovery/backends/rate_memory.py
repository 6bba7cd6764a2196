"""``MemoryRateStore``: the allowed rates of a single process (no ``state_url``).

Mirrors ``lua/rate_lower.lua`` and ``lua/rate_raise.lua`` step for step (under one mutex instead
of a script), so both backends pass the same contract tests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from recovery.backends.rate import AIMD_FIELDS, Lowering, RateState, RateStore, as_float, parse_rate
from recovery.config.targets import RateLimitConfig


class MemoryRateStore(RateStore):
    description = "in-process"

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._rates: dict[str, dict[str, Any]] = {}

    def read(self, target: str) -> RateState | None:
        with self._mutex:
            return parse_rate(dict(self._rates.get(target, {})))

    def _merge(self, target: str, fields: dict[str, str], ttl_seconds: float) -> None:
        with self._mutex:  # no TTL in memory: the process's lifetime bounds it
            self._rates.setdefault(target, {}).update(fields)

    def _lower(self, target: str, config: RateLimitConfig, step: Lowering) -> tuple[float, float]:
        now, interval, reason, observed = step.now, step.interval, step.reason, step.observed
        with self._mutex:
            entry = self._rates.setdefault(target, {})
            current = as_float(entry.get("allowed")) or config.normal_rate_per_second
            base = current if observed is None else min(current, observed)
            new = max(config.min_rate_per_second, base * config.safety_factor)
            entry.update(
                allowed=new,
                normal=config.normal_rate_per_second,
                increase=config.increase_per_cycle,
                interval=interval,
                updated_at=now,
                lowered_at=now,
                reason=reason,
            )
            return current, new

    def raise_rates(self, targets: Iterable[str], now: float) -> dict[str, float]:
        out: dict[str, float] = {}
        with self._mutex:
            for name in targets:
                entry = self._rates.get(name)
                if not entry or entry.get("allowed") is None:
                    continue
                allowed = float(entry["allowed"])
                if now - float(entry["updated_at"]) >= float(entry["interval"]):
                    allowed = min(float(entry["normal"]), allowed + float(entry["increase"]))
                    if allowed >= float(entry["normal"]):
                        for field in AIMD_FIELDS:
                            entry.pop(field, None)
                    else:
                        entry.update(allowed=allowed, updated_at=now)
                out[name] = allowed
        return out

    def clear(self, target: str) -> None:
        with self._mutex:
            self._rates.pop(target, None)


# One store per process: the monitor lowers and raises the rate that this process's flows and
# token buckets read (rate_store_for returns it for an in-memory state or no state at all).
_process_rates = MemoryRateStore()


def process_rates() -> MemoryRateStore:
    return _process_rates
