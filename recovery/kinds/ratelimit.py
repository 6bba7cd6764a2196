"""Rate limits: reading reset headers, bounded waits, and the AIMD request rate in shared state.

When a dependency answers 429 (or ``X-RateLimit-Remaining: 0``) the ``rate-limit-recovery``
workflow lowers the target's *allowed request rate* in shared state (observed limit x
``safety_factor``: multiplicative decrease), waits for the limit to reset (``Retry-After`` as
seconds or an HTTP date, else ``X-RateLimit-Reset``; never longer than ``max_wait_seconds``: a
longer reset is audited and escalated instead), and every later healthy monitor cycle raises the
rate by ``increase_per_cycle`` until it is back at ``normal_rate_per_second`` (additive
increase). Applications read the rate with ``recovery.client.tokenbucket.TokenBucket``.

The allowed rate is stored by ``recovery.backends.rate`` (``RateStore``, layout there).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from recovery.backends.rate import rate_store_for
from recovery.backends.state import SharedState
from recovery.blocking import blocking
from recovery.config.loader import HttpTarget, RecoveryConfig, TargetConfig
from recovery.config.targets import RateLimitConfig
from recovery.errors import EscalationRequired, PermanentError
from recovery.kinds.base import Detail, ProbeResult, StepContext, StepSpec
from recovery.kinds.common import recovery_workflow

# Header parsing lives in ratelimit_headers (the http prober needs it too and the kind modules
# stay independent of each other); re-exported here for callers that import it from this module.
from recovery.kinds.ratelimit_headers import EPOCH_THRESHOLD as EPOCH_THRESHOLD
from recovery.kinds.ratelimit_headers import observed_limit as observed_limit
from recovery.kinds.ratelimit_headers import parse_ratelimit_reset as parse_ratelimit_reset
from recovery.kinds.ratelimit_headers import parse_retry_after as parse_retry_after
from recovery.kinds.ratelimit_headers import reset_after_seconds as reset_after_seconds

# --- pure decisions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WaitPlan:
    """How long to sleep for a reset, or why not (escalate: the reset is beyond the cap)."""

    reset_in: float | None
    sleep_seconds: float
    escalate: bool

    @property
    def reason(self) -> str:
        if self.reset_in is None:
            return "no reset time announced"
        if self.escalate:
            return f"limit resets in {self.reset_in:g}s, beyond max_wait_seconds"
        return f"limit resets in {self.reset_in:g}s"


def plan_wait(reset_in: float | None, max_wait_seconds: float) -> WaitPlan:
    if reset_in is None or reset_in <= 0:
        return WaitPlan(reset_in, 0.0, False)
    if reset_in > max_wait_seconds:
        return WaitPlan(reset_in, 0.0, True)
    return WaitPlan(reset_in, round(reset_in, 3), False)


def decreased_rate(current: float, observed: float | None, config: RateLimitConfig) -> float:
    """Multiplicative decrease: the lower of current and observed, times the safety factor."""
    base = current if observed is None else min(current, observed)
    return max(config.min_rate_per_second, base * config.safety_factor)


def increased_rate(current: float, normal: float, increase: float) -> float:
    """Additive increase, never above the normal rate."""
    return min(normal, current + increase)


# --- the rate-limit-recovery workflow ------------------------------------------------------------
# adjust_request_rate         allowed rate in shared state = observed limit x safety_factor
# wait_for_rate_limit_reset   sleep until the announced reset, at most max_wait_seconds;
#                             a later reset is not slept through: EscalationRequired (audited)

Sleep = Callable[[float], Awaitable[None]]
ProbeOnce = Callable[[], Awaitable[ProbeResult]]


def _http(target: TargetConfig) -> HttpTarget:
    if not isinstance(target, HttpTarget):
        raise PermanentError(f"rate-limit-recovery needs an http target, not {target.kind}")
    return target


def increase_interval(config: RecoveryConfig, target: HttpTarget) -> float:
    """Least time between two additive increases (one per monitor cycle across all monitors)."""
    configured = target.rate_limit.increase_interval_seconds
    return configured if configured is not None else 0.9 * config.monitor.interval_seconds


def adjust_request_rate(
    config: RecoveryConfig, state: SharedState, target: TargetConfig, now: float | None = None
) -> Detail:
    """Multiplicative decrease of the target's allowed rate; healthy cycles raise it again."""
    http = _http(target)
    store = rate_store_for(state)
    known = store.read(http.name)
    observed = known.observed if known is not None else None
    before, after = store.lower(
        http.name,
        http.rate_limit,
        time.time() if now is None else now,
        increase_interval(config, http),
        reason="rate-limit-recovery",
        observed=observed,
    )
    return {
        "before_per_second": round(before, 3),
        "allowed_per_second": round(after, 3),
        "normal_per_second": http.rate_limit.normal_rate_per_second,
        "observed_per_second": observed,
    }


async def wait_for_rate_limit_reset(
    state: SharedState,
    target: TargetConfig,
    probe: ProbeOnce | None = None,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.time,
) -> Detail:
    """Sleep until the limit resets: the monitor's record of ``Retry-After``/``X-RateLimit-Reset``,
    else what one fresh ``probe`` announces. ``None`` (skipped) when nothing is limited any more."""
    http = _http(target)
    now = clock()
    known = await blocking(rate_store_for(state).read, http.name)
    source = "monitor"
    reset_in = known.reset_at - now if known is not None and known.reset_at and known.reset_at > now else None
    if reset_in is None:
        if probe is None:  # a caller bug, not a target failure: do not retry
            raise PermanentError(f"{http.name}: no rate-limit record and no probe to ask the server")
        result = await probe()
        if not result.rate_limited:
            return None
        source, reset_in = "probe", result.retry_after_seconds
    cap = http.rate_limit.max_wait_seconds
    plan = plan_wait(reset_in, cap)
    if plan.escalate:
        raise EscalationRequired(
            f"rate limit of {http.name} resets in {reset_in:.0f}s, beyond max_wait_seconds ({cap:g}s): "
            "not waiting; escalated"
        )
    await sleep(plan.sleep_seconds)
    return {
        "reset_in_seconds": round(reset_in, 3) if reset_in is not None else None,
        "waited_seconds": plan.sleep_seconds,
        "max_wait_seconds": cap,
        "source": source,
    }


async def _adjust_step(ctx: StepContext) -> Detail:
    return await blocking(adjust_request_rate, ctx.config, ctx.state, ctx.target)


async def _wait_step(ctx: StepContext) -> Detail:
    return await wait_for_rate_limit_reset(ctx.state, ctx.target, ctx.probe)


def _is_rate_limited(probe: ProbeResult) -> bool:
    return probe.rate_limited  # 429 / X-RateLimit-Remaining: 0: back off, do not "repair" the API


RATE_LIMIT = recovery_workflow(
    "rate-limit-recovery",
    "http",
    "Back off a rate-limited HTTP dependency: lower the request rate, wait, resume.",
    StepSpec(
        "adjust_request_rate", "Allowed rate in shared state = observed limit x safety factor.", _adjust_step
    ),
    StepSpec(
        "wait_for_rate_limit_reset",
        "Sleep until Retry-After / X-RateLimit-Reset, at most max_wait_seconds (longer: escalate).",
        _wait_step,
        retryable=False,
    ),
    when=_is_rate_limited,
)
