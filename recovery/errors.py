"""Every exception the core raises, documented in one place (httpx style).

    RecoveryError                 base class; message is always redacted
    ├── ConfigError               bad config/argument; ``field`` names the offending path (CLI exit 2)
    ├── TemporaryError            a step failed but may succeed if retried (Prefect retries it)
    │   ├── ProbeFailed           a verification probe did not pass
    │   ├── StepFailed            a custom step's command/request/deployment failed (+ detail)
    │   └── StateUnavailable      shared state (Redis) could not be reached
    ├── PermanentError            retrying cannot help; the recovery fails at once
    │   ├── IntegrityCheckFailed  a post-recovery check found damage (never "fixed" blindly)
    │   └── EscalationRequired    a person must act (rate-limit reset beyond max_wait_seconds)
    └── RecoveryRefused           a recovery was not started (lock held, budget exhausted, ...)
        └── ApprovalRefused       an approval step was rejected or timed out (+ detail)

Temporary vs permanent follows kopf: the task wrapper retries only ``TemporaryError``; anything
else (including ``PermanentError``) fails the step on its first attempt.
"""

from __future__ import annotations

import re
from typing import Any

from recovery.redact import redact

SHOWN_MAX = 80
# C0/C1 controls, DEL and the Unicode line/paragraph separators: any of them would split an error
# line or let input rewrite a terminal, so an echoed value shows them escaped.
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def has_control_chars(text: str) -> bool:
    """Whether ``text`` holds a character ``clip`` would escape (arguments refuse them)."""
    return _CONTROL_RE.search(text) is not None


def _escape(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def clip(value: object, limit: int = SHOWN_MAX) -> str:
    """``value`` as an error message may echo it: controls escaped, at most ``limit`` characters + "…".

    Input is echoed back to say what was wrong with it; a 100 KB argument or a newline in a key
    must not turn that one line into a page.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<{value.bit_length()}-bit integer>"  # str() of a huge int is slow (and may raise)
    text = value if isinstance(value, str) else str(value)
    if len(text) == limit + 1 and text.endswith("…") and not _CONTROL_RE.search(text):
        return text  # clipped already: showing a message twice must not clip it twice
    escaped = _CONTROL_RE.sub(_escape, text[: limit + 1])
    return escaped if len(escaped) <= limit and len(text) <= limit else escaped[:limit] + "…"


class RecoveryError(Exception):
    """Base of all errors raised by the recovery core.

    String arguments are redacted here, once: the message travels on to places no later
    redaction reaches (Prefect's state messages and its ``repr`` in task-failure logs).
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigError(RecoveryError):
    """Invalid configuration or CLI argument.

    ``field`` is the dotted/indexed path of the offending value (``targets[1].url``) so the CLI
    can print one line that tells the user exactly what to fix.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = redact(message)
        super().__init__(f"{field}: {message}" if field else message)


class TemporaryError(RecoveryError):
    """A failure that retrying with backoff may fix (service still starting, network blip)."""


class ProbeFailed(TemporaryError):
    """A health/verification probe did not pass."""


class StateUnavailable(TemporaryError):
    """The shared state backend (Redis) is unreachable."""


class StepFailed(TemporaryError):
    """A custom step's action failed (exit code, HTTP status, deployment state); retried with the
    target's strategy. ``detail`` (redacted: exit code, output tail...) goes into its step row."""

    def __init__(self, message: str, detail: dict[str, Any]) -> None:
        self.detail = detail
        super().__init__(message)


class PermanentError(RecoveryError):
    """A failure that retrying cannot fix; the step fails on its first attempt."""


class LockLost(PermanentError):
    """This run no longer holds its target's lock (taken over by an emergency, or expired):
    it stops before acting again; whoever holds the lock now owns the target."""


class IntegrityCheckFailed(PermanentError):
    """A post-recovery integrity check failed; the recovery must not be reported as a success."""


class EscalationRequired(PermanentError):
    """Waiting or retrying is not the answer here; the run fails so that a person looks."""


class RecoveryRefused(RecoveryError):
    """The recovery was not started; ``reason`` says why (already in progress, budget...).

    ``escalate`` is set when the refusal needs a person (time-window budget exhausted, the same
    error repeating), as opposed to a normal race (another run holds the lock).
    """

    def __init__(self, reason: str, escalate: bool = False, rung: int | None = None, rungs: int = 0) -> None:
        self.reason = redact(reason)
        self.escalate = escalate
        self.rung = rung  # the escalation ladder's rung this refused run was (None: not a ladder run)
        self.rungs = rungs  # how many rungs the target's ladder has
        super().__init__(reason)


class ApprovalRefused(RecoveryRefused):
    """An approval step was rejected or timed out: the run ends ``refused``; ``detail`` (approver,
    comment) goes into the step row."""

    def __init__(self, reason: str, detail: dict[str, Any]) -> None:
        self.detail = detail
        super().__init__(reason)
