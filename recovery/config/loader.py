"""Configuration: a YAML file validated into pydantic models.

Targets are a discriminated union on ``kind`` so each kind carries only its own fields and an
unknown kind is a one-line error. ``${VAR}`` in any string value is replaced from the
environment, which keeps passwords out of the file; every secret found while loading is
registered with ``redact`` so it cannot leak through logs or error messages.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from recovery.config.strategy import (
    STRATEGY_KINDS,
    ExponentialStrategyConfig,
    StrategyConfig,
    check_not_above,
)
from recovery.errors import ConfigError
from recovery.redact import register_secret, register_secrets

DEFAULT_CONFIG_PATH = "recovery.yaml"
CONFIG_ENV_VAR = "RECOVERY_CONFIG"

# Target models live in recovery.config.targets; re-exported here, where callers have always found them.
from recovery.config.targets import (  # noqa: E402
    NAME_PATTERN,
    TARGET_KINDS,
    BreakerConfig,
    CacheRebuild,
    CacheValidation,
    DatabaseTarget,
    HttpSource,
    HttpTarget,
    RedisTarget,
    SqlSource,
    TargetConfig,
    VerifyConfig,
    _Model,
    _optional_redis_secret,
    _sqlalchemy_secret,
    url_secrets,
)

__all__ = [
    "NAME_PATTERN",
    "TARGET_KINDS",
    "BreakerConfig",
    "CacheRebuild",
    "CacheValidation",
    "DatabaseTarget",
    "HttpSource",
    "HttpTarget",
    "ManualTriggerConfig",
    "MonitorConfig",
    "RecoveryConfig",
    "RedisTarget",
    "SqlSource",
    "TargetConfig",
    "VerifyConfig",
    "load_config",
    "parse_config",
    "resolve_config_path",
    "url_secrets",
]


MIN_CYCLE_SECONDS = 5.0


class MonitorConfig(_Model):
    interval_seconds: float = Field(30.0, gt=0, description="Seconds between monitor cycles.")
    failure_threshold: int = Field(3, ge=1, description="Consecutive failed probes before recovery.")
    success_threshold: int = Field(1, ge=1, description="Consecutive good probes to count healthy.")
    probe_concurrency: int = Field(100, ge=1, le=10_000, description="Probes in flight at once.")
    lock_ttl_seconds: float = Field(
        900.0, gt=0, description="A recovery lock expires after this, so a crashed run cannot block."
    )
    flap_detection: bool = Field(True, description="Hold off automatic recovery of flapping targets.")
    flap_low_threshold: float = Field(
        15.0, ge=0, le=100, description="A flapping target stops flapping below this % state change."
    )
    flap_high_threshold: float = Field(
        25.0, ge=0, le=100, description="A target starts flapping above this % state change (21 probes)."
    )
    cycle_timeout_seconds: float | None = Field(
        None,
        ge=MIN_CYCLE_SECONDS,
        description="Deadline of one cycle's probes and decisions (default: interval_seconds, at "
        "least 5); targets not probed or decided by then are reported, not waited for.",
    )

    @model_validator(mode="after")
    def _flap_thresholds(self) -> MonitorConfig:
        low, high = self.flap_low_threshold, self.flap_high_threshold
        check_not_above(low, high, "flap_low_threshold must not be above flap_high_threshold")
        return self

    @property
    def cycle_budget_seconds(self) -> float:
        """How long one cycle may spend probing and deciding (``cycle_timeout_seconds``).

        Never below ``MIN_CYCLE_SECONDS``, even with a shorter interval: on a busy machine
        Prefect's own overhead per task is 0.1-0.3 s, and a tighter deadline would cut off
        probes that are merely late, not hung.
        """
        return max(self.cycle_timeout_seconds or self.interval_seconds, MIN_CYCLE_SECONDS)


class ManualTriggerConfig(_Model):
    """Per-target limit on manual/emergency triggers, so a script in a loop cannot hammer a target."""

    max_triggers: int = Field(5, ge=1, description="Manual triggers admitted per target per window.")
    window_seconds: float = Field(60.0, gt=0, description="Sliding window length.")


class RecoveryConfig(_Model):
    audit_url: SecretStr = Field(
        SecretStr("sqlite:///recovery.db"), description="SQLAlchemy URL of the audit store."
    )
    state_url: SecretStr | None = Field(
        None, description="Redis URL for shared state; absent = in-process state."
    )
    state_timeout_seconds: float = Field(
        2.0,
        gt=0,
        le=60,
        description="Connect and read timeout of every shared-state Redis call (state, breakers, "
        "rates, windows): a frozen Redis fails a call after this, never hangs a cycle.",
    )
    monitor: MonitorConfig = Field(default_factory=lambda: MonitorConfig())
    manual_triggers: ManualTriggerConfig = Field(default_factory=lambda: ManualTriggerConfig())
    strategy: StrategyConfig = Field(
        default_factory=lambda: ExponentialStrategyConfig(), description="Default retry strategy."
    )
    targets: list[TargetConfig] = Field(default_factory=list)

    _check_audit_url = field_validator("audit_url")(_sqlalchemy_secret)
    _check_state_url = field_validator("state_url")(_optional_redis_secret)

    @model_validator(mode="after")
    def _unique_names(self) -> RecoveryConfig:
        seen: set[str] = set()
        for i, target in enumerate(self.targets):
            if target.name in seen:
                raise ConfigError(f"targets[{i}].name", f"duplicate target name '{target.name}'")
            seen.add(target.name)
        return self

    def target(self, name: str) -> TargetConfig:
        for target in self.targets:
            if target.name == name:
                return target
        known = ", ".join(t.name for t in self.targets) or "none"
        raise ConfigError("target", f"unknown target '{name}' (known: {known})")

    def strategy_for(self, target: TargetConfig) -> StrategyConfig:
        return target.strategy or self.strategy


# --- loading ---------------------------------------------------------------------------------

_ENV_NAME_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(node: Any, path: str) -> Any:
    if isinstance(node, str):

        def repl(match: re.Match[str]) -> str:
            value = os.environ.get(match[1], match[2])
            if value is None:
                raise ConfigError(path or "config", f"environment variable {match[1]} is not set")
            return value

        return _ENV_RE.sub(repl, node)
    if isinstance(node, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand_env(v, f"{path}[{i}]") for i, v in enumerate(node)]
    return node


def format_loc(loc: Sequence[int | str]) -> str:
    """``('targets', 1, 'http', 'url')`` -> ``targets[1].url`` (drops the union tag)."""
    out = ""
    items = list(loc)
    for i, part in enumerate(items):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i > 0 and isinstance(items[i - 1], int) and part in TARGET_KINDS:
            continue  # pydantic inserts the discriminator tag; users never wrote it
        elif i > 0 and part in STRATEGY_KINDS and items[i - 1] == "strategy":
            continue  # the strategy union's tag: strategy.<kind>
        elif i > 0 and part in STRATEGY_KINDS and isinstance(items[i - 1], int):
            continue  # ... and a composite's strategies[i].<kind>
        elif part.startswith("function-") or part in ("str", "none", "is-instance[SecretStr]"):
            continue
        else:
            out += f".{part}" if out else part
    return out


def _message(error: Any) -> str:
    msg = str(error.get("msg", "invalid value"))
    if error.get("type") == "extra_forbidden":
        return "unknown field"
    if error.get("type") == "union_tag_invalid":
        expected = ", ".join(TARGET_KINDS)
        tags = (error.get("ctx") or {}).get("expected_tags")
        if isinstance(tags, str) and tags:  # pydantic: "'a', 'b'" (strategies: a callable discriminator)
            expected = tags.replace("'", "")
        return f"unknown kind {error.get('input', {}).get('kind')!r} (expected one of: {expected})"
    if error.get("type") == "union_tag_not_found":
        return "missing field 'kind'"
    if error.get("type") == "string_pattern_mismatch":
        return "must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return msg


def parse_config(data: Any, source: str = "config") -> RecoveryConfig:
    """Validate a parsed YAML document; raise ``ConfigError`` naming the first bad field."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, "expected a mapping at the top level")
    data = _expand_env(data, "")
    try:
        config = RecoveryConfig.model_validate(data)
    except ConfigError:
        raise
    except ValidationError as exc:
        first = exc.errors()[0]
        ctx_error = (first.get("ctx") or {}).get("error")
        if isinstance(ctx_error, ConfigError):
            raise ctx_error from None
        raise ConfigError(format_loc(first["loc"]) or source, _message(first)) from None
    _register_config_secrets(config)
    return config


