"""Where destructive Redis operations may reach: key patterns confined to a target's key space.

A SCAN MATCH pattern deletes whatever it matches, and a cache often shares its Redis database
with the shared state (``recovery:*``: locks, paused flags, breakers). So a pattern is judged
by its *literal prefix* - the characters before its first unescaped glob character - because
every key it can match starts with that prefix:

* an empty literal prefix (``*``, ``?*``, ``[a-z]*``) can match every key: refused;
* a literal prefix compatible with ``recovery:`` (``rec*``, ``recovery:*``, ``recovery:x:*``)
  can match the state keys: refused;
* otherwise the pattern must lie inside one of the target's key spaces: its literal prefix
  must start with the literal prefix of ``validate.key_pattern`` or of one of
  ``clearable_patterns``.

Pure string functions: the config validates patterns at load, the kinds again before deleting.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qs, urlsplit

STATE_PREFIX = "recovery"  # every shared-state key starts with "recovery:" (backends/keys.py)
STATE_KEYSPACE = f"{STATE_PREFIX}:"
GLOB_CHARS = "*?["
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}


def literal_prefix(pattern: str) -> str:
    """The characters every key matching ``pattern`` starts with (Redis glob; ``\\`` escapes)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            out.append(pattern[i + 1])
            i += 2
            continue
        if char in GLOB_CHARS:
            break
        out.append(char)
        i += 1
    return "".join(out)


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` may never be deleted from (every key, or the state keys), else None."""
    prefix = literal_prefix(pattern)
    if not prefix:
        return (
            f"{pattern!r} can match every key (it starts with a glob character); "
            "name the key space, e.g. 'user:*'"
        )
    if STATE_KEYSPACE.startswith(prefix) or prefix.startswith(STATE_KEYSPACE):
        return f"{pattern!r} can match the recovery state keys ({STATE_KEYSPACE}*)"
    return None


def confinement_problem(pattern: str, key_spaces: Iterable[str]) -> str | None:
    """Why deleting ``pattern`` would reach outside ``key_spaces`` (patterns), else None."""
    problem = pattern_problem(pattern)
    if problem is not None:
        return problem
    spaces = [s for s in key_spaces if pattern_problem(s) is None]
    prefix = literal_prefix(pattern)
    if any(prefix.startswith(literal_prefix(space)) for space in spaces):
        return None
    allowed = ", ".join(repr(s) for s in spaces) or "none: set validate.key_pattern or clearable_patterns"
    return f"{pattern!r} is outside the target's key space (allowed: {allowed})"


def redis_database(url: str) -> tuple[str, str]:
    """(server, db) a Redis URL points at: loopback spellings and default port/db normalised."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if parts.scheme == "unix":
        return f"unix:{parts.path}", (query.get("db") or ["0"])[0]
    host = (parts.hostname or "localhost").lower()
    host = "loopback" if host in _LOOPBACK else host
    try:
        port = parts.port or 6379
    except ValueError:
        port = 0
    db = parts.path.strip("/") or (query.get("db") or ["0"])[0]
    return f"{host}:{port}", db


def same_redis_database(url: str, other: str | None) -> bool:
    """True if both URLs name the same Redis server and database (as far as URLs can tell:
    two hostnames of one server are not recognised, which is why the rules above hold for
    every server, not only the state's)."""
    return other is not None and redis_database(url) == redis_database(other)
