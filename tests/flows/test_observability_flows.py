"""Issue 6 through Prefect: the status board artifact after a monitor run, the stats artifact
cross-checked with Prefect's run history, the history artifact's flow-run links, escalation
events, and the gauges the monitor updates. Artifacts and events are read back through the
Prefect client from the session's test server; Redis, SQLite and the HTTP targets are real.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from faultserver import FaultServer
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.events.schemas.automations import AutomationCore
from prefect.settings import PREFECT_UI_URL, temporary_settings
from prefect.states import Crashed

from flows.monitor import monitor
from flows.observability_flows import recovery_history, recovery_stats, recovery_status
from flows.recovery_flows import api_failure_recovery
from recovery.audit.store import AuditStore
from recovery.backends.state_redis import RedisState
from recovery.redact import register_secret
from recovery.reporting import metrics

pytestmark = pytest.mark.prefect
REPO = Path(__file__).resolve().parents[2]

SECRET = "Hunter2-very-secret"
ONE_SHOT = (
    "{kind: exponential, base_seconds: 0.1, factor: 2, max_delay_seconds: 0.2, max_attempts: 1, jitter: none}"
)


def write_config(path: Path, audit_url: str, state_url: str, targets: list[str], threshold: int = 5) -> str:
    lines = [
        f"audit_url: {audit_url}",
        f"state_url: {state_url}",
        f"monitor: {{interval_seconds: 1, failure_threshold: {threshold}}}",
        f"strategy: {ONE_SHOT}",
        "targets:",
        *targets,
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def http_target(name: str, url: str) -> str:
    return (
        f"  - {{name: {name}, kind: http, url: '{url}', timeout_seconds: 1,"
        " verify: {consecutive_successes: 1, interval_seconds: 0}}"
    )


async def artifact(key: str, flow_run_id: Any | None = None) -> Any:
    flt = ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
    if flow_run_id is not None:
        flt.flow_run_id = ArtifactFilterFlowRunId(any_=[flow_run_id])
    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=flt, limit=1)
    assert found, f"no {key} artifact"
    return found[0]


def table(art: Any) -> list[dict[str, Any]]:
    data = json.loads(art.data) if isinstance(art.data, str) else art.data
    assert isinstance(data, list)
    return data


async def events(name: str, target: str, since: float, want: int = 1, timeout: float = 60) -> list[Any]:
    """Poll the events API until ``want`` ``name`` events about ``target`` are persisted."""
    from datetime import UTC, datetime

    flt = EventFilter(
        event=EventNameFilter(name=[name]),
        resource=EventResourceFilter(id=[f"recovery.target.{target}"]),
        occurred=EventOccurredFilter(  # `until` defaults to the filter's creation time
            since=datetime.fromtimestamp(since - 5, UTC),
            until=datetime.fromtimestamp(time.time() + 3600, UTC),
        ),
    )
    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            page = await client.read_events(filter=flt, limit=50)  # the server allows at most 50
            if len(page.events) >= want or time.monotonic() > deadline:
                return list(page.events)
            await asyncio.sleep(0.5)


async def test_monitor_publishes_status_board_for_every_target(
    prefect_api: str,
    fault_server: FaultServer,
    redis_url: str,
    sqlite_url: str,
    tmp_path: Path,
    run_cli: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    register_secret(SECRET)
    names = ["payments-api", "search-api", "ledger-api"]
    path = write_config(
        tmp_path / "recovery.yaml",
        sqlite_url,
        redis_url,
        [
            http_target(names[0], f"{fault_server.url}/health"),
            http_target(names[1], f"http://127.0.0.1:9/health?token={SECRET}"),  # refused
            http_target(names[2], f"{fault_server.url}/health"),
        ],
    )
    monkeypatch.setenv("RECOVERY_CONFIG", path)  # the flows load the worker's config
    state: Any = await monitor(return_state=True)
    assert state.is_completed(), state.message
    art = await artifact("recovery-status", state.state_details.flow_run_id)
    rows = {r["target"]: r for r in table(art)}
    assert list(rows) == names, "one row per target, in config order"
    assert rows["payments-api"]["health"] == "healthy"
    assert rows["search-api"]["health"].startswith("unhealthy (")
    assert rows["search-api"]["consecutive failures"] == "1"
    expected_columns = {
        "breaker",
        "allowed rate",
        "paused",
        "recovery in progress",
        "last recovery",
        "outcome",
    }
    assert expected_columns <= set(rows["ledger-api"])
    assert all(r["breaker"] == "closed" and r["recovery in progress"] == "no" for r in rows.values())
    assert SECRET not in json.dumps(table(art)) + (art.description or "")

    # The monitor updated the gauges of this process's registry.
    assert metrics.TARGET_UP.labels(target="payments-api")._value.get() == 1.0
    assert metrics.TARGET_UP.labels(target="search-api")._value.get() == 0.0

    # `recovery status --json` (no Prefect) shows the same board from shared state + audit.
    result = run_cli("--config", path, "status", "--json")
    assert result.returncode == 1, result.stderr  # a target is unhealthy
    board = {r["target"]: r for r in json.loads(result.stdout)}
    assert list(board) == names
    assert [board[n]["health"] for n in names] == ["healthy", "unhealthy", "healthy"]
    assert board["search-api"]["consecutive_failures"] == 1
    assert board["payments-api"]["breaker_state"] == "closed"
    assert board["payments-api"]["allowed_rate_per_second"] == 10.0

    # The recovery-status flow publishes the same board on demand.
    rows_now = await recovery_status()
    assert [r["target"] for r in rows_now] == names


async def test_failed_recovery_escalates_and_stats_count_crashed_runs(
    prefect_api: str, redis_url: str, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"api-{uuid.uuid4().hex[:6]}"
    path = write_config(
        tmp_path / "recovery.yaml", sqlite_url, redis_url, [http_target(name, "http://127.0.0.1:9/health")], 1
    )
    monkeypatch.setenv("RECOVERY_CONFIG", path)  # the flows load the worker's config
    started = time.time()
    report = await monitor()
    assert [r["state"] for r in report["recoveries"]] == ["failed"]
    [run] = AuditStore(sqlite_url).history(name)
    assert run.state == "failed"

    # A recovery flow run that crashed before it could write its audit row: Prefect knows it.
    async with get_client() as client:
        crashed = await client.create_flow_run(
            api_failure_recovery,
            parameters={"target": name},
            state=Crashed(message="OOM"),
        )
    assert AuditStore(sqlite_url).run(str(crashed.id)) is None

    stats = await recovery_stats(since="1h")
    [group] = [g for g in stats if g["target"] == name]
    assert (group["runs"], group["failed"], group["succeeded"]) == (2, 2, 0)
    assert group["error_types"] == {"ProbeFailed": 1, "FlowCrashed": 1}
    assert group["success_rate"] == 0.0
    assert group["mttd_seconds"] is not None and group["mttd_seconds"] >= 0
    rows = [r for r in table(await artifact("recovery-stats")) if r["target"] == name]
    assert rows and rows[0]["failed"] == "2" and rows[0]["only in Prefect"] == "1"
    summary = await artifact("recovery-stats-summary")
    assert "Recovery statistics" in summary.data and name in summary.data

    failed = await events("recovery.failed", name, started)
    assert failed, "recovery.failed was emitted"
    assert failed[0].payload["workflow"] == "api-failure-recovery"
    assert failed[0].payload["run_id"] == run.id

    # History: the failed run, linking to its flow run in the Prefect UI.
    with temporary_settings({PREFECT_UI_URL: "http://prefect.example:4200"}):
        assert await recovery_history(limit=5) == 1
    [row] = table(await artifact("recovery-history"))
    assert row["target"] == name and row["state"] == "failed"
    assert row["flow run"] == f"http://prefect.example:4200/runs/flow-run/{run.flow_run_id}"


async def test_flapping_target_is_not_recovered_but_escalated(
    prefect_api: str, redis_url: str, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"api-{uuid.uuid4().hex[:6]}"
    path = write_config(
        tmp_path / "recovery.yaml", sqlite_url, redis_url, [http_target(name, "http://127.0.0.1:9/health")], 1
    )
    monkeypatch.setenv("RECOVERY_CONFIG", path)  # the flows load the worker's config
    state = RedisState(redis_url)
    for i in range(20):  # what earlier cycles saw: up, down, up, down...
        state.push_probe_history(name, i % 2 == 0)
    started = time.time()
    report = await monitor()
    [decision] = report["targets"]
    assert decision["action"] == "flapping" and decision["flapping"] is True
    assert report["recoveries"] == []
    assert state.lock_owner(name) is None and AuditStore(sqlite_url).history(name) == []
    flapping = await events("target.flapping", name, started)
    assert flapping and flapping[0].payload["held_off_recovery"] is True
    assert flapping[0].payload["percent_state_change"] > 25
    assert metrics.TARGET_FLAPPING.labels(target=name)._value.get() == 1.0


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        _Hook.received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def documented_automations() -> list[dict[str, Any]]:
    """The YAML block of docs/automations.md, as an operator would save it."""
    text = (REPO / "docs" / "automations.md").read_text()
    [block] = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    return list(yaml.safe_load(block)["automations"])


async def test_documented_automations_page_on_a_failed_recovery(
    prefect_api: str, redis_url: str, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    names: list[str] = []
    try:
        block = CustomWebhookNotificationBlock(
            name="on-call", url=f"http://127.0.0.1:{hook.server_port}/page",
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
        )  # fmt: skip
        block_id = await block.save(f"on-call-{uuid.uuid4().hex[:8]}")
        async with get_client() as client:
            for data in documented_automations():
                for action in data["actions"]:
                    action["block_document_id"] = str(block_id)
                data["name"] = f"{data['name']}-{uuid.uuid4().hex[:6]}"
                await client.create_automation(AutomationCore.model_validate(data))
                names.append(data["name"])
            created = {a.name for a in await client.read_automations()}
        assert set(names) <= created

        name = f"api-{uuid.uuid4().hex[:6]}"
        path = write_config(
            tmp_path / "recovery.yaml", sqlite_url, redis_url, [http_target(name, "http://127.0.0.1:9/h")], 1
        )
        monkeypatch.setenv("RECOVERY_CONFIG", path)  # the flows load the worker's config
        report = await monitor()
        assert [r["state"] for r in report["recoveries"]] == ["failed"]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(name in m.get("subject", "") for m in _Hook.received):
            await asyncio.sleep(0.5)
        [page] = [m for m in _Hook.received if name in m.get("subject", "")]
        assert page["subject"] == f"Recovery failed: {name}"
        assert "api-failure-recovery (automatic)" in page["body"] and "ProbeFailed" in page["body"]

        # The next cycle's recovery of the same outage fails too: audited, no new event, no page.
        report = await monitor()
        assert [r["state"] for r in report["recoveries"]] == ["failed"]
        runs = AuditStore(sqlite_url).history(name)
        assert [r.state for r in runs] == ["failed", "failed"]
        assert len({r.first_failure_at for r in runs}) == 1  # one incident
        failed = await events("recovery.failed", name, time.time() - 120, want=2, timeout=10)
        assert len(failed) == 1 and failed[0].payload["incident"] in page["body"]
        await asyncio.sleep(3)  # what the automation would have sent by now
        assert len([m for m in _Hook.received if name in m.get("subject", "")]) == 1
    finally:
        hook.shutdown()
        async with get_client() as client:
            for automation in await client.read_automations():
                if automation.name in names:
                    await client.delete_automation(automation.id)
