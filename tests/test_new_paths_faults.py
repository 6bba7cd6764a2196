"""The paths added after issue 10 (takeover, escalation ladders, dependency blocking) while
their state Redis is killed, frozen, or loses one reply: every call ends within a bound with a
typed error or a decision as data, no lock outlives a run that never started, and nothing acts
without its audit row (docs/reliability.md).

Real faults only: a throwaway redis-server killed with SIGKILL, and a TcpProxy in front of it
that swallows every byte (frozen), or hits exactly one request (``TcpProxy.fault_at``): its
reply lost with the connection (redis-py retries it), or held past the 1 s timeout (a stall).
Incident de-duplication reads only the audit store: its faults are in
tests/flows/test_new_paths_audit_faults.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import redis
from dbcache_services import RedisServer, TcpProxy
from test_bounded_calls import _config
from test_takeover import _automatic

from recovery.audit.store import AuditStore
from recovery.backends.keys import ladder_key, lock_key, monitor_slot_key, waiting_key
from recovery.config.loader import RecoveryConfig
from recovery.engine.monitor import STATE_UNAVAILABLE, Decision, decide
from recovery.engine.period import Period, claim_slot
from recovery.engine.runtime import RecoveryRequest, RecoveryRuntime
from recovery.engine.takeover import TAKEN_OVER
from recovery.enums import MonitorAction
from recovery.errors import StateUnavailable
from recovery.kinds.base import ProbeResult
from recovery.services import services_for

T = TypeVar("T")
BOUND = 5.0  # seconds, with a 1 s state timeout: a hang would be forever, a retry storm minutes
STALL = 1.6  # a stall outlives the 1 s timeout of the call it hits, not that of the next call
LADDER = ["api-failure-recovery", "api-failure-recovery"]
EMERGENCY = RecoveryRequest("api", "api-failure-recovery", "emergency", "alice", "INC-9")


@dataclass
class StateRedis:
    """A throwaway redis-server the product reaches through ``proxy``; ``direct`` reads the truth."""

    server: RedisServer
    proxy: TcpProxy
    direct: redis.Redis

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.proxy.port}/0"

    def fail(self, how: str) -> None:
        if how == "killed":  # SIGKILL; new connections refused, as with no server at all
            self.server.kill()
            self.proxy.stop()
        else:
            self.proxy.blackhole()

    def heal(self) -> None:
        """After ``fail("frozen")``: the truth is still there to read."""
        self.proxy.unblackhole()

    def lock(self, target: str = "api") -> str | None:
        value = self.direct.get(lock_key(target))
        return None if value is None else str(value)


@pytest.fixture
def state_redis() -> Iterator[StateRedis]:
    server = RedisServer().start()
    proxy = TcpProxy(("127.0.0.1", server.port)).start()
    direct = redis.Redis.from_url(server.url(), decode_responses=True, socket_timeout=5)
    try:
        yield StateRedis(server, proxy, direct)
    finally:
        direct.close()
        proxy.stop()
        server.stop()


def bounded(call: Callable[[], T]) -> tuple[T | BaseException, float]:
    """``call()``'s result or the exception it raised, and how long it took."""
    started = time.monotonic()
    try:
        out: T | BaseException = call()
    except Exception as exc:
        out = exc
    return out, time.monotonic() - started


def typed_failure(out: object, took: float) -> None:
    """The call failed with the core's typed error (no raw redis error) within ``BOUND``."""
    assert took < BOUND, f"took {took:.1f}s"
    assert isinstance(out, StateUnavailable), repr(out)


def config_for(state_redis: StateRedis, sqlite_url: str, *names: str, **api: Any) -> RecoveryConfig:
    """Target ``api`` (with ``api``'s extra fields) and plain ``names``; a 1 s state timeout."""
    monitor = {"failure_threshold": 1, "success_threshold": 2, "lock_ttl_seconds": 60}
    config = _config(state_redis.url, sqlite_url, [*names, "api"], state_timeout_seconds=1, monitor=monitor)
    if not api:
        return config
    targets = [t.model_dump(mode="json", exclude_unset=True) for t in config.targets]
    targets[-1].update(api)
    return _config(state_redis.url, sqlite_url, [], state_timeout_seconds=1, monitor=monitor, targets=targets)


