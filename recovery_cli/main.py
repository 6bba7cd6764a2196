"""``recovery`` CLI entry point: the argument parser and error handling.

Exit 0 ok, 1 unhealthy/failed/refused, 2 bad input (one line naming the argument, no traceback),
130/143 stopped by SIGINT/SIGTERM (recovery_cli.process).
Read-only commands live in ``readonly`` and never import Prefect; flow-running commands live in
``runners`` and import it lazily.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import recovery.engine.custom  # noqa: F401  (registers the workflows: checks every config load runs)
from recovery.errors import ConfigError, RecoveryError, clip
from recovery.redact import redact
from recovery_cli.common import (
    DEFAULT_METRICS_HOST,
    EXIT_FAILED,
    EXIT_USAGE,
    MAX_LINE,
    Parser,
    config_path,
    host,
    non_blank,
    one_line,
    port_number,
    positive_int,
    target_name,
    text,
)
from recovery_cli.process import Interrupted, Stopped, exit_now
from recovery_cli.readonly import (
    cmd_audit_prune,
    cmd_audit_replay,
    cmd_breaker_status,
    cmd_check,
    cmd_history,
    cmd_reconcile,
    cmd_stats,
    cmd_status,
    cmd_validate,
)
from recovery_cli.runners import (
    cmd_clear_cache,
    cmd_demo,
    cmd_monitor,
    cmd_publish_schemas,
    cmd_reconnect_database,
    cmd_recover,
    cmd_reset_breaker,
    cmd_serve,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="recovery", description="Self-healing recovery pipelines on Prefect.")
    config_help = "config file (default: $RECOVERY_CONFIG or recovery.yaml)"
    parser.add_argument("--config", type=config_path, help=config_help)
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def command(
        name: str, help: str, func: Any, *, target: str | None = None, json: bool = True, who: bool = False
    ) -> argparse.ArgumentParser:
        """One subcommand; ``target``: "required"/"optional" positional TARGET; ``who``: --requested-by."""
        p: argparse.ArgumentParser = sub.add_parser(name, help=help)
        # Also after the subcommand; SUPPRESS: absent here, the top-level value is kept.
        p.add_argument("--config", type=config_path, default=argparse.SUPPRESS, help=config_help)
        if target is not None:
            p.add_argument("target", type=target_name, nargs=None if target == "required" else "?")
        if who:
            p.add_argument(
                "--requested-by",
                type=non_blank,
                default=os.environ.get("USER") or "cli",
                help="who (audited)",
            )
        if json:
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
        return p

    command("validate", "validate the config file", cmd_validate, json=False)
    command("check", "probe every target once (no Prefect)", cmd_check)
    p = command("monitor", "run the monitor flow (every interval, or --once)", cmd_monitor)
    p.add_argument("--once", action="store_true", help="run one cycle and exit")
    p = command("recover", "run a recovery flow for TARGET now", cmd_recover, target="required", who=True)
    p.add_argument("--workflow", type=non_blank, help="override the workflow chosen for the target's kind")
    p.add_argument("--reason", type=text, help="why (audited; required for --type emergency)")
    # "scheduled" is what a deployment schedule's runs are audited as, never a caller's choice.
    p.add_argument("--type", choices=("manual", "emergency"), default="manual")
    p.add_argument("--dry-run", action="store_true", help="record and print the plan only")
    p = command("history", "recent recoveries from the audit store (no Prefect)", cmd_history)
    p.add_argument("--target", type=target_name)
    p.add_argument("--limit", type=positive_int, default=20)
    p = command("stats", "per target/workflow rates, durations, MTTD/MTTR (no Prefect)", cmd_stats)
    p.add_argument(
        "--since", type=text, default="24h", help="window: 30m, 24h, 7d... up to 3650d (default 24h)"
    )
    command("status", "status board of every target (no Prefect; 1 if one is unhealthy)", cmd_status)
    command(
        "breaker-status",
        "circuit breaker state of every target or TARGET (no Prefect; 1 if not closed)",
        cmd_breaker_status,
        target="optional",
    )
    audit = sub.add_parser("audit", help="the audit spool (records kept while the audit store was down)")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, parser_class=Parser)
    p = audit_sub.add_parser("replay", help="replay spooled audit records into the store now (no Prefect)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit_replay)
    p = audit_sub.add_parser(
        "prune", help="delete finished runs older than --older-than from the audit store (no Prefect)"
    )
    p.add_argument(
        "--older-than", type=text, required=True, help="age: 1d at least, e.g. 90d (runs in progress stay)"
    )
    p.add_argument("--dry-run", action="store_true", help="count what would be deleted; delete nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit_prune)

    p = command("reconcile", "finish audit rows of recoveries whose process died (no Prefect)", cmd_reconcile)
    p.add_argument(
        "--grace-seconds", type=float, default=5.0, help="leave rows younger than this alone (default 5)"
    )

    def admin(name: str, help: str, func: Any, reason_required: bool = False) -> argparse.ArgumentParser:
        """An audited operation on one TARGET: who asks (--requested-by) and why (--reason)."""
        p = command(name, help, func, target="required", who=True)
        p.add_argument("--reason", type=text, required=reason_required, help="why (audited)")
        return p

    p = admin(
        "reset-breaker", "close TARGET's circuit breaker if it answers (audited)", cmd_reset_breaker, True
    )
    p.add_argument("--force", action="store_true", help="reset even though TARGET's probe fails (audited)")
    p = admin("clear-cache", "delete a cache target's keys (audited manual operation)", cmd_clear_cache)
    p.add_argument(
        "--pattern",
        type=text,
        help="SCAN MATCH pattern inside the target's key space (default: validate.key_pattern)",
    )
    p.add_argument("--dry-run", action="store_true", help="count the matching keys only (audited)")
    admin(
        "reconnect-database", "reset a database target's connection pools (audited)", cmd_reconnect_database
    )
    p = command(
        "serve", "serve every deployment from this process (schedules kept on exit)", cmd_serve, json=False
    )
    p.add_argument("--limit", type=positive_int, help="max concurrent flow runs in this process")
    p.add_argument("--metrics-port", type=port_number, help="expose Prometheus metrics on this port")
    p.add_argument(
        "--metrics-host", type=host, help=f"address the metrics port binds (default {DEFAULT_METRICS_HOST})"
    )
    command(
        "publish-schemas",
        "after `prefect deploy`: publish the config's choices and rules in the deployments' schemas",
        cmd_publish_schemas,
    )
    p = command("demo", "watch a flaky local service fail and be recovered", cmd_demo, json=False)
    p.add_argument("--keep", action="store_true", help="keep the demo's temp directory")
    return parser


def _error(message: str, *, echoes_input: bool = False) -> None:
    """One line on stderr. Input errors also get each word clipped (they quote the input);
    other errors (a driver's message, a path) are only kept to one bounded line."""
    text = redact(message)
    print(f"recovery: error: {one_line(text) if echoes_input else clip(text, MAX_LINE)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except (RecursionError, MemoryError, OverflowError) as exc:  # caused by the arguments alone
        _error(f"arguments too large ({type(exc).__name__})", echoes_input=True)
        return EXIT_USAGE
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:  # bad input, also the config file's RecursionError/MemoryError
        _error(str(exc), echoes_input=True)
        return EXIT_USAGE
    except Interrupted as exc:  # SIGINT/SIGTERM: what was in flight was cancelled and audited
        print(f"recovery: {exc}", file=sys.stderr)
        if exc.abandoned:
            exit_now(exc.exit_code)
        return exc.exit_code
    except Stopped as exc:  # the Prefect API died mid-run: the run was cancelled and audited
        _error(str(exc))
        exit_now(EXIT_FAILED)
    except RecoveryError as exc:
        if args.debug:
            raise
        _error(str(exc))
        return EXIT_FAILED
    except Exception as exc:
        if args.debug:
            raise
        _error(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
