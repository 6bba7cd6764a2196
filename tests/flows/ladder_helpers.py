"""Shared by the ladder and dependency flow tests: config writing, Prefect event reads."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

FAST = "{kind: exponential, base_seconds: 0.1, max_delay_seconds: 0.3, max_attempts: 2, jitter: none}"
PATIENT = "{kind: exponential, base_seconds: 0.3, max_delay_seconds: 1, max_attempts: 40, jitter: none}"


def write_config(
    path: Path,
    *,
    audit_url: str,
    state_url: str,
    targets: list[dict[str, Any]],
    strategy: str = FAST,
    success_threshold: int = 2,
) -> Path:
    lines = [
        f"audit_url: {json.dumps(audit_url)}",
        f"state_url: {json.dumps(state_url)}",
        f"monitor: {{interval_seconds: 5, failure_threshold: 1, success_threshold: {success_threshold}}}",
        f"strategy: {strategy}",
        "targets:",
    ]
    lines += [f"  - {json.dumps(t)}" for t in targets]
    path.write_text("\n".join(lines) + "\n")
    return path


async def events(name: str, target: str, since: float, want: int = 1, settle: float = 3.0) -> list[Any]:
    """Events ``name`` about ``target`` since ``since`` (epoch s). Persisted asynchronously: wait
    for ``want`` of them (at most 60 s), then ``settle`` seconds more so a duplicate would show."""
    flt = EventFilter(
        event=EventNameFilter(name=[name]),
        resource=EventResourceFilter(id=[f"recovery.target.{target}"]),
        occurred=EventOccurredFilter(
            since=datetime.fromtimestamp(since - 5, UTC),
            until=datetime.fromtimestamp(time.time() + 3600, UTC),
        ),
    )
    deadline, seen_at = time.monotonic() + 60, None
    async with get_client() as client:
        while True:
            found = (await client.read_events(filter=flt, limit=50)).events
            if len(found) >= want and seen_at is None:
                seen_at = time.monotonic()
            if (seen_at is not None and time.monotonic() - seen_at >= settle) or time.monotonic() > deadline:
                return list(found)
            await asyncio.sleep(0.5)
