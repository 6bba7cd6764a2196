"""Configuration: a YAML file validated into pydantic models.

Targets are a discriminated union on ``kind`` so each kind carries only its own fields and an
unknown kind is a one-line error. ``${VAR}`` in any string value is replaced from the
environment, which keeps passwords out of the file; every secret found while loading is
registered with ``redact`` so it cannot leak through logs or error messages.

The file is read by ``recovery.config.source`` and expanded by ``recovery.config.expand``, both
within the limits of ``recovery.config.limits`` (docs/security.md).

A target whose ``${VAR}`` is unset is *unresolved*: set aside, and an error only for a command
that touches it (``config.target(name)``, ``require_resolved()``), so ``history`` or ``stats``
need no secret of a target they never connect to. Top-level values (``audit_url``,
``state_url``...) must always resolve.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from recovery.config.expand import ENV_NAME_RE, expand_lazily
from recovery.config.graph import check_dependencies
from recovery.config.limits import MAX_COUNT, MAX_INTERVAL, MAX_TARGETS, MAX_WINDOW
from recovery.config.source import parse_yaml, read_config_text
from recovery.config.strategy import (
    STRATEGY_KINDS,
    ExponentialStrategyConfig,
    StrategyConfig,
    check_not_above,
)
from recovery.config.workflows import (
    MAX_WORKFLOWS,
    WorkflowConfig,
    check_workflows,
    run_config_checks,
    workflow_secrets,
)
from recovery.errors import ConfigError, clip
from recovery.redact import register_secrets, register_url

DEFAULT_CONFIG_PATH = "recovery.yaml"
CONFIG_ENV_VAR = "RECOVERY_CONFIG"
DEFAULT_SPOOL_DIR = ".recovery-spool"
NO_FILE = "config"  # parse_config's source when the data did not come from a file

# Target models live in recovery.config.targets; re-exported here, where callers have always found them.
from recovery.config.fields import _audit_secret, _optional_redis_secret, seconds  # noqa: E402
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
    check_state_keyspace,
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
    interval_seconds: float = Field(
        30.0, gt=0, le=MAX_INTERVAL, description="Seconds between monitor cycles."
    )
    failure_threshold: int = Field(
        3, ge=1, le=MAX_COUNT, description="Consecutive failed probes before recovery."
    )
    success_threshold: int = Field(
        1, ge=1, le=MAX_COUNT, description="Consecutive good probes to count healthy."
    )
    probe_concurrency: int = Field(100, ge=1, le=10_000, description="Probes in flight at once.")
    lock_ttl_seconds: float = seconds(
        900.0, "A recovery lock expires after this, so a crashed run cannot block."
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
        le=MAX_INTERVAL,
        description="Deadline of one cycle's probes and decisions (default: interval_seconds, at "
        "least 5); targets not probed or decided by then are reported, not waited for.",
    )

    period_seconds: float = Field(
        600.0,
        gt=0,
        le=MAX_INTERVAL,
        description="A served monitor flow run cycles in-process this long (one process per "
        "period, at least one interval); the deployment's schedule starts one per period.",
    )
    board_heartbeat_seconds: float = Field(
        300.0,
        gt=0,
        le=MAX_INTERVAL,
        description="The status board is republished when a row changes, and unchanged at "
        "least this often (its timestamp shows it is current).",
    )

    @model_validator(mode="after")
    def _flap_thresholds(self) -> MonitorConfig:
        low, high = self.flap_low_threshold, self.flap_high_threshold
        check_not_above(low, high, "flap_low_threshold must not be above flap_high_threshold")
        return self

    @property
    def period_budget_seconds(self) -> float:
        """How long one served monitor flow run cycles: ``period_seconds``, at least one interval."""
        return max(self.period_seconds, self.interval_seconds)

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

    max_triggers: int = Field(
        5, ge=1, le=MAX_COUNT, description="Manual triggers admitted per target per window."
    )
    window_seconds: float = Field(60.0, gt=0, le=MAX_WINDOW, description="Sliding window length.")


class RecoveryConfig(_Model):
    audit_url: SecretStr = Field(
        SecretStr("sqlite:///recovery.db"), description="SQLAlchemy URL of the audit store."
    )
    state_url: SecretStr | None = Field(
        None, description="Redis URL for shared state; absent = in-process state."
    )
    audit_spool: Path | None = Field(
        None,
        description="Directory of the local audit spool (audit writes kept while the audit store "
        "is down; replayed when it answers). Default: .recovery-spool/ beside the config file; "
        "a relative path is relative to the config file's directory.",
    )
    audit_timeout_seconds: float = Field(
        5.0, gt=0, le=300, description="Bound on each audit store call (connect, statement, lock wait)."
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
    # fail_fast: one bad target is enough to report; the others need no error objects.
    targets: list[TargetConfig] = Field(default_factory=list, max_length=MAX_TARGETS, fail_fast=True)
    workflows: dict[str, WorkflowConfig] = Field(
        default_factory=dict, max_length=MAX_WORKFLOWS, description="Custom workflows by name."
    )
    # Targets set aside because a ${VAR} of theirs is unset: name -> the error naming it.
    _unresolved: dict[str, ConfigError] = PrivateAttr(default_factory=dict)

    _check_audit_url = field_validator("audit_url")(_audit_secret)
    _check_state_url = field_validator("state_url")(_optional_redis_secret)

    @model_validator(mode="after")
    def _unique_names(self) -> RecoveryConfig:
        seen: set[str] = set()
        for i, target in enumerate(self.targets):
            if target.name in seen:
                raise ConfigError(f"targets[{i}].name", f"duplicate target name '{clip(target.name)}'")
            seen.add(target.name)
        return self

    @model_validator(mode="after")
    def _known_workflows(self) -> RecoveryConfig:
        check_workflows(self.workflows, self.monitor.lock_ttl_seconds)
        for target in self.targets:  # select_workflow(target) finds the target's custom workflow
            target._workflows = self.workflows
        return self

    def target(self, name: str) -> TargetConfig:
        for target in self.targets:
            if target.name == name:
                return target
        if name in self._unresolved:
            error = self._unresolved[name]
            raise ConfigError(error.field, error.message)  # a fresh one: raising grows __traceback__
        known = clip(", ".join(t.name for t in self.targets[:20]) or "none", 200)
        raise ConfigError("target", f"unknown target '{clip(name)}' (known: {known})")

    def strategy_for(self, target: TargetConfig) -> StrategyConfig:
        return target.strategy or self.strategy

    @property
    def unresolved(self) -> dict[str, ConfigError]:
        """Targets left out of ``targets`` because a ``${VAR}`` of theirs is unset."""
        return dict(self._unresolved)

    def require_resolved(self) -> RecoveryConfig:
        """Self, or the first unresolved target's error: for commands that touch every target."""
        for error in self._unresolved.values():
            raise ConfigError(error.field, error.message)
        return self


