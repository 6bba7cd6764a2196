"""Shared by the rate-limit tests: the fake wall clock reading and an http target config."""

from __future__ import annotations

from typing import Any

from recovery.config.loader import RecoveryConfig, parse_config

NOW = 1_700_000_000.0


def http_config(
    url: str, state_url: str | None = None, audit_url: str = "sqlite://", **rate: Any
) -> RecoveryConfig:
    target: dict[str, Any] = {
        "name": "api",
        "kind": "http",
        "url": url,
        "timeout_seconds": 2,
        "verify": {"consecutive_successes": 1},
        "rate_limit": {
            "normal_rate_per_second": 4,
            "increase_per_cycle": 1,
            "increase_interval_seconds": 10,
            **rate,
        },
    }
    data: dict[str, Any] = {
        "audit_url": audit_url,
        "monitor": {"failure_threshold": 1},
        "strategy": {"kind": "linear", "base_seconds": 0.2, "increment_seconds": 0.2, "max_attempts": 20},
        "targets": [target],
    }
    if state_url:
        data["state_url"] = state_url
    return parse_config(data)
