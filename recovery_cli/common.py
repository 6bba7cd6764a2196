"""Shared CLI plumbing: exit codes, argument types, one-line errors, JSON output, Prefect defaults.

``recovery`` CLI: exit 0 ok, 1 unhealthy/failed/refused/deferred or Prefect API unreachable,
2 bad input, 128 + signal number when stopped by SIGINT (130) or SIGTERM (143).

Read-only commands (validate, check, history, breaker-status) import only the core package: Prefect's import
costs ~2.3 s and its ephemeral API ~15 s, which an on-call engineer should not wait for just
to read state. Commands that run flows import ``flows`` lazily.

Every argument is checked by its ``type=`` here, so a bad one is refused by argparse as
``argument --x: <why>`` (exit 2) before any config is read; values echoed back are clipped
(``recovery.errors.clip``) and control characters are refused everywhere: they would forge
lines in the audit trail and in terminals.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
from collections.abc import Callable
from typing import Any, NoReturn
from urllib.parse import urlsplit

from recovery.config.targets import NAME_PATTERN
from recovery.errors import RecoveryError, clip, has_control_chars
from recovery.redact import redact

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MAX_TEXT = 1000  # free text that is audited (--reason, --requested-by, --pattern)
MAX_PATH = 4096  # PATH_MAX on Linux
MAX_LINE = 400  # an error line never grows past this, whatever it quotes
DEFAULT_METRICS_HOST = "127.0.0.1"
_NAME_RE = re.compile(NAME_PATTERN)
_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")  # one DNS label


def one_line(message: str) -> str:
    """``message`` as one bounded line: controls escaped, each long word and the whole clipped.

    The last defence for messages that quote input without ``clip`` (argparse's own).
    """
    return clip(" ".join(clip(word) for word in message.split(" ")), MAX_LINE)


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the message already names the argument.
        self.exit(EXIT_USAGE, f"recovery: error: {one_line(message)}\n")


def text(value: str, limit: int = MAX_TEXT) -> str:
    """Any argument's text: no control characters, at most ``limit`` characters."""
    if has_control_chars(value):
        raise argparse.ArgumentTypeError(f"control characters are not allowed, got '{clip(value)}'")
    if len(value) > limit:
        raise argparse.ArgumentTypeError(f"at most {limit} characters, got {len(value)}")
    return value


def non_blank(value: str) -> str:
    if not text(value).strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def target_name(value: str) -> str:
    """A TARGET: never empty (an empty name must not mean "every target"), a valid name."""
    if not _NAME_RE.match(non_blank(value)):
        raise argparse.ArgumentTypeError(
            f"invalid target name '{clip(value)}' (1-63 characters of a-z, 0-9 and '-')"
        )
    return value


def config_path(value: str) -> str:
    return text(non_blank(value), MAX_PATH)


def host(value: str) -> str:
    """An IP address or a DNS name to bind to."""
    try:
        ipaddress.ip_address(text(value, 253))
        return value
    except ValueError:
        pass
    if not all(_LABEL_RE.match(label) for label in value.removesuffix(".").split(".")):
        raise argparse.ArgumentTypeError(f"expected an IP address or host name, got '{clip(value)}'")
    return value


def _digits(value: str, what: str, limit: int) -> int:
    # isdigit() on ASCII only: int() also takes " 7\n", "1_0" and 4,300-digit numbers (ValueError).
    if not (value.isascii() and value.isdigit()) or len(value) > 6 or not 1 <= int(value) <= limit:
        raise argparse.ArgumentTypeError(f"expected {what} 1..{limit}, got '{clip(value)}'")
    return int(value)


def positive_int(value: str) -> int:
    return _digits(value, "an integer", 100_000)


def port_number(value: str) -> int:
    return _digits(value, "a port number", 65535)


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
    return f"Prefect API unreachable at {_api_location(api.url)}: {redact(reason)}"


def _api_location(url: str) -> str:
    """The API URL to name in an error: scheme, host, port and path (``/api``, or a Cloud
    workspace's ids: what the user must check). Unlike ``redact_url`` the path stays; userinfo,
    query and fragment never appear (credentials travel as PREFECT_API_KEY / auth string)."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a number: nothing could connect to it either
        port = ""
    return redact(f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}")


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
