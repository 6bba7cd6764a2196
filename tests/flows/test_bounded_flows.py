"""Issue 10 end to end: bounded dependency calls, a cycle deadline, degraded-not-silent reports,
a dead Prefect API, and signals. Real faults: a Redis proxy that stops answering, a throwaway
redis-server killed and restarted on its port, a probe that hangs, a Prefect API whose
connections are cut mid-run, and real SIGINT/SIGTERM to a real `recovery monitor` process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from bounded_helpers import (
    ONE_ATTEMPT,
    ONE_PROBE,
    PATIENT,
    SLOW_VERIFY,
    http_target,
    only_run,
    wait_for,
    write,
)
from dbcache_services import RedisServer, TcpProxy
from faultserver import FaultServer, free_port
from loopwatch import LoopWatch

from flows.monitor import REPORT_SINK, monitor
from recovery.audit.store import AuditStore
from recovery.backends.state_redis import RedisState
from recovery.engine.monitor import PROBE_CUT_OFF, STATE_UNAVAILABLE

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "recovery_cli.main"]
# --- 2. nothing synchronous blocks the event loop ------------------------------------------------


async def test_a_frozen_dependency_of_one_recovery_does_not_delay_another(
    prefect_api: str,
    fault_server: FaultServer,
    redis_url: str,
    redis_proxy: tuple[TcpProxy, str],
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A and B recover in the same cycle (one event loop). A's error cache accepts connections
    and never answers, so A's clear_error_cache waits out its 6 s timeout. B's service heals the
    moment A is stuck: B must finish then (its normal time), not after A's timeout. Before the
    fix the SCAN ran on the event loop: B could not finish before A's step ended."""
    proxy, frozen_url = redis_proxy
    client = redis.Redis.from_url(redis_url)
    client.set("errors:b:1", "cached 503")
    path = write(
        tmp_path / "r.yaml",
        f"audit_url: {sqlite_url}\nstate_url: {redis_url}\nstate_timeout_seconds: 6\n"
        f"monitor: {{interval_seconds: 30, failure_threshold: 1}}\nstrategy: {ONE_ATTEMPT}\ntargets:\n"
        + http_target(
            "a",
            f"{fault_server.url}/flaky/a?fail=1",
            f", error_cache_url: '{frozen_url}', error_cache_pattern: 'errors:a:*'",
        )
        + http_target(
            "b",
            f"{fault_server.url}/health",
            f", strategy: {PATIENT}, {ONE_PROBE}, error_cache_pattern: 'errors:b:*'",
        ),
    )
    fault_server.app.set_mode("status:503")  # B fails until A is stuck in its frozen step
    healed: list[float] = []

    def heal_b_once_a_is_stuck() -> None:
        def a_stuck() -> bool:
            run = only_run(sqlite_url, "a")
            steps = {s.name: s.state for s in run.steps} if run else {}
            return steps.get("clear_error_cache") == "running"

        wait_for(a_stuck, 120, "A's clear_error_cache to start", interval=0.02)
        fault_server.app.set_mode("ok")
        healed.append(time.time())

    healer = threading.Thread(target=heal_b_once_a_is_stuck, daemon=True)
    proxy.blackhole()
    healer.start()
    async with LoopWatch() as loop:
        monkeypatch.setenv("RECOVERY_CONFIG", str(path))  # flows take the worker's config
        report = await monitor()
    healer.join(1)
    assert sorted((r["target"], r["state"]) for r in report["recoveries"]) == [
        ("a", "succeeded"),
        ("b", "succeeded"),
    ], report
    a, b = only_run(sqlite_url, "a"), only_run(sqlite_url, "b")
    assert a is not None and b is not None and b.finished_at is not None and healed
    frozen = {s.name: s for s in a.steps}["clear_error_cache"]
    assert frozen.state == "failed" and "Timeout" in (frozen.error_message or "")  # optional: went on
    assert frozen.finished_at is not None and frozen.duration_seconds is not None
    assert frozen.duration_seconds >= 5.5
    # B's own time from the moment it could succeed (healed, or started if it started later).
    own = b.finished_at.timestamp() - max(healed[0], b.started_at.timestamp())
    assert own < 2.5, f"B finished {own:.1f}s after it could: held up by A's frozen cache"
    assert b.finished_at < frozen.finished_at, "B waited for A's timeout"
    assert loop.longest < 1.0, f"the event loop was blocked for {loop.longest:.2f}s"
    assert client.get("errors:b:1") is None


