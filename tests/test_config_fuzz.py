"""Issue 11 (5): fuzzing the loader. Whatever the input, the only exception is ``ConfigError``, and
its message is one bounded line naming a field, an argument or a YAML line."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from recovery import redact
from recovery.config.loader import RecoveryConfig, load_config, parse_config
from recovery.errors import ConfigError

FIELDS = [
    # top level, monitor, targets, strategies: so that generated data reaches the validators
    "audit_url", "state_url", "monitor", "manual_triggers", "strategy", "targets",
    "interval_seconds", "failure_threshold", "lock_ttl_seconds", "probe_concurrency",
    "kind", "name", "url", "headers", "expect_status", "timeout_seconds", "verify", "breaker",
    "rate_limit", "fail_max", "reset_timeout_seconds", "state_ttl_seconds", "validate", "rebuild",
    "sql", "http", "python", "query", "key_template", "base_seconds", "max_attempts", "strategies",
    "seed", "window_seconds", "max_recoveries", "consecutive_successes",
]  # fmt: skip
INTERESTING = [
    "http", "database", "redis", "exponential", "composite", "time_window", "api", "a-b",
    "http://h/", "http://h:99999/", "http://h/\x00", "https://[::1/", "http://u:pw@h:0/x",
    "redis://h:6379/0", "redis://h/x", "unix:///s.sock", "sqlite:///a.db", "postgresql://h:-1/db",
    "http://audit/", "${RT_FUZZ_SET}", "${RT_FUZZ_UNSET}", "${", "${}", "${1X}", "${A:-${B}}",
    ".inf", "1e308", "-1", "0", "", " ", "\n", "SELECT 1", "user:{id}", "m:f",
]  # fmt: skip

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(INTERESTING),
    st.text(max_size=20),
)
keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=12))
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(keys, children, max_size=6),
    ),
    max_leaves=40,
)
targets = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(["http", "database", "redis", "tcp"]),
        "name": st.sampled_from(["api", "db", "X"]),
    },
    optional={
        "url": st.sampled_from(INTERESTING),
        "headers": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2),
        "verify": st.dictionaries(st.sampled_from(["interval_seconds", "consecutive_successes"]), scalars),
        "breaker": st.dictionaries(st.sampled_from(["fail_max", "reset_timeout_seconds"]), scalars),
        "timeout_seconds": scalars,
        "strategy": st.dictionaries(
            st.sampled_from(["kind", "max_attempts", "base_seconds", "seed"]), scalars
        ),
    },
)
configs = st.one_of(
    documents,
    st.fixed_dictionaries(
        {},
        optional={
            "audit_url": st.sampled_from(INTERESTING),
            "state_url": st.sampled_from(INTERESTING),
            "monitor": st.dictionaries(st.sampled_from(FIELDS[6:10]), scalars, max_size=3),
            "targets": st.lists(targets, max_size=3),
        },
    ),
)


@pytest.fixture(autouse=True)
def _private_secrets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A valid generated URL registers its password for redaction, process-wide: keep those
    # (random short strings) away from the other tests of this process.
    monkeypatch.setattr(redact, "_known_secrets", set())
    monkeypatch.setenv("RT_FUZZ_SET", "value")
    monkeypatch.delenv("RT_FUZZ_UNSET", raising=False)
    yield


def _check_error(error: ConfigError) -> None:
    message = str(error)
    assert error.field, message
    assert "\n" not in message and "\r" not in message, message
    assert len(message) <= 500, message
    assert "Traceback" not in message


@settings(max_examples=400, deadline=None, database=None)
@given(configs)
def test_parse_config_only_raises_config_error(data: Any) -> None:
    try:
        config = parse_config(data)
    except ConfigError as error:
        _check_error(error)
        event(f"error: {error.message.split(' ', 1)[0]}")
        return
    event("valid")
    assert isinstance(config, RecoveryConfig)
    for number in (config.monitor.interval_seconds, config.monitor.lock_ttl_seconds):
        assert math.isfinite(number)


def _mutate(text: str, data: st.DataObject) -> str:
    """Insert, delete or replace a few characters: broken YAML of every kind."""
    for _ in range(data.draw(st.integers(0, 3))):
        at = data.draw(st.integers(0, len(text)))
        piece = data.draw(
            st.sampled_from(["&a ", "*a", "[", "{", "- ", ": ", "\n  ", "'", '"', "!!str ", "\t", "#"])
        )
        text = text[:at] + piece + text[at + data.draw(st.integers(0, 2)) :]
    return text


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.data())
def test_load_config_only_raises_config_error(tmp_path: Path, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["dump", "mutated", "text"]))
    if kind == "text":
        text = data.draw(st.text(max_size=200))
    else:
        text = yaml.safe_dump(
            data.draw(configs), default_flow_style=data.draw(st.booleans()), allow_unicode=True
        )
        if kind == "mutated":
            text = _mutate(text, data)
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        load_config(path)
    except ConfigError as error:
        _check_error(error)
        event(f"{kind}: error")
    else:
        event(f"{kind}: valid")
