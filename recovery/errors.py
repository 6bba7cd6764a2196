"""Every exception the core raises, documented in one place (httpx style).

    RecoveryError                 base class; message is always redacted
    ├── ConfigError               bad config/argument; ``field`` names the offending path (CLI exit 2)
    ├── TemporaryError            a step failed but may succeed if retried (Prefect retries it)
    │   ├── ProbeFailed           a verification probe did not pass
    │   └── StateUnavailable      shared state (Redis) could not be reached
    ├── PermanentError            retrying cannot help; the recovery fails at once
    │   ├── IntegrityCheckFailed  a post-recovery check found damage (never "fixed" blindly)
    │   └── EscalationRequired    a person must act (rate-limit reset beyond max_wait_seconds)
    └── RecoveryRefused           a recovery was not started (lock held, budget exhausted, ...)

Temporary vs permanent follows kopf: the task wrapper retries only ``TemporaryError``; anything
else (including ``PermanentError``) fails the step on its first attempt.
"""

from __future__ import annotations

from typing import Any

from recovery.redact import redact


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


class PermanentError(RecoveryError):
    """A failure that retrying cannot fix; the step fails on its first attempt."""


class IntegrityCheckFailed(PermanentError):
    """A post-recovery integrity check failed; the recovery must not be reported as a success."""


class EscalationRequired(PermanentError):
    """Waiting or retrying is not the answer here; the run fails so that a person looks."""


class RecoveryRefused(RecoveryError):
    """The recovery was not started; ``reason`` says why (already in progress, budget...).

    ``escalate`` is set when the refusal needs a person (time-window budget exhausted, the same
    error repeating), as opposed to a normal race (another run holds the lock).
    """

    def __init__(self, reason: str, escalate: bool = False) -> None:
        self.reason = redact(reason)
        self.escalate = escalate
        super().__init__(reason)
