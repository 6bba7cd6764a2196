"""Monitor decisions: turn a batch of probe results into counters and recovery decisions.

A target is recovered when its consecutive failures reach ``failure_threshold`` *and* this
monitor wins the target's lock. The lock is taken here, before any subflow starts, so two
monitors started at the same moment run one recovery between them and the loser does nothing
(no refused audit row for a race that is normal operation).

Degraded, not silent: when shared state cannot be reached, or the cycle's deadline passes,
the remaining targets are still decided, as ``deferred`` with a note saying why, and nothing
more is asked of Redis this cycle (one timeout per cycle, not one per target).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from recovery.backends.rate import RateStore, rate_store_for
from recovery.backends.state import HealthCounters, SharedState
from recovery.blocking import blocking, submit_detached
from recovery.client.breakers import open_breaker
from recovery.config.graph import layers
from recovery.config.loader import RecoveryConfig
from recovery.engine import escalation
from recovery.engine.dependencies import note_blocked, refuse_once, waiting_for
from recovery.engine.probing import PROBE_TIMED_OUT, probe_targets
from recovery.engine.workflows import select_workflow
from recovery.enums import MonitorAction
from recovery.errors import StateUnavailable
from recovery.jsonable import to_json
from recovery.kinds.base import ProbeResult
from recovery.policy.flapping import FlapStatus, evaluate
from recovery.redact import redact
from recovery.services import services_for

logger = logging.getLogger("recovery.monitor")

STATE_UNAVAILABLE = "recovery deferred: state unavailable"
CYCLE_DEADLINE = "recovery deferred: cycle deadline passed"
PROBE_CUT_OFF = "recovery deferred: probe timed out"


@dataclass(frozen=True)
class Decision:
    target: str
    healthy: bool
    reason: str
    failures: int
    successes: int
    action: MonitorAction
    workflow: str | None = None
    lock_token: str | None = None
    first_failure_at: float | None = None
    # Epoch seconds at which this monitor decided to recover (took the lock): the audit row's
    # ``detected_at``, so MTTD ends here and does not include the recovery flow's start-up.
    detected_at: float | None = None
    flapping: bool = False  # recovery/flapping.py: automatic recovery is held off while set
    flap_percent: float = 0.0
    flap_started: bool = False  # this probe made the target flapping (escalate)
    resumed: bool = False  # healthy again with no recovery running: the monitor cleared "paused"
    note: str | None = None  # why a ``deferred`` decision was deferred
    blocked_by: str | None = None  # the dependency (depends_on) this target waits for
    rung: int | None = None  # escalation ladder: the rung (1-based) started now / last started
    rungs: int = 0  # escalation ladder: how many rungs the target has (0: no ladder)

    def as_json(self) -> dict[str, Any]:
        return to_json(self, exclude=("lock_token", "first_failure_at", "detected_at", "flap_started"))


def deferred(result: ProbeResult, note: str) -> Decision:
    """A target this cycle records nothing for: its probe is reported, its counters unknown."""
    return Decision(
        result.target, result.healthy, result.reason, 0, 0, MonitorAction.DEFERRED, note=note
    )  # fmt: skip


def _flap_status(
    config: RecoveryConfig, state: SharedState, result: ProbeResult, now: float
) -> FlapStatus | None:
    """Push the probe into the target's history and apply the flap thresholds (None: disabled)."""
    if not config.monitor.flap_detection:
        return None
    try:
        history = state.push_probe_history(result.target, result.healthy)
        was = state.flapping_since(result.target) is not None
    except NotImplementedError:  # a SharedState without probe history: no flap detection
        return None
    status = evaluate(history, was, config.monitor.flap_low_threshold, config.monitor.flap_high_threshold)
    if status.changed:
        state.set_flapping(result.target, now if status.flapping else None)
    return status