# --- loading ---------------------------------------------------------------------------------


def format_loc(loc: Sequence[int | str]) -> str:
    """``('targets', 1, 'http', 'url')`` -> ``targets[1].url`` (drops the union tag)."""
    out = ""
    items = list(loc)
    for i, part in enumerate(items):
        if isinstance(part, int):
            out += f"[{part}]"
        elif not isinstance(part, str):  # a non-string key of a dict given to parse_config
            out += f".{clip(part)}" if out else clip(part)
        elif i > 0 and isinstance(items[i - 1], int) and part in TARGET_KINDS and items[0] == "targets":
            continue  # pydantic inserts the discriminator tag; users never wrote it
        elif i > 0 and part in STRATEGY_KINDS and items[i - 1] == "strategy":
            continue  # the strategy union's tag: strategy.<kind>
        elif i > 0 and part in STRATEGY_KINDS and isinstance(items[i - 1], int):
            continue  # ... and a composite's strategies[i].<kind>
        elif part.startswith("function-") or part in ("str", "none", "is-instance[SecretStr]"):
            continue
        else:
            out += f".{clip(part)}" if out else clip(part)
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
        given = (error.get("input") or {}).get("kind")
        return f"unknown kind '{clip(given)}' (expected one of: {expected})"
    if error.get("type") == "union_tag_not_found":
        return "missing field 'kind'"
    if error.get("type") == "string_pattern_mismatch":
        return "must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return msg


