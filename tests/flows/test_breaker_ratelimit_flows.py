"""Issue 4 through Prefect and the CLI: breaker flows, the rate-limit workflow, refusals.

Real everything: the session's Prefect test server, Redis, SQLite, the uvicorn fault server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from faultserver import FaultServer

from flows.breaker_flows import circuit_breaker_status, reset_circuit_breaker
from flows.monitor import monitor
from recovery.audit.store import AuditStore
from recovery.backends.keys import rate_key
from recovery.backends.state_redis import RedisState
from recovery.client.breakers import breaker_for_target
from recovery.config.loader import load_config

FAST = (
    "{kind: exponential, base_seconds: 0.2, factor: 2, max_delay_seconds: 1, max_attempts: 6, jitter: none}"
)


def write_config(
    path: Path,
    *,
    audit_url: str,
    state_url: str,
    url: str,
    strategy: str = FAST,
    extra: str = "",
    search_url: str | None = None,
) -> str:
    path.write_text(
        f"audit_url: {audit_url}\nstate_url: {state_url}\n"
        "monitor: {interval_seconds: 1, failure_threshold: 1}\n"
        f"strategy: {strategy}\n"
        "targets:\n"
        f"  - {{name: payments-api, kind: http, url: '{url}', timeout_seconds: 2,"
        f" verify: {{consecutive_successes: 1, interval_seconds: 0}}{extra}}}\n"
        f"  - {{name: search, kind: http, url: '{search_url or url}'}}\n"
    )
    return str(path)


async def test_breaker_status_and_audited_reset_flows(
    prefect_api: str, redis_url: str, sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(
        tmp_path / "r.yaml", audit_url=sqlite_url, state_url=redis_url, url="http://127.0.0.1:9/"
    )
    monkeypatch.setenv("RECOVERY_CONFIG", path)  # the flows load the worker's config
    config = load_config(path)
    breaker_for_target(config, "payments-api").open()

    everything = await circuit_breaker_status()
    assert {s["target"]: s["state"] for s in everything} == {"payments-api": "open", "search": "closed"}
    [one] = await circuit_breaker_status(target="payments-api")
    assert one["state"] == "open" and one["half_open_in_seconds"] > 0

    # The target (port 9) does not answer: only a forced reset closes its breaker
    # (test_breaker_reset_probe.py covers the probe's verdicts).
    result = await reset_circuit_breaker(
        target="payments-api", requested_by="alice", reason="provider confirmed the fix", force=True
    )
    assert (result["before"], result["after"]) == ("open", "closed")
    run = AuditStore(sqlite_url).run(result["run_id"])
    assert run is not None and run.flow_run_id == result["run_id"]  # the audit id is the flow run id
    assert (run.workflow, run.state, run.requested_by, run.reason) == (
        "reset-circuit-breaker",
        "succeeded",
        "alice",
        "provider confirmed the fix",
    )
    assert breaker_for_target(config, "payments-api").current_state == "closed"


def test_cli_breaker_status_reads_without_prefect(redis_url: str, sqlite_url: str, tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "r.yaml", audit_url=sqlite_url, state_url=redis_url, url="http://127.0.0.1:9/"
    )
    breaker_for_target(load_config(path), "search").open()
    probe = (
        "import sys\n"
        "from recovery_cli.main import main\n"
        f"code = main(['--config', {path!r}, 'breaker-status', '--json'])\n"
        "loaded = [m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')]\n"
        "assert not loaded, 'imported prefect'\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr  # a breaker is open: exit 1, like `check`
    assert {s["target"]: s["state"] for s in json.loads(result.stdout)} == {
        "payments-api": "closed",
        "search": "open",
    }
    one = subprocess.run(
        [sys.executable, "-m", "recovery_cli.main", "--config", path, "breaker-status", "payments-api"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert one.returncode == 0 and one.stdout.startswith("payments-api") and "closed" in one.stdout
    unknown = subprocess.run(
        [sys.executable, "-m", "recovery_cli.main", "--config", path, "breaker-status", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        unknown.returncode == 2
        and unknown.stderr.count("\n") == 1
        and "unknown target 'nope'" in unknown.stderr
    )


def test_cli_reset_breaker_is_audited(run_cli: Any, redis_url: str, sqlite_url: str, tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "r.yaml", audit_url=sqlite_url, state_url=redis_url, url="http://127.0.0.1:9/"
    )
    breaker_for_target(load_config(path), "payments-api").open()
    missing = run_cli("--config", path, "reset-breaker", "payments-api")
    assert missing.returncode == 2 and "--reason" in missing.stderr
    who = ("--reason", "fixed", "--requested-by", "bob")
    refused = run_cli("--config", path, "reset-breaker", "payments-api", *who)  # port 9: unhealthy
    assert refused.returncode == 1 and "is unhealthy" in refused.stdout + refused.stderr
    assert breaker_for_target(load_config(path), "payments-api").current_state == "open"
    result = run_cli("--config", path, "reset-breaker", "payments-api", *who, "--force")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reset-circuit-breaker" in result.stdout and '"before": "open"' in result.stdout
    [run, _] = AuditStore(sqlite_url).history("payments-api")  # newest first: forced, refused
    assert (run.workflow, run.state, run.requested_by, run.reason) == (
        "reset-circuit-breaker",
        "succeeded",
        "bob",
        "fixed",
    )
    assert breaker_for_target(load_config(path), "payments-api").current_state == "closed"


def test_cli_recover_refused_by_time_window_exits_1(
    run_cli: Any, fault_server: FaultServer, redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    window = "{kind: time_window, max_recoveries: 1, window_seconds: 3600}"
    strategy = f"{{kind: composite, strategies: [{window}, {FAST}]}}"
    path = write_config(
        tmp_path / "r.yaml",
        audit_url=sqlite_url,
        state_url=redis_url,
        url=f"{fault_server.url}/health",
        strategy=strategy,
    )
    first = run_cli("--config", path, "recover", "payments-api", "--reason", "first", "--json")
    assert first.returncode == 0, first.stdout + first.stderr
    second = run_cli("--config", path, "recover", "payments-api", "--reason", "second", "--json")
    assert second.returncode == 1, second.stdout + second.stderr
    refused = json.loads(second.stdout)
    assert refused["state"] == "refused" and refused["error_type"] == "RecoveryRefused"
    expected = "time_window: 1 recoveries of payments-api in the last 3600s (max 1); escalating"
    assert expected in refused["error_message"]
    # An emergency bypasses the time window (never the lock).
    emergency = run_cli(
        "--config", path, "recover", "payments-api", "--type", "emergency", "--reason", "outage"
    )
    assert emergency.returncode == 0, emergency.stdout + emergency.stderr
    states = sorted(r.state for r in AuditStore(sqlite_url).history("payments-api"))
    assert states == ["refused", "succeeded", "succeeded"]


async def test_monitor_runs_rate_limit_recovery_then_raises_the_rate(
    prefect_api: str,
    fault_server: FaultServer,
    redis_url: str,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    extra = (
        ", rate_limit: {normal_rate_per_second: 4, safety_factor: 0.5, increase_per_cycle: 1,"
        " increase_interval_seconds: 0}"
    )
    path = write_config(
        tmp_path / "r.yaml",
        audit_url=sqlite_url,
        state_url=redis_url,
        url=f"{fault_server.url}/health",
        extra=extra,
        search_url=f"{fault_server.url}/status/200",
    )
    monkeypatch.setenv("RECOVERY_CONFIG", path)  # the flows load the worker's config
    audit = AuditStore(sqlite_url)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    fault_server.app.set_mode("ratelimit:4")
    stop = threading.Event()

    def lift_limit_at_reset() -> None:
        """The dependency lifts its limit when it said it would, once the wait step runs (so
        Prefect's overhead on a loaded machine cannot end the 429s before the workflow sees them)."""
        while not stop.is_set():
            runs = audit.history("payments-api", 1)
            steps = {step.name: step.state for step in runs[0].steps} if runs else {}
            if steps.get("wait_for_rate_limit_reset") in ("running", "succeeded", "skipped"):
                reset_at = float(client.hget(rate_key("payments-api"), "reset_at") or 0)
                stop.wait(max(0.0, reset_at - time.time()))
                fault_server.app.set_mode("ok")
                return
            stop.wait(0.05)

    lifter = threading.Thread(target=lift_limit_at_reset, daemon=True)
    lifter.start()
    try:
        report = await monitor()
    finally:
        stop.set()
    [recovery] = report["recoveries"]
    summary = (recovery["target"], recovery["workflow"], recovery["state"])
    assert summary == ("payments-api", "rate-limit-recovery", "succeeded"), report

    [run] = audit.history("payments-api")
    steps = {s.name: s for s in run.steps}
    assert list(steps) == [
        "check_service_health",
        "adjust_request_rate",
        "wait_for_rate_limit_reset",
        "reset_circuit_breaker",
        "test_connectivity",
        "restore_operations",
    ]
    wait = steps["wait_for_rate_limit_reset"]
    assert wait.state == "succeeded" and wait.detail is not None, (wait.state, wait.detail)
    assert 0 < wait.detail["waited_seconds"] <= 4.0  # honoured Retry-After: 4, minus time already gone
    assert wait.duration_seconds is not None and wait.duration_seconds >= wait.detail["waited_seconds"] - 0.05
    assert steps["adjust_request_rate"].detail == {
        "before_per_second": 4.0,
        "allowed_per_second": 2.0,
        "normal_per_second": 4.0,
        "observed_per_second": None,
    }
    assert float(client.hget(rate_key("payments-api"), "allowed") or 0) == 2.0
    assert RedisState(redis_url).paused("payments-api") is None

    # Later healthy cycles raise the rate additively back to normal (AIMD).
    await monitor()
    assert float(client.hget(rate_key("payments-api"), "allowed") or 0) == 3.0
    await monitor()
    assert client.hget(rate_key("payments-api"), "allowed") is None  # back at the normal 4/s
