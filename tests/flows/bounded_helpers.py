"""Helpers of tests/flows/test_bounded_flows.py: config snippets, waits, a Redis proxy."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from recovery.audit.records import RunRecord
from recovery.audit.store import AuditStore

ONE_ATTEMPT = "{kind: exponential, max_attempts: 1, jitter: none}"
PATIENT = (  # retries every 0.2 s for about 20 s
    "{kind: exponential, base_seconds: 0.1, factor: 2, max_delay_seconds: 0.2, max_attempts: 100,"
    " jitter: none}"
)
ONE_PROBE = "verify: {consecutive_successes: 1, interval_seconds: 0}"
SLOW_VERIFY = ", verify: {consecutive_successes: 2, interval_seconds: 120}"  # a recovery that waits


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def http_target(name: str, url: str, extra: str = "") -> str:
    return f"  - {{name: {name}, kind: http, url: '{url}', timeout_seconds: 1{extra}}}\n"


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def only_run(audit_url: str, target: str) -> RunRecord | None:
    runs = AuditStore(audit_url).history(target, 5)
    return runs[0] if runs else None
