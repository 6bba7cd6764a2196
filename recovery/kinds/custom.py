"""Config-defined step types: ``command``, ``http``, ``python``, ``deployment``, ``approval``.

Each ``*_step(config)`` returns the step function (``StepFn``) and what ``--dry-run`` shows of
it; ``recovery.engine.custom`` builds the workflow specs from ``workflows:`` with them. Like
every step they see the run only through ``StepContext``; the two that need Prefect reach it
through ``recovery.kinds.orchestrator`` (installed by the flows layer).

Placeholders: ``{target}``, ``{reason}``, ``{run_id}`` and ``{workflow}`` are replaced in argv,
URL, json/body strings and messages by one regex over exactly those names, never by
``str.format`` (which would let a config string reach attributes: ``{target.__class__}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from recovery.backends.state import SharedState
from recovery.blocking import blocking
from recovery.config.loader import RecoveryConfig, TargetConfig
from recovery.config.workflows import PLACEHOLDER_RE, ApprovalStep, CommandStep, DeploymentStep, HttpStep
from recovery.errors import ApprovalRefused, PermanentError, StepFailed, clip
from recovery.kinds.base import Detail, StepContext, StepFn
from recovery.kinds.orchestrator import orchestrator
from recovery.redact import redact, redact_url

OUTPUT_TAIL_BYTES = 4096  # of stdout and of stderr, kept for the step detail
KILL_GRACE_SECONDS = 2.0  # SIGTERM to SIGKILL of a timed-out/cancelled process group
PIPE_GRACE_SECONDS = 1.0  # after exit: a daemon the command left behind may hold the pipes open
RESPONSE_TAIL_CHARS = 1024

Shows = Callable[[Mapping[str, str]], str]
SpecT = TypeVar("SpecT", CommandStep, HttpStep)


def placeholder_values(ctx: StepContext) -> dict[str, str]:
    return {
        "target": ctx.target.name,
        "reason": ctx.reason or "",
        "run_id": ctx.run_id,
        "workflow": ctx.workflow,
    }


def substitute(text: str, values: Mapping[str, str]) -> str:
    """``text`` with ``{target}``/``{reason}``/``{run_id}``/``{workflow}`` replaced; any other
    brace is left as written. A name missing from ``values`` stays as the placeholder."""
    return PLACEHOLDER_RE.sub(lambda m: values.get(m[1], m[0]), text)


def substitute_json(value: Any, values: Mapping[str, str]) -> Any:
    """The strings of a JSON value substituted (keys too: they are strings the operator wrote)."""
    if isinstance(value, str):
        return substitute(value, values)
    if isinstance(value, list):
        return [substitute_json(v, values) for v in value]
    if isinstance(value, dict):
        return {substitute(str(k), values): substitute_json(v, values) for k, v in value.items()}
    return value


# --- command -------------------------------------------------------------------------------------


async def _tail(stream: asyncio.StreamReader | None, keep: int = OUTPUT_TAIL_BYTES) -> bytes:
    """Read ``stream`` to EOF keeping only its last ``keep`` bytes (a chatty command costs no memory)."""
    buf = b""
    if stream is None:
        return buf
    while chunk := await stream.read(65536):
        buf = (buf + chunk)[-keep:]
    return buf


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM the command's process group, SIGKILL it after a grace period; reap the leader."""
    _kill_group(proc.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(proc.wait()), KILL_GRACE_SECONDS)
    _kill_group(proc.pid, signal.SIGKILL)  # the group's other members, too, even if the leader left
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(proc.wait()), KILL_GRACE_SECONDS)


def _text(raw: bytes) -> str:
    return redact(raw.decode("utf-8", "replace"))


