"""Admission: may this recovery start now, and with which retry plan?

``RecoveryRuntime.begin`` calls ``admit`` right after it holds the target's lock. It reads what
the target's strategy needs (and nothing else): the time-window history, the audit history, the
breaker, the rate-limit reset time; asks the pure strategy objects (``recovery.policy.strategies``) for
a decision and a plan; then commits the decision's reservations atomically across workers:

* a time-window slot: one Lua script trims the window, counts and adds only if under the limit
  (``recovery.backends.window.RecoveryWindow``, a sorted set of start times per target). An
  emergency run is counted but never refused;
* the breaker's half-open probe lease (``FleetBreaker.try_probe``): the recovery *is* the probe,
  so no application worker probes at the same time.

``Admission.settle`` is called when the run finishes: a successful probe closes the breaker, a
failed one re-opens it (a new reset timeout), a cancelled one gives the lease back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC

from recovery.audit.store import AuditStore
from recovery.backends.rate import rate_store_for
from recovery.backends.state import SharedState
from recovery.backends.window import RecoveryWindow, recovery_window
from recovery.client.breakers import FleetBreaker, breaker_for_target
from recovery.config.loader import RecoveryConfig, TargetConfig
from recovery.errors import StateUnavailable
from recovery.policy.strategies import (
    BreakerView,
    PastRun,
    RetryPlan,
    StrategyDecision,
    StrategyInput,
    build_strategy,
    leaf_configs,
    retry_plan,
    strategy_kinds,
    with_budget,
)

HISTORY_LIMIT = 100


@dataclass
class Admission:
    """A strategy decision for one run, and what it holds until the run settles."""

    target: str
    owner: str
    decision: StrategyDecision
    plan: RetryPlan
    probe: FleetBreaker | None = None  # holds the half-open probe lease
    window: RecoveryWindow | None = None  # took a slot
    settled: bool = field(default=False)

    @property
    def allowed(self) -> bool:
        return self.decision.allowed

    def refresh(self) -> None:
        """Each step attempt extends the probe lease (never raises: the lease is advisory)."""
        if self.probe is not None:
            with contextlib.suppress(StateUnavailable):
                self.probe.refresh_probe(self.owner)

    def settle(self, outcome: str) -> None:
        """The run ended (succeeded | failed | cancelled | not-started); never raises."""
        if self.settled:
            return
        self.settled = True
        try:
            if self.probe is not None:
                ok = {"succeeded": True, "failed": False}.get(outcome)
                self.probe.end_probe(self.owner, ok)
            if self.window is not None and outcome == "not-started":
                self.window.give_back(self.target, self.owner, time.time())
        except StateUnavailable:
            pass  # the lease and the window entry expire on their own


def strategy_input(
    config: RecoveryConfig,
    target: TargetConfig,
    run_type: str,
    state: SharedState,
    audit: AuditStore | None,
    now: float,
) -> StrategyInput:
    """Read exactly what ``target``'s strategy looks at."""
    strategy_config = with_budget(config.strategy_for(target))
    kinds = strategy_kinds(strategy_config)
    recent: tuple[float, ...] = ()
    history: tuple[PastRun, ...] = ()
    breaker_view = None
    retry_after = None
    if "time_window" in kinds:
        longest = max(getattr(c, "window_seconds", 0.0) for c in leaf_configs(strategy_config))
        recent = recovery_window(state).recent(target.name, now, longest)
    if "adaptive" in kinds and audit is not None:
        history = tuple(
            PastRun(r.started_at.astimezone(UTC).timestamp(), r.state, r.error_type, r.error_message)
            for r in audit.history(target.name, HISTORY_LIMIT)
            if not r.dry_run
        )
        rate = rate_store_for(state).read(target.name)
        if rate is not None and rate.reset_at is not None and rate.reset_at > now:
            retry_after = rate.reset_at - now
    if "breaker_aligned" in kinds:
        snap = breaker_for_target(config, target.name).snapshot()
        breaker_view = BreakerView(
            snap.state, snap.opened_at, target.breaker.reset_timeout_seconds, snap.probe_holder
        )
    return StrategyInput(target.name, run_type, now, recent, history, breaker_view, retry_after)


def admit(
    config: RecoveryConfig,
    target: TargetConfig,
    run_type: str,
    owner: str,
    state: SharedState,
    audit: AuditStore | None = None,
    clock: Callable[[], float] = time.time,
) -> Admission:
    """Decide and reserve. The caller holds the target's lock; ``owner`` is the run's lock owner."""
    strategy = build_strategy(
        with_budget(config.strategy_for(target)), breaker_reset_seconds=target.breaker.reset_timeout_seconds
    )
    inp = strategy_input(config, target, run_type, state, audit, clock())
    decision = strategy.decide(inp)
    admission = Admission(target.name, owner, decision, retry_plan(strategy, inp))
    if not decision.allowed:
        return admission
    if decision.probe_lease:
        breaker = breaker_for_target(config, target.name)
        # A short lease (probe_lease_seconds), refreshed by every step attempt: a recovery that
        # crashed cannot keep the application's calls rejected for the lock's whole TTL.
        ticket = breaker.try_probe(owner)
        if ticket.verdict != "probe":
            held = (
                f"held by {ticket.holder}" if ticket.holder else f"open for {ticket.retry_in or 0:.1f}s more"
            )
            admission.decision = StrategyDecision(
                False,
                f"breaker_aligned: another worker took the half-open probe of {target.name} first ({held})",
                "breaker_aligned",
                retry_after_seconds=ticket.retry_in,
            )
            return admission
        admission.probe = breaker
    if decision.window_slots:
        window = recovery_window(state)
        full = window.take(target.name, owner, inp.now, decision.window_slots)
        if full is not None:
            admission.settle("cancelled")
            admission.decision = StrategyDecision(
                False,
                f"time_window: {full.max_recoveries} recoveries of {target.name} in the last "
                f"{full.window_seconds:g}s (max {full.max_recoveries}); escalating",
                "time_window",
                escalate=True,
            )
            return admission
        admission.window = window
    return admission
