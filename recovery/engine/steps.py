"""Recovery actions: the side-effecting work of each step, Prefect-free.

Each action returns a small JSON-able ``detail`` dict for the audit row, returns ``None`` when
there was nothing to do (the step is recorded as skipped), and raises ``TemporaryError`` for
failures worth retrying.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis

from recovery.backends.state import SharedState, redis_client, scan_delete
from recovery.client.breakers import breaker_for, breaker_state, close_breaker
from recovery.config.loader import HttpTarget, RecoveryConfig, TargetConfig
from recovery.errors import ProbeFailed, StateUnavailable
from recovery.kinds.probing import ProbeResult, probe_targets
from recovery.redact import redact, redact_url

Detail = dict[str, Any] | None


async def probe_once(target: TargetConfig) -> ProbeResult:
    return (await probe_targets([target], concurrency=1))[0]


async def check_service_health(target: TargetConfig) -> Detail:
    """Diagnosis only: records what the target looks like now; never fails the run."""
    result = await probe_once(target)
    return {"healthy": result.healthy, "reason": result.reason, "latency_ms": round(result.latency_ms, 1)}


def clear_error_cache(config: RecoveryConfig, target: HttpTarget) -> Detail:
    """Delete the target's cached error responses so clients stop serving stale failures."""
    if not target.error_cache_pattern:
        return None
    url_secret = target.error_cache_url or config.state_url
    if url_secret is None:
        return None
    url = url_secret.get_secret_value()
    client = redis_client(url)
    try:
        deleted = scan_delete(client, target.error_cache_pattern)
    except redis.RedisError as exc:
        raise StateUnavailable(f"error cache {redact_url(url)}: {redact(str(exc))}") from None
    finally:
        client.close()
    return {"pattern": target.error_cache_pattern, "deleted": deleted}


def reset_circuit_breaker(config: RecoveryConfig, target: TargetConfig) -> Detail:
    state_url = config.state_url.get_secret_value() if config.state_url else None
    breaker = breaker_for(target.name, target.breaker, state_url)
    before = breaker_state(breaker)
    close_breaker(breaker)
    return {"before": before, "after": breaker_state(breaker)}


async def test_connectivity(target: TargetConfig) -> Detail:
    """``verify.consecutive_successes`` good probes in a row, else ``ProbeFailed`` (retried)."""
    needed = target.verify.consecutive_successes
    latencies: list[float] = []
    for i in range(needed):
        result = await probe_once(target)
        if not result.healthy:
            raise ProbeFailed(f"verification probe {i + 1}/{needed} failed: {result.reason}")
        latencies.append(round(result.latency_ms, 1))
        if i + 1 < needed:
            await asyncio.sleep(target.verify.interval_seconds)
    return {"probes": needed, "latency_ms": latencies}


def restore_operations(state: SharedState, target: TargetConfig) -> Detail:
    """Clear the paused flag so the application sends traffic to the target again."""
    was_paused = state.clear_paused(target.name)
    return {"was_paused": was_paused}
