"""Secret redaction for URLs, free text, and log records.

Secrets reach output in three ways: inside URLs (``postgresql://u:pw@h/db``, ``?token=...``),
as known configured values (a ``SecretStr`` quoted in an error from a driver), and in
tracebacks. ``redact`` handles all three; ``RedactingFilter`` applies it to every log record,
including Prefect's own handlers, which do no redaction of their own.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

MASK = "***"

# scheme://user:password@host -> scheme://user:***@host (also matches inside free text).
# The password runs to the *last* "@" before the host: "redis://:p@ss@h/0" has password "p@ss".
_USERINFO_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^/\s]+)@")
_SENSITIVE_PARAMS = ("token", "key", "secret", "password", "passwd", "pwd", "auth", "signature", "sig")
_QUERY_RE = re.compile(
    r"(?P<k>[?&;](?:[a-zA-Z0-9_\-]*?)(?:"
    + "|".join(_SENSITIVE_PARAMS)
    + r")[a-zA-Z0-9_\-]*=)(?P<v>[^&#\s'\"]+)",
    re.IGNORECASE,
)

_known_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a secret value so ``redact`` masks it wherever it appears verbatim."""
    # Very short values would mask ordinary words/digits everywhere; those are not secrets worth
    # the damage and should not be used as passwords anyway.
    if value and len(value) >= 4:
        with _lock:
            _known_secrets.add(value)


def register_secrets(values: Iterable[str | None]) -> None:
    for value in values:
        register_secret(value)


def redact(text: str) -> str:
    """Mask credentials in URLs, sensitive query parameters, and registered secret values."""
    if not text:
        return text
    # Known secrets first: a URL pattern could mask only part of one (e.g. up to an "@").
    with _lock:
        secrets = sorted(_known_secrets, key=len, reverse=True)
    out = text
    for secret in secrets:
        if secret in out:
            out = out.replace(secret, MASK)
    out = _USERINFO_RE.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", out)
    return _QUERY_RE.sub(lambda m: f"{m['k']}{MASK}", out)


def redact_url(url: str) -> str:
    """Return ``url`` with the password and sensitive query values masked.

    Text-based on purpose: ``urlunsplit`` would turn ``sqlite:///a.db`` into ``sqlite:/a.db``.
    """
    return redact(url)


class RedactingFilter(logging.Filter):
    """Logging filter that rewrites a record's message and traceback with ``redact``.

    Attached to handlers (not loggers) so records propagated from child loggers, such as
    Prefect's ``prefect.flow_runs`` / ``prefect.task_runs``, are redacted too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not drop the record
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_log_redaction() -> None:
    """Attach ``RedactingFilter`` to every handler currently configured (idempotent)."""
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
