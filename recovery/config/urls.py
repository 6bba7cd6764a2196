"""URL checks of the config models, per scheme: what will use the URL decides what is valid.

Each check raises ``ValueError`` (pydantic turns it into ``<field>: <message>``) and never echoes
the URL, which may hold a password. A URL that passes must not fail later for its syntax: a port
out of range, a space or a NUL, an unknown SQL dialect or a non-numeric Redis database all
validated before and broke the first probe or recovery instead.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, parse_qsl, urlsplit

from recovery.errors import clip

# Whitespace (\s is Unicode-aware) and control characters: never part of a URL these fields take.
_BLANK_OR_CONTROL_RE = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
AUDIT_DIALECTS = ("sqlite", "postgresql")  # what the audit store's migrations and queries support
DATABASE_DIALECTS = ("sqlite", "postgresql")  # what the database kind can probe and recover
_PORT = "port must be 1-65535"
_REDIS = "invalid Redis URL (expected redis://host:port/db)"


def _split(url: str, what: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError:  # e.g. an unclosed [IPv6 host
        raise ValueError(what) from None


def _check_syntax(url: str, parts: SplitResult, what: str) -> None:
    """What ``urlsplit`` lets through: blanks and controls (it even drops tabs), a bad port."""
    if _BLANK_OR_CONTROL_RE.search(url):
        raise ValueError(f"{what}: whitespace or control character")
    try:
        port = parts.port  # raises for "abc", "-1" and values above 65535
    except ValueError:
        raise ValueError(f"{what}: {_PORT}") from None
    if port == 0:
        raise ValueError(f"{what}: {_PORT}")


def check_http_url(url: str) -> None:
    """http(s), a host, a port 1-65535 if given, no whitespace or control characters."""
    parts = _split(url, "invalid URL")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("invalid URL")
    _check_syntax(url, parts, "invalid URL")


def check_redis_url(url: str) -> None:
    """redis:// or rediss:// with a host and a numeric database, or unix:// with a socket path."""
    parts = _split(url, _REDIS)
    if parts.scheme in ("redis", "rediss"):
        if not parts.hostname:
            raise ValueError(_REDIS)
        db = parts.path.lstrip("/")
    elif parts.scheme == "unix":
        if not parts.path:
            raise ValueError("invalid Redis URL (expected unix:///path/to/socket)")
        db = ""
    else:
        raise ValueError(_REDIS)
    _check_syntax(url, parts, "invalid Redis URL")
    for value in (db, dict(parse_qsl(parts.query)).get("db", "")):
        if value and not (value.isascii() and value.isdigit() and len(value) <= 5):
            raise ValueError("invalid Redis URL: the database must be a number (redis://host:port/0)")


def check_sql_url(url: str, dialects: tuple[str, ...] | None = None) -> None:
    """A SQLAlchemy URL whose dialect and driver SQLAlchemy can load (one of ``dialects`` if given).

    Spaces are allowed (a SQLite file path may have them), control characters are not.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if _CONTROL_RE.search(url):
        raise ValueError("invalid SQLAlchemy URL: control character")
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):  # ValueError: a port that is not a number
        raise ValueError("invalid SQLAlchemy URL") from None
    backend = parsed.get_backend_name()
    if dialects is not None and backend not in dialects:
        expected = " or ".join(dialects)
        raise ValueError(f"invalid SQLAlchemy URL: dialect '{clip(backend)}' (expected {expected})")
    try:
        parsed.get_dialect()  # imports SQLAlchemy's dialect module only, not the DB driver
    except (ArgumentError, ImportError, AttributeError):  # NoSuchModuleError is an ArgumentError
        raise ValueError(f"invalid SQLAlchemy URL: unknown dialect '{clip(parsed.drivername)}'") from None
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise ValueError(f"invalid SQLAlchemy URL: {_PORT}")
    if parsed.host and _BLANK_OR_CONTROL_RE.search(parsed.host):
        raise ValueError("invalid SQLAlchemy URL: whitespace in the host")
