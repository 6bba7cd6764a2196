"""Manual takeover and incident de-duplication while the audit PostgreSQL refuses connections
or goes silent (docs/reliability.md): a takeover either happens with a durable record (the
spool) or is refused cleanly with the lock left to the automatic run; an incident's event is
emitted when the audit store cannot say it was already (better twice than never), within a
bound. The state Redis faults of the same paths are in tests/test_new_paths_faults.py.

Real faults: PostgreSQL behind a TcpProxy that is stopped (refused), frozen, or goes silent at
one exact statement (``TcpProxy.fault_at``); an unwritable spool is a regular file; the event is
read back from the session's real Prefect server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from audit_faults import proxied_postgres
from dbcache_services import TcpProxy
from ladder_helpers import events
from test_bounded_calls import _config
from test_new_paths_faults import EMERGENCY, bounded, rows
from test_takeover import _automatic

from flows.signals import _first_report, events_hook
from recovery.audit.records import PlannedStep
from recovery.audit.store import AuditStore
from recovery.config.loader import RecoveryConfig
from recovery.engine.incidents import incident_id
from recovery.engine.lifecycle import Phase, RunDetails
from recovery.engine.runtime import RecoveryRuntime
from recovery.engine.takeover import TAKEN_OVER
from recovery.enums import RunState, RunType
from recovery.errors import RecoveryRefused
from recovery.services import services_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis]
# Seconds, with a 1 s audit timeout: a read cut by the watchdog (1 s) plus a fresh connect (libpq
# waits at least 2 s) is 3 s, measured; a hang would be forever.
BOUND = 10.0


@pytest.fixture
def audit_proxy(pg_url: str) -> Iterator[tuple[str, TcpProxy]]:
    with proxied_postgres(pg_url) as (url, proxy):
        AuditStore(url).history()  # migrated while it answers: the faults hit recoveries, not setup
        yield url, proxy


def fail(proxy: TcpProxy, how: str) -> None:
    proxy.stop() if how == "refused" else proxy.freeze()


def heal(proxy: TcpProxy, how: str) -> None:
    proxy.start() if how == "refused" else proxy.thaw()


def settings(spool: Path) -> dict[str, Any]:
    return {"audit_timeout_seconds": 1, "audit_spool": str(spool)}


def caught_up(config: RecoveryConfig, url: str) -> dict[str, tuple[str, str | None]]:
    """The audit rows of ``api`` once the spool is replayed into the store that is back."""
    audit = services_for(config).audit
    audit.catch_up()
    assert audit.pending() == 0
    return rows(url)


# --- manual takeover ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["refused", "frozen"])
def test_an_emergency_while_the_audit_store_is_down_is_refused_and_the_refusal_spooled(
    how: str, audit_proxy: tuple[str, TcpProxy], redis_url: str, tmp_path: Path
) -> None:
    """Who holds the lock cannot be read, so nothing can be taken over: a clean refusal,
    recorded in the spool, and the automatic run keeps its lock."""
    url, proxy = audit_proxy
    config = _config(redis_url, url, ["api"], **settings(tmp_path / "spool"))
    auto = _automatic(config, "auto-1")
    fail(proxy, how)
    out, took = bounded(lambda: RecoveryRuntime.begin(config, EMERGENCY, run_id="emergency-1"))
    assert took < BOUND, f"took {took:.1f}s"
    assert isinstance(out, RecoveryRefused) and "not taken over" in out.reason, repr(out)
    assert auto.state.lock_owner("api") == auto.owner
    heal(proxy, how)
    refusal = ("refused", "RecoveryRefused")
    assert caught_up(config, url) == {"auto-1": ("in_progress", None), "emergency-1": refusal}


@pytest.mark.parametrize(
    ("statement", "spool_ok", "taken"),
    [
        (b"UPDATE recovery_runs", True, False),  # the takeover's own record: refused, lock kept
        (b"UPDATE recovery_runs", False, False),
        (b"INSERT INTO recovery_runs", True, True),  # the emergency's row: spooled, it goes on
        (b"INSERT INTO recovery_runs", False, False),  # no record anywhere: refused before acting
    ],
)
def test_an_audit_store_going_silent_mid_takeover_never_leaves_it_unrecorded(
    statement: bytes,
    spool_ok: bool,
    taken: bool,
    audit_proxy: tuple[str, TcpProxy],
    redis_url: str,
    tmp_path: Path,
) -> None:
    url, proxy = audit_proxy
    spool = tmp_path / "spool"
    if not spool_ok:
        spool.write_text("a file where the spool directory should be")
    config = _config(redis_url, url, ["api"], **settings(spool))
    auto = _automatic(config, "auto-2")
    proxy.fault_at(statement, "blackhole")
    out, took = bounded(lambda: RecoveryRuntime.begin(config, EMERGENCY, run_id="emergency-2"))
    assert took < BOUND, f"took {took:.1f}s"
    lock = auto.state.lock_owner("api")
    proxy.unblackhole()
    found = caught_up(config, url) if spool_ok else rows(url)
    if taken:
        assert isinstance(out, RecoveryRuntime) and out.took_over is not None, repr(out)
        assert lock == "emergency-2"
        assert found == {"auto-2": ("cancelled", TAKEN_OVER), "emergency-2": ("in_progress", None)}
        out.finish("succeeded")
        return
    assert isinstance(out, RecoveryRefused), repr(out)  # NoDurableRecord is one too
    if statement.startswith(b"UPDATE"):  # not taken over: the automatic run keeps lock and row
        assert lock == auto.owner and found["auto-2"] == ("in_progress", None)
        assert found.get("emergency-2") == (("refused", "RecoveryRefused") if spool_ok else None)
    else:  # taken over and recorded on its row, then refused: the lock is released, not kept
        assert lock is None and found == {"auto-2": ("cancelled", TAKEN_OVER)}


# --- incident de-duplication ----------------------------------------------------------------------


@pytest.mark.prefect
@pytest.mark.parametrize("how", ["refused", "frozen"])
async def test_an_incidents_failure_is_reported_when_the_audit_store_cannot_say_it_was(
    how: str,
    prefect_api: str,
    audit_proxy: tuple[str, TcpProxy],
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, proxy = audit_proxy
    data = {"audit_url": url, "state_url": redis_url, **settings(tmp_path / "spool")}
    data["targets"] = [{"name": "api", "kind": "http", "url": "http://127.0.0.1:9/h"}]
    (tmp_path / "r.yaml").write_text(json.dumps(data))  # JSON is YAML
    monkeypatch.setenv("RECOVERY_CONFIG", str(tmp_path / "r.yaml"))  # what the hook loads
    first = time.time()  # a fresh incident: its event id was never stored
    # A failed run of the incident is audited, but its event never went out (say, Prefect was down).
    audit = AuditStore(url)
    when = datetime.fromtimestamp(first, UTC)
    audit.start_run(run_id="r1", target="api", workflow="w", run_type="automatic", steps=[PlannedStep("a")],
                    first_failure_at=when)  # fmt: skip
    audit.finish_run("r1", "failed", "503")
    second = RunDetails(Phase.FINISHED, "api", "w", RunType.AUTOMATIC, "r2", RunState.FAILED,
                        error="503", first_failure_at=first)  # fmt: skip
    assert _first_report(second) is False, "while the store answers, r2's end is a repeat"
    fail(proxy, how)
    started = time.monotonic()
    await events_hook(second)
    took = time.monotonic() - started
    assert took < BOUND, f"the hook took {took:.1f}s"
    incident = incident_id("api", first, "r2")
    found = [e for e in await events("recovery.failed", "api", first) if e.payload["incident"] == incident]
    assert len(found) == 1, "the store could not say: the failure is reported"
    heal(proxy, how)
