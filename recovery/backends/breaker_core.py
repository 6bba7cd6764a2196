"""The breaker's state machine as pure functions: record + event + ``now`` -> new record + answer.

No I/O and no clock reads (``now`` is an argument), so every transition can be tested directly
and both stores apply the same rules: ``MemoryBreakerStore`` runs these functions under a mutex;
``RedisBreakerStore`` runs ``lua/breaker_*.lua``, which mirror them line for line (Lua is what
makes a transition atomic across processes). ``tests/test_breaker_core.py`` replays the same
event sequences on both and compares the results.

Rules (pybreaker's, plus a lease so that exactly one caller probes a half-open breaker, and a
close lease so that a recovery which closed the breaker and then died cannot leave it closed):

    admit      closed -> pass; open before the reset timeout -> reject; otherwise take the probe
               lease (open -> half-open) unless someone holds it -> reject
    succeeded  the probe: +1 success, close at success_threshold; a closed call: reset failures
    failed     closed: count, open at fail_max; the probe: count and re-open; a late failure
               (admitted before the breaker opened, or a lapsed probe) is not counted
    release    a cancelled probe gives its lease back; nothing is counted
    refresh    the lease holder extends its lease
    force      operators and recoveries; ``trip`` leaves an open breaker (and its opened_at) alone;
               a recovery closes *unverified* (``lease_owner``): closed until ``close_lease_until``
    lapse      (every transition and every read) a close lease past its end is an open breaker,
               opened at the lease's end: nobody has to be alive to re-open it
    close_lease the lease owner ``extend``s it (each step attempt), ``confirm``s it (the target was
               verified: truly closed) or ``revoke``s it (re-open now: reconcile, a failed run)
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
    close_lease_owner: str | None = None  # closed, but its recovery has not verified the target
    close_lease_seconds: float | None = None  # until the unverified close lapses to open


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
    # Closed by a recovery that has not verified the target yet (only ever set while closed).
    close_lease_owner: str | None = None
    close_lease_until: float | None = None


def _no_close_lease(record: Record) -> Record:
    return replace(record, close_lease_owner=None, close_lease_until=None)


def _lapse(record: Record, now: float) -> Record:
    """A close lease past its end is an open breaker, opened when the lease ended.

    ``opened_at`` is the lease's end, not ``now``: the reset timeout runs from the moment the
    recovery stopped vouching for the target, however late someone looks.
    """
    until = record.close_lease_until
    if until is None or until > now:
        return record
    reopened = replace(record, state=OPEN, opened_at=until, success_counter=0, changed_at=until)
    return _no_close_lease(reopened)


def _live(record: Record, now: float) -> Record:
    """The record with a lapsed close lease applied and an expired probe lease dropped (Redis
    drops the probe key with ``PX``; every Lua script starts with the same lapse check)."""
    record = _lapse(record, now)
    if record.lease_expires_at is not None and record.lease_expires_at <= now:
        return replace(record, lease_owner=None, lease_expires_at=None)
    return record


def _no_lease(record: Record) -> Record:
    return replace(record, lease_owner=None, lease_expires_at=None)


def _opened(record: Record, now: float) -> Record:
    opened = replace(record, state=OPEN, opened_at=now, success_counter=0, changed_at=now)
    return _no_close_lease(opened)


def _closed(record: Record, now: float) -> Record:
    closed = replace(record, state=CLOSED, fail_counter=0, success_counter=0, opened_at=None, changed_at=now)
    return _no_close_lease(closed)


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


def force(
    record: Record,
    now: float,
    state: str,
    trip: bool = False,
    lease_owner: str | None = None,
    lease_seconds: float = 0.0,
) -> tuple[Record, str]:
    """Move to ``state``; returns the previous state. ``trip`` leaves an open breaker alone.

    ``lease_owner`` (closing only): an unverified close that lapses to open after
    ``lease_seconds`` unless its owner extends or confirms it."""
    if state not in STATES:
        raise ValueError(f"unknown breaker state {state!r}")
    record = _lapse(record, now)
    previous = record.state
    if trip and previous == OPEN:
        return record, previous
    if state == OPEN:
        record = _opened(record, now)
    elif state == HALF_OPEN:
        record = _no_close_lease(replace(record, state=HALF_OPEN, success_counter=0, changed_at=now))
    else:
        record = _closed(record, now)
        if lease_owner is not None:
            record = replace(record, close_lease_owner=lease_owner, close_lease_until=now + lease_seconds)
    return _no_lease(record), previous


CLOSE_LEASE_ACTIONS = ("extend", "confirm", "revoke")


def close_lease(
    record: Record, now: float, owner: str, action: str, lease_seconds: float = 0.0
) -> tuple[Record, bool]:
    """The close lease's owner ``extend``s, ``confirm``s or ``revoke``s it; False if ``owner``
    does not hold it (lapsed, confirmed, or the breaker moved since: then nothing changes)."""
    if action not in CLOSE_LEASE_ACTIONS:
        raise ValueError(f"unknown close-lease action {action!r}")
    record = _live(record, now)
    if record.close_lease_owner != owner:
        return record, False
    if action == "extend":
        return replace(record, close_lease_until=now + lease_seconds), True
    if action == "confirm":
        return _no_close_lease(record), True
    return _opened(record, now), True


def view(record: Record, now: float) -> BreakerSnapshot:
    record = _live(record, now)
    ttl = record.lease_expires_at - now if record.lease_expires_at is not None else None
    until = record.close_lease_until
    return BreakerSnapshot(
        record.state,
        record.fail_counter,
        record.success_counter,
        record.opened_at,
        record.lease_owner,
        ttl,
        record.close_lease_owner,
        until - now if until is not None else None,
    )