def decide(
    config: RecoveryConfig,
    state: SharedState,
    results: list[ProbeResult],
    now: float | None = None,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    decided: Mapping[str, Decision] | None = None,
) -> list[Decision]:
    """Record every probe in shared state and decide which targets to recover now.

    ``deadline`` (``clock()`` time): targets not reached by then are deferred unrecorded. The
    first ``StateUnavailable`` defers that target and every later one without another call.
    Dependencies are decided before their dependents (``depends_on``); ``decided``: decisions
    of this cycle made by an earlier call (``decide_by`` decides layer by layer). Returned in
    the order of ``results``.
    """
    now = time.time() if now is None else now
    seen: dict[str, Decision] = dict(decided or {})
    decisions: list[Decision] = []
    rates = rate_store_for(state)
    healthy: list[str] = []
    skip: str | None = None  # set: defer every remaining target with this note
    position = {r.target: i for i, r in enumerate(results)}
    if any(t.depends_on for t in config.targets):
        rank = {name: depth for depth, names in enumerate(layers(config.targets)) for name in names}
        results = sorted(results, key=lambda r: rank.get(r.target, 0))  # stable: roots first
    for result in results:
        if skip is None and deadline is not None and clock() >= deadline:
            skip = CYCLE_DEADLINE
        if skip is not None:
            decisions.append(deferred(result, skip))
        elif result.reason == PROBE_TIMED_OUT and not result.healthy:
            # The monitor stopped waiting, the target did not fail a probe: nothing to count.
            decisions.append(deferred(result, PROBE_CUT_OFF))
        else:
            try:
                decisions.append(_decide_one(config, state, rates, result, now, seen))
            except StateUnavailable as exc:
                logger.warning("shared state unavailable, deferring recoveries: %s", redact(str(exc)))
                skip = STATE_UNAVAILABLE
                decisions.append(deferred(result, skip))
                continue
            if result.healthy:
                healthy.append(result.target)
        seen[result.target] = decisions[-1]
    decisions.sort(key=lambda d: position[d.target])
    if skip is not STATE_UNAVAILABLE:
        # AIMD: each healthy cycle raises a lowered request rate by one step (one round trip).
        with contextlib.suppress(StateUnavailable):  # a missed raise is caught up next cycle
            rates.raise_rates(healthy, now)
    return decisions


def _decide_one(
    config: RecoveryConfig,
    state: SharedState,
    rates: RateStore,
    result: ProbeResult,
    now: float,
    decided: Mapping[str, Decision],
) -> Decision:
    counters: HealthCounters = state.record_probe(result.target, result.healthy, result.reason, now)
    if not result.healthy and result.rate_limited:
        # Keep what the dependency announced (reset time, limit) for rate-limit-recovery.
        ttl = getattr(config.target(result.target), "rate_limit", None)
        rates.note_limited(
            result.target,
            now,
            result.retry_after_seconds,
            result.rate_limit_per_second,
            ttl.ttl_seconds if ttl is not None else 86400.0,
        )
    flap = _flap_status(config, state, result, now)
    target = config.target(result.target)
    # A dependency down explains this failure: no recovery, no flap or ladder escalation for it.
    settled = result.healthy and counters.successes >= config.monitor.success_threshold
    waiting = None
    if target.depends_on and not settled:  # settled: reset_incident below clears the mark
        waiting = None if result.healthy else waiting_for(config, state, target, decided)
        note_blocked(config, state, target, waiting)
    base = Decision(
        target=result.target,
        healthy=result.healthy,
        reason=result.reason,
        failures=counters.failures,
        successes=counters.successes,
        action=MonitorAction.NONE,
        first_failure_at=counters.first_failure_at,
        flapping=flap.flapping if flap else False,
        flap_percent=flap.percent if flap else 0.0,
        flap_started=bool(flap and flap.started and waiting is None),
        blocked_by=waiting,
        rungs=len(target.escalation),
    )
    if result.healthy:
        # A paused flag whose recovery died (or never resumed) must not outlive the outage:
        # success_threshold good probes in a row and no lock held clear it (invariant I3).
        resumed = settled and state.resume_if_idle(result.target)
        if settled:
            escalation.reset_incident(state, target)  # the next failure is a new incident
        return replace(base, resumed=resumed)
    if counters.failures < config.monitor.failure_threshold:
        return replace(base, action=MonitorAction.BELOW_THRESHOLD)
    if waiting is not None:
        first = target.escalation[0] if target.escalation else select_workflow(target, result).name
        refuse_once(config, state, target, waiting, first, str(uuid.uuid4()))
        return replace(base, action=MonitorAction.BLOCKED, note=f"blocked by {waiting}")
    if base.flapping:
        # Recovering a flapping target again and again hides the real fault: hold off and
        # let the flow escalate (target.flapping event) so a person looks.
        return replace(base, action=MonitorAction.FLAPPING)
    token = str(uuid.uuid4())
    # The token is new: the lock held under it means our SET landed and its reply was lost
    # (redis-py retried the dropped connection), not that a recovery is in progress.
    locked = state.acquire_lock(target.name, token, config.monitor.lock_ttl_seconds)
    if not locked and state.lock_owner(target.name) != token:
        return replace(base, action=MonitorAction.IN_PROGRESS)
    try:
        # Under the lock no run of an earlier rung is alive: its outcome is final (or never came).
        # Read inside the try: a ladder Redis cannot read starts no rung, so the lock goes back.
        rung = escalation.next_rung(state, target) if target.escalation else None
        spec = (
            select_workflow(target, result)
            if rung is None
            else escalation.rung_workflow(config, target, rung)
        )
    except BaseException:
        state.release_lock(target.name, token)
        raise
    if spec is None:  # every rung ran and failed: nothing automatic is left to try
        state.release_lock(target.name, token)
        return replace(base, action=MonitorAction.EXHAUSTED, rung=len(target.escalation))
    # The target is confirmed down: tell the application (paused flag, open breaker) so it
    # degrades or fails fast instead of piling requests onto a failing dependency.
    try:
        state.set_paused(target.name, f"monitor: {result.reason}")
        if rung is not None:
            escalation.start_rung(state, target, rung, token)
    except StateUnavailable:
        # No recovery will start for this lock: give it back (or let its TTL expire).
        with contextlib.suppress(StateUnavailable):
            state.release_lock(target.name, token)
        raise
    # The breaker is advisory here; the recovery's reset step reports Redis trouble.
    with contextlib.suppress(StateUnavailable):
        open_breaker(services_for(config).breaker(target))
    return replace(
        base,
        action=MonitorAction.RECOVER,
        workflow=spec.name,
        lock_token=token,
        rung=rung,
        detected_at=time.time(),
    )


