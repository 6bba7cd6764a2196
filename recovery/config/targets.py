"""Target models: one pydantic model per kind, joined in the ``TargetConfig`` union on ``kind``.

Split from ``recovery.config.loader`` (which loads and validates the whole file) so each target kind's
fields, validators and sub-models sit together.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from recovery.config.fields import (
    _confined_pattern,
    _database_secret,
    _http_url,
    _optional_redis_secret,
    _sqlalchemy_secret,
    seconds,
    split_userinfo,
)
from recovery.config.graph import NAME_PATTERN as NAME_PATTERN
from recovery.config.graph import DependencyFields
from recovery.config.keyspace import pattern_problem, same_redis_database
from recovery.config.limits import (
    MAX_CACHE_TTL,
    MAX_COUNT,
    MAX_INTERVAL,
    MAX_LIST,
    MAX_RATE,
    MAX_TIMEOUT,
    MAX_VERIFY_INTERVAL,
    MAX_WINDOW,
)
from recovery.config.strategy import StrategyConfig, check_not_above
from recovery.config.urls import (
    check_redis_url,
)
from recovery.errors import ConfigError, clip
from recovery.redact import url_secret_parts

# RFC 9110 field-name token; a value may hold tab but no other control character (a CR/LF in a
# header would be refused by the HTTP client at every probe).
_HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
_HEADER_VALUE_BAD_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class _Model(BaseModel):
    # allow_inf_nan=False: .inf or .nan in any number field is an error, never a lock TTL of forever.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class RateLimitConfig(BaseModel):
    """Per HTTP target: how ``rate-limit-recovery`` waits and how the allowed rate moves (AIMD)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    normal_rate_per_second: float = Field(
        10.0, gt=0, le=MAX_RATE, description="The rate AIMD climbs back to."
    )
    safety_factor: float = Field(0.5, gt=0, le=1, description="Allowed rate = observed limit x this.")
    min_rate_per_second: float = Field(
        0.1, gt=0, le=MAX_RATE, description="The allowed rate never drops below this."
    )
    increase_per_cycle: float = Field(
        1.0, gt=0, le=MAX_RATE, description="Added per healthy monitor cycle (req/s)."
    )
    increase_interval_seconds: float | None = seconds(
        None,
        "Least time between increases; default: 0.9 x monitor.interval_seconds.",
        le=MAX_INTERVAL,
        zero=True,
    )
    max_wait_seconds: float = seconds(
        300.0, "Longest reset wait slept through; a longer one is escalated.", zero=True
    )
    limit_window_seconds: float | None = seconds(
        None, "Window of X-RateLimit-Limit, to turn it into requests/second."
    )
    ttl_seconds: float = Field(
        86400.0, gt=0, le=MAX_WINDOW, description="The rate key expires this long after a write."
    )


class VerifyConfig(_Model):
    consecutive_successes: int = Field(3, ge=1, le=MAX_COUNT, description="Good probes in a row to verify.")
    interval_seconds: float = Field(
        0.5, ge=0, le=MAX_VERIFY_INTERVAL, description="Pause between verification probes."
    )


class BreakerConfig(_Model):
    """The target's circuit breaker (``recovery.client.breakers``), shared through ``state_url``."""

    fail_max: int = Field(5, ge=1, le=MAX_COUNT, description="Failures that open the breaker.")
    reset_timeout_seconds: float = Field(
        60.0, gt=0, le=MAX_TIMEOUT, description="Open -> half-open after this."
    )
    success_threshold: int = Field(
        1, ge=1, le=MAX_COUNT, description="Good half-open probes in a row that close it."
    )
    probe_lease_seconds: float = seconds(
        30.0, "Lease of the one half-open probe; set above the guarded call's timeout."
    )
    on_state_unavailable: Literal["allow", "reject"] = Field(
        "allow",
        description="Redis down: allow (fail-open: calls run unguarded) or reject (fail-closed).",
    )
    state_ttl_seconds: float = Field(
        86400.0, gt=0, le=MAX_WINDOW, description="Breaker keys expire this long after their last change."
    )

    @model_validator(mode="after")
    def _ttl_covers_reset(self) -> BreakerConfig:
        reset, ttl = self.reset_timeout_seconds, self.state_ttl_seconds
        check_not_above(reset, ttl, "state_ttl_seconds must be at least reset_timeout_seconds")
        return self


class _TargetBase(_Model, DependencyFields):
    name: str = Field(..., pattern=NAME_PATTERN, description="Unique target name, [a-z0-9-].")
    strategy: StrategyConfig | None = Field(None, description="Retry strategy; default: top level.")
    verify: VerifyConfig = Field(default_factory=lambda: VerifyConfig())
    breaker: BreakerConfig = Field(default_factory=lambda: BreakerConfig())
    workflow: str | None = Field(
        None,
        max_length=63,
        description="Replaces the kind's default workflow (automatic runs use `escalation` if set).",
    )
    _workflows: Any = PrivateAttr(None)  # the config's ``workflows:``, set by RecoveryConfig


