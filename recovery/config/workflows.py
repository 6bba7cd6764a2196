"""Config-defined workflows: the top-level ``workflows:`` mapping and its step models.

A step has a ``name`` and exactly one action: ``builtin`` (a step of the built-in workflows),
``command`` (argv, no shell), ``http``, ``python`` (``module:function``), ``deployment`` (a
Prefect deployment) or ``approval`` (a person approves in the Prefect UI). The models check
what the file alone can tell (shapes, limits, argv, reference syntax); what needs the kinds
registry (builtin step names, clashes with built-in workflow names, importable python refs) is
checked by ``recovery.engine.custom`` through ``add_config_check`` (the config layer sits below
the kinds and may not import them).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from recovery.config.limits import MAX_KEYS, MAX_LIST, MAX_TIMEOUT
from recovery.config.targets import NAME_PATTERN, _Model
from recovery.config.urls import check_http_url
from recovery.errors import ConfigError, clip

# The four names substituted in argv, url, json/body strings and messages; nothing else is.
PLACEHOLDERS = ("target", "reason", "run_id", "workflow")
PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
PYTHON_REF_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
DEPLOYMENT_RE = re.compile(r"[^/\x00-\x1f\x7f]{1,200}/[^/\x00-\x1f\x7f]{1,200}")
STEP_NAME_RE = re.compile(r"[a-z0-9_][a-z0-9_-]{0,62}")
STEP_TYPES = ("builtin", "command", "http", "python", "deployment", "approval")
MAX_ARG_CHARS = 4096
MAX_STEPS = 50
MAX_WORKFLOWS = 200


def _no_nul(value: str, what: str) -> str:
    if "\x00" in value:
        raise ValueError(f"{what} must not contain NUL characters")
    return value


class CommandStep(_Model):
    argv: list[str] = Field(..., min_length=1, max_length=MAX_LIST, description="Program and arguments.")
    env: dict[str, str] | None = Field(None, max_length=MAX_KEYS, description="Extra environment variables.")
    cwd: str | None = Field(None, max_length=MAX_ARG_CHARS, description="Working directory.")
    timeout_seconds: float = Field(60.0, gt=0, le=MAX_TIMEOUT, description="Process group killed after this.")
    expect_exit: list[int] = Field([0], min_length=1, max_length=MAX_LIST, description="Exit codes: success.")

    @field_validator("argv", mode="before")
    @classmethod
    def _argv_strings(cls, argv: Any) -> Any:
        # Checked before pydantic coerces: a number or a list in argv is a mistake, not "1".
        if isinstance(argv, list):
            if not argv:
                raise ValueError("must not be empty")
            for i, arg in enumerate(argv):
                if not isinstance(arg, str):
                    raise ValueError(f"argv[{i}] must be a string, not {type(arg).__name__}")
            if not argv[0].strip():
                raise ValueError("argv[0] (the program) must not be blank")
        return argv

    @field_validator("argv")
    @classmethod
    def _argv_chars(cls, argv: list[str]) -> list[str]:
        for arg in argv:
            if len(arg) > MAX_ARG_CHARS:
                raise ValueError(f"argv: an argument is longer than {MAX_ARG_CHARS} characters")
            _no_nul(arg, "argv")
        return argv


class HttpStep(_Model):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"] = "POST"
    url: str = Field(..., max_length=MAX_ARG_CHARS, description="http(s) URL; {target} etc. substituted.")
    headers: dict[str, str] = Field(default_factory=dict, max_length=MAX_LIST)
    json_: Any = Field(None, alias="json", description="JSON body; strings substituted.")
    body: str | None = Field(None, max_length=1 << 16, description="Text body; substituted.")
    expect_status: list[int] | None = Field(
        None, min_length=1, max_length=MAX_LIST, description="Statuses that succeed (default: 2xx)."
    )
    timeout_seconds: float = Field(10.0, gt=0, le=300, description="Bound on the whole request.")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        # Checked with the placeholders filled in, as it will be sent.
        check_http_url(PLACEHOLDER_RE.sub("x", url))
        return url

    @model_validator(mode="after")
    def _one_body(self) -> HttpStep:
        if self.json_ is not None and self.body is not None:
            raise ValueError("give json or body, not both")
        return self


class DeploymentStep(_Model):
    name: str = Field(..., max_length=401, description="'<flow>/<deployment>'.")
    parameters: dict[str, Any] = Field(default_factory=dict, max_length=MAX_KEYS)
    timeout_seconds: float = Field(600.0, gt=0, le=MAX_TIMEOUT, description="Wait for its final state.")

    @field_validator("name")
    @classmethod
    def _flow_slash_deployment(cls, value: str) -> str:
        if not DEPLOYMENT_RE.fullmatch(value):
            raise ValueError("expected '<flow name>/<deployment name>'")
        return value


class ApprovalStep(_Model):
    timeout_seconds: float = Field(900.0, gt=0, le=MAX_TIMEOUT, description="Refused when nobody answers.")
    message: str = Field("approve recovery of {target}?", min_length=1, max_length=1000)


class StepConfig(_Model):
    name: str = Field(..., max_length=63, description="Step name (audit row), [a-z0-9_-].")
    description: str | None = Field(None, max_length=200)
    optional: bool = Field(False, description="A failure is audited but does not fail the run.")
    builtin: str | None = Field(None, max_length=63)
    command: CommandStep | None = None
    http: HttpStep | None = None
    python: str | None = Field(None, max_length=300)
    deployment: DeploymentStep | None = None
    approval: ApprovalStep | None = None

    @model_validator(mode="before")
    @classmethod
    def _command_fields(cls, data: Any) -> Any:
        """``command: [argv...]`` (the short form) is ``command: {argv: [...]}``; its
        ``env``/``cwd``/``timeout_seconds``/``expect_exit`` may then sit beside ``name``."""
        if isinstance(data, dict) and isinstance(data.get("command"), list):
            extra = {k: data[k] for k in ("env", "cwd", "timeout_seconds", "expect_exit") if k in data}
            rest = {k: v for k, v in data.items() if k not in extra}
            return {**rest, "command": {"argv": data["command"], **extra}}
        return data

    @field_validator("name")
    @classmethod
    def _step_name(cls, value: str) -> str:
        if not STEP_NAME_RE.fullmatch(value):
            raise ValueError("must be 1-63 characters of a-z, 0-9, '_' and '-', not starting with '-'")
        return value

    @field_validator("python")
    @classmethod
    def _python_ref(cls, value: str | None) -> str | None:
        if value is not None and not PYTHON_REF_RE.fullmatch(value):
            raise ValueError("expected 'package.module:function'")
        return value

    @model_validator(mode="after")
    def _one_action(self) -> StepConfig:
        given = [t for t in STEP_TYPES if getattr(self, t) is not None]
        if len(given) != 1:
            raise ValueError(f"step '{self.name}' needs exactly one of: {', '.join(STEP_TYPES)}")
        return self

    @property
    def step_type(self) -> str:
        return next(t for t in STEP_TYPES if getattr(self, t) is not None)


class WorkflowConfig(_Model):
    description: str | None = Field(None, max_length=200)
    steps: list[StepConfig] = Field(..., min_length=1, max_length=MAX_STEPS)

    @model_validator(mode="after")
    def _unique_steps(self) -> WorkflowConfig:
        seen: set[str] = set()
        for i, step in enumerate(self.steps):
            if step.name in seen:
                raise ValueError(f"steps[{i}].name: duplicate step name '{step.name}'")
            seen.add(step.name)
        return self


def check_workflows(workflows: dict[str, WorkflowConfig], lock_ttl_seconds: float) -> None:
    """``ConfigError`` for a bad workflow name or a step that may wait as long as the lock lives:
    each step attempt refreshes the target's lock once, so a longer wait would let it expire
    under the run (reconcile would call the run orphaned)."""
    for name, workflow in workflows.items():
        if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
            why = "a workflow name is 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
            raise ConfigError(f"workflows.{clip(name)}", why)
        for i, step in enumerate(workflow.steps):
            if getattr(getattr(step, step.step_type), "timeout_seconds", 0) >= lock_ttl_seconds:
                where = f"workflows.{name}.steps[{i}].{step.step_type}.timeout_seconds"
                raise ConfigError(where, f"must be below monitor.lock_ttl_seconds ({lock_ttl_seconds:g})")


def workflow_secrets(workflows: dict[str, WorkflowConfig]) -> tuple[list[str], list[str]]:
    """The URLs (their paths and queries are secrets) and the header and env values of the
    steps, for ``recovery.redact``."""
    urls: list[str] = []
    values: list[str] = []
    for workflow in workflows.values():
        for step in workflow.steps:
            if step.http is not None:
                urls.append(step.http.url)
                values += step.http.headers.values()
            if step.command is not None and step.command.env:
                values += step.command.env.values()
    return urls, values


# Checks that need layers above config (the kinds registry): registered by them, run by
# ``parse_config`` on every loaded config. Each raises ``ConfigError`` naming the field.
ConfigCheck = Callable[[Any], None]
_CHECKS: list[ConfigCheck] = []
# Layers above that keep something per workflow name (the flows layer: one flow per workflow)
# hear of every name a valid config defined, including those loaded before they registered.
NamesListener = Callable[[list[str]], None]
_LISTENERS: list[NamesListener] = []
_SEEN: dict[str, None] = {}  # insertion-ordered set of the workflow names of every valid config


def add_config_check(check: ConfigCheck) -> None:
    if check not in _CHECKS:
        _CHECKS.append(check)


def on_workflow_names(listener: NamesListener) -> None:
    """Call ``listener`` with the workflow names seen so far, then with each new name."""
    if listener not in _LISTENERS:
        _LISTENERS.append(listener)
        listener(list(_SEEN))


def run_config_checks(config: Any) -> None:
    for check in list(_CHECKS):
        check(config)
    new = [name for name in config.workflows if name not in _SEEN]
    _SEEN.update(dict.fromkeys(new))
    for listener in list(_LISTENERS) if new else ():
        listener(new)
