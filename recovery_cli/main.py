"""``recovery`` CLI: exit 0 ok, 1 unhealthy/failed/refused, 2 bad input.

Read-only commands (validate, check, history, breaker-status) import only the core package: Prefect's import
costs ~2.3 s and its ephemeral API ~15 s, which an on-call engineer should not wait for just
to read state. Commands that run flows import ``flows`` lazily.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from recovery.errors import ConfigError, RecoveryError
from recovery.redact import redact

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the message already names the argument.
        self.exit(EXIT_USAGE, f"recovery: error: {message}\n")


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1 or number > 100_000:
        raise argparse.ArgumentTypeError(f"expected 1..100000, got {number}")
    return number


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {value!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected 1..65535, got {port}")
    return port


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def prefect_environment() -> None:
    """Defaults for running flows here: no analytics (no internet), a patient ephemeral API."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


# --- read-only commands ---------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    from recovery.config import load_config, resolve_config_path

    config = load_config(args.config)
    kinds: dict[str, int] = {}
    for target in config.targets:
        kinds[target.kind] = kinds.get(target.kind, 0) + 1
    summary = ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items())) or "no targets"
    state = "redis" if config.state_url else "in-process"
    print(
        f"{resolve_config_path(args.config)}: ok ({len(config.targets)} targets; {summary}; state: {state})"
    )
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from recovery.config import load_config
    from recovery.probes import probe_targets

    config = load_config(args.config)
    results = asyncio.run(probe_targets(config.targets, config.monitor.probe_concurrency))
    if args.json:
        _print_json([r.as_json() for r in results])
    else:
        width = max([len(r.target) for r in results] + [6])
        for r in results:
            mark = "healthy  " if r.healthy else "UNHEALTHY"
            print(f"{r.target:<{width}}  {r.kind:<8} {mark}  {r.latency_ms:8.1f} ms  {r.reason}")
    return EXIT_OK if all(r.healthy for r in results) else EXIT_FAILED


def format_run(run: Any) -> list[str]:
    started = run.started_at.strftime("%Y-%m-%d %H:%M:%S")
    duration = f"{run.duration_seconds:.2f}s" if run.duration_seconds is not None else "-"
    flag = " (dry run)" if run.dry_run else ""
    lines = [f"{started}  {run.target}  {run.workflow}  {run.type}  {run.state}{flag}  {duration}"]
    if run.error_message:
        lines.append(f"    error: {run.error_type}: {run.error_message}")
    for step in run.steps:
        extra = f" ({step.error_message})" if step.error_message else ""
        lines.append(f"    - {step.name}: {step.state}, attempts {step.attempts}/{step.max_attempts}{extra}")
    return lines


def cmd_history(args: argparse.Namespace) -> int:
    from recovery.audit.store import AuditStore
    from recovery.config import load_config

    config = load_config(args.config)
    if args.target:
        config.target(args.target)  # unknown target -> exit 2 naming it
    runs = AuditStore(config.audit_url.get_secret_value()).history(args.target, args.limit)
    if args.json:
        _print_json([r.as_json() for r in runs])
    elif not runs:
        print("no recoveries recorded")
    else:
        for run in runs:
            print("\n".join(format_run(run)))
    return EXIT_OK


def cmd_breaker_status(args: argparse.Namespace) -> int:
    """Breaker state from shared state (no Prefect); exit 1 if any breaker is not closed."""
    from recovery.breaker_admin import breaker_statuses
    from recovery.config import load_config

    statuses = breaker_statuses(load_config(args.config), args.target)
    if args.json:
        _print_json([s.as_json() for s in statuses])
    elif not statuses:
        print("no targets configured")
    else:
        width = max([len(s.target) for s in statuses] + [6])
        for s in statuses:
            line = f"{s.target:<{width}}  {s.state:<9}  failures {s.fail_counter}/{s.fail_max}"
            if s.half_open_in_seconds is not None:
                line += f"  half-open in {s.half_open_in_seconds:.1f}s"
            if s.probe_holder:
                line += f"  probe held by {s.probe_holder}"
            print(f"{line}  [{s.storage}]")
    return EXIT_OK if all(s.state == "closed" for s in statuses) else EXIT_FAILED


