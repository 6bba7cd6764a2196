"""``recovery`` CLI entry point: the argument parser and error handling.

Exit 0 ok, 1 unhealthy/failed/refused, 2 bad input (one line naming the argument, no traceback).
Read-only commands live in ``readonly`` and never import Prefect; flow-running commands live in
``runners`` and import it lazily.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from recovery.errors import ConfigError, RecoveryError
from recovery.redact import redact
from recovery_cli.common import EXIT_FAILED, EXIT_USAGE, Parser, port_number, positive_int
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
    p.add_argument("--limit", type=positive_int, default=20)
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
    p.add_argument("--limit", type=positive_int, help="max concurrent flow runs in this process")
    p.add_argument("--metrics-port", type=port_number, help="expose Prometheus metrics on this port")
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