async def run_command(spec: CommandStep, values: Mapping[str, str]) -> Detail:
    """Run ``spec.argv`` (no shell) in a new process group; bounded by ``timeout_seconds``.

    Timeout or cancellation kills the whole group (a shell script's children too). The exit
    code and the last 4 KB of stdout/stderr, redacted, are the step's detail; an exit code not
    in ``expect_exit`` raises ``StepFailed`` with that detail.
    """
    argv = [substitute(a, values) for a in spec.argv]
    env = {**os.environ, **{k: substitute(v, values) for k, v in spec.env.items()}} if spec.env else None
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=spec.cwd,
            env=env,
            start_new_session=True,  # its own process group: killed as one
        )
    except OSError as exc:  # no such program, not executable, bad cwd: retrying will not help
        raise PermanentError(f"command {clip(argv[0])!r} could not start: {exc.strerror or exc}") from None
    readers = [asyncio.ensure_future(_tail(proc.stdout)), asyncio.ensure_future(_tail(proc.stderr))]
    timed_out = False
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), spec.timeout_seconds)
    except TimeoutError:
        timed_out = True
        await _stop(proc)
    except asyncio.CancelledError:
        await _stop(proc)
        for reader in readers:
            reader.cancel()
        raise
    done, pending = await asyncio.wait(readers, timeout=PIPE_GRACE_SECONDS)
    for reader in pending:
        reader.cancel()
    out, err = (r.result() if r in done and not r.cancelled() else b"" for r in readers)
    detail: dict[str, Any] = {
        "argv": [redact(a) for a in argv],
        "exit_code": proc.returncode,
        "pid": proc.pid,
        "seconds": round(time.monotonic() - started, 2),
        "stdout": _text(out),
        "stderr": _text(err),
    }
    if timed_out:
        detail["timed_out"] = True
        raise StepFailed(f"command timed out after {spec.timeout_seconds:g}s (process group killed)", detail)
    if proc.returncode not in spec.expect_exit:
        raise StepFailed(f"command exited {proc.returncode} (expected {spec.expect_exit})", detail)
    return detail


def _sending(
    send: Callable[[SpecT, Mapping[str, str]], Awaitable[Detail]], spec: SpecT, shows: Shows
) -> tuple[StepFn, Shows]:
    """A step that sends ``spec`` with this run's placeholder values (command, http)."""

    async def run(ctx: StepContext) -> Detail:
        return await send(spec, placeholder_values(ctx))

    return run, shows


def command_step(spec: CommandStep) -> tuple[StepFn, Shows]:
    def shows(values: Mapping[str, str]) -> str:
        argv = " ".join(redact(substitute(a, values)) for a in spec.argv)
        return f"command: {argv} (timeout {spec.timeout_seconds:g}s)"

    return _sending(run_command, spec, shows)


# --- http ----------------------------------------------------------------------------------------


def url_with(template: str, values: Mapping[str, str]) -> str:
    """The URL with the placeholders filled in percent-encoded: a reason holding ``/``, ``?``
    or ``#`` stays one path segment or value, never another path or query."""
    return substitute(template, {k: quote(v, safe="") for k, v in values.items()})


async def send_request(spec: HttpStep, values: Mapping[str, str]) -> Detail:
    url = url_with(spec.url, values)
    kwargs: dict[str, Any] = {"headers": spec.headers}
    if spec.json_ is not None:
        kwargs["json"] = substitute_json(spec.json_, values)
    elif spec.body is not None:
        kwargs["content"] = substitute(spec.body, values)
    detail: dict[str, Any] = {"method": spec.method, "url": redact_url(url)}
    try:
        async with httpx.AsyncClient(timeout=spec.timeout_seconds, follow_redirects=False) as client:
            # httpx bounds each phase; the whole exchange is bounded here.
            response = await asyncio.wait_for(
                client.request(spec.method, url, **kwargs), spec.timeout_seconds
            )
    except (httpx.HTTPError, TimeoutError) as exc:
        detail["error"] = redact(type(exc).__name__)
        raise StepFailed(f"{spec.method} {redact_url(url)} failed: {type(exc).__name__}", detail) from None
    detail["status"] = response.status_code
    detail["response"] = redact(response.text[-RESPONSE_TAIL_CHARS:])
    ok = response.status_code in spec.expect_status if spec.expect_status else response.is_success
    if not ok:
        raise StepFailed(f"{spec.method} {redact_url(url)} answered {response.status_code}", detail)
    return detail


