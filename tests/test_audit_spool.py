"""The audit spool under real faults: PostgreSQL refused (proxy stopped) or silent (proxy frozen),
a replay killed with SIGKILL, four processes spooling at once, a spool that hits its size limit."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy
from audit_faults import dump, proxied_postgres, spool_records, spool_runs
from dbcache_services import TcpProxy

from recovery.audit.durable import DurableAudit
from recovery.audit.records import AuditUnavailable, PlannedStep
from recovery.audit.spool import AuditSpool, store_key
from recovery.errors import ProbeFailed
from recovery.redact import redact_url

pytestmark = pytest.mark.postgres

STEPS = (PlannedStep("check"), PlannedStep("verify", max_attempts=3), PlannedStep("resume", optional=True))


@pytest.fixture
def proxied(pg_url: str) -> Iterator[tuple[str, TcpProxy]]:
    with proxied_postgres(pg_url) as pair:
        yield pair


def test_writes_are_spooled_in_order_and_replayed_with_their_own_times(
    proxied: tuple[str, TcpProxy], tmp_path: Path
) -> None:
    url, proxy = proxied
    spool = tmp_path / "spool"
    audit = DurableAudit(url, spool, timeout_seconds=2, retry_seconds=0)
    run = audit.start_run(target="api", workflow="wf", run_type="automatic", steps=STEPS)  # live
    assert not spool.exists(), "nothing is spooled while the store answers"

    proxy.stop()  # connection refused from now on: the recovery goes on, its writes are spooled
    audit.step_attempt(run, "check", 1)
    audit.step_finished(run, "check", "succeeded", detail={"healthy": False})
    audit.step_attempt(run, "verify", 1)
    time.sleep(0.05)
    audit.step_attempt(run, "verify", 2)
    audit.step_finished(run, "verify", "failed", ProbeFailed("verification probe 1/1 failed"))
    audit.finish_run(run, "failed", ProbeFailed("step verify failed"))
    refused = audit.refuse(target="api", workflow="wf", run_type="manual", reason="lock held", run_id="r-2")
    later = audit.start_run(target="db", workflow="wf2", run_type="manual", steps=STEPS[:1])
    audit.set_flow_run_id(later, "flow-9")

    records = spool_records(spool)
    assert [r["op"] for r in records] == [
        "step_attempt", "step_finished", "step_attempt", "step_attempt", "step_finished",
        "finish_run", "refuse", "start_run", "set_flow_run_id",
    ]  # fmt: skip
    assert len({r["id"] for r in records}) == len(records), "every record has its own id"
    assert audit.pending() == len(records)
    with pytest.raises(AuditUnavailable):  # reads go to the store: down means an error, not a guess
        audit.history()

    proxy.start()
    record = audit.run(run)  # a read replays the spool first
    assert audit.pending() == 0 and spool_records(spool) == []
    assert record is not None and record.state == "failed" and record.error_type == "ProbeFailed"
    check, verify, resume = record.steps
    assert (check.state, check.attempts, check.detail) == ("succeeded", 1, {"healthy": False})
    assert (verify.state, verify.attempts, verify.error_message) == (
        "failed",
        2,
        "verification probe 1/1 failed",
    )
    assert resume.state == "skipped"
    # The times are those of the spooled writes, not of the replay.
    assert check.started_at == datetime.fromisoformat(records[0]["at"])
    assert verify.duration_seconds is not None and verify.duration_seconds >= 0.05
    assert record.finished_at == datetime.fromisoformat(records[5]["at"])
    refusal = audit.run(refused)
    assert refusal is not None and (refusal.state, refusal.error_message) == ("refused", "lock held")
    flow = audit.run(later)
    assert flow is not None and (flow.flow_run_id, flow.state) == ("flow-9", "in_progress")


def _spool_while_down(url: str, proxy: TcpProxy, spool: Path, runs: int, prefix: str = "run") -> None:
    proxy.stop()
    spool_runs(url, str(spool), prefix, runs)
    proxy.start()


def test_replaying_twice_is_a_no_op_and_a_lagging_cursor_is_harmless(
    proxied: tuple[str, TcpProxy], tmp_path: Path
) -> None:
    url, proxy = proxied
    spool = tmp_path / "spool"
    _spool_while_down(url, proxy, spool, 20)
    (data,) = spool.glob("audit-*.jsonl")
    saved = data.read_bytes()

    audit = DurableAudit(url, spool, timeout_seconds=2, retry_seconds=0)  # building it replays...
    audit.catch_up()  # ...in the background: wait for it
    assert audit.replayed == 80 and audit.pending() == 0
    first = dump(url)
    assert len(first[0]) == 20 and all(r["state"] == "succeeded" for r in first[0])

    # The whole spool again (a copy taken before the replay), then from the middle.
    data.write_bytes(saved)
    audit.spool.set_offset(0)
    assert audit.replay().replayed == 80
    assert dump(url) == first
    data.write_bytes(saved)
    audit.spool.set_offset(sum(len(x) + 1 for x in saved.decode().splitlines()[:37]))
    assert audit.replay().replayed == 43
    assert dump(url) == first


def test_a_replay_killed_midway_resumes_without_duplicates(
    proxied: tuple[str, TcpProxy], tmp_path: Path
) -> None:
    url, proxy = proxied
    spool = tmp_path / "spool"
    _spool_while_down(url, proxy, spool, 300)
    engine = sqlalchemy.create_engine(url)
    script = textwrap.dedent(
        f"""
        import recovery.audit.durable as durable
        durable.REPLAY_BATCH = 4  # many small batches: the kill lands between two of them
        durable.DurableAudit({url!r}, {str(spool)!r}, timeout_seconds=2).catch_up()
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script])
    try:
        seen = 0
        deadline = time.monotonic() + 30
        while seen == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
            try:
                with engine.connect() as conn:
                    seen = conn.execute(sqlalchemy.text("SELECT count(*) FROM recovery_runs")).scalar_one()
            except sqlalchemy.exc.ProgrammingError:
                pass  # the child is still creating the schema
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(10)
        engine.dispose()
    partial = dump(url)[0]
    assert 0 < len(partial) < 300, "killed in the middle of the replay"
    cursor = AuditSpool(spool, store_key(redact_url(url)))
    assert 0 < cursor.pending_count() < 1200

    resumed = DurableAudit(url, spool, timeout_seconds=2, retry_seconds=0)
    resumed.catch_up()
    assert resumed.pending() == 0 and resumed.rejected == 0
    runs, steps = dump(url)
    assert [r["id"] for r in runs] == [f"run-{i:04d}" for i in range(300)]
    assert all(r["state"] == "succeeded" and r["finished_at"] is not None for r in runs)
    assert len(steps) == 300 and all(s["state"] == "succeeded" and s["attempts"] == 1 for s in steps)


