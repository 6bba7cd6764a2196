"""Escalation ladders (issue 12, item 2): decide() picks the rung, the run records how it ended.

Memory and Redis backends, a real SQLite audit store; runs are real ``RecoveryRuntime``s (begin
and finish; their steps are not executed here: the flow test runs them end to end).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from recovery.backends.keys import ladder_key
from recovery.backends.state import SharedState
from recovery.config.loader import RecoveryConfig, parse_config
from recovery.engine.escalation import Ladder
from recovery.engine.monitor import Decision, decide
from recovery.engine.runtime import RecoveryRequest, RecoveryRuntime
from recovery.enums import MonitorAction
from recovery.errors import RecoveryRefused
from recovery.kinds.base import ProbeResult
from recovery.services import services_for

LADDER = ["api-failure-recovery", "rate-limit-recovery", "api-failure-recovery"]


@dataclass
class Env:
    config: RecoveryConfig
    name: str

    @property
    def state(self) -> SharedState:
        return services_for(self.config).state


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def env(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[Env]:
    name = f"api-{uuid.uuid4().hex[:8]}"  # the in-process state is process-wide: a fresh target
    data: dict[str, object] = {
        "audit_url": sqlite_url,
        "monitor": {"failure_threshold": 2, "success_threshold": 2, "lock_ttl_seconds": 60},
        "targets": [
            {"kind": "http", "name": name, "url": "http://127.0.0.1:9/health", "escalation": LADDER},
            {"kind": "http", "name": f"{name}-plain", "url": "http://127.0.0.1:9/b"},
        ],
    }
    if request.param == "redis":
        data["state_url"] = request.getfixturevalue("redis_url")
    yield Env(parse_config(data), name)


def failed(target: str) -> ProbeResult:
    return ProbeResult(target, "http", False, "status 503", 12.0, status=503)


def ok(target: str) -> ProbeResult:
    return ProbeResult(target, "http", True, "ok", 3.0, status=200)


def detect(env: Env) -> Decision:
    """Failing probes until the monitor acts (or refuses to)."""
    for _ in range(5):
        (d,) = decide(env.config, env.state, [failed(env.name)])
        if d.action is not MonitorAction.BELOW_THRESHOLD:
            return d
    raise AssertionError("never reached the threshold")


def run_rung(env: Env, d: Decision, outcome: str) -> str:
    """The subflow the monitor starts for ``d``: begin under its token, finish ``outcome``."""
    request = RecoveryRequest(env.name, d.workflow, "automatic", "monitor", lock_token=d.lock_token)
    rt = RecoveryRuntime.begin(env.config, request)
    assert rt.rung == d.rung
    rt.finish(outcome, None if outcome == "succeeded" else RuntimeError("still down"))
    return rt.run_id


def test_each_new_detection_runs_the_next_rung_after_a_failure(env: Env) -> None:
    d1 = detect(env)
    assert (d1.action, d1.workflow, d1.rung, d1.rungs) == (MonitorAction.RECOVER, LADDER[0], 1, 3)
    run1 = run_rung(env, d1, "failed")
    d2 = detect(env)
    assert (d2.action, d2.workflow, d2.rung) == (MonitorAction.RECOVER, LADDER[1], 2)
    run2 = run_rung(env, d2, "failed")
    d3 = detect(env)
    assert (d3.workflow, d3.rung) == (LADDER[2], 3)
    run3 = run_rung(env, d3, "failed")
    # Past the last rung: nothing automatic is left; the lock is not kept.
    d4 = detect(env)
    assert (d4.action, d4.rung, d4.lock_token) == (MonitorAction.EXHAUSTED, 3, None)
    assert env.state.lock_owner(env.name) is None
    audit = services_for(env.config).audit
    rows = [audit.run(r) for r in (run1, run2, run3)]
    assert [(r.rung, r.workflow, r.state) for r in rows if r] == [
        (1, LADDER[0], "failed"),
        (2, LADDER[1], "failed"),
        (3, LADDER[2], "failed"),
    ]


def test_a_succeeded_rung_is_run_again_and_health_resets_the_ladder(env: Env) -> None:
    d1 = detect(env)
    run_rung(env, d1, "failed")
    d2 = detect(env)
    run_rung(env, d2, "succeeded")
    # Failing again before success_threshold good probes: the same incident, the same rung.
    decide(env.config, env.state, [ok(env.name)])
    d3 = detect(env)
    assert d3.rung == 2
    run_rung(env, d3, "failed")
    # Healthy for success_threshold (2) probes: a new incident starts at rung 1.
    for _ in range(2):
        decide(env.config, env.state, [ok(env.name)])
    assert env.state.get_marks([ladder_key(env.name)]) == [None]
    assert detect(env).rung == 1


def test_a_refused_rung_moves_the_ladder_on(env: Env) -> None:
    d1 = detect(env)
    # The lock was lost before the run began (expired): begin refuses, audited with its rung.
    env.state.release_lock(env.name, d1.lock_token or "")
    request = RecoveryRequest(env.name, d1.workflow, "automatic", "monitor", lock_token=d1.lock_token)
    with pytest.raises(RecoveryRefused) as info:
        RecoveryRuntime.begin(env.config, request, run_id="refused-" + env.name)
    assert (info.value.rung, info.value.rungs) == (1, 3)
    row = services_for(env.config).audit.run("refused-" + env.name)
    assert row is not None and (row.state, row.rung) == ("refused", 1)
    assert detect(env).rung == 2


def test_the_rung_survives_a_restart_and_a_dead_run_counts_as_failed(env: Env) -> None:
    d1 = detect(env)
    # The process running rung 1 died: it never recorded an end; its lock expired.
    env.state.release_lock(env.name, d1.lock_token or "")
    raw = env.state.get_marks([ladder_key(env.name)])[0]
    assert Ladder.load(raw) == Ladder(1, d1.lock_token or "", "running")
    # A new monitor process (memory: the same process-wide state; Redis: a new client).
    from recovery.services import reset_services

    reset_services()
    assert detect(env).rung == 2


def test_targets_without_a_ladder_are_unchanged(env: Env) -> None:
    for _ in range(2):
        (d,) = decide(env.config, env.state, [failed(f"{env.name}-plain")])
    assert (d.action, d.workflow, d.rung, d.rungs) == (MonitorAction.RECOVER, "api-failure-recovery", None, 0)
    rt = RecoveryRuntime.begin(
        env.config,
        RecoveryRequest(f"{env.name}-plain", d.workflow, "automatic", "monitor", lock_token=d.lock_token),
    )
    rt.finish("failed", RuntimeError("x"))
    row = services_for(env.config).audit.run(rt.run_id)
    assert row is not None and row.rung is None
    assert row.as_json()["rung"] is None