def http_step(spec: HttpStep) -> tuple[StepFn, Shows]:
    def shows(values: Mapping[str, str]) -> str:
        return f"http: {spec.method} {redact_url(url_with(spec.url, values))}"

    return _sending(send_request, spec, shows)


# --- python --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PythonStepContext:
    """What a ``python: module:function`` step receives (``function(ctx)``)."""

    target: TargetConfig
    run_id: str
    reason: str | None
    workflow: str
    logger: logging.Logger
    state: SharedState
    config: RecoveryConfig


def resolve_python(ref: str) -> Callable[[PythonStepContext], Any]:
    """``package.module:function`` -> the function; ``ValueError`` saying what is wrong."""
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or the module raised while importing
        raise ValueError(f"cannot import module '{clip(module_name)}': {type(exc).__name__}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"module '{clip(module_name)}' has no function '{clip(attr)}'")
    return fn  # type: ignore[no-any-return]


def _as_detail(result: Any) -> Detail:
    if isinstance(result, dict):
        return {str(k): v for k, v in result.items()}
    return {
        "result": result
        if isinstance(result, str | int | float | bool) or result is None
        else clip(result, 500)
    }


def python_step(ref: str) -> tuple[StepFn, Shows]:
    async def run(ctx: StepContext) -> Detail:
        fn = resolve_python(ref)  # imported (once, cached by Python) when the config was checked
        pctx = PythonStepContext(
            ctx.target, ctx.run_id, ctx.reason, ctx.workflow,
            logging.getLogger(f"recovery.steps.{ref.partition(':')[0]}"), ctx.state, ctx.config,
        )  # fmt: skip
        if inspect.iscoroutinefunction(fn):
            result = await fn(pctx)
        else:  # a sync function may block: never on the event loop
            result = await blocking(fn, pctx)
            if inspect.isawaitable(result):
                result = await result
        return _as_detail(result)

    return run, lambda values: f"python: {ref}"


# --- deployment, approval (through the orchestrator the flows layer installs) --------------------


def deployment_step(spec: DeploymentStep) -> tuple[StepFn, Shows]:
    async def run(ctx: StepContext) -> Detail:
        params = substitute_json(spec.parameters, placeholder_values(ctx))
        return await orchestrator("deployment").run_deployment(spec.name, params, spec.timeout_seconds)

    def shows(values: Mapping[str, str]) -> str:
        params = redact(json.dumps(substitute_json(spec.parameters, values), default=str))
        return f"deployment: {spec.name} {params} (timeout {spec.timeout_seconds:g}s)"

    return run, shows


def approval_step(spec: ApprovalStep) -> tuple[StepFn, Shows]:
    async def run(ctx: StepContext) -> Detail:
        message = substitute(spec.message, placeholder_values(ctx))
        answer = await orchestrator("approval").approve(message, spec.timeout_seconds)
        if answer is None:
            detail: dict[str, Any] = {"approved": False, "timed_out": True, "message": redact(message)}
            raise ApprovalRefused(f"approval timed out after {spec.timeout_seconds:g}s", detail)
        detail = {
            "approved": answer.approved,
            "approver": redact(answer.approver or "unknown"),
            "comment": redact(answer.comment or ""),
            "message": redact(message),
        }
        if not answer.approved:
            why = f": {clip(answer.comment, 120)}" if answer.comment else ""
            raise ApprovalRefused(f"rejected by {clip(answer.approver or 'unknown', 60)}{why}", detail)
        return detail

    def shows(values: Mapping[str, str]) -> str:
        return f"approval: {redact(substitute(spec.message, values))} (timeout {spec.timeout_seconds:g}s)"

    return run, shows


StepFactory = Callable[[Any], tuple[Callable[[StepContext], Awaitable[Detail]], Shows]]
FACTORIES: dict[str, StepFactory] = {
    "command": command_step,
    "http": http_step,
    "python": python_step,
    "deployment": deployment_step,
    "approval": approval_step,
}
