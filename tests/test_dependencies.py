"""Dependency-aware recovery (issue 12, item 3): decide() waits for what a target depends on.

Memory and Redis backends, a real SQLite audit store; the re-probe test probes real local HTTP
servers (tests/faultserver.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from faultserver import FaultServer

from recovery.backends.state import SharedState
from recovery.config.loader import RecoveryConfig, parse_config
from recovery.engine.monitor import Decision, decide, decide_by
from recovery.engine.probing import probe_targets
from recovery.enums import MonitorAction
from recovery.kinds.base import ProbeResult
from recovery.reporting.status import collect_status, status_table
from recovery.services import services_for


@dataclass
class Env:
    config: RecoveryConfig
    db: str
    apis: list[str]

    @property
    def state(self) -> SharedState:
        return services_for(self.config).state

    def cycle(self, db_ok: bool, apis_ok: bool = False) -> dict[str, Decision]:
        probes = [probe(self.db, db_ok)] + [probe(a, apis_ok) for a in self.apis]
        return {d.target: d for d in decide(self.config, self.state, probes)}

    def refusals(self, target: str) -> list[str | None]:
        rows = services_for(self.config).audit.history(target=target, limit=50)
        return [r.error_message for r in rows if r.state == "refused"]


def probe(target: str, healthy: bool) -> ProbeResult:
    if healthy:
        return ProbeResult(target, "http", True, "ok", 3.0, status=200)
    return ProbeResult(target, "http", False, "connection refused", 1.0)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def env(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[Env]:
    tag = uuid.uuid4().hex[:6]  # the in-process state is process-wide: fresh names per test
    db, apis = f"db-{tag}", [f"api{i}-{tag}" for i in range(3)]
    targets: list[dict[str, object]] = [{"kind": "http", "name": db, "url": "http://127.0.0.1:9/db"}]
    # api0 and api1 depend on the database; api2 through api1 (transitively).
    deps = {apis[0]: [db], apis[1]: [db], apis[2]: [apis[1]]}
    targets += [
        {"kind": "http", "name": a, "url": f"http://127.0.0.1:9/{a}", "depends_on": deps[a]} for a in apis
    ]
    data: dict[str, object] = {
        "audit_url": sqlite_url,
        "monitor": {"failure_threshold": 2, "success_threshold": 2, "lock_ttl_seconds": 60},
        "targets": list(reversed(targets)),  # dependents first in the file: order must not matter
    }
    if request.param == "redis":
        data["state_url"] = request.getfixturevalue("redis_url")
    yield Env(parse_config(data), db, apis)


def test_dependents_wait_for_the_database_and_are_refused_once_per_incident(env: Env) -> None:
    first = env.cycle(db_ok=False)
    assert {d.action for d in first.values()} == {MonitorAction.BELOW_THRESHOLD}
    assert first[env.apis[2]].blocked_by == env.db  # transitively, named by the root
    second = env.cycle(db_ok=False)
    assert second[env.db].action is MonitorAction.RECOVER
    for api in env.apis:
        assert (second[api].action, second[api].note) == (MonitorAction.BLOCKED, f"blocked by {env.db}")
        assert second[api].lock_token is None
    # More cycles while the database recovers: still waiting, still one refusal each.
    third = env.cycle(db_ok=False)
    assert third[env.db].action is MonitorAction.IN_PROGRESS
    assert {third[a].action for a in env.apis} == {MonitorAction.BLOCKED}
    for api in env.apis:
        assert env.refusals(api) == [f"waiting for {env.db}"]
    board = {row["target"]: row for row in status_table(collect_status(env.config))}
    assert {board[a]["blocked"] for a in env.apis} == {f"blocked by {env.db}"}
    assert board[env.db]["blocked"] == "no"
    # The database's recovery ends; it is healthy again: the dependents are decided on their own.
    env.state.release_lock(env.db, second[env.db].lock_token or "")
    fourth = env.cycle(db_ok=True, apis_ok=False)
    assert fourth[env.apis[0]].action is MonitorAction.RECOVER
    assert fourth[env.apis[1]].action is MonitorAction.RECOVER
    # api2 waits for api1, now being recovered.
    assert (fourth[env.apis[2]].action, fourth[env.apis[2]].blocked_by) == (
        MonitorAction.BLOCKED,
        env.apis[1],
    )
    board = {row["target"]: row for row in status_table(collect_status(env.config))}
    assert board[env.apis[0]]["blocked"] == "no"


def test_healthy_for_success_threshold_starts_a_new_incident(env: Env) -> None:
    for _ in range(2):
        env.cycle(db_ok=False)
    assert env.refusals(env.apis[0]) == [f"waiting for {env.db}"]
    assert env.state.release_lock(env.db, env.state.lock_owner(env.db) or "")
    for _ in range(2):  # success_threshold good probes of everything
        decisions = env.cycle(db_ok=True, apis_ok=True)
    assert {d.blocked_by for d in decisions.values()} == {None}
    for _ in range(2):
        env.cycle(db_ok=False)
    assert env.refusals(env.apis[0]) == [f"waiting for {env.db}"] * 2


def test_a_deferred_dependency_counts_by_its_last_recorded_probe(env: Env) -> None:
    for _ in range(2):
        env.cycle(db_ok=False)
    # Only the dependents this time (the database's probe was cut off, say).
    decisions = decide(env.config, env.state, [probe(env.apis[0], False)])
    assert decisions[0].blocked_by == env.db


async def test_dependents_are_probed_again_once_their_dependency_is_healthy(sqlite_url: str) -> None:
    with FaultServer() as db, FaultServer() as api, FaultServer() as other:
        tag = uuid.uuid4().hex[:6]
        config = parse_config(
            {
                "audit_url": sqlite_url,
                "monitor": {"failure_threshold": 1},
                "targets": [
                    {
                        "kind": "http",
                        "name": f"api-{tag}",
                        "url": f"{api.url}/health",
                        "depends_on": [f"db-{tag}"],
                    },
                    {"kind": "http", "name": f"db-{tag}", "url": f"{db.url}/health"},
                    {"kind": "http", "name": f"other-{tag}", "url": f"{other.url}/health"},
                ],
            }
        )
        # The API fails its first probe (it still saw the database down), then answers.
        api.app.set_mode("fail-next:1")
        other.app.set_mode("fail-next:1")  # no dependency: not probed again, recovered
        results = await probe_targets(config.targets)
        assert [r.healthy for r in results] == [False, True, False]
        state = services_for(config).state
        decisions = await decide_by(config, state, results, time.monotonic() + 10)
        by = {d.target: d for d in decisions}
        assert [d.target for d in decisions] == [t.name for t in config.targets]  # the input order
        assert (by[f"api-{tag}"].healthy, by[f"api-{tag}"].action) == (True, MonitorAction.NONE)
        assert by[f"other-{tag}"].action is MonitorAction.RECOVER
        assert api.app.requests["/health"] == 2 and other.app.requests["/health"] == 1
        state.release_lock(f"other-{tag}", by[f"other-{tag}"].lock_token or "")
