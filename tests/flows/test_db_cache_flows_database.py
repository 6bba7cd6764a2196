"""Issue 3 end to end through the real CLI and the session's Prefect test server: the monitor
detects a real PostgreSQL fault and ``database-recovery`` fixes it; a restarted PostgreSQL; a
corrupted SQLite file.

Every database URL carries a canary password (trust auth ignores it, so it connects).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dbcache_flow_helpers import (
    CANARY,
    CLI,
    CLI_TIMEOUT,
    PATIENT,
    CliRunner,
    only_run,
    steps_of,
    with_password,
    write_config,
)
from dbcache_services import TcpProxy, corrupt_sqlite
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from recovery.audit.store import AuditStore
from recovery.backends.state_redis import RedisState
from recovery.client.breakers import breaker_for
from recovery.client.poolwatch import PoolGenerationWatcher
from recovery.config.loader import BreakerConfig

DB_STEPS = [
    "check_service_health",
    "clear_stuck_sessions",
    "reset_connection_pool",
    "verify_integrity",
    "reset_circuit_breaker",
    "test_connectivity",
    "restore_operations",
]


def pg_session(pg_url: str, app: str, autocommit: bool = False) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host="127.0.0.1",
        user="postgres",
        dbname="test",
        options=str(make_url(pg_url).query["options"]),
        application_name=app,
        autocommit=autocommit,
    )


# --- database-recovery (real PostgreSQL) ---------------------------------------------------------


def test_monitor_recovers_a_stuck_session_that_makes_the_probe_time_out(
    run_cli: CliRunner, pg_url: str, redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    app = f"orders-{uuid.uuid4().hex[:10]}"
    setup = pg_session(pg_url, "setup", autocommit=True)
    setup.execute("CREATE TABLE accounts (id int PRIMARY KEY, n int NOT NULL)")
    setup.execute("INSERT INTO accounts VALUES (1, 0)")
    stuck = pg_session(pg_url, app)
    stuck.execute("SELECT * FROM accounts WHERE id = 1 FOR UPDATE")  # idle in transaction, row locked
    stuck_pid = stuck.info.backend_pid
    bystander = pg_session(pg_url, app)  # same application, idle: must survive
    bystander.execute("SELECT 1")
    bystander.commit()
    config = write_config(
        tmp_path / "recovery.yaml",
        audit_url=sqlite_url,
        state_url=redis_url,
        targets=[
            {
                "name": "orders-db",
                "kind": "database",
                "url": with_password(pg_url),
                "probe_query": "SELECT n FROM accounts WHERE id = 1 FOR UPDATE",
                "statement_timeout_seconds": 1,
                "stuck_session_seconds": 1,
                "application_name": app,
                "verify": {"consecutive_successes": 2, "interval_seconds": 0.1},
            }
        ],
    )
    time.sleep(1.2)  # older than stuck_session_seconds
    try:
        result = run_cli("--config", str(config), "monitor", "--once", "--json", timeout=CLI_TIMEOUT)
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["targets"][0]["reason"] == "timeout"
        assert [(r["workflow"], r["state"]) for r in report["recoveries"]] == [
            ("database-recovery", "succeeded")
        ]

        run = only_run(sqlite_url, "orders-db")
        assert (run["workflow"], run["type"], run["state"]) == ("database-recovery", "automatic", "succeeded")
        assert run["detected_reason"] == "timeout"
        steps = steps_of(run)
        assert list(steps) == DB_STEPS
        assert all(s["state"] == "succeeded" for s in run["steps"]), run["steps"]
        assert steps["check_service_health"]["detail"]["reason"] == "timeout"
        cleared = steps["clear_stuck_sessions"]["detail"]
        assert cleared["terminated_pids"] == [stuck_pid]  # exactly the stuck backend
        [session] = cleared["terminated"]
        assert session["pid"] == stuck_pid and session["age_seconds"] >= 1
        assert session["state"] == "idle in transaction" and session["application_name"] == app
        assert steps["reset_connection_pool"]["detail"]["pool_generation"] == 1
        assert steps["verify_integrity"]["detail"]["checks"] == {
            "probe_query": "ok",
            "canary_round_trip": "ok",
            "stuck_sessions": 0,
        }

        with pytest.raises(psycopg.OperationalError):
            stuck.execute("SELECT 1")
        assert bystander.execute("SELECT 1").fetchone() == (1,)
        check = run_cli("--config", str(config), "check", "--json")
        assert check.returncode == 0, check.stdout + check.stderr
        assert json.loads(check.stdout)[0]["reason"] == "ok"  # the probe passes again
        state = RedisState(redis_url)
        assert state.paused("orders-db") is None and state.lock_owner("orders-db") is None
        assert state.pool_generation("orders-db") == 1
        assert breaker_for("orders-db", BreakerConfig(), redis_url).current_state == "closed"
        for output in (result.stdout, result.stderr, check.stdout, json.dumps(run)):
            assert CANARY not in output
    finally:
        for conn in (stuck, bystander, setup):
            conn.close()


def test_restarted_postgres_is_recovered_once_it_is_back(
    cli_env: dict[str, str], pg_url: str, redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    """The "restart" is a TCP proxy in front of the shared PostgreSQL (restarting the real server
    would break other engineers' tests): stopping it drops every connection and refuses new ones,
    exactly what clients see while PostgreSQL restarts; starting it again is the server coming
    back. The recovery keeps retrying with backoff while it is down and succeeds once it is up;
    the application's engine, whose pooled connections died, reconnects via pool_generation.
    """
    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    proxied = with_password(pg_url).replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    app_engine = create_engine(proxied.replace(CANARY, "x"))  # the application's own pool
    watcher = PoolGenerationWatcher(app_engine, "orders-db", redis_url, interval_seconds=0)
    config = write_config(
        tmp_path / "recovery.yaml",
        audit_url=sqlite_url,
        state_url=redis_url,
        strategy=PATIENT,
        targets=[
            {
                "name": "orders-db",
                "kind": "database",
                "url": proxied,
                "connect_timeout_seconds": 2,
                "statement_timeout_seconds": 2,
                "verify": {"consecutive_successes": 2, "interval_seconds": 0.1},
            }
        ],
    )
    try:
        with app_engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        assert watcher.check() is False  # baseline generation
        assert app_engine.pool.checkedin() == 1  # type: ignore[attr-defined]

        proxy.stop()  # PostgreSQL "goes down": pooled connections dropped, new ones refused
        monitor = subprocess.Popen(
            [*CLI, "--config", str(config), "monitor", "--once", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env,
        )
        # Bring it back only after the recovery has failed to reach it at least twice.
        deadline = time.monotonic() + CLI_TIMEOUT
        while time.monotonic() < deadline:
            runs = AuditStore(sqlite_url).history("orders-db")
            attempts = steps_of(runs[0].as_json())["clear_stuck_sessions"]["attempts"] if runs else 0
            if attempts >= 2 or monitor.poll() is not None:
                break
            time.sleep(0.2)
        assert monitor.poll() is None, monitor.communicate()
        proxy.start()  # PostgreSQL is back
        out, err = monitor.communicate(timeout=CLI_TIMEOUT)
        assert monitor.returncode == 0, out + err
        report = json.loads(out)
        assert report["targets"][0]["reason"] == "connection refused"
        assert [r["state"] for r in report["recoveries"]] == ["succeeded"]

        run = only_run(sqlite_url, "orders-db")
        assert (run["workflow"], run["state"], run["detected_reason"]) == (
            "database-recovery",
            "succeeded",
            "connection refused",
        )
        steps = steps_of(run)
        assert steps["check_service_health"]["detail"]["reason"] == "connection refused"
        assert steps["clear_stuck_sessions"]["attempts"] >= 3  # failed while down, then passed
        assert steps["clear_stuck_sessions"]["state"] == "succeeded"
        assert all(s["state"] == "succeeded" for s in run["steps"]), run["steps"]
        assert steps["reset_connection_pool"]["detail"]["pool_generation"] == 1

        # The application: its pooled connection died with the "restart"; the watcher sees the
        # new generation, drops the pool, and the next query reconnects.
        assert app_engine.pool.checkedin() == 1  # type: ignore[attr-defined]
        assert watcher.check() is True
        assert app_engine.pool.checkedin() == 0  # type: ignore[attr-defined]
        with app_engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        assert CANARY not in out + err
    finally:
        app_engine.dispose()
        proxy.stop()


def test_corrupted_sqlite_fails_the_flow_at_the_integrity_check(
    run_cli: CliRunner, redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    db = tmp_path / "app.db"
    corrupt_sqlite(db)
    config = write_config(
        tmp_path / "recovery.yaml",
        audit_url=sqlite_url,
        state_url=redis_url,
        targets=[{"name": "local-db", "kind": "database", "url": f"sqlite:///{db}"}],
    )
    result = run_cli("--config", str(config), "recover", "local-db", "--json", timeout=CLI_TIMEOUT)
    assert result.returncode == 1, result.stdout + result.stderr
    run = json.loads(result.stdout)
    assert (run["workflow"], run["state"], run["error_type"]) == (
        "database-recovery",
        "failed",
        "IntegrityCheckFailed",
    )
    steps = steps_of(run)
    assert steps["clear_stuck_sessions"]["state"] == "skipped"  # PostgreSQL only
    assert steps["verify_integrity"]["state"] == "failed"
    assert steps["verify_integrity"]["attempts"] == 1  # permanent: never retried
    assert steps["verify_integrity"]["error_message"].startswith(
        "database local-db: PRAGMA quick_check failed"
    )
    assert [steps[n]["state"] for n in DB_STEPS[4:]] == ["skipped", "skipped", "skipped"]
