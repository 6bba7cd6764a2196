"""Manual triggers: 20 concurrent `recovery recover` processes for one target -> one recovery."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from faultserver import FaultServer

from recovery.audit.store import AuditStore

CLI = [sys.executable, "-m", "recovery_cli.main"]


def test_twenty_concurrent_triggers_run_one_recovery(
    cli_env: dict[str, str], fault_server: FaultServer, redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "recovery.yaml"
    config.write_text(
        f"audit_url: {sqlite_url}\nstate_url: {redis_url}\n"
        "manual_triggers: {max_triggers: 5, window_seconds: 600}\n"
        "strategy: {kind: exponential, base_seconds: 0.5, factor: 2, max_delay_seconds: 3, "
        "max_attempts: 100, jitter: none}\n"
        f"targets:\n  - {{name: payments-api, kind: http, url: '{fault_server.url}/health',"
        " verify: {consecutive_successes: 1, interval_seconds: 0}}\n"
    )
    # The service stays down until every other trigger has been refused, so the one recovery
    # that runs is still in progress while they arrive; then it heals and the recovery verifies.
    fault_server.app.set_mode("status:503")
    audit = AuditStore(sqlite_url)
    stop = threading.Event()

    def heal_when_all_refused() -> None:
        while not stop.is_set():
            if sum(r.state == "refused" for r in audit.history("payments-api", 50)) >= 19:
                fault_server.app.set_mode("ok")
                return
            time.sleep(0.3)

    healer = threading.Thread(target=heal_when_all_refused, daemon=True)
    healer.start()
    procs = [
        subprocess.Popen(
            [
                *CLI,
                "--config",
                str(config),
                "recover",
                "payments-api",
                "--requested-by",
                f"bot-{i}",
                "--reason",
                "load test",
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env,
        )
        for i in range(20)
    ]
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        stop.set()
    codes = sorted(p.returncode for p in procs)
    runs = audit.history("payments-api", 50)
    summary = "\n".join(
        f"{r.started_at:%H:%M:%S.%f} {r.state} {r.requested_by} {r.error_message} "
        f"{[(s.name, s.state, s.attempts) for s in r.steps]}"
        for r in sorted(runs, key=lambda r: r.started_at)
    )
    assert codes == [0] + [1] * 19, summary
    assert len(runs) == 20  # every trigger audited
    by_state: dict[str, list[str]] = {}
    for run in runs:
        by_state.setdefault(run.state, []).append(run.error_message or "")
    assert len(by_state["succeeded"]) == 1
    refused = by_state["refused"]
    assert len(refused) == 19
    in_progress = [m for m in refused if "already in progress" in m]
    rate_limited = [m for m in refused if "rate limit" in m]
    assert len(in_progress) == 4 and len(rate_limited) == 15, refused
    assert sorted(r.requested_by or "" for r in runs) == sorted(f"bot-{i}" for i in range(20))
    for out, _ in outputs:
        assert json.loads(out)["target"] == "payments-api"
