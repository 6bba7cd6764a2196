"""Issue 2 end to end: monitor -> api-failure-recovery -> audit, through the real CLI.

Everything is real: a uvicorn fault server, Redis for shared state and the error cache, the
audit store on SQLite and PostgreSQL, and one shared Prefect test server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis
from faultserver import FaultServer

from recovery.audit.store import AuditStore
from recovery.backends.state_redis import RedisState
from recovery.client.breakers import breaker_for
from recovery.config.loader import BreakerConfig, load_config

CLI = [sys.executable, "-m", "recovery_cli.main"]

PATIENT_STRATEGY = (
    "{kind: exponential, base_seconds: 0.2, factor: 2, max_delay_seconds: 1, max_attempts: 50, jitter: none}"
)
FAST_STRATEGY = (
    "{kind: exponential, base_seconds: 0.2, factor: 2, max_delay_seconds: 1, max_attempts: 6, jitter: none}"
)


def write_config(
    path: Path,
    *,
    audit_url: str,
    url: str,
    state_url: str | None = None,
    threshold: int = 1,
    extra: str = "",
    strategy: str = FAST_STRATEGY,
) -> Path:
    lines = [f"audit_url: {audit_url}"]
    if state_url:
        lines.append(f"state_url: {state_url}")
    lines += [
        f"monitor: {{interval_seconds: 1, failure_threshold: {threshold}}}",
        f"strategy: {strategy}",
        "targets:",
        "  - name: payments-api",
        "    kind: http",
        f"    url: {url}/health",
        "    timeout_seconds: 1",
        "    verify: {consecutive_successes: 2, interval_seconds: 0.05}",
        '    error_cache_pattern: "errors:payments-api:*"',
    ]
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def audit_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


def test_monitor_once_recovers_503_target(
    run_cli, fault_server: FaultServer, redis_url: str, audit_url: str, tmp_path: Path
) -> None:
    """`recovery monitor --once` on a 503 target: recovery runs, cache cleared, breaker closed."""
    config = write_config(
        tmp_path / "recovery.yaml", audit_url=audit_url, url=fault_server.url, state_url=redis_url
    )
    client = redis.Redis.from_url(redis_url)
    for i in range(30):
        client.set(f"errors:payments-api:{i}", "cached 503")
    client.set("errors:other-api:1", "must survive")
    # 503 for the monitor's probe, the diagnosis and the first verification probe: the
    # verification step must retry with backoff before it passes.
    fault_server.app.set_mode("fail-next:3")

    result = run_cli("--config", str(config), "monitor", "--once")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "api-failure-recovery of payments-api: succeeded" in result.stdout

    assert client.keys("errors:payments-api:*") == []
    assert client.get("errors:other-api:1") == b"must survive"
    cfg = load_config(config)
    assert breaker_for("payments-api", BreakerConfig(), redis_url).current_state == "closed"
    state = RedisState(redis_url)
    assert state.paused("payments-api") is None
    assert state.lock_owner("payments-api") is None

    history = run_cli("--config", str(config), "history", "--json")
    assert history.returncode == 0, history.stderr
    runs = json.loads(history.stdout)
    assert len(runs) == 1
    run = runs[0]
    assert {k: run[k] for k in ("target", "workflow", "type", "state")} == {
        "target": "payments-api",
        "workflow": "api-failure-recovery",
        "type": "automatic",
        "state": "succeeded",
    }
    assert run["started_at"] and run["finished_at"] and run["duration_seconds"] > 0
    steps = {s["name"]: s for s in run["steps"]}
    assert list(steps) == [
        "check_service_health",
        "clear_error_cache",
        "reset_circuit_breaker",
        "test_connectivity",
        "restore_operations",
    ]
    assert all(s["state"] == "succeeded" for s in run["steps"])
    assert steps["clear_error_cache"]["detail"]["deleted"] == 30
    assert steps["reset_circuit_breaker"]["detail"] == {"before": "open", "after": "closed"}
    assert steps["test_connectivity"]["attempts"] == 2
    assert steps["check_service_health"]["detail"]["reason"] == "status 503"
    assert run["flow_run_id"] == run["id"]
    assert cfg.targets[0].name == "payments-api"


def test_two_monitors_at_once_run_one_recovery(
    cli_env: dict[str, str], fault_server: FaultServer, redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    """Two `monitor --once` processes started together: one recovery between them."""
    config = write_config(
        tmp_path / "recovery.yaml",
        audit_url=sqlite_url,
        url=fault_server.url,
        state_url=redis_url,
        strategy=PATIENT_STRATEGY,
    )
    # The service answers 503 until *both* monitors have recorded a failed probe in Redis (the
    # second process may start seconds after the first on a loaded machine), then heals while the
    # winner's recovery is verifying with backoff.
    fault_server.app.set_mode("status:503")
    state = RedisState(redis_url)
    done = threading.Event()

    def heal_after_both_probes() -> None:
        while not done.is_set():
            health = state.health("payments-api")
            if health is not None and health.failures >= 2:
                fault_server.app.set_mode("ok")
                return
            time.sleep(0.05)

    healer = threading.Thread(target=heal_after_both_probes, daemon=True)
    healer.start()
    try:
        procs = [
            subprocess.Popen(
                [*CLI, "--config", str(config), "monitor", "--once", "--json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=cli_env,
            )
            for _ in range(2)
        ]
        outputs = [p.communicate(timeout=240) for p in procs]
    finally:
        done.set()
    reports = [json.loads(out) for out, _ in outputs]
    actions = sorted(r["targets"][0]["action"] for r in reports)
    assert actions == ["in-progress", "recover"], outputs
    recoveries = [rec for r in reports for rec in r["recoveries"]]
    assert [r["state"] for r in recoveries] == ["succeeded"]
    runs = AuditStore(sqlite_url).history("payments-api")
    assert len(runs) == 1 and runs[0].state == "succeeded"


def test_malformed_config_is_one_line_exit_2(run_cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "targets:\n  - {name: a, kind: http, url: http://x/h}\n  - {name: b, kind: http, url: nope}\n"
    )
    for command in (["validate"], ["check"], ["history"], ["monitor", "--once"], ["recover", "a"]):
        result = run_cli("--config", str(bad), *command)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.strip() == "recovery: error: targets[1].url: invalid URL"
        assert "Traceback" not in result.stderr + result.stdout
