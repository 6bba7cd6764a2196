"""Field validators shared by the config models (targets.py, loader.py): each checks one value
and raises ``ValueError`` (pydantic names the field) or ``ConfigError`` (already names it)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr

from recovery.config.keyspace import pattern_problem
from recovery.config.limits import MAX_TIMEOUT
from recovery.config.urls import (
    AUDIT_DIALECTS,
    DATABASE_DIALECTS,
    check_http_url,
    check_redis_url,
    check_sql_url,
)


def seconds(default: float | None, description: str, *, le: float = MAX_TIMEOUT, zero: bool = False) -> Any:
    """A duration field: > 0 (>= 0 with ``zero``) and at most ``le``, so that no number the
    loader accepts (``.inf``, ``1e308``) can hang a run or overflow a timer at run time."""
    return Field(default, gt=None if zero else 0, ge=0 if zero else None, le=le, description=description)


def _http_url(value: str) -> str:
    """Field validator: an http(s) URL (``recovery.config.urls.check_http_url``)."""
    check_http_url(value)
    return value


def _confined_pattern(value: str | None) -> str | None:
    """Field validator: a pattern deleted from must name a key space (recovery.config.keyspace)."""
    problem = None if value is None else pattern_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """``https://u:p@h/x`` -> (``https://h/x``, (u, p)): HTTP clients send Basic auth from the
    pair; aiohttp refuses a URL with credentials next to an Authorization header."""
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url, None
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=hostport)), (unquote(user), unquote(password))


def _sqlalchemy_secret(value: SecretStr) -> SecretStr:
    """Field validator: a SQLAlchemy URL of a dialect SQLAlchemy can load."""
    check_sql_url(value.get_secret_value())
    return value


def _database_secret(value: SecretStr) -> SecretStr:
    """Field validator: a SQLAlchemy URL of a database the database kind supports."""
    check_sql_url(value.get_secret_value(), DATABASE_DIALECTS)
    return value


def _audit_secret(value: SecretStr) -> SecretStr:
    """Field validator of ``RecoveryConfig.audit_url``: a dialect the audit store supports."""
    check_sql_url(value.get_secret_value(), AUDIT_DIALECTS)
    return value


def _optional_redis_secret(value: SecretStr | None) -> SecretStr | None:
    """Field validator (also of ``RecoveryConfig``): absent or a Redis URL."""
    if value is not None:
        check_redis_url(value.get_secret_value())
    return value
