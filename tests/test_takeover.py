"""Manual takeover (issue 14): the lock's compare-and-set on both backends, refusals naming the
running recovery's flow run and audit ids, an emergency taking over an automatic run (audited
on both rows; the automatic run stops at its next step), and the default budget escalating.

Real Redis and SQLite; the memory backend is the one ``state_url``-less configs use.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from test_strategies_admission import make_config, request

from recovery.audit.store import AuditStore
from recovery.backends.state import SharedState
from recovery.backends.state_memory import MemoryState
from recovery.backends.state_redis import RedisState
from recovery.engine.runtime import RecoveryRequest, RecoveryRuntime
from recovery.engine.takeover import TAKEN_OVER, lock_holder
from recovery.errors import LockLost, RecoveryRefused
from recovery.services import services_for

STRATEGY = "{kind: exponential, base_seconds: 0.1, max_attempts: 2, jitter: none}"


@pytest.fixture(params=["redis", "memory"])
def state(request: pytest.FixtureRequest) -> Iterator[SharedState]:
    if request.param == "memory":
        yield MemoryState()
    else:
        url = request.getfixturevalue("redis_url")
        state = RedisState(url)
        yield state
        state.close()


def test_takeover_is_a_compare_and_set_on_the_old_owner(state: SharedState) -> None:
    assert not state.takeover_lock("api", "auto", "emergency-1", 30)  # nobody holds it: nothing to take
    assert state.acquire_lock("api", "auto", 30)
    assert not state.takeover_lock("api", "someone-else", "emergency-1", 30)
    assert state.lock_owner("api") == "auto"
    assert state.takeover_lock("api", "auto", "emergency-1", 30)
    assert state.lock_owner("api") == "emergency-1"
    assert state.takeover_lock("api", "auto", "emergency-1", 30)  # a retry of a call that landed
    assert not state.refresh_lock("api", "auto", 30)  # the old owner's next step stops it
    assert not state.release_lock("api", "auto")
    assert not state.takeover_lock("api", "auto", "emergency-2", 30)  # the second emergency loses
    assert state.refresh_lock("api", "emergency-1", 30)


def test_concurrent_takeovers_have_one_winner(state: SharedState) -> None:
    assert state.acquire_lock("api", "auto", 30)
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def contend(i: int) -> None:
        barrier.wait()
        if state.takeover_lock("api", "auto", f"emergency-{i}", 30):
            wins.append(f"emergency-{i}")

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and state.lock_owner("api") == wins[0]


def _automatic(config: object, flow_run_id: str) -> RecoveryRuntime:
    """An automatic run as the monitor starts it: the monitor's token holds the lock."""
    services = services_for(config)  # type: ignore[arg-type]
    token = f"monitor-{uuid.uuid4()}"
    assert services.state.acquire_lock("api", token, 30)
    auto = RecoveryRequest(
        "api", "api-failure-recovery", "automatic", "monitor", lock_token=token, first_failure_at=1.0e9
    )
    return RecoveryRuntime.begin(config, auto, run_id=flow_run_id, flow_run_id=flow_run_id)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["redis", "memory"])
def test_manual_is_refused_naming_flow_run_and_audit_ids_emergency_takes_over(
    backend: str, redis_url: str, sqlite_url: str
) -> None:
    config = make_config(sqlite_url, redis_url if backend == "redis" else None, STRATEGY)
    audit = AuditStore(sqlite_url)
    auto_id = str(uuid.uuid4())
    auto = _automatic(config, auto_id)

    with pytest.raises(RecoveryRefused) as info:
        RecoveryRuntime.begin(config, request("manual"), run_id="manual-1")
    reason = info.value.reason
    assert f"flow run {auto_id} (/runs/flow-run/{auto_id})" in reason and f"audit run {auto_id}" in reason
    assert "automatic run by monitor" in reason and "emergency trigger" in reason
    assert auto.owner not in reason  # never the lock token
    assert services_for(config).state.lock_owner("api") == auto.owner  # a manual run never takes over

    alice = RecoveryRequest("api", "api-failure-recovery", "emergency", "alice", "INC-7")
    emergency = RecoveryRuntime.begin(config, alice, run_id="emergency-1")
    assert emergency.took_over is not None and emergency.took_over.flow_run_id == auto_id
    assert services_for(config).state.lock_owner("api") == "emergency-1"
    row = audit.run(auto_id)
    assert row is not None and (row.state, row.error_type) == ("cancelled", TAKEN_OVER)
    assert row.error_message == "taken over by alice: INC-7"

    # The automatic run's next step attempt finds the lock gone and stops before acting; its
    # own finish leaves the takeover's record (and the emergency's lock) alone.
    with pytest.raises(LockLost):
        auto._start_attempt("test_connectivity", 1)
    assert auto.taken_over_by() == "taken over by alice: INC-7"
    auto.finish("failed", LockLost("lost"))
    row = audit.run(auto_id)
    assert row is not None and (row.state, row.error_message) == ("cancelled", "taken over by alice: INC-7")
    assert services_for(config).state.lock_owner("api") == "emergency-1"

    # An emergency never takes over from a person's run: refused with that run's ids.
    with pytest.raises(RecoveryRefused) as again:
        RecoveryRuntime.begin(config, request("emergency", reason="me too"), run_id="emergency-2")
    assert "emergency run by alice" in again.value.reason
    assert "audit run emergency-1" in again.value.reason
    emergency.finish("succeeded")
    assert audit.run("emergency-1").state == "succeeded"  # type: ignore[union-attr]
    assert services_for(config).state.lock_owner("api") is None


