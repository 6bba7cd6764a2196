"""The pure breaker state machine, and the Lua scripts checked against it step for step.

``breaker_core`` takes ``now`` as an argument, so these tests need no clock and no sleeps. The
parity test replays one event sequence on ``MemoryBreakerStore`` (the core under a mutex) and on
``RedisBreakerStore`` (the ``breaker_*.lua`` scripts) with the same injected clock: any drift
between the Lua and the core shows up as a differing answer or snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from recovery.backends import breaker_core as core
from recovery.backends.breaker_core import CLOSED, HALF_OPEN, OPEN, Failure, Record
from recovery.backends.breaker_memory import MemoryBreakerStore
from recovery.backends.breaker_store import BreakerStore, RedisBreakerStore


def opened_record(at: float = 100.0, fails: int = 5) -> Record:
    return Record(state=OPEN, fail_counter=fails, opened_at=at, changed_at=at)


def test_closed_admits_and_reports_the_failure_count() -> None:
    record, ticket = core.admit(Record(fail_counter=2), 0.0, 60, 30, "a")
    assert (ticket.verdict, ticket.state, ticket.fail_counter) == ("pass", CLOSED, 2)
    assert record == Record(fail_counter=2)


def test_open_rejects_until_the_reset_timeout_then_leases_one_probe() -> None:
    record = opened_record(at=100.0)
    same, ticket = core.admit(record, 159.5, 60, 30, "a")
    assert (same, ticket.verdict) == (record, "reject") and ticket.retry_in == pytest.approx(0.5)
    record, ticket = core.admit(record, 160.0, 60, 30, "a")
    assert (ticket.verdict, ticket.state) == ("probe", OPEN)
    assert (record.state, record.lease_owner, record.lease_expires_at) == (HALF_OPEN, "a", 190.0)
    record, ticket = core.admit(record, 170.0, 60, 30, "b")
    assert (ticket.verdict, ticket.state, ticket.holder) == ("reject", HALF_OPEN, "a")
    record, ticket = core.admit(record, 190.0, 60, 30, "b")  # the lease lapsed: b may probe
    assert (ticket.verdict, record.lease_owner) == ("probe", "b")


def test_failed_probe_is_counted_and_reopens() -> None:
    record, _ = core.admit(opened_record(at=100.0, fails=5), 200.0, 60, 30, "p")
    record, failure = core.failed(record, 201.0, "p", True, 5)
    assert failure == Failure(OPEN, True)
    assert (record.state, record.fail_counter, record.opened_at, record.lease_owner) == (OPEN, 6, 201.0, None)


def test_failed_probe_of_a_forced_open_breaker_shows_one_failure() -> None:
    """The monitor opens breakers with no failures counted; a failed probe must not show 0/5."""
    record, _ = core.force(Record(), 0.0, OPEN)
    record, _ = core.admit(record, 61.0, 60, 30, "p")
    record, failure = core.failed(record, 61.5, "p", True, 5)
    assert failure.tripped and (record.state, record.fail_counter) == (OPEN, 1)


def test_late_failures_are_not_counted() -> None:
    record = opened_record(fails=3)
    assert core.failed(record, 101.0, "x", False, 3) == (record, Failure(OPEN, False))
    half, _ = core.admit(record, 200.0, 60, 30, "p")
    assert core.failed(half, 201.0, "not-the-holder", True, 3) == (half, Failure(HALF_OPEN, False))


def test_closed_failures_trip_at_fail_max() -> None:
    record = Record()
    for expected in (1, 2):
        record, failure = core.failed(record, 1.0, "x", False, 3)
        assert (record.fail_counter, failure) == (expected, Failure(CLOSED, False))
    record, failure = core.failed(record, 2.0, "x", False, 3)
    assert failure.tripped and (record.state, record.opened_at, record.fail_counter) == (OPEN, 2.0, 3)


def test_success_threshold_and_reset() -> None:
    record, _ = core.admit(opened_record(), 200.0, 60, 30, "p")
    record, state = core.succeeded(record, 201.0, "p", True, 2)
    assert (state, record.success_counter, record.lease_owner) == (HALF_OPEN, 1, None)
    record, _ = core.admit(record, 202.0, 60, 30, "q")
    record, state = core.succeeded(record, 203.0, "q", True, 2)
    assert record == Record(changed_at=203.0) and state == CLOSED
    record, state = core.succeeded(Record(fail_counter=3), 0.0, "x", False, 2)
    assert (record.fail_counter, state) == (0, CLOSED)


def test_release_refresh_and_force() -> None:
    record, _ = core.admit(opened_record(), 200.0, 60, 30, "p")
    assert core.refresh(record, 210.0, "q", 60)[1] is False
    record, ok = core.refresh(record, 210.0, "p", 60)
    assert ok and record.lease_expires_at == 270.0
    assert core.release(record, 211.0, "q")[0] == record  # only the holder gives it back
    record, _ = core.release(record, 211.0, "p")
    assert (record.state, record.lease_owner) == (HALF_OPEN, None)
    reopened, previous = core.force(opened_record(at=5.0), 9.0, OPEN, trip=True)
    assert (previous, reopened.opened_at) == (OPEN, 5.0)  # trip keeps opened_at
    closed, previous = core.force(record, 300.0, CLOSED)
    assert (previous, closed) == (HALF_OPEN, Record(changed_at=300.0))
    with pytest.raises(ValueError):
        core.force(record, 0.0, "ajar")


def test_view_drops_an_expired_lease() -> None:
    record, _ = core.admit(opened_record(), 200.0, 60, 30, "p")
    assert core.view(record, 229.0).probe_holder == "p"
    assert core.view(record, 230.0).probe_holder is None


# --- the Lua scripts against the core --------------------------------------------------------------

Step = Callable[[BreakerStore], Any]

SEQUENCE: list[tuple[float, Step]] = [
    (0.0, lambda s: s.admit(10, 30, "a")),
    (0.5, lambda s: s.failed("a", False, 2)),
    (1.0, lambda s: s.succeeded("a", False, 1)),
    (1.5, lambda s: s.failed("a", False, 2)),
    (2.0, lambda s: s.failed("b", False, 2)),  # trips
    (2.5, lambda s: s.failed("c", False, 2)),  # late: not counted
    (5.0, lambda s: s.admit(10, 30, "d")),  # rejected, 7 s left
    (12.0, lambda s: s.admit(10, 30, "p")),  # the probe
    (12.5, lambda s: s.admit(10, 30, "q")),  # rejected: p holds it
    (13.0, lambda s: s.refresh("q", 30)),
    (13.5, lambda s: s.refresh("p", 30)),
    (14.0, lambda s: s.failed("p", True, 2)),  # counted, re-opened
    (30.0, lambda s: s.admit(10, 30, "r")),
    (30.5, lambda s: s.release("r")),
    (31.0, lambda s: s.admit(10, 30, "s")),
    (31.5, lambda s: s.succeeded("s", True, 2)),  # 1 of 2
    (32.0, lambda s: s.admit(10, 30, "t")),
    (32.5, lambda s: s.succeeded("t", True, 2)),  # closes
    (33.0, lambda s: s.force(OPEN, True)),
    (34.0, lambda s: s.force(OPEN, True)),  # already open: opened_at stays 33.0
    (35.0, lambda s: s.force(HALF_OPEN)),
    (36.0, lambda s: s.force(CLOSED)),
    # An unverified close (a recovery's reset step): a lease that lapses to open by itself.
    (37.0, lambda s: s.force(CLOSED, lease_owner="rec", lease_seconds=5)),
    (38.0, lambda s: s.admit(10, 30, "u")),  # pending: counts as closed
    (39.0, lambda s: s.close_lease("rec", "extend", 5)),  # until 44
    (40.0, lambda s: s.failed("u", False, 2)),  # counted while closed
    (45.0, lambda s: s.admit(10, 30, "v")),  # lapsed at 44: open, rejected until 54
    (46.0, lambda s: s.close_lease("rec", "confirm")),  # too late: not held
    (47.0, lambda s: s.force(CLOSED, lease_owner="rec2", lease_seconds=5)),
    (48.0, lambda s: s.close_lease("other", "revoke")),  # not the owner: nothing
    (49.0, lambda s: s.close_lease("rec2", "confirm")),  # verified: truly closed
    (60.0, lambda s: s.admit(10, 30, "w")),
    (61.0, lambda s: s.force(CLOSED, lease_owner="rec3", lease_seconds=5)),
    (62.0, lambda s: s.close_lease("rec3", "revoke")),  # re-opened now
    (63.0, lambda s: s.force(CLOSED, lease_owner="rec4", lease_seconds=2)),
    (64.0, lambda s: s.failed("x", False, 1)),  # trips mid-verification: the lease goes
    (65.0, lambda s: s.force(CLOSED, lease_owner="rec5", lease_seconds=2)),
    (70.0, lambda s: s.succeeded("x", False, 1)),  # lapsed at 67: a late success changes nothing
    (71.0, lambda s: s.force(OPEN, True)),  # trip keeps opened_at 67
]


def replay(store: BreakerStore, now: list[float]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for at, step in SEQUENCE:
        now[0] = at
        answer = step(store)
        snap = store.snapshot()
        out.append(
            (
                at,
                answer,
                snap.state,
                snap.fail_counter,
                snap.success_counter,
                snap.opened_at,
                snap.probe_holder,
                snap.close_lease_owner,
                snap.close_lease_seconds,
            )
        )
    return out


def test_lua_scripts_follow_the_core(redis_url: str) -> None:
    now = [0.0]
    memory = replay(MemoryBreakerStore("parity", 3600, lambda: now[0]), now)
    lua = replay(RedisBreakerStore("parity", redis_url, 3600, lambda: now[0]), now)
    for expected, got in zip(memory, lua, strict=True):
        assert got == expected
    assert memory[11][3] == 3 and memory[11][2] == OPEN  # the failed probe was counted
    by_time = {row[0]: row for row in memory}
    assert by_time[45.0][2] == OPEN and by_time[45.0][5] == 44.0  # lapsed: opened at the lease's end
    assert by_time[49.0][1] is True and by_time[49.0][7] is None  # confirmed: no lease left
    assert by_time[71.0][2] == OPEN and by_time[71.0][5] == 67.0
