"""Issue 11 (5): config values that validated but broke at run time: numbers that are not finite
or absurdly large, URLs a client cannot use, and input echoed back unclipped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from recovery.config.loader import load_config, parse_config
from recovery.errors import ConfigError


def _target(**overrides: Any) -> dict[str, Any]:
    return {"kind": "http", "name": "api", "url": "http://127.0.0.1:8080/health", **overrides}


def _parse_error(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert "\n" not in str(info.value)
    return str(info.value)


# --- numbers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "monitor: {lock_ttl_seconds: .inf}\n",
            "monitor.lock_ttl_seconds: Input should be a finite number",
            id="inf",
        ),
        pytest.param(
            "monitor: {interval_seconds: .nan}\n",
            "monitor.interval_seconds: Input should be a finite number",
            id="nan",
        ),
        pytest.param(
            "targets:\n  - {kind: http, name: a, url: 'http://h/', verify: {interval_seconds: 1e308}}\n",
            "targets[0].verify.interval_seconds: Input should be less than or equal to 3600",
            id="1e308",
        ),
        pytest.param(
            "strategy: {kind: exponential, max_delay_seconds: 1e9}\n",
            "strategy.max_delay_seconds: Input should be less than or equal to 86400",
            id="delay",
        ),
        pytest.param(
            "monitor: {failure_threshold: 1.0e+308}\n",
            "monitor.failure_threshold: Unable to parse input string as an integer, exceeded maximum size",
            id="int-1e308",
        ),
    ],
)
def test_numbers_are_finite_and_bounded(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "n.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"monitor": {"lock_ttl_seconds": float("inf")}},
            "monitor.lock_ttl_seconds: Input should be a finite number",
        ),
        (
            {"manual_triggers": {"window_seconds": 1e12}},
            "manual_triggers.window_seconds: Input should be less than or equal to 2592000",
        ),
        (
            {"strategy": {"seed": 2**80}},
            "strategy.seed: Input should be less than or equal to 9223372036854775807",
        ),
        (
            {"targets": [_target(breaker={"fail_max": 10**6})]},
            "targets[0].breaker.fail_max: Input should be less than or equal to 1000",
        ),
        (
            {"targets": [_target(rate_limit={"normal_rate_per_second": float("nan")})]},
            "targets[0].rate_limit.normal_rate_per_second: Input should be a finite number",
        ),
        (
            {"targets": [_target(expect_status=[200] * 101)]},
            "targets[0].expect_status: List should have at most 100 items after validation, not 101",
        ),
    ],
)
def test_model_bounds(data: Any, expected: str) -> None:
    assert _parse_error(data) == expected


# --- URLs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"targets": [_target(url="http://h:99999/")]}, "targets[0].url: invalid URL: port must be 1-65535"),
        ({"targets": [_target(url="http://h:-1/")]}, "targets[0].url: invalid URL: port must be 1-65535"),
        ({"targets": [_target(url="http://h:abc/")]}, "targets[0].url: invalid URL: port must be 1-65535"),
        ({"targets": [_target(url="http://h:0/")]}, "targets[0].url: invalid URL: port must be 1-65535"),
        (
            {"targets": [_target(url="http://h/a\x00b")]},
            "targets[0].url: invalid URL: whitespace or control character",
        ),
        (
            {"targets": [_target(url="http://h/a b")]},
            "targets[0].url: invalid URL: whitespace or control character",
        ),
        (
            {"targets": [_target(url="http://h/a\nb")]},
            "targets[0].url: invalid URL: whitespace or control character",
        ),
        ({"targets": [_target(url="http://[::1/")]}, "targets[0].url: invalid URL"),
        ({"targets": [_target(url="http:///path")]}, "targets[0].url: invalid URL"),
        (
            {"audit_url": "http://audit.internal/"},
            "audit_url: invalid SQLAlchemy URL: dialect 'http' (expected sqlite or postgresql)",
        ),
        (
            {"audit_url": "mysql://h/db"},
            "audit_url: invalid SQLAlchemy URL: dialect 'mysql' (expected sqlite or postgresql)",
        ),
        (
            {"audit_url": "postgresql+nodriver://h/db"},
            "audit_url: invalid SQLAlchemy URL: unknown dialect 'postgresql+nodriver'",
        ),
        ({"audit_url": "postgresql://h:99999/db"}, "audit_url: invalid SQLAlchemy URL: port must be 1-65535"),
        ({"audit_url": "postgresql://h:abc/db"}, "audit_url: invalid SQLAlchemy URL"),
        ({"audit_url": "sqlite:///a\x00.db"}, "audit_url: invalid SQLAlchemy URL: control character"),
        (
            {"state_url": "http://127.0.0.1:6379"},
            "state_url: invalid Redis URL (expected redis://host:port/db)",
        ),
        (
            {"state_url": "redis://h:6379/abc"},
            "state_url: invalid Redis URL: the database must be a number (redis://host:port/0)",
        ),
        ({"state_url": "redis://h:70000/0"}, "state_url: invalid Redis URL: port must be 1-65535"),
        ({"state_url": "redis:///0"}, "state_url: invalid Redis URL (expected redis://host:port/db)"),
        (
            {"targets": [{"kind": "redis", "name": "c", "url": "redis://h/0?db=x"}]},
            "targets[0].url: invalid Redis URL: the database must be a number (redis://host:port/0)",
        ),
        (
            {"targets": [{"kind": "database", "name": "d", "url": "mysql://h/db"}]},
            "targets[0].url: invalid SQLAlchemy URL: dialect 'mysql' (expected sqlite or postgresql)",
        ),
        (
            {"targets": [_target(headers={"X-A": "a\r\nInjected: 1"})]},
            "targets[0].headers: header 'X-A': control character in the value",
        ),
        (
            {"targets": [_target(headers={"bad name": "v"})]},
            "targets[0].headers: invalid header name 'bad name'",
        ),
    ],
)
def test_urls_are_checked_per_scheme(data: Any, expected: str) -> None:
    message = _parse_error(data)
    assert message == expected


def test_good_urls_pass() -> None:
    config = parse_config(
        {
            "audit_url": "postgresql+psycopg://u:pw@db.internal:5432/recovery",
            "state_url": "rediss://:pw@redis.internal:6380/2",
            "targets": [
                _target(url="https://[::1]:8443/health?x=1", headers={"Authorization": "Bearer\tx"}),
                {"kind": "redis", "name": "cache", "url": "unix:///run/redis.sock?db=1"},
                {"kind": "database", "name": "db", "url": "sqlite:////var/lib/my app/db.sqlite"},
            ],
        }
    )
    assert [t.name for t in config.targets] == ["api", "cache", "db"]


def test_echoed_values_are_clipped() -> None:
    message = _parse_error({"targets": [_target(kind="k" * 100_000)]})
    assert len(message) < 200 and "…" in message
    message = _parse_error({"x" * 100_000 + "\n": 1})
    assert message == "x" * 80 + "…: unknown field"
