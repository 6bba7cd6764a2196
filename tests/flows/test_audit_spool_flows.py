"""Issue 10: a recovery while the audit PostgreSQL is down, through the real CLI.

`recovery monitor --once` detects a failing HTTP target and recovers it while the audit
database behind a TcpProxy refuses every connection: the run is not refused, its audit records
go to the spool beside the config file. Once the database is back, `recovery history` (which
replays the spool first) shows the complete run and `recovery status --json` shows nothing left
in the spool.
"""

from __future__ import annotations

import json
from pathlib import Path

from audit_faults import proxied_postgres, spool_records
from faultserver import FaultServer


def test_monitor_recovers_while_the_audit_database_is_down(
    run_cli, fault_server: FaultServer, redis_url: str, pg_url: str, tmp_path: Path
) -> None:
    with proxied_postgres(pg_url) as (url, proxy):
        config = tmp_path / "recovery.yaml"
        config.write_text(
            f"audit_url: {url}\n"
            f"state_url: {redis_url}\n"
            "audit_timeout_seconds: 2\n"
            "monitor: {interval_seconds: 1, failure_threshold: 1}\n"
            "strategy: {kind: exponential, base_seconds: 0.2, max_delay_seconds: 1, max_attempts: 6, "
            "jitter: none}\n"
            "targets:\n"
            f"  - {{name: payments-api, kind: http, url: '{fault_server.url}/health', timeout_seconds: 1,\n"
            "     verify: {consecutive_successes: 2, interval_seconds: 0.05}}\n"
        )
        proxy.stop()  # the audit database refuses connections from now on
        fault_server.app.set_mode("fail-next:3")  # monitor probe, diagnosis, first verification

        result = run_cli("--config", str(config), "monitor", "--once")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "api-failure-recovery of payments-api: succeeded" in result.stdout
        spool = tmp_path / ".recovery-spool"  # the default: beside the config file
        records = spool_records(spool)
        assert [r["op"] for r in records][:2] == ["start_run", "step_attempt"]
        assert records[-1]["op"] == "finish_run" and records[-1]["data"]["state"] == "succeeded"

        down = run_cli("--config", str(config), "history")
        assert down.returncode == 1
        assert down.stderr.startswith("recovery: error: audit store postgresql+psycopg://***@127.0.0.1:")
        assert len(down.stderr.strip().splitlines()) == 1

        proxy.start()
        history = run_cli("--config", str(config), "history", "--json")
        assert history.returncode == 0, history.stderr
        (run,) = json.loads(history.stdout)
        assert (run["target"], run["type"], run["state"]) == ("payments-api", "automatic", "succeeded")
        assert run["id"] == records[0]["run_id"] and run["flow_run_id"] == run["id"]
        steps = {s["name"]: (s["state"], s["attempts"]) for s in run["steps"]}
        assert steps["test_connectivity"] == ("succeeded", 2)
        assert all(state == "succeeded" for state, _ in steps.values() if state != "skipped")
        assert run["started_at"] == records[0]["at"], "the time of the recovery, not of the replay"

        status = run_cli("--config", str(config), "status", "--json")
        assert status.returncode in (0, 1) and not status.stderr, status.stderr  # 1: last probe failed
        (row,) = json.loads(status.stdout)
        assert row["audit_spool_pending"] == 0
        assert row["last_recovery"]["state"] == "succeeded" and row["last_recovery"]["run_id"] == run["id"]
        assert spool_records(spool) == []