def cmd_stats(args: argparse.Namespace) -> int:
    """Per target/workflow stats from the audit store (SQL aggregation; no Prefect)."""
    from datetime import UTC, datetime

    from recovery.audit.store import AuditStore
    from recovery.config import load_config
    from recovery.report import format_stats
    from recovery.stats import compute_stats, parse_window

    window = parse_window(args.since)  # bad --since -> exit 2 before touching the database
    config = load_config(args.config)
    until = datetime.now(UTC)
    report = compute_stats(AuditStore(config.audit_url.get_secret_value()), until - window, until)
    if args.json:
        _print_json(report.as_json())
    else:
        print("\n".join(format_stats(report)))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """The status board from shared state + audit (no Prefect); exit 1 if a target is unhealthy."""
    from recovery.config import load_config
    from recovery.status import collect_status, format_status

    rows = collect_status(load_config(args.config))
    if args.json:
        _print_json([r.as_json() for r in rows])
    else:
        print("\n".join(format_status(rows)))
    return EXIT_FAILED if any(r.health == "unhealthy" for r in rows) else EXIT_OK


# --- commands that run flows ----------------------------------------------------------------


def cmd_monitor(args: argparse.Namespace) -> int:
    from recovery.config import load_config, resolve_config_path

    config = load_config(args.config)  # fail fast (exit 2) before paying for Prefect
    config_path = str(resolve_config_path(args.config))
    prefect_environment()
    from flows.monitor import monitor

    async def cycles() -> int:
        while True:
            report = await monitor(config_path=config_path)
            if args.json:
                _print_json(report)
            else:
                for t in report["targets"]:
                    state = "healthy" if t["healthy"] else f"UNHEALTHY ({t['reason']})"
                    print(f"{t['target']}: {state}, failures {t['failures']}, action {t['action']}")
                for r in report["recoveries"]:
                    print(f"{r['workflow']} of {r['target']}: {r['state']}")
            failed = any(r["state"] != "succeeded" for r in report["recoveries"])
            if args.once:
                unhealthy = any(not t["healthy"] and t["action"] != "recover" for t in report["targets"])
                return EXIT_FAILED if failed or unhealthy else EXIT_OK
            await asyncio.sleep(config.monitor.interval_seconds)

    try:
        return asyncio.run(cycles())
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_recover(args: argparse.Namespace) -> int:
    import uuid

    from recovery.audit.store import AuditStore
    from recovery.config import load_config, resolve_config_path
    from recovery.runtime import RecoveryRequest, record_dry_run
    from recovery.triggers import validate_request
    from recovery.workflows import describe_plan, workflow_named

    config = load_config(args.config)
    request = RecoveryRequest(
        target=args.target,
        workflow=args.workflow,
        run_type=args.type,
        requested_by=args.requested_by,
        reason=args.reason,
        dry_run=args.dry_run,
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
        print("\n".join(describe_plan(config, target, workflow_named(workflow, target))))
        print(f"dry run recorded as {run_id}; nothing was touched")
        return EXIT_OK
    prefect_environment()
    from flows.manual_flows import recover

    request_id = str(uuid.uuid4())  # the audit row's id, so this command can read it back
    flow_fn: Any = recover  # Flow's overloads do not type return_state=True
    state: Any = asyncio.run(
        flow_fn(
            target=target.name,
            requested_by=args.requested_by,
            type=args.type,
            workflow=args.workflow,
            reason=args.reason,
            request_id=request_id,
            config_path=str(resolve_config_path(args.config)),
            return_state=True,
        )
    )
    run = AuditStore(config.audit_url.get_secret_value()).run(request_id)
    if args.json:
        _print_json(run.as_json() if run else {"state": "failed", "message": redact(state.message or "")})
    elif run:
        print("\n".join(format_run(run)))
    else:
        print(f"recovery did not start: {redact(state.message or '')}")
    return EXIT_OK if run is not None and run.state == "succeeded" else EXIT_FAILED


def _run_operation(args: argparse.Namespace, workflow: str, **params: Any) -> int:
    """Run a manual-operation flow for ``args.target`` and print its audit record."""
    from recovery.audit.store import AuditStore
    from recovery.config import load_config, resolve_config_path
    from recovery.workflows import workflow_named

    config = load_config(args.config)
    target = config.target(args.target)
    workflow_named(workflow, target)  # wrong kind of target -> exit 2 before paying for Prefect
    if workflow == "clear-cache" and not params.get("pattern"):
        validation = getattr(target, "validation", None)
        if validation is None:
            raise ConfigError("--pattern", f"required: target '{target.name}' has no validate.key_pattern")
    prefect_environment()
    from flows.recovery_flows import RECOVERY_FLOWS

    flow_fn: Any = RECOVERY_FLOWS[workflow]  # flows differ in their extra parameters (pattern)
    state = asyncio.run(
        flow_fn(
            target=target.name,
            config_path=str(resolve_config_path(args.config)),
            run_type="manual",
            requested_by=args.requested_by,
            reason=args.reason,
            return_state=True,
            **params,
        )
    )
    runs = AuditStore(config.audit_url.get_secret_value()).history(target.name, limit=5)
    run = next((r for r in runs if r.flow_run_id == str(state.state_details.flow_run_id)), None)
    if args.json:
        _print_json(run.as_json() if run else {"state": "failed", "message": redact(state.message or "")})
    elif run:
        print("\n".join(format_run(run)))
        for step in run.steps:
            if step.detail:
                print(f"    {step.name}: {json.dumps(step.detail, default=str)}")
    else:
        print(f"{workflow} did not start: {redact(state.message or '')}")
    return EXIT_OK if run is not None and run.state == "succeeded" else EXIT_FAILED


def cmd_clear_cache(args: argparse.Namespace) -> int:
    if args.pattern is not None and not args.pattern.strip():
        raise ConfigError("--pattern", "must not be empty")
    return _run_operation(args, "clear-cache", pattern=args.pattern)


def cmd_reconnect_database(args: argparse.Namespace) -> int:
    return _run_operation(args, "reconnect-database")


def cmd_reset_breaker(args: argparse.Namespace) -> int:
    """Close TARGET's breaker through the ``reset-circuit-breaker`` flow (audited)."""
    from recovery.audit.store import AuditStore
    from recovery.config import load_config, resolve_config_path

    config = load_config(args.config)
    target = config.target(args.target)  # unknown target -> exit 2 before paying for Prefect
    if not args.reason.strip():
        raise ConfigError("--reason", "must not be empty")
    if not (args.requested_by or "").strip():
        raise ConfigError("--requested-by", "must not be empty")
    prefect_environment()
    from flows.breaker_flows import reset_circuit_breaker

    flow_fn: Any = reset_circuit_breaker  # Flow's overloads do not type return_state=True
    state: Any = asyncio.run(
        flow_fn(
            target=target.name,
            requested_by=args.requested_by,
            reason=args.reason,
            config_path=str(resolve_config_path(args.config)),
            return_state=True,
        )
    )
    run = AuditStore(config.audit_url.get_secret_value()).run(str(state.state_details.flow_run_id))
    if args.json:
        _print_json(run.as_json() if run else {"state": "failed", "message": redact(state.message or "")})
    elif run:
        print("\n".join(format_run(run)))
        for step in run.steps:
            if step.detail:
                print(f"    {step.name}: {json.dumps(step.detail, default=str)}")
    else:
        print(f"reset-circuit-breaker did not start: {redact(state.message or '')}")
    return EXIT_OK if run is not None and run.state == "succeeded" else EXIT_FAILED


def cmd_serve(args: argparse.Namespace) -> int:
    from recovery.config import load_config, resolve_config_path

    load_config(args.config)  # bad config -> exit 2 before Prefect starts
    prefect_environment()
    if args.metrics_port:
        from recovery.metrics import start_metrics_server

        start_metrics_server(args.metrics_port)
    from deployments.serve import serve_all

    serve_all(str(resolve_config_path(args.config)), limit=args.limit)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    prefect_environment()
    from recovery_cli.demo import run_demo

    return run_demo(keep=args.keep)


# --- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="recovery", description="Self-healing recovery pipelines on Prefect.")
    parser.add_argument("--config", help="config file (default: $RECOVERY_CONFIG or recovery.yaml)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("validate", help="validate the config file")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("check", help="probe every target once (no Prefect)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("monitor", help="run the monitor flow (every interval, or --once)")
    p.add_argument("--once", action="store_true", help="run one cycle and exit")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_monitor)

    p = sub.add_parser("recover", help="run a recovery flow for TARGET now")
    p.add_argument("target")
    p.add_argument("--workflow", help="override the workflow chosen for the target's kind")
    p.add_argument("--reason", help="why (audited; required for --type emergency)")
    p.add_argument("--requested-by", default=os.environ.get("USER") or "cli", help="who (audited)")
    p.add_argument("--type", choices=("manual", "emergency", "scheduled"), default="manual")
    p.add_argument("--dry-run", action="store_true", help="record and print the plan only")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recover)

    p = sub.add_parser("history", help="recent recoveries from the audit store (no Prefect)")
    p.add_argument("--target")
    p.add_argument("--limit", type=_positive_int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("stats", help="per target/workflow rates, durations, MTTD/MTTR (no Prefect)")
    p.add_argument("--since", default="24h", help="window: 30m, 24h, 7d... (default 24h)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("status", help="status board of every target (no Prefect; 1 if one is unhealthy)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "breaker-status", help="circuit breaker state of every target or TARGET (no Prefect; 1 if not closed)"
    )
    p.add_argument("target", nargs="?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_breaker_status)

    p = sub.add_parser("reset-breaker", help="close TARGET's circuit breaker now (audited)")
    p.add_argument("target")
    p.add_argument("--reason", required=True, help="why (audited)")
    p.add_argument("--requested-by", default=os.environ.get("USER") or "cli", help="who (audited)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reset_breaker)

    p = sub.add_parser("clear-cache", help="delete a cache target's keys (audited manual operation)")
    p.add_argument("target")
    p.add_argument("--pattern", help="SCAN MATCH pattern (default: the target's validate.key_pattern)")
    p.add_argument("--reason", help="why (audited)")
    p.add_argument("--requested-by", default=os.environ.get("USER") or "cli", help="who (audited)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_clear_cache)

    p = sub.add_parser("reconnect-database", help="reset a database target's connection pools (audited)")
    p.add_argument("target")
    p.add_argument("--reason", help="why (audited)")
    p.add_argument("--requested-by", default=os.environ.get("USER") or "cli", help="who (audited)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reconnect_database)

    p = sub.add_parser("serve", help="serve every deployment from this process (schedules kept on exit)")
    p.add_argument("--limit", type=_positive_int, help="max concurrent flow runs in this process")
    p.add_argument("--metrics-port", type=_port, help="expose Prometheus metrics on this port")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="watch a flaky local service fail and be recovered")
    p.add_argument("--keep", action="store_true", help="keep the demo's temp directory")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"recovery: error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except RecoveryError as exc:
        if args.debug:
            raise
        print(f"recovery: error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        if args.debug:
            raise
        print(f"recovery: error: {type(exc).__name__}: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
