"""Commands that run flows: Prefect is imported lazily, inside each command."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from recovery.config.loader import RecoveryConfig
from recovery.enums import MonitorAction
from recovery.errors import ConfigError
from recovery.redact import redact
from recovery_cli.common import (
    DEFAULT_METRICS_HOST,
    EXIT_FAILED,
    EXIT_OK,
    prefect_api_watch,
    prefect_environment,
    print_json,
)
from recovery_cli.process import SHUTDOWN_GRACE_SECONDS, run_with_signals
from recovery_cli.readonly import format_run


def use_config(arg: str | None) -> None:
    """Flows load the config named by ``RECOVERY_CONFIG`` (never a parameter): point it at
    ``--config`` for the flows this process runs."""
    from recovery.config.loader import CONFIG_ENV_VAR, resolve_config_path

    os.environ[CONFIG_ENV_VAR] = str(resolve_config_path(arg).resolve())


def _print_targets(report: dict[str, Any]) -> None:
    for t in report["targets"]:
        state = "healthy" if t["healthy"] else f"UNHEALTHY ({t['reason']})"
        if t["action"] == MonitorAction.DEFERRED:
            print(f"{t['target']}: {state}, action deferred ({t['note']})", flush=True)
        else:
            extra = f" ({t['note']})" if t.get("blocked_by") else ""  # blocked by <dependency>
            extra += f", rung {t['rung']}/{t['rungs']}" if t.get("rung") else ""  # escalation ladder
            print(
                f"{t['target']}: {state}, failures {t['failures']}, action {t['action']}{extra}", flush=True
            )


def _print_recoveries(report: dict[str, Any]) -> None:
    for r in report["recoveries"]:
        print(f"{r['workflow']} of {r['target']}: {r['state']}", flush=True)


def _exit_code(report: dict[str, Any]) -> int:
    """1 if a recovery did not succeed, or a target is unhealthy and not being recovered, or a
    target was deferred (state unavailable, cycle deadline): nothing was done for it."""
    failed = any(r["state"] != "succeeded" for r in report["recoveries"])
    unhealthy = any(not t["healthy"] and t["action"] != "recover" for t in report["targets"])
    deferred = any(t["action"] == MonitorAction.DEFERRED for t in report["targets"])
    return EXIT_FAILED if failed or unhealthy or deferred else EXIT_OK


def cmd_monitor(args: argparse.Namespace) -> int:
    """Run monitor cycles every ``interval_seconds`` (or one, ``--once``).

    Each cycle's per-target report is printed as soon as the cycle has it (by its deadline); a
    cycle's recoveries then run on while the next cycle starts on time, and their outcomes are
    printed when they end. ``--once`` waits for its recoveries. SIGINT/SIGTERM: every cycle
    and recovery in flight is cancelled (audited ``cancelled``, locks released), exit 130/143.
    """
    from recovery.config.loader import load_config
    from recovery.engine.escalation import check_escalation

    config = load_config(args.config).require_resolved()  # fail fast (exit 2) before paying for Prefect
    check_escalation(config)  # every rung a workflow that can recover its target's kind
    use_config(args.config)
    prefect_environment()
    from flows.monitor import REPORT_SINK, monitor

    def report_lines(cycle: asyncio.Task[dict[str, Any]]) -> None:
        """A cycle the loop no longer waits for has ended: its recoveries, or why it failed."""
        if cycle.cancelled():
            return
        error = cycle.exception()
        if error is not None:
            print(f"recovery: error: monitor cycle failed: {redact(str(error))}", file=sys.stderr, flush=True)
        elif args.json:
            print_json(cycle.result())
        else:
            _print_recoveries(cycle.result())

    def start_cycle() -> tuple[asyncio.Task[dict[str, Any]], asyncio.Future[dict[str, Any]]]:
        """A cycle, and the future its per-target report arrives in (before its recoveries end)."""
        reported: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def sink(report: dict[str, Any]) -> None:
            if not reported.done():
                reported.set_result(report)

        token = REPORT_SINK.set(sink)
        try:  # the task copies this context: the cycle reports to ``sink``
            return asyncio.ensure_future(monitor()), reported
        finally:
            REPORT_SINK.reset(token)

    async def cycles() -> int:
        running: set[asyncio.Task[dict[str, Any]]] = set()
        try:
            while True:
                started = time.monotonic()
                cycle, reported = start_cycle()
                running.add(cycle)
                cycle.add_done_callback(running.discard)
                await asyncio.wait({reported, cycle}, return_when=asyncio.FIRST_COMPLETED)
                if reported.done() and not args.json:
                    _print_targets(reported.result())
                if args.once:
                    final = await cycle
                    print_json(final) if args.json else _print_recoveries(final)
                    return _exit_code(final)
                cycle.add_done_callback(report_lines)
                await asyncio.sleep(max(config.monitor.interval_seconds - (time.monotonic() - started), 0.0))
        except asyncio.CancelledError as exc:
            # A signal (recovery_cli.process): cancel every cycle in flight and let the finish
            # paths of their recoveries run (audit row ``cancelled``, lock released; the message,
            # e.g. "stopped by SIGTERM", becomes the row's error message).
            for cycle in running:
                cycle.cancel(exc.args[0] if exc.args else None)
            if running:
                await asyncio.wait(running, timeout=SHUTDOWN_GRACE_SECONDS)
            raise

    return run_with_signals(cycles, watch=prefect_api_watch())


def cmd_recover(args: argparse.Namespace) -> int:
    import uuid

    from recovery.config.loader import load_config
    from recovery.engine.runtime import RecoveryRequest, record_dry_run
    from recovery.engine.triggers import validate_request
    from recovery.engine.workflows import describe_plan, workflow_named

    config = load_config(args.config)
    # Fields in order: target, workflow, run_type, requested_by, reason.
    request = RecoveryRequest(
        args.target, args.workflow, args.type, args.requested_by, args.reason, dry_run=args.dry_run
    )
    try:
        workflow = validate_request(config, request)  # bad input -> exit 2 before paying for Prefect
    except ConfigError as exc:
        raise ConfigError(
            f"--{exc.field.replace('_', '-')}" if exc.field != "target" else "target", exc.message
        ) from None
    target = config.target(args.target)
    if args.dry_run:
        run_id = record_dry_run(config, request)
        spec = workflow_named(workflow, target, config)
        print("\n".join(describe_plan(config, target, spec, args.reason)))
        print(f"dry run recorded as {run_id}; nothing was touched")
        return EXIT_OK
    prefect_environment()
    from flows.manual_flows import recover

    request_id = str(uuid.uuid4())  # the audit row's id, so this command can read it back
    extra = {"type": args.type, "workflow": args.workflow, "request_id": request_id}
    return _run_flow(args, config, recover, "recovery", request_id, **extra)


def _run_flow(
    args: argparse.Namespace,
    config: RecoveryConfig,
    flow_fn: Any,
    what: str,
    audit_id: str | None,
    **params: Any,
) -> int:
    """Run ``flow_fn`` for ``args.target`` in this process, then print its audit row
    (``audit_id``, default: the flow run's id, which is the audit id of workflow flows).
    Every such flow takes the caller's target, name and reason; ``params`` adds the rest."""
    from recovery.engine.triggers import check_text

    who = {
        "target": config.target(args.target).name,
        "requested_by": args.requested_by,
        "reason": args.reason,
    }
    for name, value in who.items():
        if name != "target" and value is not None:  # what the flow's schema would refuse, as exit 2
            check_text(f"--{name.replace('_', '-')}", value)
    use_config(args.config)

    async def run() -> Any:
        return await flow_fn(return_state=True, **who, **params)

    # SIGINT/SIGTERM, or the Prefect API gone: the run is cancelled and audited, the command fails.
    state: Any = run_with_signals(run, watch=prefect_api_watch())
    return _report(args, config, audit_id or str(state.state_details.flow_run_id), state, what)


def _run_operation(args: argparse.Namespace, workflow: str, **params: Any) -> int:
    """Run a manual-operation flow for ``args.target`` and print its audit record."""
    from recovery.config.loader import load_config
    from recovery.engine.workflows import workflow_named

    config = load_config(args.config)
    target = config.target(args.target)
    workflow_named(workflow, target)  # wrong kind of target -> exit 2 before paying for Prefect
    prefect_environment()
    from flows.recovery_flows import OPERATION_FLOWS

    flow_fn = OPERATION_FLOWS[workflow]  # flows differ in their extra parameters (pattern)
    return _run_flow(args, config, flow_fn, workflow, None, **params)


def _report(args: argparse.Namespace, config: RecoveryConfig, run_id: str, state: Any, what: str) -> int:
    """Print the audit row of a finished flow run (or why it never started); 0 only if succeeded."""
    from recovery.services import services_for

    run = services_for(config).audit.run(run_id)
    if args.json:
        print_json(run.as_json() if run else {"state": "failed", "message": redact(state.message or "")})
    elif run:
        print("\n".join(format_run(run)))
        for step in run.steps:
            if step.detail:
                print(f"    {step.name}: {json.dumps(step.detail, default=str)}")
    else:
        print(f"{what} did not start: {redact(state.message or '')}")
    return EXIT_OK if run is not None and run.state == "succeeded" else EXIT_FAILED


def cmd_clear_cache(args: argparse.Namespace) -> int:
    from recovery.config.loader import load_config
    from recovery.engine.workflows import workflow_named
    from recovery.kinds.cache import confined_pattern
    from recovery.kinds.cache_client import as_redis

    if args.pattern is not None and not args.pattern.strip():
        raise ConfigError("--pattern", "must not be empty")
    config = load_config(args.config)
    target = config.target(args.target)
    workflow_named("clear-cache", target)  # a database target -> exit 2 naming --workflow
    state_url = config.state_url.get_secret_value() if config.state_url else None
    # Outside the key space / every key / the state keys -> exit 2 before anything runs.
    pattern = confined_pattern(as_redis(target), args.pattern, state_url, "--pattern")
    if args.dry_run:
        return _clear_cache_dry_run(args, config, pattern)
    return _run_operation(args, "clear-cache", pattern=args.pattern)


def _clear_cache_dry_run(args: argparse.Namespace, config: RecoveryConfig, pattern: str) -> int:
    """Count what clear-cache would delete (SCAN only), audited as a dry run; no Prefect."""
    from recovery.engine.runtime import RecoveryRequest, record_dry_run
    from recovery.kinds.cache import clear_cache
    from recovery.services import services_for

    target = config.target(args.target)
    request = RecoveryRequest(
        target.name, "clear-cache", "manual", args.requested_by, args.reason, dry_run=True
    )
    detail = asyncio.run(clear_cache(target, pattern, dry_run=True))
    run_id = record_dry_run(config, request, {"clear_cache_keys": detail})
    run = services_for(config).audit.run(run_id)
    if args.json and run is not None:
        print_json(run.as_json())
        return EXIT_OK
    count = (detail or {}).get("would_delete", 0)
    print(f"clear-cache of {target.name}: {count} key(s) match {pattern!r}; nothing was deleted")
    print(f"dry run recorded as {run_id}")
    return EXIT_OK


def cmd_reconnect_database(args: argparse.Namespace) -> int:
    return _run_operation(args, "reconnect-database")


def cmd_reset_breaker(args: argparse.Namespace) -> int:
    """Close TARGET's breaker through the ``reset-circuit-breaker`` flow (audited)."""
    from recovery.config.loader import load_config

    config = load_config(args.config)
    config.target(args.target)  # unknown target -> exit 2 before paying for Prefect
    if not args.reason.strip():
        raise ConfigError("--reason", "must not be empty")
    if not (args.requested_by or "").strip():
        raise ConfigError("--requested-by", "must not be empty")
    prefect_environment()
    from flows.breaker_flows import reset_circuit_breaker

    return _run_flow(args, config, reset_circuit_breaker, "reset-circuit-breaker", None, force=args.force)


def cmd_publish_schemas(args: argparse.Namespace) -> int:
    """Publish the caller schemas on the deployments `prefect deploy` created (deployments/publish.py)."""
    import asyncio

    from recovery.config.loader import load_config

    config = load_config(args.config).require_resolved()  # every target is a choice
    prefect_environment()
    from deployments.publish import publish_schemas

    updated, missing = asyncio.run(publish_schemas(config))
    if args.json:
        print_json({"updated": updated, "missing": missing})
    else:
        for name in updated:
            print(f"{name}: schema published")
        for name in missing:
            print(f"{name}: not deployed (run `prefect deploy --all` first)")
    return EXIT_FAILED if missing else EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from recovery.config.loader import load_config, resolve_config_path

    if args.metrics_host and not args.metrics_port:
        raise ConfigError("--metrics-host", "needs --metrics-port")
    from recovery.engine.escalation import check_escalation

    check_escalation(load_config(args.config).require_resolved())  # bad config -> exit 2 before Prefect
    prefect_environment()
    if args.metrics_port:
        from recovery.reporting.metrics import start_metrics_server

        # Loopback unless asked: metrics name every dependency and its health.
        start_metrics_server(args.metrics_port, args.metrics_host or DEFAULT_METRICS_HOST)
    from deployments.serve import serve_all

    serve_all(str(resolve_config_path(args.config)), limit=args.limit)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    prefect_environment()
    from recovery_cli.demo import run_demo

    return run_demo(keep=args.keep)
