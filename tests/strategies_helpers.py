"""Shared by the strategy tests: the fake clock reading and a ``StrategyInput`` builder."""

from __future__ import annotations

from typing import Any

from recovery.policy.strategies import StrategyInput

NOW = 1_000_000.0


def inp(run_type: str = "automatic", **kw: Any) -> StrategyInput:
    return StrategyInput("api", run_type, kw.pop("now", NOW), **kw)