def failed(target: str = "api") -> ProbeResult:
    return ProbeResult(target, "http", False, "status 503", 5.0, status=503)


def rows(sqlite_url: str, target: str = "api") -> dict[str, tuple[str, str | None]]:
    return {r.id: (r.state, r.error_type) for r in AuditStore(sqlite_url).history(target, 50)}


# --- manual takeover ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_an_emergency_while_state_redis_is_down_fails_typed_and_takes_nothing(
    how: str, state_redis: StateRedis, sqlite_url: str
) -> None:
    config = config_for(state_redis, sqlite_url)
    auto = _automatic(config, "auto-1")
    state_redis.fail(how)
    out, took = bounded(lambda: RecoveryRuntime.begin(config, EMERGENCY, run_id="emergency-1"))
    typed_failure(out, took)
    # Nothing was taken over: the automatic run's row is untouched, the emergency has none.
    assert rows(sqlite_url) == {"auto-1": ("in_progress", None)}
    if how == "frozen":
        state_redis.heal()
        assert state_redis.lock() == auto.owner


@pytest.mark.parametrize("step", ["acquire", "takeover"])
def test_a_lock_write_whose_reply_is_lost_is_not_mistaken_for_someone_elses(
    step: str, state_redis: StateRedis, sqlite_url: str
) -> None:
    """The write lands, the connection drops before its reply, redis-py sends it again: the
    retry must recognise the lock as this run's own, not refuse the run over its own lock."""
    config = config_for(state_redis, sqlite_url)
    state = services_for(config).state
    state.takeover_lock("other", "x", "y", 1)  # loads the script: the fault hits the real call
    if step == "acquire":
        state_redis.proxy.fault_at(b"manual-1", "drop")  # its SET NX
        rt = RecoveryRuntime.begin(config, RecoveryRequest("api", requested_by="bob"), run_id="manual-1")
        assert rt.took_over is None
    else:
        auto = _automatic(config, "auto-2")
        state_redis.proxy.fault_at(auto.owner.encode(), "drop")  # the compare-and-set
        rt = RecoveryRuntime.begin(config, EMERGENCY, run_id="emergency-2")
        assert rt.took_over is not None and rt.took_over.audit_id == "auto-2"
        assert rows(sqlite_url)["auto-2"] == ("cancelled", TAKEN_OVER)
    assert state_redis.lock() == rt.owner
    rt.finish("succeeded")
    assert state_redis.lock() is None


@pytest.mark.parametrize("step", ["acquire", "takeover"])
def test_a_lock_write_stalled_past_its_timeout_is_given_back(
    step: str, state_redis: StateRedis, sqlite_url: str
) -> None:
    """The write lands but its reply comes after the timeout: the run fails before any record
    or action, so the lock must not stay behind (the automatic run's goes back to it)."""
    config = config_for(state_redis, sqlite_url)
    state = services_for(config).state
    state.takeover_lock("other", "x", "y", 1)  # script loaded
    if step == "acquire":
        state_redis.proxy.fault_at(b"manual-3", "stall", stall_seconds=STALL)
        request, run_id, holder = RecoveryRequest("api", requested_by="bob"), "manual-3", None
    else:
        auto = _automatic(config, "auto-3")
        state_redis.proxy.fault_at(auto.owner.encode(), "stall", stall_seconds=STALL)
        request, run_id, holder = EMERGENCY, "emergency-3", auto.owner
    typed_failure(*bounded(lambda: RecoveryRuntime.begin(config, request, run_id=run_id)))
    assert rows(sqlite_url) == ({} if holder is None else {"auto-3": ("in_progress", None)})
    assert state_redis.lock() == holder
    if holder is not None:
        assert state.refresh_lock("api", holder, 60), "the automatic run goes on"


