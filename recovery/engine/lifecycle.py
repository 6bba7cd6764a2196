"""One run lifecycle, observed through hooks (stamina's ``RetryDetails`` + ``RetryHook`` model).

The runtime describes each recovery once, as a typed ``RunDetails``, when it starts and when it
ends (succeeded, failed, cancelled or refused). Logging, metrics, Prefect events and the status
board are hooks that turn those details into their own output; the flow layer registers them at
flow start and calls ``emit`` from one ``finally`` path, so no outcome goes unreported because
some other bookkeeping raised first.

A hook must not fail the run it observes: ``emit`` logs and swallows a hook's error.
"""

from __future__ import annotations

import inspect
import logging
import threading
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
    extra: dict[str, object] = field(default_factory=dict)

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


async def emit(details: RunDetails) -> None:
    """Call every hook with ``details``, in registration order; a failing hook is logged only."""
    for hook in hooks():
        try:
            result = hook(details)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            name = getattr(hook, "__qualname__", repr(hook))
            logger.warning("run hook %s failed for %s: %s", name, details.target, redact(str(exc)))