class HttpTarget(_TargetBase):
    kind: Literal["http"]
    url: str = Field(..., description="URL probed with the method below.")
    method: Literal["GET", "HEAD"] = "GET"
    expect_status: list[int] = Field(default_factory=lambda: [200], min_length=1, max_length=MAX_LIST)
    timeout_seconds: float = Field(2.0, gt=0, le=300)
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, max_length=MAX_LIST, description="Sent with probes."
    )
    error_cache_pattern: str | None = Field(
        None,
        description="Redis key pattern cleared on recovery, e.g. errors:payments-api:*; it must "
        "name a key space (not '*', not recovery:*).",
    )
    error_cache_url: SecretStr | None = Field(
        None, description="Redis holding the error cache; default: state_url."
    )
    rate_limit: RateLimitConfig = Field(
        default_factory=RateLimitConfig, description="rate-limit-recovery: reset waits, AIMD request rate."
    )

    _check_url = field_validator("url")(_http_url)
    _check_error_pattern = field_validator("error_cache_pattern")(_confined_pattern)

    @field_validator("expect_status")
    @classmethod
    def _check_status(cls, value: list[int]) -> list[int]:
        for code in value:
            if not 100 <= code <= 599:
                raise ValueError(f"invalid HTTP status {clip(code)}")
        return value

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, secret in value.items():
            if not _HEADER_NAME_RE.match(name):
                raise ValueError(f"invalid header name '{clip(name)}'")
            if _HEADER_VALUE_BAD_RE.search(secret.get_secret_value()):  # the value itself is never shown
                raise ValueError(f"header '{clip(name)}': control character in the value")
        return value

    _check_cache_url = field_validator("error_cache_url")(_optional_redis_secret)

    def endpoint(self) -> tuple[str, tuple[str, str] | None]:
        """The URL to request and its Basic credentials (from the URL's userinfo)."""
        return split_userinfo(self.url)

    def urls(self) -> list[str]:
        cache = self.error_cache_url.get_secret_value() if self.error_cache_url else None
        return [self.url, *([cache] if cache else [])]

    def secret_values(self) -> list[str]:
        """Header values (an Authorization header is the classic leak) and their Basic pair."""
        values = [v.get_secret_value() for v in self.headers.values()]
        return values + [v.split(" ", 1)[1] for v in values if " " in v]


def url_secrets(url: str | None) -> list[str]:
    """The secret parts of a URL: userinfo, password, path, every query value, fragment."""
    if not url:
        return []
    anywhere, tokens = url_secret_parts(url)
    return anywhere + tokens


_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"


class DatabaseTarget(_TargetBase):
    """A SQL database (PostgreSQL or SQLite) recovered by ``database-recovery``."""

    kind: Literal["database"]
    url: SecretStr = Field(..., description="SQLAlchemy URL; its password is a secret, never logged.")
    probe_query: str = Field("SELECT 1", min_length=1, description="Query run by every health probe.")
    connect_timeout_seconds: float = Field(5.0, gt=0, le=300, description="Connect timeout of a probe.")
    statement_timeout_seconds: float = Field(
        5.0, gt=0, le=3600, description="Statement timeout of probes and checks (lock waits included)."
    )
    stuck_session_seconds: float = seconds(
        300.0, "Idle-in-transaction or lock-blocking sessions older than this are stuck."
    )
    application_name: str | None = Field(
        None,
        min_length=1,
        description="Only sessions of this application_name are terminated; unset: none are.",
    )
    integrity_check: Literal["quick", "full"] = Field(
        "quick", description="SQLite: PRAGMA quick_check (quick) or integrity_check (full)."
    )
    canary_table: str = Field("recovery_canary", description="Table of the rolled-back write/read check.")

    _check_url = field_validator("url")(_database_secret)

    @field_validator("canary_table")
    @classmethod
    def _check_canary(cls, value: str) -> str:
        if not re.match(_IDENTIFIER, value):
            raise ValueError("must be a plain SQL identifier ([A-Za-z_][A-Za-z0-9_]*)")
        return value

    def urls(self) -> list[str]:
        return [self.url.get_secret_value()]

    def secret_values(self) -> list[str]:
        return []


class CacheValidation(_Model):
    key_pattern: str = Field(..., min_length=1, description="SCAN MATCH pattern of the cached keys.")
    format: Literal["json", "string"] = Field(
        "json", description="json: value parses as JSON; string: non-empty UTF-8."
    )
    required_fields: list[str] = Field(
        default_factory=list,
        max_length=MAX_LIST,
        description="json: the value is an object holding all of these.",
    )