def test_state_stalling_after_a_takeover_leaves_it_audited_and_no_lock(
    state_redis: StateRedis, sqlite_url: str
) -> None:
    """Taken over and audited on the automatic row, then admission cannot read state: the
    emergency fails typed and releases the lock it took (the automatic run stops at its next
    step: its row already says who took it over)."""
    config = config_for(state_redis, sqlite_url)
    services_for(config).state.takeover_lock("other", "x", "y", 1)
    auto = _automatic(config, "auto-4")
    state_redis.proxy.fault_at(auto.owner.encode(), "stall", after=1, stall_seconds=STALL)
    out, took = bounded(lambda: RecoveryRuntime.begin(config, EMERGENCY, run_id="emergency-4"))
    typed_failure(out, took)
    assert rows(sqlite_url) == {"auto-4": ("cancelled", TAKEN_OVER)}
    assert state_redis.lock() is None


# --- escalation ladders ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_a_ladder_target_is_deferred_while_state_redis_is_down(
    how: str, state_redis: StateRedis, sqlite_url: str
) -> None:
    config = config_for(state_redis, sqlite_url, escalation=LADDER)
    state = services_for(config).state
    state_redis.fail(how)
    out, took = bounded(lambda: decide(config, state, [failed()]))
    assert took < BOUND and not isinstance(out, BaseException), repr(out)
    assert [(d.action, d.note, d.rung) for d in out] == [(MonitorAction.DEFERRED, STATE_UNAVAILABLE, None)]
    if how == "frozen":
        state_redis.heal()
        assert state_redis.lock() is None and state_redis.direct.get(ladder_key("api")) is None


@pytest.mark.parametrize("fault", ["drop", "stall"])
def test_a_lost_reply_around_the_monitors_lock_never_leaves_a_ladder_target_locked(
    fault: str, state_redis: StateRedis, sqlite_url: str
) -> None:
    """``drop``: the monitor's lock lands, its reply is lost and redis-py retries: the lock is
    the monitor's own, rung 1 starts. ``stall``: the lock is taken, the ladder cannot be read:
    no rung starts, so the lock goes back (else the target waits ``lock_ttl_seconds`` for a
    recovery that does not exist) and the next cycle starts rung 1."""
    config = config_for(state_redis, sqlite_url, escalation=LADDER)
    state = services_for(config).state
    after = 0 if fault == "drop" else 1  # the SET NX itself, or the ladder read after it
    state_redis.proxy.fault_at(lock_key("api").encode(), fault, after=after, stall_seconds=STALL)  # type: ignore[arg-type]
    out, took = bounded(lambda: decide(config, state, [failed()]))
    assert took < BOUND and not isinstance(out, BaseException), repr(out)
    if fault == "stall":
        assert [(d.action, d.note) for d in out] == [(MonitorAction.DEFERRED, STATE_UNAVAILABLE)]
        assert state_redis.lock() is None
        out = decide(config, state, [failed()])
    (d,) = out
    assert (d.action, d.rung) == (MonitorAction.RECOVER, 1)
    assert state_redis.lock() == d.lock_token
    state.release_lock("api", d.lock_token or "")


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_a_rung_run_while_state_redis_is_down_is_bounded_and_audited(
    how: str, state_redis: StateRedis, sqlite_url: str
) -> None:
    config = config_for(state_redis, sqlite_url, escalation=LADDER)
    state = services_for(config).state
    (first,) = decide(config, state, [failed()])
    assert (first.action, first.rung) == (MonitorAction.RECOVER, 1)
    rung = RecoveryRuntime.begin(config, rung_request(first), run_id="rung-1")
    state_redis.fail(how)
    # A run of the rung that begins now cannot even read its rung: nothing taken, no row.
    second = RecoveryRequest("api", LADDER[0], "automatic", "monitor", lock_token="monitor-2")
    typed_failure(*bounded(lambda: RecoveryRuntime.begin(config, second, run_id="rung-x")))
    # The run that began ends audited; its rung's end and lock are Redis's (TTL) to forget.
    out, took = bounded(lambda: rung.finish("failed", RuntimeError("still down")))
    assert took < BOUND and (out is None or isinstance(out, StateUnavailable)), repr(out)
    assert rows(sqlite_url) == {"rung-1": ("failed", "RuntimeError")}


