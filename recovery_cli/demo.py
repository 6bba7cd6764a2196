"""``recovery demo``: a real local service fails, the monitor detects it, a flow recovers it.

Embedded defaults only: SQLite audit store in a temp dir, in-process state, Prefect's ephemeral
API. The service (a real local HTTP server) answers 503 for a few seconds, as a dependency does
while it restarts; the monitor crosses its failure threshold, runs ``api-failure-recovery`` as a
subflow, whose verification retries with backoff until the service is back.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from recovery.audit.store import AuditStore
from recovery_cli.demo_service import DemoService
from recovery_cli.readonly import format_run

OUTAGE_SECONDS = 8.0
MAX_CYCLES = 12

CONFIG = """\
# Written by `recovery demo`: embedded defaults (SQLite audit, in-process state).
audit_url: sqlite:///{db}
monitor: {{interval_seconds: 1, failure_threshold: 2, success_threshold: 1}}
strategy: {{kind: exponential, base_seconds: 0.5, factor: 2, max_delay_seconds: 2,
           max_attempts: 8, jitter: equal, seed: 7}}
targets:
  - name: demo-api
    kind: http
    url: {url}/health
    expect_status: [200]
    timeout_seconds: 1
    verify: {{consecutive_successes: 3, interval_seconds: 0.2}}
"""


def run_demo(keep: bool = False) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="recovery-demo-"))
    server = DemoService().start()
    try:
        config_path = workdir / "recovery.yaml"
        db = workdir / "audit.db"
        config_path.write_text(CONFIG.format(db=db, url=server.url))
        os.environ["RECOVERY_CONFIG"] = str(config_path)  # the flows load the config it names
        return asyncio.run(_demo(server, str(config_path), str(db)))
    finally:
        server.stop()
        if keep:
            print(f"\ndemo files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


async def _demo(server: DemoService, config_path: str, db: str) -> int:
    from flows.monitor import monitor

    t0 = time.time()

    def event(text: str) -> None:
        print(f"[{time.time() - t0:6.2f}s] {text}", flush=True)

    event(f"local service up at {server.url}/health; config {config_path}")
    event("starting Prefect's ephemeral API for the first flow run (~15 s on this machine)...")
    report = await monitor()
    event(f"monitor cycle 1: demo-api {report['targets'][0]['reason']}")

    server.fail(503)
    event(f"FAILURE INJECTED: the service answers 503 for the next {OUTAGE_SECONDS:.0f} s")
    threading.Timer(OUTAGE_SECONDS, server.heal).start()

    recovered = False
    for cycle in range(2, MAX_CYCLES + 1):
        await asyncio.sleep(1.0)
        report = await monitor()
        target = report["targets"][0]
        state = "healthy" if target["healthy"] else f"unhealthy ({target['reason']})"
        event(
            f"monitor cycle {cycle}: demo-api {state}, {target['failures']} consecutive failures"
            f" -> {target['action']}"
        )
        for rec in report["recoveries"]:
            event(f"{rec['workflow']} finished: {rec['state']}")
            recovered = rec["state"] == "succeeded"
        if recovered:
            break

    runs = AuditStore(f"sqlite:///{db}").history("demo-api", limit=5)
    if runs:
        print("\nRecovery timeline (from the audit store):")
        run = runs[0]
        if run.first_failure_at:
            print(f"[{run.first_failure_at.timestamp() - t0:6.2f}s] first failed probe")
        print(
            f"[{run.started_at.timestamp() - t0:6.2f}s] {run.workflow} started ({run.type}:"
            f" {run.detected_reason})"
        )
        for step in run.steps:
            at = step.finished_at.timestamp() - t0 if step.finished_at else 0.0
            print(
                f"[{at:6.2f}s]   {step.name}: {step.state} after {step.attempts} attempt(s)"
                f"{f' {step.detail}' if step.detail else ''}"
            )
        print("\nAudit rows (recovery history):")
        for run in runs:
            print("\n".join(format_run(run)))
    if recovered:
        print("\nresult: failure detected, recovery flow succeeded")
        return 0
    print("\nresult: the service was NOT recovered")
    return 1
