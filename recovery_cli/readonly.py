"""Read-only commands: they import only the core package, never Prefect (~2.3 s import, ~15 s API)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from recovery.errors import clip
from recovery_cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    print_json,
)


def cmd_validate(args: argparse.Namespace) -> int:
    from recovery.config.loader import load_config, resolve_config_path
    from recovery.engine.escalation import check_escalation

    config = load_config(args.config).require_resolved()  # validate: every ${VAR} must be set
    check_escalation(config)  # ladder rungs need the workflow registry (engine), not just the file
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
    from recovery.config.loader import load_config
    from recovery.engine.probing import probe_targets

    config = load_config(args.config).require_resolved()  # check probes every target
    results = asyncio.run(probe_targets(config.targets, config.monitor.probe_concurrency))
    if args.json:
        print_json([r.as_json() for r in results])
    else:
        width = max([len(r.target) for r in results] + [6])
        for r in results:
            mark = "healthy  " if r.healthy else "UNHEALTHY"
            print(f"{r.target:<{width}}  {r.kind:<8} {mark}  {r.latency_ms:8.1f} ms  {r.reason}")
    return EXIT_OK if all(r.healthy for r in results) else EXIT_FAILED


def warn_unresolved(config: Any) -> None:
    """Targets left out for an unset ``${VAR}``: named on stderr, so a board is never silently short."""
    for error in config.unresolved.values():
        print(f"recovery: warning: {error}", file=sys.stderr)


def format_run(run: Any) -> list[str]:
    started = run.started_at.strftime("%Y-%m-%d %H:%M:%S")
    duration = f"{run.duration_seconds:.2f}s" if run.duration_seconds is not None else "-"
    flag = " (dry run)" if run.dry_run else ""
    lines = [f"{started}  {run.target}  {run.workflow}  {run.type}  {run.state}{flag}  {duration}"]
    attempt = run.id.rpartition(".")[2] if "." in run.id else None
    if attempt and run.flow_run_id:  # a retry (the UI's Retry): its link to the earlier attempts
        lines[0] += f"  attempt {attempt} of flow run {run.flow_run_id}"
    if run.error_message:
        lines.append(f"    error: {run.error_type}: {run.error_message}")
    for step in run.steps:
        extra = f" ({step.error_message})" if step.error_message else ""
        lines.append(f"    - {step.name}: {step.state}, attempts {step.attempts}/{step.max_attempts}{extra}")
    return lines


def cmd_history(args: argparse.Namespace) -> int:
    from recovery.config.loader import load_config
    from recovery.services import services_for

    config = load_config(args.config)
    # An unknown target -> exit 2 naming it. A target with an unset ${VAR} is known: its history
    # is audit rows only, which need none of its secrets.
    if args.target and args.target not in config.unresolved:
        config.target(args.target)
    runs = services_for(config).audit.history(args.target, args.limit)
    if args.json:
        print_json([r.as_json() for r in runs])
    elif not runs:
        print("no recoveries recorded")
    else:
        for run in runs:
            print("\n".join(format_run(run)))
    return EXIT_OK


def cmd_breaker_status(args: argparse.Namespace) -> int:
    """Breaker state from shared state (no Prefect); exit 1 if any breaker is not closed."""
    from recovery.config.loader import load_config
    from recovery.engine.breaker_admin import breaker_statuses

    config = load_config(args.config)
    warn_unresolved(config)
    statuses = breaker_statuses(config, args.target)
    if args.json:
        print_json([s.as_json() for s in statuses])
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
            if s.unverified_by:
                line += f"  unverified by run {s.unverified_by}: re-opens in {s.reopens_in_seconds or 0:.1f}s"
            print(f"{line}  [{s.storage}]")
    return EXIT_OK if all(s.state == "closed" for s in statuses) else EXIT_FAILED


def cmd_stats(args: argparse.Namespace) -> int:
    """Per target/workflow stats from the audit store (SQL aggregation; no Prefect)."""
    from datetime import UTC, datetime

    from recovery.config.loader import load_config
    from recovery.reporting.report import format_stats
    from recovery.reporting.stats import compute_stats, parse_window
    from recovery.services import services_for

    window = parse_window(args.since)  # bad --since -> exit 2 before touching the database
    config = load_config(args.config)
    until = datetime.now(UTC)
    report = compute_stats(services_for(config).audit, until - window, until)
    if args.json:
        print_json(report.as_json())
    else:
        print("\n".join(format_stats(report)))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    """The status board from shared state + audit (no Prefect); exit 1 if a target is unhealthy."""
    from recovery.config.loader import load_config
    from recovery.reporting.status import collect_status, format_status

    config = load_config(args.config)
    warn_unresolved(config)
    rows = collect_status(config)
    if args.json:
        print_json([r.as_json() for r in rows])
    else:
        print("\n".join(format_status(rows)))
    return EXIT_FAILED if any(r.health == "unhealthy" for r in rows) else EXIT_OK


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Finish the audit rows of recoveries whose process died (no Prefect: the lock rules alone,
    so every such row becomes ``Orphaned``; the monitor's own pass also knows ``Crashed``)."""
    from recovery.config.loader import load_config
    from recovery.engine.reconcile import reconcile
    from recovery.errors import ConfigError

    config = load_config(args.config)
    if config.state_url is None:
        # In-process locks live inside the monitor's process; from here every run looks dead.
        raise ConfigError("state_url", "reconcile needs shared state (the monitor reconciles in-process)")
    report = reconcile(config, grace_seconds=args.grace_seconds)
    if args.json:
        print_json(report.as_json())
        return EXIT_OK
    for run in report.finished:
        step = f", step {run.step} failed" if run.step else ""
        reopened = ", breaker re-opened" if run.breaker_reopened else ""
        print(f"{run.run_id}  {run.target}  {run.workflow}: failed ({run.error_type}){step}{reopened}")
    print(
        f"{len(report.finished)} of {report.checked} runs in progress finished as failed; "
        f"{len(report.running)} running (lock held), {len(report.young)} younger than {args.grace_seconds:g}s"
    )
    return EXIT_OK