def rung_request(d: Decision) -> RecoveryRequest:
    return RecoveryRequest("api", d.workflow, "automatic", "monitor", lock_token=d.lock_token)


# --- dependency blocking --------------------------------------------------------------------------


def dependency_config(state_redis: StateRedis, sqlite_url: str) -> RecoveryConfig:
    return config_for(state_redis, sqlite_url, "db", depends_on=["db"])


def refusals(sqlite_url: str) -> list[str | None]:
    return [r.error_message for r in AuditStore(sqlite_url).history("api", 50) if r.state == "refused"]


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_dependents_are_deferred_not_refused_while_state_redis_is_down(
    how: str, state_redis: StateRedis, sqlite_url: str
) -> None:
    config = dependency_config(state_redis, sqlite_url)
    state = services_for(config).state
    state_redis.fail(how)
    out, took = bounded(lambda: decide(config, state, [failed("db"), failed("api")]))
    assert took < BOUND and not isinstance(out, BaseException), repr(out)
    assert {(d.target, d.action, d.note) for d in out} == {
        (t, MonitorAction.DEFERRED, STATE_UNAVAILABLE) for t in ("db", "api")
    }
    assert refusals(sqlite_url) == []
    if how == "frozen":
        state_redis.heal()
        assert state_redis.lock("db") is None and state_redis.lock("api") is None


@pytest.mark.parametrize("fault", ["drop", "stall"])
def test_a_lost_waiting_mark_reply_never_loses_the_incidents_refusal(
    fault: str, state_redis: StateRedis, sqlite_url: str
) -> None:
    """The ``waiting`` mark says this incident's refusal is audited. Its write lands but the
    reply is lost (a retried SET NX finds it set) or late (the call times out): either way the
    refusal must still be audited, once, on this cycle or the next."""
    config = dependency_config(state_redis, sqlite_url)
    state = services_for(config).state
    (db,) = decide(config, state, [failed("db")])  # the database's recovery holds its lock
    assert db.action is MonitorAction.RECOVER
    state_redis.proxy.fault_at(waiting_key("api").encode(), fault, stall_seconds=STALL)  # type: ignore[arg-type]
    for _ in range(3):
        out, took = bounded(lambda: decide(config, state, [failed("api")]))
        assert took < BOUND and not isinstance(out, BaseException), repr(out)
        time.sleep(STALL if fault == "stall" else 0)  # the stall ends before the next cycle
    assert out[0].action is MonitorAction.BLOCKED and out[0].blocked_by == "db"
    assert refusals(sqlite_url) == ["waiting for db"]
    assert state_redis.lock("api") is None


# --- the served monitor's grid-slot claims ---------------------------------------------------------


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_a_slot_claim_while_state_redis_is_down_is_bounded_and_granted(
    how: str, state_redis: StateRedis, sqlite_url: str
) -> None:
    """Two overlapping period runs: the first claim of a slot cycles it, the other run skips it.
    With state Redis down the claim is granted within the bound (that cycle defers anyway)."""
    state = services_for(config_for(state_redis, sqlite_url)).state
    period = Period(time.time(), 3.0, 30.0)
    assert claim_slot(state, "deployment", period.anchor, "run-a", period)
    assert claim_slot(state, "deployment", period.anchor, "run-a", period), "idempotent for its owner"
    assert not claim_slot(state, "deployment", period.anchor, "run-b", period)
    assert state_redis.direct.pttl(monitor_slot_key("deployment", period.anchor)) > 30_000
    state_redis.fail(how)
    out, took = bounded(lambda: claim_slot(state, "deployment", period.anchor + 3, "run-b", period))
    assert out is True and took < BOUND, (out, took)
