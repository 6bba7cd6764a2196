"""Who holds a target's lock, and an emergency taking the lock over from an automatic run.

The lock's value stays an opaque owner token (TTL'd, refreshed per step, compared on refresh
and release): nothing about the lock changes. Who the owner *is* comes from the audit row it
writes before acting: every ``in_progress`` row records its ``lock_owner`` (revision 0003), its
``id`` (the audit id) and its ``flow_run_id`` (the Prefect flow run, so a refusal can link to
``/runs/flow-run/<id>``). Between the monitor taking the lock and its subflow writing the row
(a second or so) the holder is "starting": a refusal says so and names no id.

Takeover (``take_over``), only ``emergency`` from ``automatic``:

1. compare-and-set the lock from the automatic run's token to the emergency's
   (``SharedState.takeover_lock``): of two emergencies only one wins, and a lock that changed
   hands since it was read is not taken;
2. finish the automatic row ``cancelled`` ("taken over by <who>: <reason>", error type
   ``TakenOver``), only if it is still ``in_progress`` (``AuditStore.orphan_run``: a
   conditional update, so never spooled); if that write fails, the lock goes back to the
   automatic run and the emergency is refused (no action without a durable record);
3. the caller (the flow layer) asks Prefect to cancel the automatic flow run, best effort: the
   automatic run's next step attempt fails to refresh the lock and stops (``LockLost``) whether
   or not the cancellation arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

from recovery.audit.records import AuditUnavailable
from recovery.audit.store import AuditStore
from recovery.backends.state import SharedState
from recovery.enums import RunType

TAKEN_OVER = "TakenOver"  # error_type of an automatic run's row an emergency took over
NOT_AUDITED = "not taken over: the audit store is unavailable and a takeover needs its record"


@dataclass(frozen=True)
class LockHolder:
    """The run holding a target's lock, as its audit row says (``audit_id`` None: starting)."""

    token: str
    audit_id: str | None = None
    flow_run_id: str | None = None
    run_type: str | None = None
    requested_by: str | None = None
    unaudited: bool = False  # the audit store is unavailable: no takeover (it needs its record)

    def describe(self) -> str:
        """What a refusal names: the flow run (a UI link) and the audit id; never the token."""
        if self.audit_id is None:
            if self.unaudited:
                return f"held by a run the audit store cannot name now; {NOT_AUDITED}"
            return "a recovery is starting (not audited yet); retry in a few seconds"
        who = f"{self.run_type} run" + (f" by {self.requested_by}" if self.requested_by else "")
        flow = ""
        if self.flow_run_id:
            flow = f"flow run {self.flow_run_id} (/runs/flow-run/{self.flow_run_id}), "
        text = f"{who}: {flow}audit run {self.audit_id}"
        return f"{text}; {NOT_AUDITED}" if self.unaudited else text


def lock_holder(state: SharedState, audit: AuditStore, target: str) -> LockHolder | None:
    """Who holds ``target``'s lock now (None: nobody)."""
    token = state.lock_owner(target)
    if token is None:
        return None
    try:
        runs = audit.in_progress()
    except AuditUnavailable:
        # Not known, so never taken over (nor could the takeover be audited): the caller
        # refuses, and its refusal goes to the spool like any audit write.
        return LockHolder(token, unaudited=True)
    for run in runs:
        if run.target == target and run.lock_owner == token:
            return LockHolder(token, run.id, run.flow_run_id, run.type, run.requested_by)
    return LockHolder(token)


def can_take_over(run_type: str, holder: LockHolder) -> bool:
    """Only an emergency takes over, and only from an audited automatic run (never from a
    person's manual or emergency run, nor from one still starting)."""
    audited = holder.audit_id is not None
    return run_type == RunType.EMERGENCY and audited and holder.run_type == RunType.AUTOMATIC


def take_over(
    state: SharedState,
    audit: AuditStore,
    target: str,
    holder: LockHolder,
    owner: str,
    ttl_seconds: float,
    why: str,
) -> bool:
    """Take ``target``'s lock from ``holder`` for ``owner`` and audit it on the holder's row;
    False if the lock changed hands first (the caller re-reads the holder and refuses)."""
    if not state.takeover_lock(target, holder.token, owner, ttl_seconds):
        return False
    assert holder.audit_id is not None  # can_take_over
    try:
        audit.orphan_run(holder.audit_id, TAKEN_OVER, why, state="cancelled")
    except BaseException:
        state.takeover_lock(target, owner, holder.token, ttl_seconds)  # give it back: not audited
        raise
    return True
