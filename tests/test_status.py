"""The status board (recovery.reporting.status) from real shared state (in-process and Redis) and audit."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from recovery.audit.store import AuditStore
from recovery.backends.rate import rate_store_for
from recovery.backends.state import SharedState
from recovery.backends.state_memory import MemoryState
from recovery.backends.state_redis import RedisState
from recovery.config.loader import RecoveryConfig, parse_config
from recovery.redact import register_secret
from recovery.reporting.status import collect_status, format_status, status_table

SECRET = "pa55-w0rd-for-status"


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def setup(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[tuple[RecoveryConfig, SharedState]]:
    state_url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    p = uuid.uuid4().hex[:6]
    data: dict[str, object] = {
        "audit_url": sqlite_url,
        "targets": [
            {"kind": "http", "name": f"up-{p}", "url": "http://127.0.0.1:9/a"},
            {"kind": "http", "name": f"down-{p}", "url": "http://127.0.0.1:9/b"},
            {"kind": "database", "name": f"db-{p}", "url": "sqlite:///:memory:"},
        ],
    }
    if state_url:
        data["state_url"] = state_url
    state: SharedState = RedisState(state_url) if state_url else MemoryState()
    try:
        yield parse_config(data), state
    finally:
        state.close()


def test_board_shows_every_target(setup: tuple[RecoveryConfig, SharedState], sqlite_url: str) -> None:
    register_secret(SECRET)
    config, state = setup
    up, down, db = (t.name for t in config.targets)
    state.record_probe(up, True, "ok", 100.0)
    for i in range(4):
        state.record_probe(down, False, f"status 503 (password={SECRET})", 101.0 + i)
        state.push_probe_history(down, i % 2 == 0)
    state.set_paused(down, f"monitor: status 503 {SECRET}")
    state.acquire_lock(down, "run-1", 60)
    state.set_flapping(down, 103.0)
    rate_store_for(state).lower(down, config.targets[1].rate_limit, 1000.0, 30.0, "429", observed=4.0)
    audit = AuditStore(sqlite_url)
    started = datetime.now(UTC) - timedelta(minutes=5)
    run = audit.start_run(
        target=down, workflow="api-failure-recovery", run_type="automatic", steps=(), now=started
    )
    audit.finish_run(
        run, "failed", "still down", error_type="ProbeFailed", now=started + timedelta(seconds=9)
    )

    rows = {r.target: r for r in collect_status(config, state, audit)}
    assert list(rows) == [up, down, db]
    assert (rows[up].health, rows[up].consecutive_failures, rows[up].paused) == ("healthy", 0, None)
    d = rows[down]
    assert (d.health, d.consecutive_failures, d.flapping, d.recovery_in_progress) == (
        "unhealthy",
        4,
        True,
        True,
    )
    assert d.flap_percent > 0 and d.paused and d.rate_lowered and d.allowed_rate_per_second is not None
    assert d.last_recovery is not None
    assert (d.last_recovery.state, d.last_recovery.error_type) == ("failed", "ProbeFailed")
    assert rows[db].health == "unknown" and rows[db].allowed_rate_per_second is None
    assert all(r.breaker_state == "closed" for r in rows.values())

    table = status_table(list(rows.values()))
    text = "\n".join(format_status(list(rows.values())))
    assert SECRET not in repr(table) + text + repr([r.as_json() for r in rows.values()])
    assert table[1]["outcome"] == "failed (ProbeFailed)" and table[1]["recovery in progress"] == "yes"
    assert table[2]["last recovery"] == "—", "no '-': Prefect renders cells as markdown"
