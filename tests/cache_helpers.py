"""Shared by the Redis cache target tests: canary password, validation rules, target builder,
SQL rebuild source, and the Python rebuild source."""

from __future__ import annotations

from typing import Any

from recovery.config.loader import RedisTarget, parse_config

PASSWORD = "RedisCanaryPw4711"
USERS = {"key_pattern": "user:*", "format": "json", "required_fields": ["id", "name"]}


def redis_target(name: str, url: str, **overrides: Any) -> RedisTarget:
    config = parse_config({"targets": [{"kind": "redis", "name": name, "url": url, **overrides}]})
    target = config.targets[0]
    assert isinstance(target, RedisTarget)
    return target


def sql_rebuild(url: str, **overrides: Any) -> dict[str, Any]:
    source = {
        "url": url,
        "query": "SELECT id, payload FROM users ORDER BY id",
        "key_template": "user:{id}",
        "value_column": "payload",
    }
    return {"sql": source, **overrides}


def python_source() -> dict[str, Any]:
    """Rebuild source used through ``rebuild.python: cache_helpers:python_source``."""
    return {f"user:{i}": {"id": i, "name": f"user-{i}", "v": "py"} for i in range(3)}
