"""The types every target kind shares: probe results, step contexts, step and workflow specs.

A kind module (``http``, ``database``, ``cache``...) depends on this module only, never on the
probe batch or the engine: what a step needs from the running recovery (probe the target once,
its breaker, shared state, the request's options) comes in through ``StepContext``, which the
engine's ``RecoveryRuntime`` implements. That keeps kinds independent of each other and of the
engine (import-linter contracts in pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import aiohttp

from recovery.backends.state import SharedState
from recovery.client.breakers import FleetBreaker
from recovery.config.loader import RecoveryConfig, TargetConfig
from recovery.jsonable import to_json

# A step's audit detail: a small JSON-able dict, or None when there was nothing to do (the
# step is then recorded as skipped).
Detail = dict[str, Any] | None


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of one probe. ``reason`` is short and stable (``timeout``, ``status 503``...)."""

    target: str
    kind: str
    healthy: bool
    reason: str
    latency_ms: float
    status: int | None = None
    rate_limited: bool = False
    retry_after_seconds: float | None = None
    rate_limit_per_second: float | None = None  # X-RateLimit-Limit / rate_limit.limit_window_seconds

    def as_json(self) -> dict[str, Any]:
        extras = ("status", "rate_limited", "retry_after_seconds", "rate_limit_per_second")
        return to_json(self, exclude=extras, latency_ms=round(self.latency_ms, 1))


@dataclass
class ProbeContext:
    """Shared resources for one probe batch (one HTTP session for all HTTP targets).

    ``http`` is an ``aiohttp.ClientSession``, not the httpx client the rest of the project uses:
    the probe batch is the one hot path (N targets every cycle), see ``recovery.engine.probing``.
    """

    http: aiohttp.ClientSession
    extras: dict[str, Any] = field(default_factory=dict)


# ``Any``: each kind's prober takes its own target model (HttpTarget, DatabaseTarget...); the
# registry dispatches on ``target.kind`` so the model always matches.
Prober = Callable[[Any, ProbeContext], Awaitable[ProbeResult]]


class StepContext(Protocol):
    """What a step function receives: the run's target and config, and its few capabilities.

    Read-only properties, so a class with plain attributes (``RecoveryRuntime``) satisfies it.
    """

    @property
    def config(self) -> RecoveryConfig: ...

    @property
    def target(self) -> TargetConfig: ...

    @property
    def state(self) -> SharedState: ...

    @property
    def options(self) -> Mapping[str, str]: ...  # the request's workflow parameters

    @property
    def run_id(self) -> str: ...

    @property
    def workflow(self) -> str: ...  # the running workflow's name

    @property
    def reason(self) -> str | None: ...  # the request's reason, else what the monitor detected

    async def probe(self) -> ProbeResult:
        """Probe this target once, with the same prober the monitor uses."""
        ...

    def breaker(self) -> FleetBreaker:
        """The target's fleet-wide circuit breaker."""
        ...


# One attempt of a step. Returns the audit detail; raises ``TemporaryError`` to be retried.
StepFn = Callable[[StepContext], Awaitable[Detail]]


@dataclass(frozen=True)
class StepSpec:
    name: str
    description: str
    run: StepFn = field(repr=False, compare=False)
    optional: bool = False  # an optional step's failure is audited but does not fail the run
    retryable: bool = True  # False: one attempt only (diagnostics)
    # Config-defined steps: what ``--dry-run`` shows of the resolved action (argv, URL, deployment;
    # redacted), given the placeholder values (``recovery.kinds.custom``).
    shows: Callable[[Mapping[str, str]], str] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class WorkflowSpec:
    name: str
    kinds: tuple[str, ...]
    steps: tuple[StepSpec, ...]
    description: str
    manual: bool = False  # a manual operation: run on request, never chosen by select_workflow
    # Set: chosen (before the kind's default workflow) only when the last probe matches, e.g.
    # rate-limit-recovery for a 429. Unset: the kind's default when it is the first non-manual one.
    when: Callable[[ProbeResult], bool] | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Kind:
    """One target kind: how to probe it and the workflows that recover it."""

    name: str  # the target model's ``kind`` value
    prober: Prober
    workflows: tuple[WorkflowSpec, ...]

    def with_workflows(self, *specs: WorkflowSpec) -> Kind:
        """This kind plus workflows defined elsewhere (rate-limit-recovery for http)."""
        return replace(self, workflows=self.workflows + specs)
