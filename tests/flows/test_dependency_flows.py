"""Dependency-aware recovery end to end (issue 12, item 3): `recovery monitor --once` through the
real CLI. The database is the shared PostgreSQL behind a TCP proxy (stopped: connections refused,
as while it restarts); three real HTTP services depend on it and fail while it is down.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from dbcache_flow_helpers import CLI, CLI_TIMEOUT, steps_of
from dbcache_services import TcpProxy
from faultserver import FaultServer
from ladder_helpers import PATIENT, write_config

from recovery.audit.store import AuditStore


def test_database_down_one_recovery_three_dependents_wait_then_all_healthy(
    run_cli: Any, cli_env: dict[str, str], pg_url: str, redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    db = f"orders-db-{uuid.uuid4().hex[:4]}"
    proxy = TcpProxy(("127.0.0.1", 5432))  # not started: PostgreSQL is "down"
    with ExitStack() as stack:
        stack.callback(proxy.stop)
        apis = [stack.enter_context(FaultServer()) for _ in range(3)]
        names = [f"api{i}-{db}" for i in range(3)]
        targets: list[dict[str, Any]] = [
            {
                "name": db,
                "kind": "database",
                "url": pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"),
                "connect_timeout_seconds": 2,
                "statement_timeout_seconds": 2,
                "verify": {"consecutive_successes": 1, "interval_seconds": 0.1},
            }
        ]
        targets += [
            {"name": n, "kind": "http", "url": f"{s.url}/health", "timeout_seconds": 1, "depends_on": [db]}
            for n, s in zip(names, apis, strict=True)
        ]
        config = write_config(
            tmp_path / "recovery.yaml",
            audit_url=sqlite_url,
            state_url=redis_url,
            targets=targets,
            strategy=PATIENT,
        )
        for server in apis:
            server.app.set_mode("status:503")  # they fail because their database is down
        monitor = subprocess.Popen(
            [*CLI, "--config", str(config), "monitor", "--once", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env,
        )
        # The database comes back once its recovery has failed to reach it twice.
        deadline = time.monotonic() + CLI_TIMEOUT
        while time.monotonic() < deadline and monitor.poll() is None:
            runs = AuditStore(sqlite_url).history(db)
            if runs and steps_of(runs[0].as_json())["clear_stuck_sessions"]["attempts"] >= 2:
                break
            time.sleep(0.2)
        assert monitor.poll() is None, monitor.communicate()
        proxy.start()
        # The services answer again, but each still fails its next first probe (a stale pooled
        # connection): the monitor must probe them again once the database is healthy.
        for server in apis:
            server.app.set_mode("fail-next:1")
        out, err = monitor.communicate(timeout=CLI_TIMEOUT)
        assert monitor.returncode == 1, out + err  # dependents unhealthy and not recovered
        report = json.loads(out)
        by = {t["target"]: t for t in report["targets"]}
        assert by[db]["action"] == "recover"
        for n in names:
            assert (by[n]["action"], by[n]["blocked_by"]) == ("blocked", db), by[n]
        assert [(r["target"], r["state"]) for r in report["recoveries"]] == [(db, "succeeded")]

        audit = AuditStore(sqlite_url)
        (db_run,) = audit.history(db)
        assert (db_run.workflow, db_run.state) == ("database-recovery", "succeeded")
        for n in names:
            (refused,) = audit.history(n)
            assert (refused.state, refused.error_message, refused.type) == (
                "refused",
                f"waiting for {db}",
                "automatic",
            )
        status = run_cli("--config", str(config), "status", "--json")
        board = {row["target"]: row for row in json.loads(status.stdout)}
        assert {board[n]["blocked_by"] for n in names} == {db}
        plain = run_cli("--config", str(config), "status")
        assert f"blocked by {db}" in plain.stdout

        # The next cycle: the database is healthy, so each dependent's failed first probe is
        # repeated before anything is decided; all healthy, nothing recovered or refused.
        second = run_cli("--config", str(config), "monitor", "--once", "--json")
        assert second.returncode == 0, second.stdout + second.stderr
        report = json.loads(second.stdout)
        assert {(t["healthy"], t["action"]) for t in report["targets"]} == {(True, "none")}, report
        assert report["recoveries"] == []
        assert [s.app.requests["/health"] for s in apis] == [3, 3, 3]  # 1 + (failed + again)
        assert sum(len(audit.history(n)) for n in [db, *names]) == 4
        status = run_cli("--config", str(config), "status", "--json")
        board = {row["target"]: row for row in json.loads(status.stdout)}
        assert {(row["health"], row["blocked_by"]) for row in board.values()} == {("healthy", None)}
