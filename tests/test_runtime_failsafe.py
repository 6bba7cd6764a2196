"""A failed recovery never leaves the breaker closed in front of an unverified target."""

from __future__ import annotations

import pytest
from faultserver import FaultServer

from recovery.client.breakers import breaker_for_target, open_breaker
from recovery.config.loader import parse_config
from recovery.engine.runtime import RecoveryRequest, RecoveryRuntime
from recovery.errors import ProbeFailed, RecoveryRefused
from recovery.services import services_for


async def test_failed_verification_reopens_the_breaker(
    fault_server: FaultServer, redis_url: str, sqlite_url: str
) -> None:
    config = parse_config(
        {
            "audit_url": sqlite_url,
            "state_url": redis_url,
            "strategy": {"kind": "exponential", "max_attempts": 1, "jitter": "none"},
            "targets": [
                {
                    "name": "api",
                    "kind": "http",
                    "url": f"{fault_server.url}/health",
                    "verify": {"consecutive_successes": 1, "interval_seconds": 0},
                }
            ],
        }
    )
    fault_server.app.set_mode("status:503")
    breaker = breaker_for_target(config, "api")
    open_breaker(breaker)  # what the monitor does on detection
    rt = RecoveryRuntime.begin(config, RecoveryRequest(target="api", requested_by="test"))
    await rt.run_step("check_service_health", 1)
    await rt.run_step("clear_error_cache", 1)
    await rt.run_step("reset_circuit_breaker", 1)
    assert breaker_for_target(config, "api").current_state == "closed"
    with pytest.raises(ProbeFailed) as info:
        await rt.run_step("test_connectivity", 1)
    rt.finish("failed", info.value)
    # The service is still down: the application must keep failing fast.
    assert breaker_for_target(config, "api").current_state == "open"
    record = rt.audit.run(rt.run_id)
    assert record is not None and record.state == "failed"
    assert rt.state.lock_owner("api") is None


def test_begin_refuses_a_lock_token_nobody_holds(redis_url: str, sqlite_url: str) -> None:
    """A run handed a token must hold the lock: a stale or forged token never acts unlocked."""
    config = parse_config(
        {
            "audit_url": sqlite_url,
            "state_url": redis_url,
            "targets": [{"name": "api", "kind": "http", "url": "http://127.0.0.1:9/health"}],
        }
    )
    request = RecoveryRequest(target="api", requested_by="monitor", run_type="automatic", lock_token="forged")
    with pytest.raises(RecoveryRefused, match="not held"):
        RecoveryRuntime.begin(config, request, run_id="forged-run")
    rt_audit = services_for(config).audit.run("forged-run")
    assert rt_audit is not None and rt_audit.state == "refused"
    # The real holder's token is adopted.
    state = services_for(config).state
    assert state.acquire_lock("api", "monitor-token", 60)
    rt = RecoveryRuntime.begin(config, RecoveryRequest(**{**request.__dict__, "lock_token": "monitor-token"}))
    rt.finish("cancelled")
    assert state.lock_owner("api") is None
