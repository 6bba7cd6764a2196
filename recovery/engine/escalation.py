"""Escalation ladders: ``escalation: [wf1, wf2, ...]`` on a target.

The first detection of an incident runs rung 1; each new detection of the same incident runs
the next rung if the previous one ended ``failed``, ``refused`` or ``cancelled`` (or its process
died and never said), the same rung again if it ``succeeded`` (the target failed anew before it
was healthy for long). Past the last rung the monitor starts nothing more for the incident; the
last rung's end emits ``recovery.escalation-exhausted`` (flows/signals.py). The ladder resets once
the target has been healthy for ``monitor.success_threshold`` probes in a row.

Where the rung lives: one JSON string in shared state (``keys.ladder_key``, TTL'd), written by
the monitor under the target's lock when it starts a rung, and by the run when it ends. The run
finds its rung there by the monitor's lock token, so no flow parameter carries it and a process
restart loses nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from recovery.backends.keys import INCIDENT_TTL_SECONDS, blocked_key, ladder_key, waiting_key
from recovery.backends.state import SharedState
from recovery.config.loader import RecoveryConfig, TargetConfig
from recovery.engine.workflows import WorkflowSpec, workflows
from recovery.errors import ConfigError, clip

RUNNING = "running"
SUCCEEDED = "succeeded"


def known_workflows(config: RecoveryConfig) -> Mapping[str, WorkflowSpec]:
    """Every workflow a rung of ``config`` may name (built-in and the config's own): the one
    lookup the ladder checks use."""
    return workflows(config)


def rung_problem(config: RecoveryConfig, target: TargetConfig, name: str) -> str | None:
    """Why workflow ``name`` cannot be a rung of ``target`` (None: it can)."""
    spec = known_workflows(config).get(name)
    if spec is None:
        return f"unknown workflow '{clip(name)}'"
    if target.kind not in spec.kinds:
        return f"'{clip(name)}' cannot recover a {target.kind} target"
    if spec.manual:
        return f"'{clip(name)}' is a manual operation, not an automatic recovery"
    return None


def check_escalation(config: RecoveryConfig) -> None:
    """Every rung of every target names a workflow that can recover its kind; else exit 2."""
    for i, target in enumerate(config.targets):
        for j, name in enumerate(target.escalation):
            problem = rung_problem(config, target, name)
            if problem is not None:
                raise ConfigError(f"targets[{i}].escalation[{j}]", problem)


@dataclass(frozen=True)
class Ladder:
    """Where a target's incident is on its ladder."""

    rung: int  # 1-based: the rung last started
    token: str  # the monitor's lock token of that rung's run
    outcome: str  # running, or how that run ended (a RunState)

    def dump(self) -> str:
        return json.dumps({"rung": self.rung, "token": self.token, "outcome": self.outcome})

    @classmethod
    def load(cls, raw: str | None) -> Ladder | None:
        if raw is None:
            return None
        try:
            d = json.loads(raw)
            return cls(int(d["rung"]), str(d["token"]), str(d["outcome"]))
        except (ValueError, KeyError, TypeError):  # unreadable: start the ladder over
            return None


def next_rung(state: SharedState, target: TargetConfig) -> int:
    """The rung (1-based) the next recovery of ``target`` runs; ``len(escalation) + 1`` when the
    ladder is exhausted. Call under the target's lock: no run of a previous rung is alive."""
    ladder = Ladder.load(state.get_marks([ladder_key(target.name)])[0])
    if ladder is None:
        return 1
    return ladder.rung if ladder.outcome == SUCCEEDED else ladder.rung + 1


def rung_workflow(config: RecoveryConfig, target: TargetConfig, rung: int) -> WorkflowSpec | None:
    """The workflow of rung ``rung`` (None: past the last rung); a bad rung is a config error."""
    if rung > len(target.escalation):
        return None
    name = target.escalation[rung - 1]
    problem = rung_problem(config, target, name)
    if problem is not None:
        index = config.targets.index(target)
        raise ConfigError(f"targets[{index}].escalation[{rung - 1}]", problem)
    return known_workflows(config)[name]


def start_rung(state: SharedState, target: TargetConfig, rung: int, token: str) -> None:
    """Record that rung ``rung`` starts under the monitor's lock ``token``."""
    state.put_mark(ladder_key(target.name), Ladder(rung, token, RUNNING).dump(), INCIDENT_TTL_SECONDS)


def rung_of(state: SharedState, target: TargetConfig, token: str | None) -> int | None:
    """The rung a run holding ``token`` is (None: not a ladder run, e.g. a manual one)."""
    if not target.escalation or token is None:
        return None
    ladder = Ladder.load(state.get_marks([ladder_key(target.name)])[0])
    return ladder.rung if ladder is not None and ladder.token == token else None


def end_rung(state: SharedState, target: TargetConfig, token: str | None, outcome: str) -> None:
    """The run of the current rung ended ``outcome``; a run that is not the current rung's
    (manual, or a stale token) changes nothing."""
    if not target.escalation or token is None:
        return
    ladder = Ladder.load(state.get_marks([ladder_key(target.name)])[0])
    if ladder is not None and ladder.token == token:
        fresh = Ladder(ladder.rung, token, outcome).dump()
        state.put_mark(ladder_key(target.name), fresh, INCIDENT_TTL_SECONDS)


def reset_incident(state: SharedState, target: TargetConfig) -> None:
    """Healthy for ``success_threshold`` probes: the next failure is a new incident (rung 1, a
    new "waiting for" refusal). One round trip, only for targets with a ladder or dependencies."""
    if target.escalation or target.depends_on:
        state.clear_marks([ladder_key(target.name), waiting_key(target.name), blocked_key(target.name)])
