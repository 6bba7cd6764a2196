"""Issue 3 end to end through the real CLI and the session's Prefect test server: the manual
operations (clear-cache, reconnect-database); no password anywhere.

Every database URL carries a canary password (trust auth ignores it, so it connects).
The last test scans everything the runs produced - CLI output, the audit database file, every
log record, flow run and artifact in the Prefect server - for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis
from dbcache_flow_helpers import CANARY, CLI_TIMEOUT, CliRunner, with_password, write_config
from faultserver import free_port
from sqlalchemy.engine import make_url

from recovery.audit.store import AuditStore
from recovery.backends.state_redis import RedisState

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
