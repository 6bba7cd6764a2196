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

from recovery.errors import ConfigError, RecoveryError
from recovery.redact import redact
from recovery_cli.common import EXIT_FAILED, EXIT_USAGE, Parser, port_number, positive_int
from recovery_cli.process import Interrupted, Stopped, exit_now
from recovery_cli.readonly import (
    cmd_breaker_status,
    cmd_check,
    cmd_history,
    cmd_stats,
    cmd_status,
    cmd_validate,
)
from recovery_cli.runners import (
    cmd_clear_cache,
    cmd_demo,
    cmd_monitor,
    cmd_reconnect_database,
    cmd_recover,
    cmd_reset_breaker,
    cmd_serve,
)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="recovery", description="Self-healing recovery pipelines on Prefect.")
    parser.add_argument("--config", help="config file (default: $RECOVERY_CONFIG or recovery.yaml)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    def command(
        name: str, help: str, func: Any, *, target: str | None = None, json: bool = True, who: bool = False
    ) -> argparse.ArgumentParser:
        """One subcommand; ``target``: "required"/"optional" positional TARGET; ``who``: --requested-by."""
        p: argparse.ArgumentParser = sub.add_parser(name, help=help)
        if target is not None:
            p.add_argument("target", nargs=None if target == "required" else "?")
        if who:
            p.add_argument("--requested-by", default=os.environ.get("USER") or "cli", help="who (audited)")
        if json:
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
        return p

    command("validate", "validate the config file", cmd_validate, json=False)
    command("check", "probe every target once (no Prefect)", cmd_check)
    p = command("monitor", "run the monitor flow (every interval, or --once)", cmd_monitor)
    p.add_argument("--once", action="store_true", help="run one cycle and exit")
    p = command("recover", "run a recovery flow for TARGET now", cmd_recover, target="required", who=True)
    p.add_argument("--workflow", help="override the workflow chosen for the target's kind")
    p.add_argument("--reason", help="why (audited; required for --type emergency)")
    p.add_argument("--type", choices=("manual", "emergency", "scheduled"), default="manual")
    p.add_argument("--dry-run", action="store_true", help="record and print the plan only")
    p = command("history", "recent recoveries from the audit store (no Prefect)", cmd_history)
    p.add_argument("--target")
    p.add_argument("--limit", type=positive_int, default=20)
    p = command("stats", "per target/workflow rates, durations, MTTD/MTTR (no Prefect)", cmd_stats)
    p.add_argument("--since", default="24h", help="window: 30m, 24h, 7d... (default 24h)")
    command("status", "status board of every target (no Prefect; 1 if one is unhealthy)", cmd_status)
    command(
        "breaker-status",
        "circuit breaker state of every target or TARGET (no Prefect; 1 if not closed)",
        cmd_breaker_status,
        target="optional",
    )

    def admin(name: str, help: str, func: Any, reason_required: bool = False) -> argparse.ArgumentParser:
        """An audited operation on one TARGET: who asks (--requested-by) and why (--reason)."""
        p = command(name, help, func, target="required", who=True)
        p.add_argument("--reason", required=reason_required, help="why (audited)")
        return p

    admin("reset-breaker", "close TARGET's circuit breaker now (audited)", cmd_reset_breaker, True)
    p = admin("clear-cache", "delete a cache target's keys (audited manual operation)", cmd_clear_cache)
    p.add_argument("--pattern", help="SCAN MATCH pattern (default: the target's validate.key_pattern)")
    admin(
        "reconnect-database", "reset a database target's connection pools (audited)", cmd_reconnect_database
    )
    p = command(
        "serve", "serve every deployment from this process (schedules kept on exit)", cmd_serve, json=False
    )
    p.add_argument("--limit", type=positive_int, help="max concurrent flow runs in this process")
    p.add_argument("--metrics-port", type=port_number, help="expose Prometheus metrics on this port")
    p = command("demo", "watch a flaky local service fail and be recovered", cmd_demo, json=False)
    p.add_argument("--keep", action="store_true", help="keep the demo's temp directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
        return code
    except ConfigError as exc:
        print(f"recovery: error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as exc:  # SIGINT/SIGTERM: what was in flight was cancelled and audited
        print(f"recovery: {exc}", file=sys.stderr)
        if exc.abandoned:
            exit_now(exc.exit_code)
        return exc.exit_code
    except Stopped as exc:  # the Prefect API died mid-run: the run was cancelled and audited
        print(f"recovery: error: {redact(str(exc))}", file=sys.stderr)
        exit_now(EXIT_FAILED)
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