def test_a_lock_whose_run_is_not_audited_yet_is_not_taken_over(redis_url: str, sqlite_url: str) -> None:
    """Between the monitor's lock and its subflow's audit row there is no run to cancel: refused."""
    config = make_config(sqlite_url, redis_url, STRATEGY)
    state = services_for(config).state
    assert state.acquire_lock("api", "monitor-token", 30)
    holder = lock_holder(state, services_for(config).audit, "api")
    assert holder is not None and holder.audit_id is None
    with pytest.raises(RecoveryRefused, match="is starting") as info:
        RecoveryRuntime.begin(config, request("emergency", reason="now"))
    assert "monitor-token" not in info.value.reason
    assert state.lock_owner("api") == "monitor-token"


def test_default_budget_escalates_automatic_recoveries_only(redis_url: str, sqlite_url: str) -> None:
    """The default exponential strategy allows 3 automatic recoveries per hour, then refuses
    and escalates; people's runs neither count nor are refused."""
    config = make_config(sqlite_url, redis_url, "{kind: exponential}")
    for _ in range(3):
        RecoveryRuntime.begin(config, request("automatic")).finish("failed")
    with pytest.raises(RecoveryRefused) as info:
        RecoveryRuntime.begin(config, request("automatic"), run_id="fourth")
    assert info.value.escalate
    assert info.value.reason.startswith("budget: 3 automatic recoveries of api in the last 3600s (max 3)")
    for run_type in ("manual", "emergency"):
        RecoveryRuntime.begin(config, request(run_type, reason="ops")).finish("succeeded")
    off = make_config(sqlite_url, redis_url, "{kind: exponential, budget: null}")
    RecoveryRuntime.begin(off, request("automatic")).finish("succeeded")  # no budget: unbounded


def test_expected_failures_log_one_line_and_cancels_are_not_crashes() -> None:
    """Prefect logs a failed step with its traceback and a cancelled served run as a crash; the
    filter on its run loggers keeps the line, drops our errors' tracebacks, rewords the crash."""
    import logging
    import sys

    from flows.takeover import ExpectedFailures
    from recovery.errors import ProbeFailed

    def record(msg: str, exc: BaseException | None = None) -> logging.LogRecord:
        info = None
        if exc is not None:
            try:
                raise exc
            except BaseException:
                info = sys.exc_info()
        return logging.LogRecord("prefect.task_runs", logging.ERROR, __file__, 1, msg, (), info)

    expected = record("Task run failed with exception: ProbeFailed('503')", ProbeFailed("503"))
    bug = record("Task run failed with exception: KeyError('x')", KeyError("x"))
    crash = record("Crash detected! Execution was cancelled by the runtime environment.")
    other = record("Crash detected! Process killed")
    for r in (expected, bug, crash, other):
        assert ExpectedFailures().filter(r)  # never drops a line
    assert expected.exc_info is None and expected.levelno == logging.ERROR
    assert bug.exc_info is not None  # a bug keeps its traceback
    assert (crash.levelno, crash.getMessage()) == (
        logging.INFO,
        "Step interrupted: its flow run is being cancelled.",
    )
    assert other.levelno == logging.ERROR and other.getMessage() == "Crash detected! Process killed"
