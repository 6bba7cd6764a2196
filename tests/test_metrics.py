"""Prometheus metrics: a real HTTP endpoint scraped over TCP, the node_exporter textfile, and the
multiprocess mode that lets ``recovery serve`` export what its flow-run subprocesses counted."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from recovery.reporting import metrics

REPO = Path(__file__).resolve().parents[1]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition as {(name, labels): value}."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, frozenset(labels.items())))


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[metrics.MetricsServer]:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    srv = metrics.start_metrics_server(0, host="127.0.0.1")
    try:
        yield srv
    finally:
        srv.close()


def scrape(srv: metrics.MetricsServer) -> str:
    response = httpx.get(srv.url, timeout=5, trust_env=False)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def test_endpoint_serves_the_issue_series(server: metrics.MetricsServer) -> None:
    t = f"api-{uuid.uuid4().hex[:8]}"
    wf = "api-failure-recovery"
    metrics.record_run(t, wf, "automatic", "succeeded", 4.2)
    metrics.record_run(t, wf, "automatic", "succeeded", 40.0)
    metrics.record_run(t, wf, "manual", "failed", 700.0)
    metrics.record_run(t, wf, "manual", "refused", 0.0)
    metrics.set_target_up(t, False)
    metrics.set_breaker_state(t, "open")

    text = scrape(server)
    assert value(text, "recovery_runs_total", target=t, workflow=wf, type="automatic", state="succeeded") == 2
    assert value(text, "recovery_runs_total", target=t, workflow=wf, type="manual", state="failed") == 1
    assert value(text, "recovery_runs_total", target=t, workflow=wf, type="manual", state="refused") == 1
    assert value(text, "recovery_duration_seconds_count", target=t, workflow=wf) == 3, "refused: no duration"
    assert value(text, "recovery_duration_seconds_sum", target=t, workflow=wf) == pytest.approx(744.2)
    assert value(text, "recovery_duration_seconds_bucket", target=t, workflow=wf, le="5.0") == 1
    assert value(text, "recovery_duration_seconds_bucket", target=t, workflow=wf, le="60.0") == 2
    assert value(text, "recovery_duration_seconds_bucket", target=t, workflow=wf, le="+Inf") == 3
    assert value(text, "target_up", target=t) == 0
    assert value(text, "circuit_breaker_state", target=t) == 2
    assert "# TYPE recovery_runs_total counter" in text
    assert "# TYPE recovery_duration_seconds histogram" in text

    metrics.set_target_up(t, True)
    metrics.set_breaker_state(t, "half-open")
    text = scrape(server)
    assert value(text, "target_up", target=t) == 1
    assert value(text, "circuit_breaker_state", target=t) == 1
    metrics.set_breaker_state(t, "unknown")  # unreadable: no stale value left behind
    assert value(scrape(server), "circuit_breaker_state", target=t) is None


def test_observe_decisions_and_board(server: metrics.MetricsServer) -> None:
    from recovery.engine.monitor import Decision

    a, b = f"a-{uuid.uuid4().hex[:6]}", f"b-{uuid.uuid4().hex[:6]}"
    metrics.observe_decisions(
        [
            Decision(a, True, "ok", 0, 1, "none"),
            Decision(b, False, "status 503", 5, 0, "flapping", flapping=True, flap_percent=42.0),
        ]
    )

    class Row:
        def __init__(self, target: str, breaker_state: str) -> None:
            self.target, self.breaker_state = target, breaker_state

    metrics.observe_status([Row(a, "closed"), Row(b, "open")])
    text = scrape(server)
    assert (value(text, "target_up", target=a), value(text, "target_up", target=b)) == (1, 0)
    assert (value(text, "target_flapping", target=a), value(text, "target_flapping", target=b)) == (0, 1)
    assert value(text, "circuit_breaker_state", target=a) == 0
    assert value(text, "circuit_breaker_state", target=b) == 2


def test_textfile_for_node_exporter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(metrics.MULTIPROC_ENV, raising=False)
    t = f"api-{uuid.uuid4().hex[:8]}"
    metrics.record_run(t, "cache-recovery", "automatic", "failed", 12.0)
    metrics.set_target_up(t, False)
    path = metrics.write_textfile(tmp_path / "textfile" / "recovery.prom")
    text = path.read_text()
    assert (
        value(
            text, "recovery_runs_total", target=t, workflow="cache-recovery", type="automatic", state="failed"
        )
        == 1
    )
    assert value(text, "target_up", target=t) == 0
    assert [p.name for p in path.parent.iterdir()] == ["recovery.prom"], "written atomically (no temp left)"


CHILD = """
import sys
from recovery.reporting import metrics
target, state = sys.argv[1], sys.argv[2]
metrics.record_run(target, "api-failure-recovery", "automatic", state, 3.0)
metrics.set_target_up(target, state == "succeeded")
"""


def test_multiprocess_mode_aggregates_flow_run_subprocesses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``recovery serve`` runs flows in subprocesses: their counts reach the serving process."""
    directory = tmp_path / "prom"
    directory.mkdir()
    env = {**os.environ, metrics.MULTIPROC_ENV: str(directory), "PYTHONPATH": str(REPO)}
    t = f"api-{uuid.uuid4().hex[:8]}"
    for state in ("failed", "succeeded"):  # two flow runs, one after the other
        subprocess.run([sys.executable, "-c", CHILD, t, state], env=env, check=True, timeout=60)
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(directory))
    srv = metrics.start_metrics_server(0, host="127.0.0.1")
    try:
        text = scrape(srv)
    finally:
        srv.close()
    wf = "api-failure-recovery"
    assert value(text, "recovery_runs_total", target=t, workflow=wf, type="automatic", state="failed") == 1
    assert value(text, "recovery_runs_total", target=t, workflow=wf, type="automatic", state="succeeded") == 1
    assert value(text, "recovery_duration_seconds_count", target=t, workflow=wf) == 2
    assert value(text, "target_up", target=t) == 1, "the most recent value wins"
    assert value(text, "process_asyncio_tasks") is not None, "the serving process's own count"


def test_asyncio_task_gauge_counts_live_tasks_of_a_loop_in_another_thread(
    server: metrics.MetricsServer,
) -> None:
    """The endpoint's thread counts a running loop's unfinished tasks: a leak would show as growth."""

    async def main() -> tuple[float, float, float]:
        before = value(scrape(server), "process_asyncio_tasks")
        assert before is not None
        tasks = [asyncio.create_task(asyncio.sleep(60)) for _ in range(7)]
        await asyncio.sleep(0)
        during = await asyncio.to_thread(scrape, server)  # scraped while the loop keeps running
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        after = await asyncio.to_thread(scrape, server)
        return (
            before,
            value(during, "process_asyncio_tasks") or 0.0,
            value(after, "process_asyncio_tasks") or 0.0,
        )

    before, during, after = asyncio.run(main())
    assert during - after == 7, (before, during, after)
    assert after >= 1  # main() itself
