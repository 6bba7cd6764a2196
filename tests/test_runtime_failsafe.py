"""A failed recovery never leaves the breaker closed in front of an unverified target."""

from __future__ import annotations

import pytest
from faultserver import FaultServer

from recovery.client.breakers import breaker_for_target, open_breaker
from recovery.config.loader import parse_config
from recovery.engine.runtime import RecoveryRequest, RecoveryRuntime
from recovery.errors import ProbeFailed


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
