"""Config loading: a valid file round-trips; every invalid input is one line naming the field."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from recovery.config.loader import TARGET_KINDS, HttpTarget, RecoveryConfig, load_config, parse_config
from recovery.errors import ConfigError
from recovery.policy.strategies import Jitter
from recovery.redact import redact

VALID_YAML = """\
audit_url: sqlite:///audit.db
state_url: redis://127.0.0.1:6379/3
monitor:
  interval_seconds: 15
  failure_threshold: 2
  probe_concurrency: 50
strategy:
  kind: exponential
  base_seconds: 0.5
  max_attempts: 4
  jitter: equal
  seed: 7
targets:
  - kind: http
    name: payments-api
    url: https://payments.internal/health
    expect_status: [200, 204]
    timeout_seconds: 1.5
    headers:
      Authorization: Bearer abc123token
    error_cache_pattern: "errors:payments-api:*"
  - kind: http
    name: search
    url: http://search:9200/_cluster/health
    method: HEAD
    strategy:
      kind: exponential
      max_attempts: 2
      jitter: none
"""


def _target(**overrides: Any) -> dict[str, Any]:
    return {"kind": "http", "name": "api", "url": "http://127.0.0.1:8080/health", **overrides}


def _error(data: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value


def test_valid_file_loads_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "recovery.yaml"
    path.write_text(VALID_YAML)
    config = load_config(path)

    assert config.audit_url.get_secret_value() == "sqlite:///audit.db"
    assert config.state_url is not None
    assert config.state_url.get_secret_value() == "redis://127.0.0.1:6379/3"
    assert config.monitor.interval_seconds == 15
    assert config.monitor.failure_threshold == 2
    assert config.monitor.success_threshold == 1  # default kept
    assert config.strategy.jitter is Jitter.equal
    assert [t.name for t in config.targets] == ["payments-api", "search"]

    payments = config.target("payments-api")
    assert isinstance(payments, HttpTarget)
    assert payments.expect_status == [200, 204]
    assert payments.headers["Authorization"].get_secret_value() == "Bearer abc123token"
    assert "abc123token" not in repr(payments)  # SecretStr keeps it out of reprs
    search = config.target("search")
    assert search.method == "HEAD"
    assert config.strategy_for(search).max_attempts == 2
    assert config.strategy_for(payments) is config.strategy

    # Round trip: the dumped model (secrets are SecretStr objects) validates to an equal model.
    again = parse_config(config.model_dump())
    assert again == config
    assert isinstance(again, RecoveryConfig)


def test_empty_document_gives_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    config = load_config(path)
    assert config.targets == []
    assert config.state_url is None
    assert config.monitor.failure_threshold == 3


def test_unknown_target_name_lists_known() -> None:
    config = parse_config({"targets": [_target()]})
    with pytest.raises(ConfigError) as info:
        config.target("nope")
    assert str(info.value) == "target: unknown target 'nope' (known: api)"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            {"targets": [_target(), _target(name="b", url="not a url")]},
            "targets[1].url: invalid URL",
            id="invalid-url",
        ),
        pytest.param(
            {"targets": [_target(url="ftp://host/x")]},
            "targets[0].url: invalid URL",
            id="url-wrong-scheme",
        ),
        pytest.param(
            {"targets": [_target(kind="tcp")]},
            f"targets[0]: unknown kind 'tcp' (expected one of: {', '.join(TARGET_KINDS)})",
            id="unknown-kind",
        ),
        pytest.param(
            {"targets": [{"name": "api", "url": "http://h/"}]},
            "targets[0]: missing field 'kind'",
            id="missing-kind",
        ),
        pytest.param(
            {"targets": [_target(), _target(name="other"), _target()]},
            "targets[2].name: duplicate target name 'api'",
            id="duplicate-name",
        ),
        pytest.param(
            {"targets": [_target(name="Bad_Name")]},
            "targets[0].name: must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'",
            id="bad-name",
        ),
        pytest.param(
            {"targets": [_target(name="-api")]},
            "targets[0].name: must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'",
            id="name-leading-dash",
        ),
        pytest.param(
            {"targets": [_target(urll="http://typo")]},
            "targets[0].urll: unknown field",
            id="unknown-target-field",
        ),
        pytest.param({"monitr": {}}, "monitr: unknown field", id="unknown-top-level-field"),
        pytest.param(
            {"monitor": {"failure_threshold": 0}},
            "monitor.failure_threshold: Input should be greater than or equal to 1",
            id="threshold-zero",
        ),
        pytest.param(
            {"monitor": {"failure_threshold": "many"}},
            "monitor.failure_threshold: Input should be a valid integer, "
            "unable to parse string as an integer",
            id="threshold-not-int",
        ),
        pytest.param({"audit_url": "not a url"}, "audit_url: invalid SQLAlchemy URL", id="bad-audit-url"),
        pytest.param(
            {"state_url": "http://127.0.0.1:6379"},
            "state_url: invalid Redis URL (expected redis://host:port/db)",
            id="bad-state-url",
        ),
        pytest.param(
            {"targets": [_target(error_cache_url="postgresql://h/db")]},
            "targets[0].error_cache_url: invalid Redis URL (expected redis://host:port/db)",
            id="bad-error-cache-url",
        ),
        pytest.param(
            {"targets": [_target(expect_status=[200, 700])]},
            "targets[0].expect_status: invalid HTTP status 700",
            id="bad-status",
        ),
    ],
)
def test_invalid_config_is_one_line_naming_the_field(data: Any, expected: str) -> None:
    error = _error(data)
    assert str(error) == expected
    assert "\n" not in str(error)
    assert error.field == expected.split(": ", 1)[0]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            {"strategy": {"kind": "exponential", "max_attempts": 0}},
            "strategy.max_attempts: Input should be greater than or equal to 1",
            id="top-level-strategy",
        ),
        pytest.param(
            {"targets": [_target(strategy={"kind": "exponential", "max_attempts": 0})]},
            "targets[0].strategy.max_attempts: Input should be greater than or equal to 1",
            id="target-strategy",
        ),
        pytest.param(
            {"strategy": {"kind": "composite", "strategies": [{"kind": "linear", "extra": 1}]}},
            "strategy.strategies[0].extra: unknown field",
            id="composite-member",
        ),
        pytest.param(
            {"strategy": {"kind": "fibonacci"}},
            "strategy: unknown kind 'fibonacci' (expected one of: exponential, linear, adaptive, "
            "breaker_aligned, time_window, composite)",
            id="unknown-strategy-kind",
        ),
    ],
)
def test_invalid_strategy_names_the_field(data: Any, expected: str) -> None:
    # The strategy union's tag (strategy.<kind>) is pydantic's, not the user's: never shown.
    assert str(_error(data)) == expected


def test_top_level_not_a_mapping() -> None:
    error = _error(["a", "b"])
    assert str(error) == "config: expected a mapping at the top level"


def test_top_level_scalar_in_file(tmp_path: Path) -> None:
    path = tmp_path / "scalar.yaml"
    path.write_text("just a string\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: expected a mapping at the top level"


def test_env_expansion(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RT_API_HOST", "api.internal")
    monkeypatch.setenv("RT_API_TOKEN", "tok-from-env-123")
    monkeypatch.delenv("RT_UNSET_WITH_DEFAULT", raising=False)
    path = tmp_path / "env.yaml"
    path.write_text(
        "targets:\n"
        "  - kind: http\n"
        "    name: api\n"
        "    url: https://${RT_API_HOST}:${RT_UNSET_WITH_DEFAULT:-8443}/health\n"
        "    headers:\n"
        "      X-Token: ${RT_API_TOKEN}\n"
    )
    config = load_config(path)
    target = config.target("api")
    assert isinstance(target, HttpTarget)
    assert target.url == "https://api.internal:8443/health"
    assert target.headers["X-Token"].get_secret_value() == "tok-from-env-123"
    # A header value is a secret and gets registered for redaction.
    assert redact("sent tok-from-env-123 upstream") == "sent *** upstream"


def test_env_missing_variable_names_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RT_DEFINITELY_UNSET", raising=False)
    config = parse_config({"targets": [_target(), _target(name="b", url="http://${RT_DEFINITELY_UNSET}/x")]})
    with pytest.raises(ConfigError) as info:
        config.target("b")  # unresolved: an error once something touches it (tests/test_config_unresolved.py)
    assert str(info.value) == (
        "targets[1].url: target 'b' is unresolved: environment variable RT_DEFINITELY_UNSET is not set"
    )
    error = _error({"audit_url": "sqlite:///${RT_DEFINITELY_UNSET}.db"})  # top level: always resolved
    assert str(error) == "audit_url: environment variable RT_DEFINITELY_UNSET is not set"


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("monitor:\n  interval_seconds: 5\ntargets: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line ")
    assert "\n" not in message
    assert info.value.field == str(path)


def test_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value) == f"--config: file not found: {missing}"


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"--config: cannot read {tmp_path}: IsADirectoryError"


def test_env_var_selects_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "from-env.yaml"
    path.write_text("targets:\n  - {kind: http, name: via-env, url: 'http://h/'}\n")
    monkeypatch.setenv("RECOVERY_CONFIG", str(path))
    assert [t.name for t in load_config().targets] == ["via-env"]


def test_url_passwords_are_registered_as_secrets() -> None:
    audit_pw = f"AuditPw{uuid.uuid4().hex[:8]}"
    state_pw = f"StatePw{uuid.uuid4().hex[:8]}"
    cache_pw = f"CachePw{uuid.uuid4().hex[:8]}"
    # Before loading, a bare password (not inside a URL) is not known to redact.
    assert redact(f"driver said: bad password {audit_pw}") == f"driver said: bad password {audit_pw}"

    parse_config(
        {
            "audit_url": f"postgresql+psycopg://recovery:{audit_pw}@db.internal:5432/recovery",
            "state_url": f"redis://:{state_pw}@redis.internal:6379/0",
            "targets": [_target(error_cache_url=f"redis://cache:{cache_pw}@cache.internal:6379/1")],
        }
    )
    # A driver error quoting the bare password (no URL around it) is still masked.
    assert redact(f"driver said: bad password {audit_pw}") == "driver said: bad password ***"
    assert redact(f"AUTH {state_pw} failed") == "AUTH *** failed"
    assert redact(f"cache: {cache_pw}") == "cache: ***"