class SqlSource(_Model):
    url: SecretStr = Field(..., description="SQLAlchemy URL of the source database.")
    query: str = Field(..., min_length=1, description="SELECT returning one row per cache entry.")
    key_template: str = Field(..., min_length=1, description="Cache key from row columns, e.g. user:{id}.")
    value_column: str | None = Field(None, description="Column holding the value; default: row as JSON.")

    _check_url = field_validator("url")(_sqlalchemy_secret)

    @field_validator("key_template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
        if not fields:
            raise ValueError("key_template needs at least one {column}")
        for name in fields:
            if not re.match(_IDENTIFIER, name):
                raise ValueError(f"key_template field {{{clip(name)}}} must be a plain column name")
        return value


class HttpSource(_Model):
    url: str = Field(..., description="GET returns a JSON object of key -> value.")
    timeout_seconds: float = Field(30.0, gt=0, le=3600, description="Timeout of the GET.")

    _check_url = field_validator("url")(_http_url)

    def endpoint(self) -> tuple[str, tuple[str, str] | None]:
        """The URL to GET and its Basic credentials (from the URL's userinfo)."""
        return split_userinfo(self.url)


class CacheRebuild(_Model):
    """Where ``cache-recovery`` warms the cache from: exactly one of sql, http, python."""

    sql: SqlSource | None = Field(None, description="Rows of a SQL query.")
    http: HttpSource | None = Field(None, description="A JSON object of key -> value from a URL.")
    python: str | None = Field(
        None, description="module:function returning a mapping (or pairs) of key -> value."
    )
    ttl_seconds: int | None = Field(
        None, ge=1, le=MAX_CACHE_TTL, description="Expiry of rebuilt keys; default: none."
    )
    overwrite: bool = Field(False, description="false: write only missing keys (SET NX).")

    @field_validator("python")
    @classmethod
    def _check_python(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$", value):
            raise ValueError("expected module:function, e.g. myapp.cache:warm_users")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> CacheRebuild:
        given = [n for n in ("sql", "http", "python") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"exactly one of sql, http, python is required (got {len(given)})")
        return self


class RedisTarget(_TargetBase):
    """A Redis cache recovered by ``cache-recovery``."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True, validate_by_alias=True)

    kind: Literal["redis"]
    url: SecretStr = Field(..., description="redis://[:password@]host:port/db of the cache.")
    timeout_seconds: float = Field(2.0, gt=0, le=300, description="Socket timeout of probes and steps.")
    max_memory_ratio: float = Field(
        0.9, gt=0, le=1, description="Unhealthy when used_memory / maxmemory is above this."
    )
    validation: CacheValidation | None = Field(
        None, alias="validate", description="How cached values are checked for corruption."
    )
    rebuild: CacheRebuild | None = Field(None, description="Source the cache is warmed from.")
    batch_size: int = Field(500, ge=1, le=100_000, description="SCAN COUNT and pipeline batch size.")
    clearable_patterns: list[str] = Field(
        default_factory=list,
        description="Key spaces clear-cache may delete besides validate.key_pattern's, e.g. tmp:*.",
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: SecretStr) -> SecretStr:
        check_redis_url(value.get_secret_value())
        return value

    @field_validator("clearable_patterns")
    @classmethod
    def _check_clearable(cls, value: list[str]) -> list[str]:
        for pattern in value:
            _confined_pattern(pattern)
        return value

    def key_spaces(self) -> list[str]:
        """Patterns naming the key spaces clear-cache may delete from (by their literal prefix)."""
        own = [self.validation.key_pattern] if self.validation is not None else []
        return own + list(self.clearable_patterns)

    def urls(self) -> list[str]:
        found = [self.url.get_secret_value()]
        if self.rebuild is not None and self.rebuild.sql is not None:
            found.append(self.rebuild.sql.url.get_secret_value())
        if self.rebuild is not None and self.rebuild.http is not None:
            found.append(self.rebuild.http.url)
        return found

    def secret_values(self) -> list[str]:
        return []


TargetConfig = Annotated[HttpTarget | DatabaseTarget | RedisTarget, Field(discriminator="kind")]
TARGET_KINDS = ("http", "database", "redis")


def check_state_keyspace(state_url: str | None, targets: Sequence[TargetConfig]) -> None:
    """A cache in the state's own Redis database must not validate (and so delete from) a
    pattern that reaches the state keys: ``clear_corrupted_entries`` would take a lock value
    for a corrupted entry."""
    for i, target in enumerate(targets):
        if not isinstance(target, RedisTarget) or target.validation is None:
            continue
        if not same_redis_database(target.url.get_secret_value(), state_url):
            continue
        problem = pattern_problem(target.validation.key_pattern)
        if problem is not None:
            raise ConfigError(
                f"targets[{i}].validate.key_pattern", f"{problem}, and this cache is the state_url database"
            )
