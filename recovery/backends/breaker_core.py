"""The breaker's state machine as pure functions: record + event + ``now`` -> new record + answer.

No I/O and no clock reads (``now`` is an argument), so every transition can be tested directly
and both stores apply the same rules: ``MemoryBreakerStore`` runs these functions under a mutex;
``RedisBreakerStore`` runs ``lua/breaker_*.lua``, which mirror them line for line (Lua is what
makes a transition atomic across processes). ``tests/test_breaker_core.py`` replays the same
event sequences on both and compares the results.

Rules (pybreaker's, plus a lease so that exactly one caller probes a half-open breaker):

    admit      closed -> pass; open before the reset timeout -> reject; otherwise take the probe
               lease (open -> half-open) unless someone holds it -> reject
    succeeded  the probe: +1 success, close at success_threshold; a closed call: reset failures
    failed     closed: count, open at fail_max; the probe: count and re-open; a late failure
               (admitted before the breaker opened, or a lapsed probe) is not counted
    release    a cancelled probe gives its lease back; nothing is counted
    refresh    the lease holder extends its lease
    force      operators and recoveries; ``trip`` leaves an open breaker (and its opened_at) alone
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pybreaker

CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN
STATES = (CLOSED, OPEN, HALF_OPEN)


@dataclass(frozen=True)
class Ticket:
    """What ``admit`` decided for one call: ``pass`` (closed), ``probe`` (holds the lease),
    ``reject``, or ``bypass`` (the state store is down and the breaker fails open)."""

    verdict: str
    state: str  # the state admit saw
    fail_counter: int = 0
    retry_in: float | None = None  # reject while open: seconds until the reset timeout elapses
    holder: str | None = None  # reject while half-open: who holds the probe lease
    owner: str = ""


@dataclass(frozen=True)
class BreakerSnapshot:
    state: str
    fail_counter: int
    success_counter: int
    opened_at: float | None
    probe_holder: str | None
    probe_ttl_seconds: float | None


@dataclass(frozen=True)
class Failure:
    """What a recorded failure did: the state after it, and whether this failure opened it."""

    state: str
    tripped: bool


@dataclass(frozen=True)
class Record:
    """Everything one breaker stores (the Redis hash plus the probe-lease key)."""

    state: str = CLOSED
    fail_counter: int = 0
    success_counter: int = 0
    opened_at: float | None = None  # epoch seconds, sub-second precision
    changed_at: float | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None


def _live(record: Record, now: float) -> Record:
    """The record with an expired probe lease dropped (Redis does this with ``PX``)."""
    if record.lease_expires_at is not None and record.lease_expires_at <= now:
        return replace(record, lease_owner=None, lease_expires_at=None)
    return record


def _no_lease(record: Record) -> Record:
    return replace(record, lease_owner=None, lease_expires_at=None)


def _opened(record: Record, now: float) -> Record:
    return replace(record, state=OPEN, opened_at=now, success_counter=0, changed_at=now)


def _closed(record: Record, now: float) -> Record:
    return replace(record, state=CLOSED, fail_counter=0, success_counter=0, opened_at=None, changed_at=now)


def admit(
    record: Record, now: float, reset_timeout: float, lease_seconds: float, owner: str
) -> tuple[Record, Ticket]:
    record = _live(record, now)
    if record.state == CLOSED:
        return record, Ticket("pass", CLOSED, fail_counter=record.fail_counter, owner=owner)
    if record.state == OPEN:
        opened = record.opened_at if record.opened_at is not None else now
        remaining = opened + reset_timeout - now
        if remaining > 0:
            return record, Ticket("reject", OPEN, retry_in=remaining, owner=owner)
    if record.lease_owner is not None:
        return record, Ticket("reject", HALF_OPEN, holder=record.lease_owner, owner=owner)
    leased = replace(record, lease_owner=owner, lease_expires_at=now + lease_seconds)
    if record.state == OPEN:
        leased = replace(leased, state=HALF_OPEN, success_counter=0, changed_at=now)
    return leased, Ticket("probe", record.state, owner=owner)


def succeeded(
    record: Record, now: float, owner: str, probe: bool, success_threshold: int
) -> tuple[Record, str]:
    """Returns the state after the success."""
    record = _live(record, now)
    if probe:
        if record.state == HALF_OPEN and record.lease_owner == owner:
            record = replace(_no_lease(record), success_counter=record.success_counter + 1)
            if record.success_counter >= success_threshold:
                record = _closed(record, now)
        return record, record.state
    if record.state == CLOSED and record.fail_counter > 0:
        record = replace(record, fail_counter=0)
    return record, record.state


def failed(record: Record, now: float, owner: str, probe: bool, fail_max: int) -> tuple[Record, Failure]:
    record = _live(record, now)
    if probe and record.state == HALF_OPEN and record.lease_owner == owner:
        # The probe failed: counted like any failure (pybreaker), and the breaker re-opens.
        counted = replace(_no_lease(record), fail_counter=record.fail_counter + 1)
        return _opened(counted, now), Failure(OPEN, True)
    if probe or record.state != CLOSED:
        # A late outcome: a probe whose lease lapsed, or a call admitted before another worker
        # opened the breaker. Not counted: the failures that opened it already were, and
        # fail_counter must not run past fail_max (pybreaker's test_fail_max_thread_safety).
        return record, Failure(record.state, False)
    record = replace(record, fail_counter=record.fail_counter + 1)
    if record.fail_counter >= fail_max:
        return _opened(record, now), Failure(OPEN, True)
    return record, Failure(CLOSED, False)


def release(record: Record, now: float, owner: str) -> tuple[Record, None]:
    record = _live(record, now)
    return (_no_lease(record) if record.lease_owner == owner else record), None


def refresh(record: Record, now: float, owner: str, lease_seconds: float) -> tuple[Record, bool]:
    record = _live(record, now)
    if record.lease_owner != owner:
        return record, False
    return replace(record, lease_expires_at=now + lease_seconds), True


def force(record: Record, now: float, state: str, trip: bool = False) -> tuple[Record, str]:
    """Move to ``state``; returns the previous state. ``trip`` leaves an open breaker alone."""
    if state not in STATES:
        raise ValueError(f"unknown breaker state {state!r}")
    previous = record.state
    if trip and previous == OPEN:
        return record, previous
    if state == OPEN:
        record = _opened(record, now)
    elif state == HALF_OPEN:
        record = replace(record, state=HALF_OPEN, success_counter=0, changed_at=now)
    else:
        record = _closed(record, now)
    return _no_lease(record), previous


def view(record: Record, now: float) -> BreakerSnapshot:
    record = _live(record, now)
    ttl = record.lease_expires_at - now if record.lease_expires_at is not None else None
    return BreakerSnapshot(
        record.state,
        record.fail_counter,
        record.success_counter,
        record.opened_at,
        record.lease_owner,
        ttl,
    )
