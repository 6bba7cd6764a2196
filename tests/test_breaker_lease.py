"""Invariant I2: a breaker a recovery closed before verifying the target re-opens by itself.

Real Redis and real time: the close is a lease that nobody has to be alive to end. The Lua
scripts and the core agree on every transition (tests/test_breaker_core.py replays them).
"""

from __future__ import annotations

import time

import pytest
from faultserver import FaultServer

from recovery.backends.breaker_core import CLOSED, OPEN
from recovery.client.breakers import CircuitBreakerError, FleetBreaker, breaker_for
from recovery.config.loader import BreakerConfig, parse_config
from recovery.engine.runtime import RecoveryRequest, RecoveryRuntime
from recovery.services import services_for


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def breaker(request: pytest.FixtureRequest) -> FleetBreaker:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    name = f"lease-{request.param}-{time.monotonic_ns()}"  # in-process breakers are process-wide
    return breaker_for(name, BreakerConfig(reset_timeout_seconds=60), url)


def test_an_unverified_close_lapses_to_open_with_nobody_alive(breaker: FleetBreaker) -> None:
    breaker.trip()
    assert breaker.close_unverified("run-1", 0.4) == OPEN
    snap = breaker.snapshot()
    assert (snap.state, snap.close_lease_owner) == (CLOSED, "run-1")
    assert breaker.call(lambda: "served") == "served"  # pending: the breaker counts as closed
    time.sleep(0.5)
    snap = breaker.snapshot()  # a read, no writer ran: already open
    assert (snap.state, snap.close_lease_owner) == (OPEN, None)
    assert snap.opened_at is not None and time.time() - snap.opened_at < 0.3  # opened at the lease's end
    with pytest.raises(CircuitBreakerError, match="is open"):
        breaker.call(lambda: "served")
    assert not breaker.confirm_close("run-1"), "too late to confirm: the run is dead"


def test_extended_and_confirmed_close_stands(breaker: FleetBreaker) -> None:
    breaker.close_unverified("run-1", 0.4)
    time.sleep(0.25)
    assert breaker.extend_close("run-1", 0.4)
    assert not breaker.extend_close("someone-else", 10)
    time.sleep(0.25)
    assert breaker.current_state == CLOSED  # extended past its first end
    assert breaker.confirm_close("run-1")
    time.sleep(0.5)
    assert breaker.current_state == CLOSED and breaker.snapshot().close_lease_owner is None


def test_operator_close_and_failures_end_the_lease(breaker: FleetBreaker) -> None:
    breaker.close_unverified("run-1", 0.3)
    breaker.close()  # an operator's reset: truly closed
    time.sleep(0.4)
    assert breaker.current_state == CLOSED
    breaker.close_unverified("run-2", 60)
    for _ in range(breaker.fail_max):  # the application's calls fail during verification
        with pytest.raises((ZeroDivisionError, CircuitBreakerError)):  # the last one trips it
            breaker.call(lambda: 1 / 0)
    assert breaker.current_state == OPEN and breaker.snapshot().close_lease_owner is None
    assert not breaker.revoke_close("run-2")


async def test_a_successful_recovery_confirms_its_close(
    fault_server: FaultServer, redis_url: str, sqlite_url: str
) -> None:
    config = parse_config(
        {
            "audit_url": sqlite_url,
            "state_url": redis_url,
            "monitor": {"lock_ttl_seconds": 0.5},
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
    breaker = services_for(config).breaker("api")
    breaker.trip()
    rt = RecoveryRuntime.begin(config, RecoveryRequest(target="api", requested_by="test"))
    for step in rt.plans:
        await rt.run_step(step, 1)
        if step == "reset_circuit_breaker":
            assert breaker.snapshot().close_lease_owner == rt.run_id
    rt.finish("succeeded")
    time.sleep(0.7)  # past the lease: verified, so it stays closed
    assert breaker.current_state == CLOSED and breaker.snapshot().close_lease_owner is None
