"""One run lifecycle, observed through hooks (stamina's ``RetryDetails`` + ``RetryHook`` model).

The runtime describes each recovery once, as a typed ``RunDetails``, when it starts and when it
ends (succeeded, failed, cancelled or refused). Logging, metrics, Prefect events and the status
board are hooks that turn those details into their own output; the flow layer registers them at
flow start and calls ``emit`` from one ``finally`` path, so no outcome goes unreported because
some other bookkeeping raised first.

A hook must not fail the run it observes: ``emit`` logs and swallows a hook's error.

A run ends once: ``emit`` delivers the ``FINISHED`` details of a run id to the hooks the first
time only, so the flow's ``finally`` and a crash hook (or a reconcile pass) in the same process
cannot report one outcome twice. Across processes, events carry an id derived from the run id
(flows/signals.py), which Prefect stores and triggers on once.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from recovery.enums import RunState, RunType
from recovery.redact import redact

logger = logging.getLogger("recovery.lifecycle")


class Phase(StrEnum):
    STARTED = "started"
    FINISHED = "finished"


@dataclass(frozen=True)
class RunDetails:
    """What one recovery run is, and (when finished) how it ended."""

    phase: Phase
    target: str
    workflow: str
    run_type: RunType
    run_id: str | None
    state: RunState = RunState.IN_PROGRESS
    duration_seconds: float | None = None
    error: BaseException | str | None = None
    reason: str | None = None  # a refusal's reason
    escalate: bool = False  # a refusal a person must act on (budget spent, same error repeating)
    rung: int | None = None  # escalation ladder: the rung (1-based) this run was; None: no ladder
    rungs: int = 0  # escalation ladder: the target's number of rungs
    first_failure_at: float | None = None  # epoch seconds: names the incident (engine/incidents.py)
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ladder_exhausted(self) -> bool:
        """The last rung of an escalation ladder ended without recovering the target."""
        ended = self.state in (RunState.FAILED, RunState.CANCELLED, RunState.REFUSED)
        return self.phase is Phase.FINISHED and ended and self.rung is not None and self.rung >= self.rungs

    @property
    def error_type(self) -> str | None:
        if isinstance(self.error, BaseException):
            return type(self.error).__name__
        return None if self.error is None else "Error"

    @property
    def error_text(self) -> str | None:
        return None if self.error is None else redact(str(self.error))


RunHook = Callable[[RunDetails], Awaitable[None] | None]

_hooks: list[RunHook] = []
_hooks_lock = threading.Lock()


def add_hook(hook: RunHook) -> None:
    """Register ``hook`` once (registering the same hook again is a no-op: flows call this per run)."""
    with _hooks_lock:
        if hook not in _hooks:
            _hooks.append(hook)


def set_hooks(hooks: list[RunHook]) -> list[RunHook]:
    """Replace every hook; return the previous list (tests restore it)."""
    with _hooks_lock:
        previous = list(_hooks)
        _hooks[:] = hooks
        return previous


def hooks() -> list[RunHook]:
    with _hooks_lock:
        return list(_hooks)


# Run ids whose end was emitted in this process (bounded: a long-lived worker runs many).
_FINISHED_MEMORY = 10_000
_finished: OrderedDict[str, None] = OrderedDict()


def _first_finish(details: RunDetails) -> bool:
    """True unless ``details`` ends a run whose end this process already emitted."""
    if details.phase is not Phase.FINISHED or details.run_id is None:
        return True
    with _hooks_lock:
        if details.run_id in _finished:
            return False
        _finished[details.run_id] = None
        if len(_finished) > _FINISHED_MEMORY:
            _finished.popitem(last=False)
        return True


async def emit(details: RunDetails) -> None:
    """Call every hook with ``details``, in registration order; a failing hook is logged only.

    A run's end is delivered once per process: a second ``FINISHED`` for the same run id is
    dropped (logged at debug level)."""
    if not _first_finish(details):
        logger.debug("end of run %s already emitted; not again", details.run_id)
        return
    for hook in hooks():
        try:
            result = hook(details)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            name = getattr(hook, "__qualname__", repr(hook))
            logger.warning("run hook %s failed for %s: %s", name, details.target, redact(str(exc)))