def release_recovery_lock(config: RecoveryConfig, decision: Decision) -> bool:
    """The recovery subflow started for ``decision`` has ended (invariant I4): drop the lock the
    monitor took for it if it is still held under the decision's token; True if it was.

    A run that began released it in ``finish()``; this catches a subflow that never started or
    whose ``begin()`` failed, which would otherwise block the target for the lock's whole TTL
    (and keep its row unreconciled). The token is this decision's alone, so no other run's lock
    can be released; once the subflow ended nothing else uses it. Never raises."""
    if decision.lock_token is None:
        return False
    try:
        return services_for(config).state.release_lock(decision.target, decision.lock_token)
    except StateUnavailable:  # the cycle goes on; the lock's TTL is the backstop
        return False


def release_unstarted(config: RecoveryConfig, decisions: list[Decision]) -> None:
    """Give back the locks of ``recover`` decisions no recovery will be started for."""
    for d in decisions:
        if d.action is MonitorAction.RECOVER:
            release_recovery_lock(config, d)


async def decide_by(
    config: RecoveryConfig, state: SharedState, results: list[ProbeResult], deadline: float
) -> list[Decision]:
    """``decide`` on a worker thread, answered by ``deadline`` (``time.monotonic()``).

    ``decide`` itself stops starting targets at the deadline; a state call already in flight
    then ends within ``state_timeout_seconds``, so this waits that long again (twice: a dropped
    connection is retried once). If even that passes, every target is reported deferred and the
    decisions that arrive later have their locks released: no recovery is started for them.

    With ``depends_on`` in the config, targets are decided layer by layer, dependencies first;
    a dependent that failed its probe while every dependency of it is now healthy is probed
    again before it is decided (its failure may have been the dependency's), while the deadline
    allows.
    """
    if not any(t.depends_on for t in config.targets):
        return await _decide_within(config, state, results, deadline, {})
    by_name = {r.target: r for r in results}
    decided: dict[str, Decision] = {}
    for names in layers(config.targets):
        batch = [by_name[n] for n in names if n in by_name]
        if batch:
            batch = await _reprobe(config, batch, decided, deadline)
            for d in await _decide_within(config, state, batch, deadline, decided):
                decided[d.target] = d
    return [decided[r.target] for r in results]


async def _reprobe(
    config: RecoveryConfig, batch: list[ProbeResult], decided: Mapping[str, Decision], deadline: float
) -> list[ProbeResult]:
    """Probe again the failed dependents whose dependencies all decided healthy this cycle."""
    again = [
        r.target
        for r in batch
        if not r.healthy
        and r.reason != PROBE_TIMED_OUT
        and config.target(r.target).depends_on
        and all(
            dep in decided and decided[dep].healthy and decided[dep].action is MonitorAction.NONE
            for dep in config.target(r.target).depends_on
        )
    ]
    # Half of what is left: the other half records them (a state call takes milliseconds; a
    # frozen one is cut off by decide_by's grace, not by this reserve).
    left = (deadline - time.monotonic()) / 2
    if not again or left <= 0:
        return batch
    fresh = await probe_targets([config.target(n) for n in again], config.monitor.probe_concurrency, left)
    by_name = {r.target: r for r in fresh if r.reason != PROBE_TIMED_OUT}
    return [by_name.get(r.target, r) for r in batch]


async def _decide_within(
    config: RecoveryConfig,
    state: SharedState,
    results: list[ProbeResult],
    deadline: float,
    decided: Mapping[str, Decision],
) -> list[Decision]:
    grace = 2 * config.state_timeout_seconds
    task = asyncio.ensure_future(
        blocking(decide, config, state, results, deadline=deadline, decided=dict(decided))
    )
    try:
        done, _ = await asyncio.wait({task}, timeout=max(deadline - time.monotonic(), 0.0) + grace)
    finally:
        if not task.done():
            task.add_done_callback(lambda t: _release_late(config, t))
    if task in done:
        return task.result()
    return [deferred(r, CYCLE_DEADLINE) for r in results]


def _release_late(config: RecoveryConfig, task: asyncio.Future[list[Decision]]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    submit_detached(release_unstarted, config, task.result())  # a callback must not block the loop
