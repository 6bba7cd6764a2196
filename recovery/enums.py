"""Run types, run and step states, monitor actions: spelled once, used everywhere.

They are ``StrEnum``s so they compare equal to, and serialise as, the strings already stored in
the audit database, Redis and Prefect parameters (``RunType.MANUAL == "manual"``).
"""

from __future__ import annotations

from enum import StrEnum


class RunType(StrEnum):
    """Who or what started a recovery."""

    AUTOMATIC = "automatic"  # the monitor, after failure_threshold failed probes
    MANUAL = "manual"  # a person or system, through the UI, CLI or REST API
    SCHEDULED = "scheduled"  # a deployment's schedule
    EMERGENCY = "emergency"  # a person, bypassing time windows and breaker alignment

    @property
    def unattended(self) -> bool:
        """Nobody is watching: budgets and escalation apply."""
        return self in (RunType.AUTOMATIC, RunType.SCHEDULED)


MANUAL_RUN_TYPES = (RunType.MANUAL, RunType.EMERGENCY, RunType.SCHEDULED)


class RunState(StrEnum):
    """The audit row's ``state``."""

    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REFUSED = "refused"

    @property
    def finished(self) -> bool:
        return self is not RunState.IN_PROGRESS


class StepState(StrEnum):
    """A step row's ``state``."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class MonitorAction(StrEnum):
    """What the monitor decided for one target in one cycle."""

    NONE = "none"  # healthy
    BELOW_THRESHOLD = "below-threshold"  # failing, not yet failure_threshold times in a row
    RECOVER = "recover"  # locked: a recovery flow starts now
    IN_PROGRESS = "in-progress"  # another recovery holds the target's lock
    FLAPPING = "flapping"  # flapping: escalated, no automatic recovery meanwhile
    BLOCKED = "blocked"  # a dependency (depends_on) is unhealthy or recovering: waiting for it
    EXHAUSTED = "escalation-exhausted"  # every rung of the escalation ladder ran; a person must act
    # Nothing recorded or decided this cycle (shared state unavailable, the cycle's deadline
    # passed, the probe did not finish in time); the decision's ``note`` says which. Next cycle.
    DEFERRED = "deferred"