def _register_config_secrets(config: RecoveryConfig) -> None:
    urls = [config.audit_url, config.state_url]
    for target in config.targets:
        if not isinstance(target, HttpTarget):
            register_secrets(target.secret_values())
            continue
        urls.append(target.error_cache_url)
        for value in target.headers.values():
            register_secret(value.get_secret_value())
        register_secret(urlsplit(target.url).password)
    for url in urls:
        if url is not None:
            register_secret(urlsplit(url.get_secret_value()).password)


def resolve_config_path(arg: str | None) -> Path:
    return Path(arg or os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH)


# Parsed configs by (path, text digest, referenced environment): a run loads its config once,
# and the flows, tasks and CLI of one process that name the same file share the object.
_loaded: dict[tuple[str, str, tuple[str | None, ...]], RecoveryConfig] = {}
_LOADED_MAX = 16


def load_config(path: str | Path | None = None) -> RecoveryConfig:
    """Read and validate the config file (``--config``, ``$RECOVERY_CONFIG``, ``recovery.yaml``).

    Memoised on the file's content and the values of the ``${VAR}`` it references, so an edit
    or a changed variable is seen by the next call while repeated loads cost one file read.
    """
    resolved = resolve_config_path(str(path) if path else None)
    try:
        text = resolved.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("--config", f"file not found: {resolved}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise ConfigError("--config", f"cannot read {resolved}: {exc.__class__.__name__}") from None
    env = tuple(os.environ.get(name) for name in sorted(set(_ENV_NAME_RE.findall(text))))
    key = (str(resolved), hashlib.sha256(text.encode()).hexdigest(), env)
    cached = _loaded.get(key)
    if cached is not None:
        return cached
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "YAML"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(str(resolved), f"{where}: {problem}") from None
    config = parse_config(data, str(resolved))
    if len(_loaded) >= _LOADED_MAX:
        _loaded.clear()
    _loaded[key] = config
    return config
