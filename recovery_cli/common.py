"""Shared CLI plumbing: exit codes, one-line argument errors, JSON output, Prefect defaults.

``recovery`` CLI: exit 0 ok, 1 unhealthy/failed/refused, 2 bad input.

Read-only commands (validate, check, history, breaker-status) import only the core package: Prefect's import
costs ~2.3 s and its ephemeral API ~15 s, which an on-call engineer should not wait for just
to read state. Commands that run flows import ``flows`` lazily.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any, NoReturn

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the message already names the argument.
        self.exit(EXIT_USAGE, f"recovery: error: {message}\n")


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if number < 1 or number > 100_000:
        raise argparse.ArgumentTypeError(f"expected 1..100000, got {number}")
    return number


def port_number(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {value!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected 1..65535, got {port}")
    return port


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def prefect_environment() -> None:
    """Defaults for running flows here: no analytics (no internet), a patient ephemeral API."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
