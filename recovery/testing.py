"""Zero-delay testing mode (stamina's ``set_testing``): every wait keeps its count, not its length.

With testing on, a retry plan keeps its number of attempts but every retry delay is 0 s, and
waits the product schedules for itself (verification probe spacing) are 0 s too, so a test of
"retried 4 times, then failed" runs in milliseconds instead of the strategy's real minutes.
Subprocesses (CLI tests) inherit it through ``RECOVERY_TESTING=1``.

Nothing else changes: the attempts, the audit rows, the decisions are the production ones.
"""

from __future__ import annotations

import os
import threading

ENV_VAR = "RECOVERY_TESTING"

_lock = threading.Lock()
_testing: bool | None = None  # None: follow the environment variable


def set_testing(testing: bool) -> None:
    """Turn zero-delay testing mode on or off for this process (overrides ``RECOVERY_TESTING``)."""
    global _testing
    with _lock:
        _testing = testing


def is_testing() -> bool:
    with _lock:
        if _testing is not None:
            return _testing
    return os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes")


def delay(seconds: float) -> float:
    """``seconds``, or 0 in testing mode: route every self-scheduled wait through this."""
    return 0.0 if is_testing() else seconds