# --- 3. a cycle has a deadline ------------------------------------------------------------------


async def test_a_hung_probe_is_cut_off_at_the_cycle_deadline_and_the_rest_is_decided(
    prefect_api: str,
    fault_server: FaultServer,
    redis_url: str,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = write(
        tmp_path / "r.yaml",
        f"audit_url: {sqlite_url}\nstate_url: {redis_url}\nstate_timeout_seconds: 0.5\n"
        "monitor: {interval_seconds: 30, cycle_timeout_seconds: 5, failure_threshold: 1}\n"
        f"strategy: {ONE_ATTEMPT}\ntargets:\n"
        + "  - {name: hung, kind: http, url: '"
        + fault_server.url
        + "/hang', timeout_seconds: 60}\n"
        + http_target("down", f"{fault_server.url}/flaky/down?fail=1")
        + http_target("fine", f"{fault_server.url}/status/200"),
    )
    reported: list[tuple[float, dict[str, Any]]] = []
    token = REPORT_SINK.set(lambda r: reported.append((time.monotonic(), r)))
    try:
        started = time.monotonic()
        monkeypatch.setenv("RECOVERY_CONFIG", str(path))  # flows take the worker's config
        report = await monitor()
    finally:
        REPORT_SINK.reset(token)
    [(at, early)] = reported
    # Probes are cut at 5 - 2 x 0.5 = 4 s; deciding takes milliseconds; plus Prefect's overhead.
    assert 4.0 < at - started < 5.0 + 1.5, f"the report came {at - started:.1f}s into a 5 s cycle"
    targets = {t["target"]: t for t in early["targets"]}
    assert (targets["hung"]["reason"], targets["hung"]["action"], targets["hung"]["note"]) == (
        "timed out",
        "deferred",
        PROBE_CUT_OFF,
    )
    assert targets["down"]["action"] == "recover" and targets["fine"]["action"] == "none"
    assert report["targets"] == early["targets"]
    assert [(r["target"], r["state"]) for r in report["recoveries"]] == [("down", "succeeded")]
    assert RedisState(redis_url).health("hung") is None, "a cut-off probe is not counted"


async def test_a_frozen_state_redis_defers_every_target_within_the_deadline(
    prefect_api: str,
    fault_server: FaultServer,
    redis_proxy: tuple[TcpProxy, str],
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proxy, url = redis_proxy
    path = write(
        tmp_path / "r.yaml",
        f"audit_url: {sqlite_url}\nstate_url: {url}\nstate_timeout_seconds: 1\n"
        "monitor: {interval_seconds: 5, failure_threshold: 1}\ntargets:\n"
        + "".join(http_target(f"t{i}", f"{fault_server.url}/status/{503 if i else 200}") for i in range(4)),
    )
    proxy.blackhole()
    started = time.monotonic()
    monkeypatch.setenv("RECOVERY_CONFIG", str(path))  # flows take the worker's config
    report = await monitor()
    took = time.monotonic() - started
    assert [(t["target"], t["action"], t["note"]) for t in report["targets"]] == [
        (f"t{i}", "deferred", STATE_UNAVAILABLE) for i in range(4)
    ]
    assert [t["reason"] for t in report["targets"]] == ["ok"] + ["status 503"] * 3, "probes are reported"
    assert report["recoveries"] == []
    # One state timeout (1 s), not one per target; the board is skipped while state is down.
    assert report["report_seconds"] < 2.5 and took < 5.0, (report["report_seconds"], took)


# --- 4. state Redis down, then back -------------------------------------------------------------


def test_state_redis_down_defers_then_the_monitor_recovers_once_it_is_back(
    cli_env: dict[str, str], fault_server: FaultServer, sqlite_url: str, tmp_path: Path
) -> None:
    server = RedisServer().start()
    try:
        path = write(
            tmp_path / "r.yaml",
            f"audit_url: {sqlite_url}\nstate_url: {server.url()}\nstate_timeout_seconds: 1\n"
            "monitor: {interval_seconds: 1, failure_threshold: 1}\ntargets:\n"
            + http_target("api", f"{fault_server.url}/health")
            + http_target("other", f"{fault_server.url}/status/200"),
        )
        fault_server.app.set_mode("status:503")
        server.kill()
        once = subprocess.run(
            [*CLI, "--config", path, "monitor", "--once"],
            capture_output=True, text=True, timeout=180, cwd=REPO, env=cli_env,
        )  # fmt: skip
        assert once.returncode == 1, once.stdout + once.stderr
        lines = [line for line in once.stdout.splitlines() if line.startswith(("api:", "other:"))]
        assert lines == [
            f"api: UNHEALTHY (status 503), action deferred ({STATE_UNAVAILABLE})",
            f"other: healthy, action deferred ({STATE_UNAVAILABLE})",
        ], once.stdout

        loop = subprocess.Popen(
            [*CLI, "--config", path, "monitor"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=cli_env,
        )  # fmt: skip
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.extend(loop.stdout or []), daemon=True)
        reader.start()
        try:
            wait_for(lambda: any("action deferred" in line for line in output), 120, "a deferred cycle")
            fault_server.app.set_mode("fail-next:1")  # down for the next probe, then healthy
            server.start()  # the same port: the loop's pooled clients reconnect
            run = wait_for(
                lambda: (r := only_run(sqlite_url, "api")) and r.state == "succeeded" and r,
                120,
                "the recovery once Redis is back",
            )
            assert run.type == "automatic"
            printed = "api-failure-recovery of api: succeeded"
            wait_for(lambda: any(line.startswith(printed) for line in output), 60, "the outcome line")
        finally:
            loop.send_signal(signal.SIGTERM)
            code = loop.wait(30)
            reader.join(5)
        assert code == 143, "".join(output)
        assert RedisState(server.url()).lock_owner("api") is None
    finally:
        server.stop()


# --- 5. Prefect API down ------------------------------------------------------------------------


def test_commands_fail_in_seconds_with_one_line_when_the_prefect_api_is_down(
    redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    port = free_port()  # nothing listens here
    api = f"http://127.0.0.1:{port}/api"
    path = write(
        tmp_path / "r.yaml",
        f"audit_url: {sqlite_url}\nstate_url: {redis_url}\ntargets:\n"
        + http_target("api", "http://127.0.0.1:9/health")
        + f"  - {{name: cache, kind: redis, url: '{redis_url}', validate: {{key_pattern: 'user:*'}}}}\n",
    )
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    for command in (
        ["monitor", "--once"],
        ["recover", "api", "--requested-by", "test"],
        ["clear-cache", "cache", "--requested-by", "test"],
    ):
        started = time.monotonic()
        result = subprocess.run(
            [*CLI, "--config", path, *command], capture_output=True, text=True, timeout=60, cwd=REPO, env=env
        )
        took = time.monotonic() - started
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert result.stderr == f"recovery: error: Prefect API unreachable at {api}: connection refused\n"
        assert took < 20, (command, took)  # Python + Prefect's import; the check itself is instant
    assert AuditStore(sqlite_url).history(None, 5) == [], "nothing was started"


def test_without_an_api_url_nothing_is_checked(tmp_path: Path) -> None:
    """Ephemeral mode (no PREFECT_API_URL, no profile URL): the check is a no-op."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # an empty profile
    code = "from recovery_cli.common import prefect_api_problem, prefect_api_watch; " \
        "print(prefect_api_problem(), prefect_api_watch())"  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO, env=env
    )
    assert result.stdout.strip() == "None None", result.stderr


def test_the_prefect_api_dying_mid_run_cancels_the_run_and_fails_with_one_line(
    cli_env: dict[str, str], prefect_api: str, fault_server: FaultServer, redis_url: str, sqlite_url: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The session's real Prefect server behind a proxy; the proxy stops mid-recovery (every
    connection dropped, new ones refused: what a client sees of a killed server)."""
    api = urlsplit(prefect_api)
    proxy = TcpProxy((api.hostname or "127.0.0.1", api.port or 4200)).start()
    proxied = f"http://127.0.0.1:{proxy.port}{api.path}"
    path = write(
        tmp_path / "r.yaml",
        f"audit_url: {sqlite_url}\nstate_url: {redis_url}\ntargets:\n"
        + http_target("slow", f"{fault_server.url}/health", SLOW_VERIFY),
    )
    try:
        proc = subprocess.Popen(
            [*CLI, "--config", path, "recover", "slow", "--requested-by", "test"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
            env={**cli_env, "PREFECT_API_URL": proxied},
        )  # fmt: skip
        wait_for(lambda: (r := only_run(sqlite_url, "slow")) and r.state == "in_progress", 120, "the run")
        time.sleep(0.5)  # into the 120 s verification wait
        proxy.stop()
        stopped = time.monotonic()
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - stopped
    finally:
        proxy.stop()
    assert proc.returncode == 1, out + err
    unreachable = f"Prefect API unreachable at {proxied}: connection refused"
    assert err.splitlines()[-1] == f"recovery: error: {unreachable}"
    assert took < 25, took  # ~6 s to be sure the API is gone + up to 8 s for the run to wind down
    run = only_run(sqlite_url, "slow")
    assert run is not None and run.state == "cancelled", run
    assert run.error_message == unreachable
    assert RedisState(redis_url).lock_owner("slow") is None


# --- 6. signals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "to_group"),
    [(signal.SIGINT, False), (signal.SIGTERM, True)],
    ids=["SIGINT-pid", "SIGTERM-group"],
)
def test_a_signal_stops_the_monitor_and_cancels_its_recovery(
    cli_env: dict[str, str],
    fault_server: FaultServer,
    redis_url: str,
    sqlite_url: str,
    tmp_path: Path,
    signum: int,
    to_group: bool,
) -> None:
    path = write(
        tmp_path / "r.yaml",
        f"audit_url: {sqlite_url}\nstate_url: {redis_url}\n"
        "monitor: {interval_seconds: 2, failure_threshold: 1}\ntargets:\n"
        + http_target("slow", f"{fault_server.url}/health", SLOW_VERIFY),
    )
    fault_server.app.set_mode("fail-next:1")  # the monitor's probe fails; the recovery then waits
    proc = subprocess.Popen(
        [*CLI, "--config", path, "monitor"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=cli_env,
        start_new_session=True,  # its own process group, so the group signal reaches only it
    )  # fmt: skip
    try:
        wait_for(lambda: (r := only_run(sqlite_url, "slow")) and r.state == "in_progress", 120, "the run")
        time.sleep(0.5)
        sent = time.monotonic()
        if to_group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        out, err = proc.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, out + err
    assert err.splitlines()[-1] == f"recovery: stopped by {name}"
    assert took < 10
    run = only_run(sqlite_url, "slow")
    assert run is not None and (run.state, run.error_message) == ("cancelled", f"stopped by {name}")
    assert RedisState(redis_url).lock_owner("slow") is None
