"""Issue 3 end to end through the real CLI and the session's Prefect test server: the monitor
detects a real PostgreSQL fault and ``database-recovery`` fixes it; ``cache-recovery`` repairs a
10,000-key Redis cache from a SQL table; the manual operations; no password anywhere.

Every database URL carries a canary password (trust auth ignores it, so it connects); the last
test scans everything the runs produced - CLI output, the audit database file, every log record,
flow run and artifact in the Prefect server - for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from dbcache_services import (
    N_KEYS,
    RedisServer,
    TcpProxy,
    corrupt_sqlite,
    corrupted_ids,
    seed_cache,
    seed_source_table,
    snapshot,
    source_value,
)
from faultserver import free_port
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from recovery.audit.store import AuditStore
from recovery.backends.state_redis import RedisState
from recovery.client.breakers import breaker_for
from recovery.client.poolwatch import PoolGenerationWatcher
from recovery.config.loader import BreakerConfig

CliRunner = Callable[..., subprocess.CompletedProcess[str]]
CLI = [sys.executable, "-m", "recovery_cli.main"]
CLI_TIMEOUT = 240
CANARY = "FlowCanaryPw8231"
FAST = (
    "{kind: exponential, base_seconds: 0.3, factor: 1.5, max_delay_seconds: 1, max_attempts: 4, jitter: none}"
)
PATIENT = (
    "{kind: exponential, base_seconds: 0.5, factor: 1.5, max_delay_seconds: 1.5, max_attempts: 40, "
    "jitter: none}"
)
DB_STEPS = [
    "check_service_health",
    "clear_stuck_sessions",
    "reset_connection_pool",
    "verify_integrity",
    "reset_circuit_breaker",
    "test_connectivity",
    "restore_operations",
]


def q(value: Any) -> str:
    return json.dumps(value)  # a JSON scalar is a valid YAML flow scalar


def with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{CANARY}@", 1)


def write_config(
    path: Path, *, audit_url: str, state_url: str, targets: list[dict[str, Any]], strategy: str = FAST
) -> Path:
    lines = [
        f"audit_url: {q(audit_url)}",
        f"state_url: {q(state_url)}",
        "monitor: {interval_seconds: 1, failure_threshold: 1}",
        f"strategy: {strategy}",
        "targets:",
    ]
    lines += [f"  - {json.dumps(t)}" for t in targets]
    path.write_text("\n".join(lines) + "\n")
    return path


def pg_session(pg_url: str, app: str, autocommit: bool = False) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host="127.0.0.1",
        user="postgres",
        dbname="test",
        options=str(make_url(pg_url).query["options"]),
        application_name=app,
        autocommit=autocommit,
    )


def only_run(audit_url: str, target: str) -> dict[str, Any]:
    runs = AuditStore(audit_url).history(target)
    assert len(runs) == 1, [r.as_json() for r in runs]
    return runs[0].as_json()


def steps_of(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in run["steps"]}


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


# --- cache-recovery (real Redis) -----------------------------------------------------------------


def test_cache_recovery_deletes_exactly_the_500_corrupted_keys_and_rebuilds_them(
    run_cli: CliRunner, pg_url: str, redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    seed_source_table(pg_url)
    by_reason = seed_cache(redis_url)
    before = {**snapshot(redis_url, "user:*"), **snapshot(redis_url, "session:*")}
    bad = {f"user:{i}".encode() for i in corrupted_ids()}
    config = write_config(
        tmp_path / "recovery.yaml",
        audit_url=sqlite_url,
        state_url=redis_url,
        targets=[
            {
                "name": "users-cache",
                "kind": "redis",
                "url": redis_url,
                "validate": {"key_pattern": "user:*", "format": "json", "required_fields": ["id", "name"]},
                "rebuild": {
                    "sql": {
                        "url": with_password(pg_url),
                        "query": "SELECT id, payload FROM users",
                        "key_template": "user:{id}",
                        "value_column": "payload",
                    }
                },
                "verify": {"consecutive_successes": 2, "interval_seconds": 0.05},
            }
        ],
    )
    result = run_cli("--config", str(config), "recover", "users-cache", "--json", timeout=CLI_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    run = json.loads(result.stdout)
    assert (run["workflow"], run["type"], run["state"]) == ("cache-recovery", "manual", "succeeded")
    steps = steps_of(run)
    assert list(steps) == [
        "check_cache_health",
        "clear_corrupted_entries",
        "rebuild_cache",
        "reset_circuit_breaker",
        "test_connectivity",
        "restore_operations",
    ]
    assert all(s["state"] == "succeeded" for s in run["steps"]), run["steps"]
    health = steps["check_cache_health"]["detail"]
    assert health["healthy"] is True and health["ping_ms"] > 0 and "evicted_keys" in health
    cleared = steps["clear_corrupted_entries"]["detail"]
    assert (cleared["scanned"], cleared["corrupted"], cleared["deleted"]) == (N_KEYS, 500, 500)
    assert cleared["reasons"] == {reason: len(ids) for reason, ids in by_reason.items()}
    rebuilt = steps["rebuild_cache"]["detail"]
    assert (rebuilt["source"], rebuilt["rows"], rebuilt["written"], rebuilt["existing"]) == (
        "sql",
        N_KEYS,
        500,
        9500,
    )

    after = {**snapshot(redis_url, "user:*"), **snapshot(redis_url, "session:*")}
    assert set(after) == set(before)
    untouched = [k for k in after if k not in bad]
    assert len(untouched) == 9500 + 100
    assert all(after[k] == before[k] for k in untouched)  # value, type and TTL as before
    for key in bad:
        assert after[key] == (b"string", source_value(int(key.split(b":")[1])).encode(), 0)
    assert CANARY not in result.stdout + result.stderr


def test_unreachable_redis_is_retried_with_backoff_then_fails_clearly(
    run_cli: CliRunner, redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "recovery.yaml",
        audit_url=sqlite_url,
        state_url=redis_url,
        targets=[
            {
                "name": "users-cache",
                "kind": "redis",
                "url": f"redis://:{CANARY}@127.0.0.1:{port}/0",
                "timeout_seconds": 0.5,
                "validate": {"key_pattern": "user:*"},
            }
        ],
    )
    started = time.monotonic()
    result = run_cli("--config", str(config), "recover", "users-cache", "--json", timeout=CLI_TIMEOUT)
    assert result.returncode == 1, result.stdout + result.stderr
    run = json.loads(result.stdout)
    assert run["state"] == "failed" and run["error_type"] == "TemporaryError"
    expected = (
        f"redis target users-cache (redis://***@127.0.0.1:{port}/***) unreachable while clearing "
        "corrupted entries: connection refused"
    )
    assert run["error_message"] == expected
    step = steps_of(run)["clear_corrupted_entries"]
    assert (step["state"], step["attempts"], step["max_attempts"]) == ("failed", 4, 4)
    assert steps_of(run)["check_cache_health"]["detail"] == {"healthy": False, "reason": "connection refused"}
    assert time.monotonic() - started >= 0.3 + 0.45 + 0.675  # the strategy's backoff was waited out
    assert CANARY not in result.stdout + result.stderr


def test_cache_recovery_succeeds_when_redis_comes_back_within_the_budget(
    cli_env: dict[str, str], redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    server = RedisServer()  # not started yet: "down"
    config = write_config(
        tmp_path / "recovery.yaml",
        audit_url=sqlite_url,
        state_url=redis_url,
        strategy=PATIENT,
        targets=[
            {
                "name": "users-cache",
                "kind": "redis",
                "url": server.url(),
                "timeout_seconds": 0.5,
                "validate": {"key_pattern": "user:*"},
                "verify": {"consecutive_successes": 1, "interval_seconds": 0},
            }
        ],
    )
    proc = subprocess.Popen(
        [*CLI, "--config", str(config), "recover", "users-cache", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env,
    )
    try:
        deadline = time.monotonic() + CLI_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            runs = AuditStore(sqlite_url).history("users-cache")
            if runs and steps_of(runs[0].as_json())["clear_corrupted_entries"]["attempts"] >= 2:
                break
            time.sleep(0.2)
        server.start()
        client = redis.Redis.from_url(server.url())
        client.set("user:1", "{broken")
        client.set("user:2", "{}")
        out, err = proc.communicate(timeout=CLI_TIMEOUT)
        assert proc.returncode == 0, out + err
        run = json.loads(out)
        step = steps_of(run)["clear_corrupted_entries"]
        assert step["state"] == "succeeded" and step["attempts"] >= 3
        assert (step["detail"]["scanned"], step["detail"]["deleted"]) == (2, 1)
        assert client.get("user:1") is None and client.get("user:2") == b"{}"
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()


# --- manual operations ---------------------------------------------------------------------------


def test_clear_cache_and_reconnect_database_from_the_cli(
    run_cli: CliRunner, pg_url: str, redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "recovery.yaml",
        audit_url=sqlite_url,
        state_url=redis_url,
        targets=[
            {
                "name": "users-cache",
                "kind": "redis",
                "url": redis_url,
                "validate": {"key_pattern": "user:*"},
                "clearable_patterns": ["tmp:*"],
            },
            {"name": "bare-cache", "kind": "redis", "url": redis_url},
            {"name": "orders-db", "kind": "database", "url": with_password(pg_url)},
        ],
    )
    client = redis.Redis.from_url(redis_url)
    for i in range(50):
        client.set(f"user:{i}", "v")
        client.set(f"tmp:{i}", "v")

    cleared = run_cli("--config", str(config), "clear-cache", "users-cache", "--pattern", "tmp:*", "--json")
    assert cleared.returncode == 0, cleared.stdout + cleared.stderr
    run = json.loads(cleared.stdout)
    assert (run["workflow"], run["type"], run["state"]) == ("clear-cache", "manual", "succeeded")
    assert run["steps"][0]["detail"] == {"pattern": "tmp:*", "deleted": 50}
    assert client.exists(*[f"user:{i}" for i in range(50)]) == 50

    default = run_cli("--config", str(config), "clear-cache", "users-cache", "--reason", "stale deploy")
    assert default.returncode == 0, default.stdout + default.stderr
    assert 'clear_cache_keys: {"pattern": "user:*", "deleted": 50}' in default.stdout
    assert client.exists(*[f"user:{i}" for i in range(50)]) == 0

    reconnect = run_cli("--config", str(config), "reconnect-database", "orders-db", "--json")
    assert reconnect.returncode == 0, reconnect.stdout + reconnect.stderr
    run = json.loads(reconnect.stdout)
    assert (run["workflow"], run["state"]) == ("reconnect-database", "succeeded")
    assert [s["name"] for s in run["steps"]] == [
        "check_service_health",
        "reset_connection_pool",
        "test_connectivity",
    ]
    assert run["steps"][1]["detail"]["pool_generation"] == 1
    assert RedisState(redis_url).pool_generation("orders-db") == 1
    assert CANARY not in reconnect.stdout + reconnect.stderr

    history = AuditStore(sqlite_url).history()
    assert sorted(r.workflow for r in history) == ["clear-cache", "clear-cache", "reconnect-database"]

    # Bad input: one line, exit 2, before Prefect is started.
    for args, message in [
        (["clear-cache", "orders-db"], "workflow: 'clear-cache' cannot recover a database target"),
        (
            ["reconnect-database", "users-cache"],
            "workflow: 'reconnect-database' cannot recover a redis target",
        ),
        (["clear-cache", "nope"], "target: unknown target 'nope'"),
        (["clear-cache", "users-cache", "--pattern", " "], "--pattern: must not be empty"),
        (
            ["clear-cache", "bare-cache"],
            "--pattern: required: target 'bare-cache' has no validate.key_pattern",
        ),
        # Confined: never every key, never the state keys, never outside the key space.
        (["clear-cache", "users-cache", "--pattern", "*"], "--pattern: refused, nothing deleted: '*' can"),
        (["clear-cache", "users-cache", "--pattern", "recovery:*"], "--pattern: refused, nothing deleted"),
        (["clear-cache", "users-cache", "--pattern", "sess:*"], "--pattern: refused, nothing deleted"),
    ]:
        bad = run_cli("--config", str(config), *args)
        assert bad.returncode == 2, (args, bad.stdout, bad.stderr)
        assert bad.stderr.strip().startswith(f"recovery: error: {message}"), bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1

    # A recovery holding the target's lock: the manual operation is refused and audited.
    state = RedisState(redis_url)
    assert state.acquire_lock("orders-db", "someone-else", 60)
    try:
        refused = run_cli("--config", str(config), "reconnect-database", "orders-db", "--json")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert json.loads(refused.stdout)["state"] == "refused"
    finally:
        state.release_lock("orders-db", "someone-else")


async def test_clear_cache_flow_refuses_before_deleting(
    redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    """The clear-cache flow (what the deployment runs) refuses a pattern reaching every key or
    the state keys in its step, before any deletion; the refusal is audited."""
    from flows.recovery_flows import clear_cache

    config = write_config(
        tmp_path / "recovery.yaml",
        audit_url=sqlite_url,
        state_url=redis_url,
        targets=[
            {"name": "users-cache", "kind": "redis", "url": redis_url, "validate": {"key_pattern": "user:*"}}
        ],
    )
    client = redis.Redis.from_url(redis_url)
    client.set("user:1", "{}")
    RedisState(redis_url).set_paused("other-target", "recovering")  # shared state in the same database
    for pattern in ("*", "recovery:*", "[a-z]*"):
        keys = sorted(client.scan_iter(count=1000))
        state: Any = await clear_cache(
            target="users-cache",
            pattern=pattern,
            config_path=str(config),
            requested_by="t",
            return_state=True,
        )
        assert state.is_failed()
        assert sorted(client.scan_iter(count=1000)) == keys  # nothing deleted
        run = AuditStore(sqlite_url).run(str(state.state_details.flow_run_id))
        assert run is not None and run.state == "failed" and run.error_type == "ConfigError"
        assert "refused, nothing deleted" in (run.error_message or "")
    client.close()


# --- secrets -----------------------------------------------------------------------------------------


async def _everything_in_prefect() -> str:
    """Every log record, flow run (parameters, state messages) and artifact on the test server."""
    from prefect.client.orchestration import get_client

    chunks: list[str] = []
    async with get_client() as client:
        offset = 0
        while batch := await client.read_logs(limit=200, offset=offset):
            chunks += [log.message for log in batch]
            offset += len(batch)
        offset = 0
        while runs := await client.read_flow_runs(limit=200, offset=offset):
            chunks += [run.model_dump_json() for run in runs]
            offset += len(runs)
        chunks += [a.model_dump_json() for a in await client.read_artifacts()]
    return "\n".join(chunks)


async def test_the_database_password_appears_nowhere(
    run_cli: CliRunner, pg_url: str, redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    """Successful and failing database recoveries with a canary password; then search the CLI
    output, the audit database file and everything in the Prefect server for it."""
    closed = free_port()
    down_url = f"postgresql+psycopg://postgres:{CANARY}@127.0.0.1:{closed}/test"
    config = write_config(
        tmp_path / "recovery.yaml",
        audit_url=sqlite_url,
        state_url=redis_url,
        targets=[
            {"name": "orders-db", "kind": "database", "url": with_password(pg_url)},
            {"name": "down-db", "kind": "database", "url": down_url, "connect_timeout_seconds": 1},
        ],
    )
    outputs = []
    for args, code in [
        (["recover", "orders-db"], 0),
        (["reconnect-database", "orders-db"], 0),
        (["recover", "down-db"], 1),
        (["monitor", "--once"], 1),
        (["check"], 1),
        (["history", "--json"], 0),
        (["--debug", "reconnect-database", "down-db"], 1),
    ]:
        result = run_cli("--config", str(config), *args, timeout=CLI_TIMEOUT)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        outputs.append(result.stdout + result.stderr)
    everything = "\n".join(outputs)
    assert "down-db" in everything and "connection refused" in everything  # the failures were seen
    assert CANARY not in everything

    runs = AuditStore(sqlite_url).history(limit=100)
    failed = [r for r in runs if r.target == "down-db" and r.state == "failed"]
    assert failed and all("connection refused" in (r.error_message or "") for r in failed)
    assert CANARY not in json.dumps([r.as_json() for r in runs])
    audit_file = Path(str(make_url(sqlite_url).database))
    for path in audit_file.parent.glob(audit_file.name + "*"):  # the database, -wal and -shm
        assert CANARY.encode() not in path.read_bytes(), path

    prefect_text = await _everything_in_prefect()
    assert "database-recovery of orders-db succeeded" in prefect_text  # the logs are there
    assert CANARY not in prefect_text
