"""Dependency-aware recovery: ``depends_on: [orders-db]`` on a target.

While a target it depends on (transitively) is unhealthy or recovering, the target's own
recovery is not started: ten APIs failing because their database is down need the database
recovered, not ten API recoveries. The monitor decides dependencies first (config/graph.py
``layers``), so a dependent's decision sees what its dependencies' were this cycle.

Shared state: ``keys.blocked_key`` names the dependency waited for (the status board's
``blocked by ...``; TTL'd, refreshed each cycle); ``keys.waiting_key`` remembers that this
incident's ``refused: waiting for ...`` audit row is written (once per incident, not per cycle),
until the target has been healthy for ``success_threshold`` probes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Protocol

from recovery.backends.keys import INCIDENT_TTL_SECONDS, blocked_key, waiting_key
from recovery.backends.state import SharedState
from recovery.config.graph import upstream
from recovery.config.loader import RecoveryConfig, TargetConfig
from recovery.engine.runtime import RecoveryRequest, refuse
from recovery.enums import MonitorAction, RunType
from recovery.errors import StateUnavailable
from recovery.redact import redact
from recovery.services import services_for

logger = logging.getLogger("recovery.monitor")

# A dependency is down when its decision this cycle was one of these (or it probed unhealthy).
_DOWN = (MonitorAction.RECOVER, MonitorAction.IN_PROGRESS, MonitorAction.BLOCKED, MonitorAction.EXHAUSTED)


class Outcome(Protocol):
    """What this needs of a monitor ``Decision`` (monitor.py imports this module)."""

    @property
    def healthy(self) -> bool: ...
    @property
    def action(self) -> MonitorAction: ...


def waiting_for(
    config: RecoveryConfig, state: SharedState, target: TargetConfig, decided: Mapping[str, Outcome]
) -> str | None:
    """The first of ``target``'s dependencies, roots first, that is unhealthy or recovering
    (None: all are up). ``decided``: this cycle's decisions so far; a dependency not decided
    this cycle (deferred) counts by its last recorded probe; a healthy one by its lock (a
    recovery still verifying it)."""
    for dep in upstream(config.targets, target.name):
        d = decided.get(dep)
        if d is None or d.action is MonitorAction.DEFERRED:
            health = state.health(dep)
            if health is not None and not health.healthy:
                return dep
        elif not d.healthy or d.action in _DOWN:
            return dep
        if state.lock_owner(dep) is not None:
            return dep
    return None


def blocked_ttl(config: RecoveryConfig) -> float:
    """The board's ``blocked by`` outlives a few cycles only: a stopped monitor leaves no stale one."""
    return max(3 * config.monitor.interval_seconds, 60.0)


def note_blocked(config: RecoveryConfig, state: SharedState, target: TargetConfig, dep: str | None) -> None:
    """Show (or clear) ``blocked by dep`` on the status board."""
    if dep is None:
        state.clear_marks([blocked_key(target.name)])
    else:
        state.put_mark(blocked_key(target.name), dep, blocked_ttl(config))


def refuse_once(
    config: RecoveryConfig, state: SharedState, target: TargetConfig, dep: str, workflow: str, run_id: str
) -> bool:
    """Audit ``refused: waiting for dep`` unless this incident's refusal is recorded; True if
    written now. The mark is taken first (one monitor of many writes it), and given back if the
    audit write fails, so the next cycle tries again: no refusal goes unrecorded."""
    if not state.put_mark(waiting_key(target.name), run_id, INCIDENT_TTL_SECONDS, only_new=True):
        return False
    request = RecoveryRequest(target.name, workflow, RunType.AUTOMATIC, requested_by="monitor")
    try:
        refuse(services_for(config).audit, request, workflow, f"waiting for {dep}", run_id)
    except Exception as exc:
        logger.warning("%s: refusal not audited yet: %s", target.name, redact(str(exc)))
        with contextlib.suppress(StateUnavailable):  # the mark's TTL is the backstop
            state.clear_marks([waiting_key(target.name)])
        return False
    return True
