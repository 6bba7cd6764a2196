"""Shared CLI plumbing: exit codes, one-line argument errors, JSON output, Prefect defaults.

``recovery`` CLI: exit 0 ok, 1 unhealthy/failed/refused/deferred or Prefect API unreachable,
2 bad input, 128 + signal number when stopped by SIGINT (130) or SIGTERM (143).

Read-only commands (validate, check, history, breaker-status) import only the core package: Prefect's import
costs ~2.3 s and its ephemeral API ~15 s, which an on-call engineer should not wait for just
to read state. Commands that run flows import ``flows`` lazily.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from typing import Any, NoReturn

from recovery.errors import RecoveryError
from recovery.redact import redact, redact_url

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
    """Defaults for running flows here: no analytics (no internet), a patient ephemeral API;
    then, when an API URL is configured, check that it answers (``check_prefect_api``)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    check_prefect_api()


class PrefectUnreachable(RecoveryError):
    """The configured Prefect API does not answer (CLI: one line, exit 1)."""


API_CHECK_TIMEOUT_SECONDS = 3.0


def prefect_api_problem(timeout: float = API_CHECK_TIMEOUT_SECONDS) -> str | None:
    """``GET {PREFECT_API_URL}/health`` once: None if it answers, else one line naming the URL.

    No URL (the ephemeral API, started by the first flow): None, nothing is checked. Any answer
    below 500 counts as reachable: auth and versions are Prefect's own to report.
    """
    from prefect.settings import get_current_settings  # the profile's URL too, not only the env's

    api = get_current_settings().api
    if not api.url:
        return None
    import httpx

    verify: bool | str = False if api.tls_insecure_skip_verify else (api.ssl_cert_file or True)
    try:
        response = httpx.get(f"{api.url.rstrip('/')}/health", timeout=timeout, verify=verify)
    except httpx.TimeoutException:
        reason = f"no answer within {timeout:g}s"
    except httpx.ConnectError as exc:
        text = str(exc)
        reason = "connection refused" if "refused" in text.lower() else (text or type(exc).__name__)
    except httpx.HTTPError as exc:
        reason = f"{type(exc).__name__}: {exc}"
    else:
        if response.status_code < 500:
            return None
        reason = f"status {response.status_code}"
    return f"Prefect API unreachable at {redact_url(api.url)}: {redact(reason)}"


def check_prefect_api() -> None:
    """Up front: a dead API fails the command in seconds with one line, instead of Prefect's
    client retrying each request (5 times, with backoff) and ending in a traceback."""
    problem = prefect_api_problem()
    if problem is not None:
        raise PrefectUnreachable(problem)


def prefect_api_watch() -> Callable[[], str | None] | None:
    """What ``run_with_signals`` polls while flows run (None in ephemeral mode)."""
    from prefect.settings import get_current_settings

    return prefect_api_problem if get_current_settings().api.url else None