def _resolve_spool(config: RecoveryConfig, source: str) -> RecoveryConfig:
    """``audit_spool`` as an absolute path: beside the config file (or the current directory
    for a config that did not come from a file), so every command of one config shares it."""
    base = Path.cwd() if source == NO_FILE else Path(source).absolute().parent
    spool = (config.audit_spool or Path(DEFAULT_SPOOL_DIR)).expanduser()
    return config.model_copy(update={"audit_spool": spool if spool.is_absolute() else base / spool})


def parse_config(data: Any, source: str = NO_FILE) -> RecoveryConfig:
    """Validate a parsed YAML document; raise ``ConfigError`` naming the first bad field.

    ``source`` is the config file's path (``NO_FILE``: built in code, e.g. tests).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(clip(source), "expected a mapping at the top level")
    # ``${VAR}`` values in workflows (a token in argv, a JSON body) are secrets wherever they land.
    register_secrets(os.environ.get(name) for name in ENV_NAME_RE.findall(str(data.get("workflows", ""))))
    data, unresolved = expand_lazily(data, clip(source))
    try:
        config = RecoveryConfig.model_validate(data)
    except ConfigError:
        raise
    except ValidationError as exc:
        first = exc.errors()[0]
        ctx_error = (first.get("ctx") or {}).get("error")
        if isinstance(ctx_error, ConfigError):
            raise ctx_error from None
        raise ConfigError(format_loc(first["loc"]) or clip(source), _message(first)) from None
    for name in unresolved.keys() & {t.name for t in config.targets}:
        raise ConfigError("targets", f"duplicate target name '{clip(name)}'")
    config._unresolved = unresolved
    check_dependencies(config.targets, unresolved.keys())  # unknown names, cycles (config/graph.py)
    _register_config_secrets(config)
    run_config_checks(config)  # builtin step names, workflow names (recovery.engine.custom)
    state_url = config.state_url.get_secret_value() if config.state_url else None
    check_state_keyspace(state_url, config.targets)  # destructive patterns stay off the state keys
    return _resolve_spool(config, source)


def _register_config_secrets(config: RecoveryConfig) -> None:
    """Every config URL beyond scheme://host:port and every header value is a secret."""
    urls = [url.get_secret_value() for url in (config.audit_url, config.state_url) if url is not None]
    for target in config.targets:
        urls += target.urls()
        register_secrets(target.secret_values())
    step_urls, step_secrets = workflow_secrets(config.workflows)  # a hook's URL, a command's env
    urls += step_urls
    register_secrets(step_secrets)
    for url in urls:
        register_url(url)


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
        text = read_config_text(resolved)
        env = tuple(os.environ.get(name) for name in sorted(set(ENV_NAME_RE.findall(text))))
        key = (str(resolved), hashlib.sha256(text.encode()).hexdigest(), env)
        cached = _loaded.get(key)
        if cached is not None:
            return cached
        config = parse_config(parse_yaml(text, str(resolved)), str(resolved))
    except (RecursionError, MemoryError, OverflowError) as exc:
        # The limits above should make these impossible; if one still happens it came from the
        # file, and the contract for bad input is one exit-2 line, not a traceback.
        raise ConfigError(
            clip(str(resolved)), f"too large or too deeply nested ({type(exc).__name__})"
        ) from None
    if len(_loaded) >= _LOADED_MAX:
        _loaded.clear()
    _loaded[key] = config
    return config
