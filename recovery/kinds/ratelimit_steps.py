"""The steps of ``rate-limit-recovery`` that are specific to it (the others are shared actions).

adjust_request_rate         allowed rate in shared state = observed limit x safety_factor
wait_for_rate_limit_reset   sleep until the announced reset, at most max_wait_seconds;
                            a later reset is not slept through: EscalationRequired (audited)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from recovery.backends.rate import rate_store_for
from recovery.backends.state import SharedState
from recovery.config.loader import HttpTarget, RecoveryConfig, TargetConfig
from recovery.engine.steps import Detail, probe_once
from recovery.errors import EscalationRequired, PermanentError
from recovery.kinds.ratelimit import plan_wait

Sleep = Callable[[float], Awaitable[None]]


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
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.time,
) -> Detail:
    """Sleep until the limit resets: the monitor's record of ``Retry-After``/``X-RateLimit-Reset``,
    else what one fresh probe announces. ``None`` (skipped) when nothing is limited any more."""
    http = _http(target)
    now = clock()
    known = rate_store_for(state).read(http.name)
    source = "monitor"
    reset_in = known.reset_at - now if known is not None and known.reset_at and known.reset_at > now else None
    if reset_in is None:
        probe = await probe_once(http)
        if not probe.rate_limited:
            return None
        source, reset_in = "probe", probe.retry_after_seconds
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
