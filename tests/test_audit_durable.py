"""The durable audit facade: what a recovery sees when the audit store is down, the ordering of
spooled and live writes, rejected records, secrets, the config keys and the CLI.

The "down" store here is a real SQLite file in a directory that does not exist yet (every
connection fails: "unable to open database file"); creating the directory brings it back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from audit_faults import dump, spool_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recovery.audit.durable import DurableAudit
from recovery.audit.ops import AuditOp, start_run_op, step_attempt_op, step_finished_op
from recovery.audit.records import AuditRejected, NoDurableRecord, PlannedStep
from recovery.audit.store import AuditStore
from recovery.config.loader import load_config, parse_config
from recovery.engine.runtime import RecoveryRequest, RecoveryRuntime
from recovery.errors import ConfigError, ProbeFailed, RecoveryRefused
from recovery.redact import register_secret
from recovery.reporting.status import collect_status, format_status
from recovery.services import services_for

REPO = Path(__file__).resolve().parents[1]
SECRET = "Sp00l-Secr3t-Value"
STEPS = (PlannedStep("check"), PlannedStep("verify", max_attempts=2))


def down_sqlite(tmp_path: Path) -> tuple[str, Path]:
    """A SQLite URL that cannot be opened until ``directory.mkdir()``."""
    directory = tmp_path / "not-yet"
    return f"sqlite:///{directory / 'audit.db'}", directory


def test_a_recovery_with_no_durable_record_possible_is_refused_before_acting(tmp_path: Path) -> None:
    url, _ = down_sqlite(tmp_path)
    in_the_way = tmp_path / "spool-is-a-file"
    in_the_way.write_text("not a directory")
    config = parse_config(
        {
            "audit_url": url,
            "audit_spool": str(in_the_way),
            "targets": [{"name": "api", "kind": "http", "url": "http://127.0.0.1:9/health"}],
        }
    )
    with pytest.raises(RecoveryRefused) as info:
        RecoveryRuntime.begin(config, RecoveryRequest(target="api", requested_by="test"))
    message = str(info.value)
    assert isinstance(info.value, NoDurableRecord) and info.value.escalate
    assert "\n" not in message
    assert message.startswith(
        "no durable record possible: audit store sqlite:///…/audit.db unavailable "
        f"and spool {in_the_way} not writable: "
    )
    assert services_for(config).state.lock_owner("api") is None, "the lock is given back"


def test_a_recovery_goes_on_while_the_store_is_down_and_its_row_arrives_later(tmp_path: Path) -> None:
    url, directory = down_sqlite(tmp_path)
    config = parse_config(
        {
            "audit_url": url,
            "audit_spool": str(tmp_path / "spool"),
            "targets": [{"name": "api", "kind": "http", "url": "http://127.0.0.1:9/health"}],
        }
    )
    rt = RecoveryRuntime.begin(config, RecoveryRequest(target="api", requested_by="test", reason="drill"))
    rt.finish("cancelled")
    assert services_for(config).audit.pending() == 2
    directory.mkdir()
    record = services_for(config).audit.run(rt.run_id)
    assert record is not None and record.state == "cancelled" and record.reason == "drill"
    assert {s.state for s in record.steps} == {"skipped"}


def test_live_writes_never_overtake_spooled_ones(tmp_path: Path) -> None:
    url, directory = down_sqlite(tmp_path)
    audit = DurableAudit(url, tmp_path / "spool", retry_seconds=0)
    run = audit.start_run(target="api", workflow="wf", run_type="manual", steps=STEPS)
    audit.step_attempt(run, "check", 1)  # spooled: the store is down
    directory.mkdir()
    # Another process is replaying (its lock held): the store answers, yet later writes queue
    # behind the spooled ones instead of overtaking them.
    with audit.spool.replay_lock() as held:
        assert held
        audit.step_finished(run, "check", "succeeded", detail={"ok": True})
        audit.step_attempt(run, "verify", 1)
        audit.step_finished(run, "verify", "failed", ProbeFailed("v1"))
        audit.finish_run(run, "failed", "verify failed")
        assert [r["op"] for r in spool_records(tmp_path / "spool")] == [
            "start_run", "step_attempt", "step_finished", "step_attempt", "step_finished", "finish_run",
        ]  # fmt: skip
    record = audit.run(run)  # the lock is free: the read replays first, in order
    assert record is not None and record.state == "failed"
    assert [(s.state, s.attempts) for s in record.steps] == [("succeeded", 1), ("failed", 1)]
    assert audit.pending() == 0
    later = audit.start_run(target="api", workflow="wf", run_type="manual", steps=STEPS)
    assert audit.pending() == 0 and audit.run(later) is not None, "live again once the spool is empty"


def test_records_the_store_refuses_are_set_aside_and_do_not_block_the_others(tmp_path: Path) -> None:
    url, directory = down_sqlite(tmp_path)
    audit = DurableAudit(url, tmp_path / "spool", retry_seconds=0)
    audit.step_attempt("no-such-run", "check", 1)  # spooled: nobody can tell yet it is unknown
    run = audit.start_run(target="api", workflow="wf", run_type="manual", steps=STEPS)
    audit.finish_run(run, "succeeded")
    directory.mkdir()
    audit.catch_up()
    assert (audit.replayed, audit.rejected, audit.pending()) == (2, 1, 0)
    (entry,) = audit.spool.rejected()
    assert entry["reason"] == "audit step 'check' of run no-such-run not found"
    record = audit.run(run)
    assert record is not None and record.state == "succeeded"
    with pytest.raises(AuditRejected):  # live, the store's "no" is the caller's error
        audit.step_attempt("no-such-run", "check", 1)


def test_secrets_never_reach_the_spool(tmp_path: Path) -> None:
    register_secret(SECRET)
    url, _ = down_sqlite(tmp_path)
    audit = DurableAudit(url, tmp_path / "spool", retry_seconds=0)
    run = audit.start_run(
        target="api", workflow="wf", run_type="manual", steps=STEPS, reason=f"token={SECRET}"
    )
    audit.step_finished(
        run,
        "check",
        "failed",
        RuntimeError(f"connect postgresql://u:{SECRET}@db/x failed"),
        detail={"url": f"redis://:{SECRET}@cache:6379/0", "nested": [{"why": f"password {SECRET}"}]},
    )
    audit.finish_run(run, "failed", f"still failing with {SECRET}")
    audit.refuse(target="api", workflow="wf", run_type="manual", reason=f"api key {SECRET}")
    text = "".join(p.read_text() for p in (tmp_path / "spool").iterdir() if p.suffix == ".jsonl")
    assert len(spool_records(tmp_path / "spool")) == 4 and SECRET not in text


def test_status_shows_records_waiting_in_the_spool(tmp_path: Path) -> None:
    url, directory = down_sqlite(tmp_path)
    config = parse_config(
        {
            "audit_url": url,
            "audit_spool": str(tmp_path / "spool"),
            "targets": [{"name": "api", "kind": "http", "url": "http://127.0.0.1:9/health"}],
        }
    )
    audit = services_for(config).audit
    audit.start_run(target="api", workflow="wf", run_type="manual", steps=STEPS)
    directory.mkdir()
    with audit.spool.replay_lock():  # someone else is replaying: the record is still waiting
        rows = collect_status(config)
        assert [r.as_json()["audit_spool_pending"] for r in rows] == [1]
        assert "audit spool: 1 records not yet replayed" in format_status(rows)[-1]
    rows = collect_status(config)
    assert rows[0].audit_spool_pending == 0 and rows[0].last_recovery is not None


def test_config_keys_and_where_the_spool_lives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "etc" / "recovery.yaml"
    path.parent.mkdir()
    path.write_text("audit_url: sqlite:///x.db\n")
    config = load_config(path)
    assert config.audit_spool == path.parent / ".recovery-spool"
    assert config.audit_timeout_seconds == 5
    path.write_text("audit_url: sqlite:///x.db\naudit_spool: spool\naudit_timeout_seconds: 1.5\n")
    config = load_config(path)
    assert (config.audit_spool, config.audit_timeout_seconds) == (path.parent / "spool", 1.5)
    monkeypatch.chdir(tmp_path)
    assert parse_config({}).audit_spool == tmp_path / ".recovery-spool"
    assert parse_config({"audit_spool": "/var/spool/r"}).audit_spool == Path("/var/spool/r")
    with pytest.raises(ConfigError, match="audit_timeout_seconds"):
        parse_config({"audit_timeout_seconds": 0})
    audit = services_for(load_config(path)).audit
    assert isinstance(audit, DurableAudit)
    assert (audit.spool.directory, audit.timeout_seconds) == (path.parent / "spool", 1.5)


def test_postgres_engines_get_both_timeouts_and_keep_the_url_options() -> None:
    from recovery.audit.db import _postgres_args

    args = _postgres_args("postgresql+psycopg://u@h/db?options=-csearch_path%3Ds1", 2.5)
    assert args == {"connect_timeout": 3, "options": "-csearch_path=s1 -c statement_timeout=2500"}
    assert _postgres_args("postgresql://u@h/db?connect_timeout=9&options=-c statement_timeout=1", 5) == {}


def test_audit_replay_command(tmp_path: Path) -> None:
    url, directory = down_sqlite(tmp_path)
    config = tmp_path / "recovery.yaml"
    config.write_text(f"audit_url: {url}\n")
    DurableAudit(url, tmp_path / ".recovery-spool").start_run(
        target="api", workflow="wf", run_type="manual", steps=STEPS
    )

    def replay() -> subprocess.CompletedProcess[str]:
        code = (
            "import sys; from recovery_cli.main import main; rc = main(sys.argv[1:]); "
            "bad = [m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')]; "
            "sys.exit(f'imported prefect: {bad[:3]}') if bad else sys.exit(rc)"
        )
        return subprocess.run(
            [sys.executable, "-c", code, "--config", str(config), "audit", "replay", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )

    down = replay()
    assert down.returncode == 1, down.stderr
    result = json.loads(down.stdout)
    assert (result["pending"], result["replayed"]) == (1, 0) and "unable to open" in result["error"]
    directory.mkdir()
    up = replay()
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout) | {"spool": None, "store": None} == {
        "spool": None,
        "store": None,
        "replayed": 1,
        "rejected": 0,
        "pending": 0,
        "busy": False,
        "error": None,
    }
    assert len(dump(url)[0]) == 1


# --- the one implementation: ops applied live, one by one, or replayed from the spool, in batches

_stores: dict[Path, tuple[AuditStore, DurableAudit]] = {}


def _pair(base: Path) -> tuple[AuditStore, DurableAudit]:
    """One live store and one replayed store for every example (examples use their own run ids)."""
    if base not in _stores:
        base.mkdir(exist_ok=True)
        replayed = DurableAudit(f"sqlite:///{base / 'replayed.db'}", base / "spool")
        replayed.catch_up()
        _stores[base] = (AuditStore(f"sqlite:///{base / 'live.db'}"), replayed)
    return _stores[base]


def _rows(store: AuditStore, prefix: str) -> Any:
    runs, steps = dump(str(store.engine.url))
    mine = [s for s in steps if s["run_id"].startswith(prefix)]
    return [r for r in runs if r["id"].startswith(prefix)], mine


@st.composite
def op_sequences(draw: st.DrawFn) -> list[AuditOp]:
    """A few runs' ops in any order: steps before their run, after its end, attempts repeated."""
    at = datetime(2030, 1, 1, tzinfo=UTC)
    starts = [
        start_run_op(
            run_id=f"r{r}", now=at, target="api", workflow="wf", run_type="manual", steps=STEPS,
            requested_by=None, reason=None, detected_reason=None, first_failure_at=None,
            detected_at=None, dry_run=False, flow_run_id=None, state="in_progress",
        )
        for r in range(draw(st.integers(1, 3)))
    ]  # fmt: skip
    ops: list[AuditOp] = []
    for n in range(draw(st.integers(0, 25))):
        run = f"r{draw(st.integers(0, 3))}"
        step = draw(st.sampled_from(["check", "verify"]))
        kind = draw(st.sampled_from(["attempt", "finished", "finish", "flow"]))
        now = datetime(2030, 1, 1, 0, 0, n + 1, tzinfo=UTC)
        if kind == "attempt":
            ops.append(step_attempt_op(run, step, draw(st.integers(1, 3)), now))
        elif kind == "finished":
            detail = draw(st.sampled_from([None, {"n": n}]))
            ops.append(step_finished_op(run, step, "succeeded", None, detail, now))
        elif kind == "finish":
            data = {"state": "failed", "has_error": True, "error_type": "E", "error_message": str(n)}
            ops.append(AuditOp("finish_run", run, now, data))
        else:
            ops.append(AuditOp("set_flow_run_id", run, now, {"flow_run_id": f"f{n}"}))
    return draw(st.permutations([*starts[1:], *ops]).map(lambda rest: [starts[0], *rest]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=op_sequences(), cut=st.integers(0, 30))
def test_replay_gives_the_rows_of_live_writes_and_again_from_any_record(
    tmp_path_factory: pytest.TempPathFactory, ops: list[AuditOp], cut: int
) -> None:
    live, replayed = _pair(tmp_path_factory.getbasetemp() / "fold")
    prefix = uuid.uuid4().hex[:8]
    ops = [dataclasses.replace(op, run_id=f"{prefix}-{op.run_id}") for op in ops]
    for op in ops:
        with contextlib.suppress(AuditRejected):  # a run that does not exist (yet): set aside on replay
            live._write(op)
    for op in ops:
        replayed.spool.append(op)
    saved = replayed.spool.data_path.read_bytes()
    assert replayed.replay().pending == 0
    assert _rows(replayed, prefix) == _rows(live, prefix)
    # A crash-lagged cursor: the records from ``cut`` on are applied a second time.
    replayed.spool.data_path.write_bytes(saved)
    lines = saved.splitlines(keepends=True)
    replayed.spool.set_offset(sum(len(line) for line in lines[: min(cut, len(lines))]))
    replayed.replay()
    assert _rows(replayed, prefix) == _rows(live, prefix)
