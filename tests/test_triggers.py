"""Trigger admission (core, no Prefect): validation and the per-target sliding window."""

from __future__ import annotations

import threading

import pytest

from recovery.audit.store import AuditStore
from recovery.backends.state import SharedState
from recovery.backends.state_memory import MemoryState
from recovery.backends.state_redis import RedisState
from recovery.config.loader import parse_config
from recovery.engine.runtime import RecoveryRequest
from recovery.engine.triggers import admit, validate_request
from recovery.errors import ConfigError, RecoveryRefused

CONFIG = parse_config(
    {
        "manual_triggers": {"max_triggers": 3, "window_seconds": 60},
        "targets": [{"name": "api", "kind": "http", "url": "http://127.0.0.1:9/health"}],
    }
)


@pytest.mark.parametrize(
    ("request_kwargs", "field"),
    [
        ({"requested_by": ""}, "requested_by"),
        ({"requested_by": "  "}, "requested_by"),
        ({"requested_by": "me", "run_type": "emergency"}, "reason"),
        ({"requested_by": "me", "run_type": "automatic"}, "type"),
        ({"requested_by": "me", "workflow": "nope"}, "workflow"),
        ({"requested_by": "me", "target": "unknown"}, "target"),
    ],
)
def test_validate_request_names_the_bad_field(request_kwargs: dict[str, str], field: str) -> None:
    kwargs = {"target": "api", **request_kwargs}
    with pytest.raises(ConfigError) as info:
        validate_request(CONFIG, RecoveryRequest(**kwargs))  # type: ignore[arg-type]
    assert info.value.field == field


def test_validate_request_ok() -> None:
    request = RecoveryRequest(target="api", requested_by="me", run_type="emergency", reason="outage")
    assert validate_request(CONFIG, request) == "api-failure-recovery"


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> SharedState:
    if request.param == "memory":
        return MemoryState()
    return RedisState(request.getfixturevalue("redis_url"))


def test_window_admits_limit_then_refuses_and_audits(state: SharedState, sqlite_url: str) -> None:
    audit = AuditStore(sqlite_url)
    request = RecoveryRequest(target="api", requested_by="ops", reason="why not")
    for i in range(3):
        admit(CONFIG, state, audit, request, "api-failure-recovery", now=1000.0 + i)
    with pytest.raises(RecoveryRefused, match="rate limit") as info:
        admit(CONFIG, state, audit, request, "api-failure-recovery", run_id="r-4", now=1010.0)
    assert "retry in 50s" in info.value.reason
    row = audit.run("r-4")
    assert row is not None and row.state == "refused" and row.requested_by == "ops"
    assert row.reason == "why not" and "rate limit" in (row.error_message or "")
    # The window slides: 61 s after the first hit one slot is free again.
    admit(CONFIG, state, audit, request, "api-failure-recovery", now=1061.0)


def test_window_is_atomic_across_threads(redis_url: str, sqlite_url: str) -> None:
    state = RedisState(redis_url)
    results: list[bool] = []
    lock = threading.Lock()

    def hit() -> None:
        allowed = RedisState(redis_url).window_hit("manual:api", 5, 60, 1000.0).allowed
        with lock:
            results.append(allowed)

    threads = [threading.Thread(target=hit) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 5
    assert state.window_hit("manual:api", 5, 60, 1000.0).count == 5