def cmd_audit_replay(args: argparse.Namespace) -> int:
    """Replay the audit spool into the audit store (no Prefect); exit 1 while records remain."""
    from recovery.config.loader import load_config
    from recovery.services import services_for

    audit = services_for(load_config(args.config)).audit
    audit.catch_up()
    result = audit.summary()
    if args.json:
        print_json(result.as_json())
    elif result.error:
        print(f"audit store {result.store} unavailable: {result.error}")
        print(f"{result.pending} records stay in the spool {result.spool}")
    else:
        print(f"{result.replayed} records replayed into {result.store}; {result.pending} pending")
    if result.rejected:
        where = audit.spool.rejected_path
        print(f"{result.rejected} records rejected by the store: see {where}", file=sys.stderr)
    return EXIT_OK if result.pending == 0 and not result.error and not result.rejected else EXIT_FAILED


MIN_PRUNE_AGE = timedelta(days=1)  # a typo (`--older-than 1m`) must not wipe today's history


def cmd_audit_prune(args: argparse.Namespace) -> int:
    """Delete finished audit runs older than ``--older-than`` (retention); runs in progress stay."""
    from recovery.config.loader import load_config
    from recovery.errors import ConfigError
    from recovery.reporting.stats import parse_window
    from recovery.services import services_for

    age = parse_window(args.older_than, "--older-than")  # bad input: exit 2 before any I/O
    if age < MIN_PRUNE_AGE:
        raise ConfigError("--older-than", f"at least 1d, got '{clip(args.older_than)}'")
    before = datetime.now(UTC) - age
    audit = services_for(load_config(args.config)).audit
    audit.catch_up()  # spooled records first: a replay after the prune would bring old rows back
    count = audit.prune(before, dry_run=args.dry_run)
    if args.json:
        print_json({"before": before.isoformat(), "dry_run": args.dry_run, "runs": count})
    else:
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} {count} finished runs started before {before:%Y-%m-%d %H:%M:%S} UTC")
    return EXIT_OK
