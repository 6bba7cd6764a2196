"""Issue 10 invariants against real process deaths (``kill -9``, SIGTERM) and a real dead database.

A recovery runs in its own process (the ``recovery`` CLI) against a FaultServer answering 503,
so it sits in ``test_connectivity``'s retries after ``reset_circuit_breaker`` closed the breaker.
Then the process dies, and what must hold afterwards is checked with nobody's help (I2) and
after a reconcile pass, from the CLI (no Prefect) or the monitor (I1, I3, I5). I4: the monitor
releases the lock of a recovery whose ``begin()`` failed (audit database down).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from faultserver import FaultServer, free_port
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter
from prefect.states import Crashed

from flows.monitor import monitor
from recovery.audit.records import RunRecord
from recovery.audit.store import AuditStore
from recovery.backends.breaker_core import CLOSED, OPEN
from recovery.backends.state_redis import RedisState
from recovery.client.breakers import CircuitBreakerError, breaker_for_target
from recovery.config.loader import load_config
from recovery.engine.breaker_admin import breaker_statuses
from recovery.engine.reconcile import DEFAULT_GRACE_SECONDS

pytestmark = pytest.mark.prefect
REPO = Path(__file__).resolve().parents[2]
LOCK_TTL = 3.0
# Constant 0.3 s between verification attempts, for up to 30 s: the victim is always mid-retry.
PATIENT = (
    "{kind: exponential, base_seconds: 0.3, factor: 1, max_delay_seconds: 0.3, max_attempts: 100,"
    " jitter: none}"
)
# The read-only CLI must not import Prefect (recovery reconcile is one of them).
NO_PREFECT = (
    "import sys; from recovery_cli.main import main; rc = main(sys.argv[1:]); "
    "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')); "
    "sys.exit(f'imported prefect: {bad[:3]}') if bad else sys.exit(rc)"
)
# A recovery process whose run hooks also append each RunDetails to a file (argv[1]).
COUNTING = (
    "import json, sys\n"
    "from recovery.engine.lifecycle import add_hook\n"
    "def count(d):\n"
    "    with open(sys.argv[1], 'a') as f:\n"
    "        f.write(json.dumps({'phase': d.phase, 'state': d.state, 'run_id': d.run_id}) + '\\n')\n"
    "add_hook(count)\n"
    "from recovery_cli.main import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


def write_config(path: Path, audit_url: str, state_url: str, target: str, url: str) -> str:
    path.write_text(
        f"audit_url: {audit_url}\n"
        f"state_url: {state_url}\n"
        "monitor: {interval_seconds: 1, failure_threshold: 1, success_threshold: 2,"
        f" lock_ttl_seconds: {LOCK_TTL}}}\n"
        f"strategy: {PATIENT}\n"
        "targets:\n"
        f"  - {{name: {target}, kind: http, url: '{url}/health', timeout_seconds: 1,"
        " verify: {consecutive_successes: 1, interval_seconds: 0}}\n"
    )
    return str(path)


def start(cli_env: dict[str, str], *args: str, code: str | None = None) -> subprocess.Popen[str]:
    """A real recovery process (``recovery`` CLI, or ``code`` then CLI arguments)."""
    command = [sys.executable, *(["-c", code] if code else ["-m", "recovery_cli.main"]), *args]
    env = {**cli_env, "RECOVERY_TESTING": "0"}  # real retry delays: the run must be mid-retry
    pipe = subprocess.PIPE
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=pipe, stderr=pipe, text=True)


def wait_until_verifying(audit_url: str, target: str, proc: subprocess.Popen[str]) -> RunRecord:
    """Block until the victim is inside test_connectivity's retries with the breaker closed."""
    store = AuditStore(audit_url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the recovery process exited early ({proc.returncode}): {out}\n{err}")
        for run in store.history(target, 5):
            verify = next((s for s in run.steps if s.name == "test_connectivity"), None)
            if run.state == "in_progress" and verify is not None and verify.attempts >= 2:
                return run
        time.sleep(0.1)
    proc.kill()
    pytest.fail("the recovery never reached test_connectivity's retries")


def wait_past_grace(run: RunRecord) -> None:
    """Reconcile leaves rows younger than its grace period alone (a row being written now)."""
    while datetime.now(UTC) < run.started_at + timedelta(seconds=DEFAULT_GRACE_SECONDS + 0.5):
        time.sleep(0.1)


async def failed_events(
    target: str, run_id: str, since: float, settle: float = 4.0, name: str = "recovery.failed"
) -> list[Any]:
    """``recovery.failed`` events of ``run_id``; waits for the first, then ``settle`` seconds more
    so that a duplicate, if any were sent, has arrived too."""
    flt = EventFilter(
        event=EventNameFilter(name=[name]),
        resource=EventResourceFilter(id=[f"recovery.target.{target}"]),
        occurred=EventOccurredFilter(
            since=datetime.fromtimestamp(since - 5, UTC),
            until=datetime.fromtimestamp(time.time() + 3600, UTC),
        ),
    )
    deadline, seen_at = time.monotonic() + 60, None
    async with get_client() as client:
        while True:
            page = await client.read_events(filter=flt, limit=50)
            mine = [e for e in page.events if e.payload.get("run_id") == run_id]
            if mine and seen_at is None:
                seen_at = time.monotonic()
            if (seen_at is not None and time.monotonic() - seen_at >= settle) or time.monotonic() > deadline:
                return mine
            await asyncio.sleep(0.5)


async def test_kill_9_mid_verification_breaker_reopens_row_is_reconciled_pause_clears(
    run_cli: Any,
    cli_env: dict[str, str],
    fault_server: FaultServer,
    redis_url: str,
    sqlite_url: str,
    tmp_path: Path,
) -> None:
    target = f"api-{uuid.uuid4().hex[:6]}"
    path = write_config(tmp_path / "recovery.yaml", sqlite_url, redis_url, target, fault_server.url)
    fault_server.app.set_mode("status:503")
    config = load_config(path)
    breaker, state = breaker_for_target(config, target), RedisState(redis_url)
    # What the monitor did on detection: hold traffic, fail fast.
    state.set_paused(target, "monitor: status 503")
    breaker.trip()
    victim = start(cli_env, "--config", path, "recover", target, "--requested-by", "on-call")
    run = wait_until_verifying(sqlite_url, target, victim)
    assert breaker.snapshot().close_lease_owner == run.id  # closed by reset_circuit_breaker, unverified
    victim.kill()  # SIGKILL: no finally, no hook, nothing
    killed = time.monotonic()
    victim.wait(timeout=30)
    assert breaker.current_state == CLOSED  # the dead run's close is still pending
    [status] = breaker_statuses(config, target)  # what `recovery breaker-status` shows
    assert status.unverified_by == run.id and 0 < (status.reopens_in_seconds or 0) <= LOCK_TTL
    assert state.lock_owner(target) is not None and state.paused(target) == "monitor: status 503"

    # I2: within the lock's TTL the breaker is open again, with no reconcile, no monitor running.
    while breaker.current_state != OPEN:
        assert time.monotonic() - killed < LOCK_TTL + 1.0, "the breaker stayed closed past the lease"
        time.sleep(0.05)
    with pytest.raises(CircuitBreakerError, match="is open"):
        breaker.call(lambda: "the application must fail fast")
    row = AuditStore(sqlite_url).run(run.id)
    assert row is not None and row.state == "in_progress"  # nobody has reconciled yet

    # I1: `recovery reconcile --json` (no Prefect) finishes the row and its running step.
    wait = time.monotonic() + LOCK_TTL + 2
    while state.lock_owner(target) is not None and time.monotonic() < wait:
        time.sleep(0.05)
    wait_past_grace(run)
    done = subprocess.run(
        [sys.executable, "-c", NO_PREFECT, "--config", path, "reconcile", "--json"],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=cli_env,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    [finished] = report["finished"]
    assert (finished["run_id"], finished["error_type"]) == (run.id, "Orphaned")
    assert finished["step"] == "test_connectivity"
    row = AuditStore(sqlite_url).run(run.id)
    assert row is not None and (row.state, row.error_type) == ("failed", "Orphaned")
    steps = {s.name: s.state for s in row.steps}
    assert steps["test_connectivity"] == "failed" and steps["restore_operations"] == "skipped"
    again = run_cli("--config", path, "reconcile")
    assert again.returncode == 0 and "0 of 0 runs in progress" in again.stdout

    # I3: healthy again; the monitor clears "paused" after success_threshold (2) good probes.
    fault_server.app.set_mode("ok")
    cycles = []
    for _ in range(2):
        result = run_cli("--config", path, "monitor", "--once", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        [decision] = json.loads(result.stdout)["targets"]
        cycles.append((decision["successes"], decision["resumed"], state.paused(target)))
    assert cycles == [(1, False, "monitor: status 503"), (2, True, None)]


async def test_monitor_reconciles_a_killed_run_as_crashed_and_reports_it_once(
    cli_env: dict[str, str],
    fault_server: FaultServer,
    redis_url: str,
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = f"api-{uuid.uuid4().hex[:6]}"
    path = write_config(tmp_path / "recovery.yaml", sqlite_url, redis_url, target, fault_server.url)
    fault_server.app.set_mode("status:503")
    since = time.time()
    victim = start(cli_env, "--config", path, "recover", target, "--requested-by", "test")
    run = wait_until_verifying(sqlite_url, target, victim)
    victim.kill()
    victim.wait(timeout=30)
    assert run.flow_run_id is not None
    # What a Prefect worker reports when the process under it vanishes.
    async with get_client() as client:
        crash = Crashed(message="process killed")
        await client.set_flow_run_state(uuid.UUID(run.flow_run_id), crash, force=True)
    state = RedisState(redis_url)
    deadline = time.monotonic() + LOCK_TTL + 2
    while state.lock_owner(target) is not None:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    fault_server.app.set_mode("ok")
    wait_past_grace(run)
    monkeypatch.setenv("RECOVERY_CONFIG", path)  # flows take the config from the worker

    await monitor()  # reconciles first, then probes a healthy target
    row = AuditStore(sqlite_url).run(run.id)
    assert row is not None and (row.state, row.error_type) == ("failed", "Crashed")
    assert "flow run" in (row.error_message or "") and "crashed" in (row.error_message or "")
    await monitor()  # nothing left to reconcile: no second report
    # I5: one recovery.failed for the dead run, from the monitor's reconcile pass.
    [event] = await failed_events(target, run.id, since)
    assert event.payload["error_type"] == "Crashed"


async def test_sigterm_mid_verification_reports_the_end_exactly_once(
    cli_env: dict[str, str], fault_server: FaultServer, redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    """Prefect turns SIGTERM into a crash: the flow's ``finally`` reports the end, then the
    ``on_crashed`` hook runs in the same process. The hooks see it once, Prefect stores one event."""
    target = f"api-{uuid.uuid4().hex[:6]}"
    path = write_config(tmp_path / "recovery.yaml", sqlite_url, redis_url, target, fault_server.url)
    fault_server.app.set_mode("status:503")
    seen = tmp_path / "hooks.jsonl"
    since = time.time()
    args = ("--config", path, "recover", target, "--requested-by", "t")
    victim = start(cli_env, str(seen), *args, code=COUNTING)
    run = wait_until_verifying(sqlite_url, target, victim)
    victim.send_signal(signal.SIGTERM)
    out, err = victim.communicate(timeout=120)
    assert victim.returncode != 0, out + err
    # The runtime cancels the run (Prefect then calls the flow run crashed): the row says how it
    # ended, the hooks heard that once, although on_crashed reported the end a second time.
    row = AuditStore(sqlite_url).run(run.id)
    assert row is not None and row.state in ("failed", "cancelled")
    ends = [json.loads(line) for line in seen.read_text().splitlines() if '"finished"' in line]
    assert ends == [{"phase": "finished", "state": row.state, "run_id": run.id}], out + err
    assert "Running hook 'on_crashed'" in out + err
    assert RedisState(redis_url).lock_owner(target) is None
    assert breaker_for_target(load_config(path), target).current_state == OPEN  # finish re-opened it
    [event] = await failed_events(target, run.id, since)
    assert event.payload["state"] == row.state


async def test_monitor_releases_the_lock_when_begin_fails(
    fault_server: FaultServer, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """I4 with a real fault: the audit database is down AND its spool cannot be written (a file
    stands where the spool directory should be), so the subflow's ``begin()`` refuses after the
    monitor took the target's lock for it. The lock must not wait for its TTL."""
    target = f"api-{uuid.uuid4().hex[:6]}"
    dead_db = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test?connect_timeout=2"
    path = write_config(tmp_path / "recovery.yaml", dead_db, redis_url, target, fault_server.url)
    text = Path(path).read_text().replace(f"lock_ttl_seconds: {LOCK_TTL}", "lock_ttl_seconds: 600")
    (tmp_path / "not-a-dir").write_text("in the way")
    Path(path).write_text(text + f"audit_spool: {tmp_path / 'not-a-dir'}\n")
    fault_server.app.set_mode("status:503")
    monkeypatch.setenv("RECOVERY_CONFIG", path)

    report = await monitor()
    [recovery] = report["recoveries"]
    assert recovery["state"] == "refused"  # no durable record possible: it never acted
    state = RedisState(redis_url)
    assert state.lock_owner(target) is None, "the monitor's lock outlived a recovery that never began"
    assert state.paused(target) == "monitor: status 503"  # still down: the application holds traffic
    # I5 for refusals (one recovery.refused per escalating refusal) is covered by the lifecycle tests.
