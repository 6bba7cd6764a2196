"""Issue 10: a REAL `prefect server` killed (`kill -9`, its whole process group) mid-recovery.

test_bounded_flows.py simulates a dead API with a TCP proxy in front of the session's shared
server; this test starts its own `prefect server start` (own PREFECT_HOME, SQLite, free loopback
port), kills it while `recovery recover` waits in a long verification, then restarts it on the
same home and port and shows the product recovering again. The session's shared test server
(conftest.py ``prefect_api``) is never touched: nothing here requests it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from bounded_helpers import ONE_PROBE, SLOW_VERIFY, http_target, only_run, wait_for, write
from faultserver import FaultServer
from served_stack import start_server, stop

from recovery.audit.store import AuditStore
from recovery.backends.state_redis import RedisState

pytestmark = pytest.mark.prefect

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "recovery_cli.main"]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _refused(base: str) -> bool:
    try:
        httpx.get(f"{base}/health", timeout=2)
    except httpx.ConnectError:
        return True
    return False


def _recover(config: str, api: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    return subprocess.Popen(
        [*CLI, "--config", config, "recover", "slow", "--requested-by", "test"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
    )  # fmt: skip


def test_a_real_prefect_server_killed_mid_run_cancels_the_run_then_recovery_resumes(
    fault_server: FaultServer, redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    began = time.monotonic()
    home = tmp_path / "prefect-home"
    server, api = start_server(home)  # first: it is what takes time (~15-60 s)
    started = time.monotonic() - began
    port = urlsplit(api).port
    head = f"audit_url: {sqlite_url}\nstate_url: {redis_url}\ntargets:\n"
    health = f"{fault_server.url}/health"
    slow = write(tmp_path / "slow.yaml", head + http_target("slow", health, SLOW_VERIFY))
    quick = write(tmp_path / "quick.yaml", head + http_target("slow", health, f", {ONE_PROBE}"))
    proc: subprocess.Popen[str] | None = None
    try:
        # --- the server dies while the recovery waits in its 120 s verification ----------------
        proc = _recover(slow, api)
        wait_for(lambda: (r := only_run(sqlite_url, "slow")) and r.state == "in_progress", 120, "the run")
        time.sleep(0.5)  # into the verification wait, as in the proxy test
        # The group: Prefect 3.9 serves from one process (checked with ps), but a fork would die too.
        os.killpg(server.pid, signal.SIGKILL)
        killed = time.monotonic()
        server.wait()
        wait_for(lambda: not _group_alive(server.pid), 10, "every process of the server to be gone")
        assert _refused(api)  # what the CLI sees: a port nobody listens on
        out, err = proc.communicate(timeout=120)
        took = time.monotonic() - killed
        assert proc.returncode == 1, out + err
        unreachable = f"Prefect API unreachable at {api}: connection refused"
        assert err.splitlines()[-1] == f"recovery: error: {unreachable}", err
        assert "Traceback" not in err, err
        # ~6 s of failed health checks + up to 8 s of wind-down; the bug was 233 s and a traceback.
        assert took < 30, took
        run = only_run(sqlite_url, "slow")
        assert run is not None and (run.state, run.error_message) == ("cancelled", unreachable), run
        assert RedisState(redis_url).lock_owner("slow") is None

        # --- the same server (home, SQLite DB, port) comes back: recovery works again ----------
        restart_began = time.monotonic()
        server, again = start_server(home, port=port)
        restarted = time.monotonic() - restart_began
        assert again == api
        proc = _recover(quick, api)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, out + err
        runs = sorted(r.state for r in AuditStore(sqlite_url).history("slow", 5))
        assert runs == ["cancelled", "succeeded"], runs
        assert RedisState(redis_url).lock_owner("slow") is None
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        stop(server)
    # The figures the README's reliability table cites (visible with -s).
    print(f"\nserver start {started:.1f}s, exit after kill {took:.1f}s, restart {restarted:.1f}s,"
          f" total {time.monotonic() - began:.1f}s")  # fmt: skip
