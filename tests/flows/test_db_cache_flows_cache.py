"""Issue 3 end to end through the real CLI and the session's Prefect test server:
``cache-recovery`` repairs a 10,000-key Redis cache from a SQL table; an unreachable Redis is
retried with backoff, then fails clearly or recovers once it is back.

Every database URL carries a canary password (trust auth ignores it, so it connects).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import redis
from dbcache_flow_helpers import (
    CANARY,
    CLI,
    CLI_TIMEOUT,
    PATIENT,
    CliRunner,
    steps_of,
    with_password,
    write_config,
)
from dbcache_services import (
    N_KEYS,
    RedisServer,
    corrupted_ids,
    seed_cache,
    seed_source_table,
    snapshot,
    source_value,
)
from faultserver import free_port

from recovery.audit.store import AuditStore

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
