"""Issue 6 stats: a scripted timeline of failures and recoveries, written through AuditStore with
controlled timestamps, must come back from ``recovery stats --json`` with the counts, rates,
durations and MTTD/MTTR that this test computes on its own from the timeline.

Real SQLite and PostgreSQL; the CLI runs in a subprocess (it must not import Prefect).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from recovery.audit.store import AuditStore
from recovery.errors import ConfigError, IntegrityCheckFailed, ProbeFailed
from recovery.reporting import stats as stats_module
from recovery.reporting.stats import (
    GroupStats,
    LastFailure,
    StatsReport,
    compute_stats,
    parse_window,
)
from recovery.reporting.unaudited import UnauditedRun, merge_unaudited

CLI = [sys.executable, "-m", "recovery_cli.main"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def audit_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


@dataclass
class Run:
    """One scripted run: offsets are seconds relative to the incident start (``base``)."""

    target: str
    workflow: str
    base: datetime
    state: str  # final state, or "in_progress"
    run_type: str = "automatic"
    first_failure: float | None = 0.0  # None: a manual run, no failed probe behind it
    detected: float | None = None
    started: float = 0.0
    finished: float | None = None
    error: BaseException | str | None = None
    error_type: str | None = None
    dry_run: bool = False
    ids: list[str] = field(default_factory=list)

    def at(self, offset: float | None) -> datetime | None:
        return None if offset is None else self.base + timedelta(seconds=offset)

    def error_name(self) -> str:
        """The error type the audit records for this run ("" for none)."""
        if self.state == "refused":
            return "RecoveryRefused"
        if self.error_type:
            return self.error_type
        if isinstance(self.error, BaseException):
            return type(self.error).__name__
        return "Error" if self.error else ""


def ms(dt: datetime) -> datetime:
    """Whole milliseconds: SQLite's julianday() resolution, so both backends are exact."""
    return dt.replace(microsecond=dt.microsecond // 1000 * 1000)


def timeline(now: datetime) -> list[Run]:
    h = timedelta(hours=1)
    api, db = ("payments-api", "api-failure-recovery"), ("orders-db", "database-recovery")
    incident_a = ms(now - 5 * h)
    return [
        # Incident A: detected after 60 s; the first recovery fails, the second one heals it.
        Run(*api, incident_a, "failed", detected=60, started=61, finished=91, error=ProbeFailed("still 503")),
        Run(*api, incident_a, "succeeded", detected=150, started=151, finished=196.25),
        # Incident B: detected after 30 s, healed 50.5 s after the first failed probe.
        Run(*api, ms(now - 3 * h), "succeeded", detected=30, started=30.5, finished=50.5),
        # A manual recovery: no failed probe behind it, so it is not part of MTTD/MTTR.
        Run(*api, ms(now - 2 * h), "succeeded", run_type="manual", first_failure=None, finished=12.25),
        # Refused (lock held), a dry run (excluded from stats), and a run outside the window.
        Run(*api, ms(now - 1 * h), "refused", run_type="manual", first_failure=None, error="lock held"),
        Run(*api, ms(now - 1 * h), "succeeded", run_type="manual", first_failure=None, dry_run=True),
        Run(*api, ms(now - 30 * h), "failed", detected=5, started=6, finished=7, error=ProbeFailed("old")),
        # Incident C: detected after 10 s, the recovery is cancelled: MTTD counts, MTTR does not.
        Run(*api, ms(now - 1.5 * h), "cancelled", detected=10, started=10, finished=15,
            error="flow run cancelled", error_type="FlowCancelled"),
        # Incident D: still being recovered.
        Run(*api, ms(now - timedelta(minutes=10)), "in_progress", detected=20, started=20.5),
        # Another target: one failed database recovery.
        Run(*db, ms(now - 4 * h), "failed", detected=45, started=46, finished=106.5,
            error=IntegrityCheckFailed("canary mismatch")),
    ]  # fmt: skip


def write(store: AuditStore, runs: list[Run]) -> None:
    for run in runs:
        started = run.at(run.started)
        assert started is not None
        if run.state == "refused":
            run.ids.append(
                store.refuse(
                    target=run.target,
                    workflow=run.workflow,
                    run_type=run.run_type,
                    reason=str(run.error),
                    now=started,
                )
            )
            continue
        run_id = store.start_run(
            target=run.target,
            workflow=run.workflow,
            run_type=run.run_type,
            steps=(),
            first_failure_at=run.at(run.first_failure),
            detected_at=run.at(run.detected),
            dry_run=run.dry_run,
            state="succeeded" if run.dry_run else "in_progress",
            now=started,
        )
        run.ids.append(run_id)
        if run.state != "in_progress" and not run.dry_run:
            store.finish_run(
                run_id, run.state, run.error, error_type=run.error_type, now=run.at(run.finished)
            )


def percentile(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def expected(runs: list[Run], since: datetime) -> list[dict[str, Any]]:
    """The stats, computed here from the timeline, independently of the SQL."""
    out = []
    keys = sorted({(r.target, r.workflow) for r in runs})
    for target, workflow in keys:
        group = [
            r
            for r in runs
            if (r.target, r.workflow) == (target, workflow) and not r.dry_run and r.at(r.started) >= since
        ]
        if not group:
            continue
        count = {s: sum(r.state == s for r in group) for s in ("succeeded", "failed", "cancelled", "refused")}
        done = [r for r in group if r.state in ("succeeded", "failed", "cancelled")]
        durations = sorted((r.finished or 0) - r.started for r in done)
        incidents: dict[datetime, list[Run]] = {}
        for r in group:
            if r.first_failure is not None:
                incidents.setdefault(r.at(r.first_failure), []).append(r)
        ttd = [
            min(x.detected for x in rs if x.detected is not None) - rs[0].first_failure
            for rs in incidents.values()
        ]
        ttr = [
            min(x.finished for x in rs if x.state == "succeeded") - rs[0].first_failure
            for rs in incidents.values()
            if any(x.state == "succeeded" for x in rs)
        ]
        errors: dict[str, int] = {}
        for r in group:
            if r.error_name():
                errors[r.error_name()] = errors.get(r.error_name(), 0) + 1
        failed = sorted((r for r in group if r.state == "failed"), key=lambda r: r.finished or 0)
        last = failed[-1] if failed else None
        attempted = count["succeeded"] + count["failed"] + count["cancelled"]
        out.append(
            {
                "target": target,
                "workflow": workflow,
                "runs": len(group),
                **count,
                "success_rate": count["succeeded"] / attempted if attempted else None,
                "duration_p50_seconds": percentile(durations, 50),
                "duration_p95_seconds": percentile(durations, 95),
                "duration_max_seconds": max(durations) if durations else None,
                "mttd_seconds": statistics.mean(ttd) if ttd else None,
                "mttr_seconds": statistics.mean(ttr) if ttr else None,
                "error_types": errors,
                "last_failure": None
                if last is None
                else {
                    "at": last.at(last.finished).isoformat(),
                    "run_id": last.ids[0],
                    "error_type": type(last.error).__name__,
                    "error_message": str(last.error),
                },
            }
        )
    return out


def assert_stats(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> None:
    assert [(g["target"], g["workflow"]) for g in got] == [(w["target"], w["workflow"]) for w in want]
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(w), "exactly the documented fields"
        for key, value in w.items():
            if isinstance(value, float):
                assert g[key] == pytest.approx(value, abs=1e-3), (g["target"], key)
            else:
                assert g[key] == value, (g["target"], key)


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The probe: `recovery stats` must answer without importing Prefect (read-only command).
    code = (
        "import sys; from recovery_cli.main import main; rc = main(sys.argv[1:]); "
        "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.')); "
        "sys.exit(f'imported prefect: {bad[:3]}') if bad else sys.exit(rc)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_stats_json_matches_the_timeline(audit_url: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    runs = timeline(now)
    write(AuditStore(audit_url), runs)
    config = tmp_path / "recovery.yaml"
    config.write_text(f"audit_url: {audit_url}\n")

    result = run_cli(config, "stats", "--since", "24h", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    got = json.loads(result.stdout)
    want = expected(runs, now - timedelta(hours=24))
    assert_stats(got, want)

    # Spot-check the independent computation against the story told by the timeline.
    api = got[1]
    assert api["target"] == "payments-api"
    assert (api["runs"], api["succeeded"], api["failed"], api["cancelled"], api["refused"]) == (7, 3, 1, 1, 1)
    assert api["success_rate"] == pytest.approx(3 / 5)
    assert api["mttd_seconds"] == pytest.approx((60 + 30 + 10 + 20) / 4)  # incidents A, B, C, D
    assert api["mttr_seconds"] == pytest.approx((196.25 + 50.5) / 2)  # A (second run), B
    assert api["duration_max_seconds"] == pytest.approx(45.25)
    assert api["error_types"] == {"ProbeFailed": 1, "FlowCancelled": 1, "RecoveryRefused": 1}
    assert got[0]["last_failure"]["error_type"] == "IntegrityCheckFailed"

    # A wider window takes the old run in; the human-readable table names both targets.
    wide = json.loads(run_cli(config, "stats", "--since", "2d", "--json").stdout)
    assert_stats(wide, expected(runs, now - timedelta(days=2)))
    text = run_cli(config, "stats")
    assert text.returncode == 0 and "payments-api" in text.stdout and "orders-db" in text.stdout


def test_stats_empty_window_and_bad_since(sqlite_url: str, tmp_path: Path) -> None:
    config = tmp_path / "recovery.yaml"
    config.write_text(f"audit_url: {sqlite_url}\n")
    result = run_cli(config, "stats", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    # `recovery status` is read-only too: no Prefect import; never-probed targets are "unknown".
    config.write_text(
        f"audit_url: {sqlite_url}\ntargets: [{{name: a, kind: http, url: 'http://127.0.0.1:9/h'}}]\n"
    )
    status = run_cli(config, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert [(r["target"], r["health"], r["last_recovery"]) for r in json.loads(status.stdout)] == [
        ("a", "unknown", None)
    ]
    bad = run_cli(config, "stats", "--since", "yesterday")
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        == "recovery: error: --since: expected a duration like 30m, 24h or 7d, got 'yesterday'"
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("24h", 86400), ("7d", 604800), ("1.5h", 5400), ("2w", 1209600)],
)
def test_parse_window(text: str, seconds: float) -> None:
    assert parse_window(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "24", "0h", "-1h", "h", "1y"])
def test_parse_window_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_window(text)


@pytest.mark.parametrize("small_window", [5000, 0], ids=["ranking-pass", "index-walk"])
def test_percentiles_of_one_and_many_runs(
    audit_url: str, small_window: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both SQLite percentile paths (and PostgreSQL's percentile_cont) agree with statistics."""
    monkeypatch.setattr(stats_module, "SMALL_WINDOW", small_window)
    store = AuditStore(audit_url)
    now = ms(datetime.now(UTC))
    durations = [3.0, 1.0, 4.0, 1.5, 9.0, 2.5, 6.0]
    for i, d in enumerate(durations):
        rid = store.start_run(
            target="many", workflow="w", run_type="manual", steps=(), now=now - timedelta(minutes=i)
        )
        store.finish_run(rid, "succeeded", now=now - timedelta(minutes=i) + timedelta(seconds=d))
    rid = store.start_run(target="one", workflow="w", run_type="manual", steps=(), now=now)
    store.finish_run(rid, "failed", "boom", now=now + timedelta(seconds=2))
    report = compute_stats(store, now - timedelta(hours=1), now + timedelta(minutes=1))
    many, one = report.groups
    assert many.duration_p50_seconds == pytest.approx(statistics.median(durations))
    assert many.duration_p95_seconds == pytest.approx(
        statistics.quantiles(durations, n=100, method="inclusive")[94]
    )
    assert (one.duration_p50_seconds, one.duration_p95_seconds, one.duration_max_seconds) == (2.0, 2.0, 2.0)
    assert one.success_rate == 0.0 and one.mttd_seconds is None and one.mttr_seconds is None


def test_merge_unaudited_counts_crashes_as_failed() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    report = StatsReport(
        t0,
        t0 + timedelta(days=1),
        (
            GroupStats(
                "api",
                "api-failure-recovery",
                runs=4,
                succeeded=3,
                failed=1,
                error_types={"ProbeFailed": 1},
                last_failure=LastFailure(t0 + timedelta(hours=1), "r1", "ProbeFailed", "503"),
            ),
        ),
    )
    crashed = [
        UnauditedRun(
            "f1", "api", "api-failure-recovery", "failed", t0 + timedelta(hours=2), "FlowCrashed", "OOM"
        ),
        UnauditedRun("f2", "db", "database-recovery", "cancelled", t0 + timedelta(hours=3), "FlowCancelled"),
    ]
    merged = merge_unaudited(report, crashed)
    api, db = merged.groups
    assert (api.runs, api.succeeded, api.failed, api.unaudited) == (5, 3, 2, 1)
    assert api.success_rate == pytest.approx(3 / 5)
    assert api.error_types == {"ProbeFailed": 1, "FlowCrashed": 1}
    assert api.last_failure == LastFailure(t0 + timedelta(hours=2), "f1", "FlowCrashed", "OOM")
    assert (db.runs, db.cancelled, db.failed, db.success_rate, db.last_failure) == (1, 1, 0, 0.0, None)
    assert report.groups[0].runs == 4, "pure: the input report is unchanged"
    with pytest.raises(ValueError):
        merge_unaudited(report, [UnauditedRun("x", "api", "w", "succeeded", t0, "?")])
