"""The allowed request rate of each target (AIMD), shared by the monitor, flows and applications.

One interface, two backends: ``RedisRateStore`` (``rate_redis.py``) and ``MemoryRateStore``
(``rate_memory.py``). The decisions (how much to lower, when to raise) are
``recovery.kinds.ratelimit``'s; the stores apply them atomically (Lua on Redis).

Layout (Redis hash ``keys.rate_key(target)``, expires ``ttl_seconds`` after the last write; an
in-process dict without ``state_url``):

    allowed      requests/second the fleet may send now (absent: the configured normal rate)
    normal       the rate AIMD climbs back to; increase, interval: its step and spacing
    updated_at   last change of ``allowed`` (epoch seconds); lowered_at, reason: the last decrease
    reset_at     when the dependency said its limit resets (epoch seconds)
    observed     the limit it announced (requests/second), when known
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from recovery.backends.state import DEFAULT_TIMEOUT_SECONDS, SharedState
from recovery.config.targets import RateLimitConfig

# Fields an AIMD decrease writes and a return to the normal rate removes (reset_at and
# observed stay: they describe the dependency, not our throttle).
AIMD_FIELDS = ("allowed", "normal", "increase", "interval", "updated_at", "lowered_at", "reason")


@dataclass(frozen=True)
class RateState:
    allowed: float | None
    normal: float | None
    updated_at: float | None
    reset_at: float | None
    observed: float | None
    reason: str | None

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Lowering:
    """The arguments of one ``RateStore.lower`` besides the target and its config."""

    now: float
    interval: float
    reason: str
    observed: float | None


def as_float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def parse_rate(raw: Mapping[str, Any]) -> RateState | None:
    """A rate hash (Redis) or dict (memory); empty: the target runs at its normal rate."""
    if not raw:
        return None
    return RateState(
        allowed=as_float(raw.get("allowed")),
        normal=as_float(raw.get("normal")),
        updated_at=as_float(raw.get("updated_at")),
        reset_at=as_float(raw.get("reset_at")),
        observed=as_float(raw.get("observed")),
        reason=str(raw["reason"]) if raw.get("reason") else None,
    )


class RateStore(ABC):
    """The allowed rate of each target."""

    description: str

    @abstractmethod
    def read(self, target: str) -> RateState | None: ...

    def note_limited(
        self, target: str, now: float, reset_in: float | None, observed: float | None, ttl_seconds: float
    ) -> None:
        """Record what a rate-limited probe announced (the monitor calls this)."""
        fields: dict[str, str] = {}
        if reset_in is not None:
            fields["reset_at"] = repr(now + reset_in)
        if observed is not None:
            fields["observed"] = repr(observed)
        if fields:
            self._merge(target, fields, ttl_seconds)

    @abstractmethod
    def _merge(self, target: str, fields: dict[str, str], ttl_seconds: float) -> None:
        """Set ``fields`` of ``target``'s rate (others untouched) and restart its TTL."""

    def lower(
        self,
        target: str,
        config: RateLimitConfig,
        now: float,
        interval: float,
        reason: str,
        observed: float | None = None,
    ) -> tuple[float, float]:
        """Multiplicative decrease; returns (rate before, rate after)."""
        return self._lower(target, config, Lowering(now, interval, reason, observed))

    @abstractmethod
    def _lower(self, target: str, config: RateLimitConfig, step: Lowering) -> tuple[float, float]:
        """``lower`` on this backend (atomically)."""

    @abstractmethod
    def raise_rates(self, targets: Iterable[str], now: float) -> dict[str, float]:
        """Additive increase for every lowered target among ``targets`` (one round trip)."""

    @abstractmethod
    def clear(self, target: str) -> None: ...


def rate_store_for(state: SharedState | str | None, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> RateStore:
    """The rate store sharing ``state``'s Redis (or a Redis URL); in-process without one.

    Cheap: a Redis store built on a ``RedisState`` shares its client, registered scripts and
    timeout; one built from a URL gets its own client timing out after ``timeout`` s.
    """
    # Imported here: both backends subclass RateStore, defined above.
    from recovery.backends.rate_memory import process_rates
    from recovery.backends.rate_redis import RedisRateStore
    from recovery.backends.state_redis import RedisState

    if isinstance(state, RedisState):
        return RedisRateStore.on_state(state)
    if isinstance(state, str) and state:
        return RedisRateStore.from_url(state, timeout)
    return process_rates()