def test_processes_spooling_at_once_lose_and_tear_nothing(
    proxied: tuple[str, TcpProxy], tmp_path: Path
) -> None:
    url, proxy = proxied
    spool = tmp_path / "spool"
    proxy.stop()
    ctx = multiprocessing.get_context("spawn")
    children = [ctx.Process(target=spool_runs, args=(url, str(spool), f"p{n}", 30)) for n in range(4)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    records = spool_records(spool)  # json.loads of every line: a torn line would raise here
    assert len(records) == 4 * 30 * 4 and len({r["id"] for r in records}) == len(records)
    for n in range(4):
        mine = [r["run_id"] for r in records if r["run_id"].startswith(f"p{n}-") and r["op"] == "start_run"]
        assert mine == sorted(mine), "each process's records keep its order"

    proxy.start()
    audit = DurableAudit(url, spool, timeout_seconds=2, retry_seconds=0)
    audit.catch_up()
    assert audit.pending() == 0 and audit.replayed == 4 * 30 * 4
    runs, steps = dump(url)
    assert len(runs) == 120 and all(r["state"] == "succeeded" for r in runs)
    assert len(steps) == 120 and {s["state"] for s in steps} == {"succeeded"}


def test_a_frozen_store_fails_a_write_within_the_bound_and_it_is_spooled(
    proxied: tuple[str, TcpProxy], tmp_path: Path
) -> None:
    url, proxy = proxied
    audit = DurableAudit(url, tmp_path / "spool", timeout_seconds=2, retry_seconds=30)
    run = audit.start_run(target="api", workflow="wf", run_type="manual", steps=STEPS)
    proxy.freeze()  # accepts, never answers: only the client-side bound can end the wait
    started = time.monotonic()
    audit.step_attempt(run, "check", 1)
    stalled = time.monotonic() - started
    assert 1.9 < stalled < 3.0, stalled
    assert audit.pending() == 1 and "no answer within 2s" in (audit.last_error or "")
    started = time.monotonic()
    audit.step_finished(run, "check", "succeeded")  # in the retry pause: straight to the spool
    assert time.monotonic() - started < 0.2 and audit.pending() == 2
    # A process that starts while the store is frozen is bounded too (connect timeout).
    started = time.monotonic()
    fresh = DurableAudit(url, tmp_path / "spool", timeout_seconds=2)
    fresh.catch_up()
    assert fresh.last_error and time.monotonic() - started < 3.0

    proxy.thaw()  # held bytes are delivered late now: the replay must still end right
    assert fresh.replay().pending == 0
    record = fresh.run(run)
    assert record is not None and record.steps[0].state == "succeeded" and record.steps[0].attempts == 1


DISK_FULL = """
import json, resource, signal, sys
from recovery.audit.durable import DurableAudit
from recovery.audit.records import NoDurableRecord
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))  # the spool's "disk" holds ~1.5 kB
audit = DurableAudit(sys.argv[1], sys.argv[2], timeout_seconds=2, retry_seconds=0)
written = 0
try:
    for i in range(100):
        audit.start_run(run_id=f"r{i}", target="api", workflow="wf", run_type="manual", steps=[])
        written += 1
except NoDurableRecord as exc:
    print(json.dumps({"written": written, "error": str(exc), "refused": exc.escalate}))
"""


def test_a_full_spool_refuses_with_one_line_and_leaves_no_torn_record(
    proxied: tuple[str, TcpProxy], tmp_path: Path
) -> None:
    url, proxy = proxied
    proxy.stop()
    spool = tmp_path / "spool"
    out = subprocess.run(
        [sys.executable, "-c", DISK_FULL, url, str(spool)], capture_output=True, text=True, timeout=60
    )
    result = json.loads(out.stdout)
    assert 0 < result["written"] < 100 and result["refused"]
    assert "\n" not in result["error"]
    assert result["error"].startswith(
        # Redacted to scheme://host:port (docs/security.md).
        f"no durable record possible: audit store postgresql+psycopg://***@127.0.0.1:{proxy.port}/***"
    )
    assert f"unavailable and spool {spool} not writable: " in result["error"]
    assert "File too large" in result["error"]
    assert len(spool_records(spool)) == result["written"], "the failed write was cut back"
    shutil.rmtree(spool)


def test_postgres_engines_are_bounded_on_the_server_side_too(pg_url: str) -> None:
    from sqlalchemy import text

    from recovery.audit.db import get_engine

    with get_engine(pg_url, 2.5).connect() as conn:
        assert conn.execute(text("SHOW statement_timeout")).scalar() == "2500ms"
        assert str(conn.execute(text("SHOW search_path")).scalar()).startswith("t_"), "URL options kept"
