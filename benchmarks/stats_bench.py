"""How fast is ``recovery stats`` on 100,000 audit rows, on SQLite and PostgreSQL?

    python benchmarks/stats_bench.py [--rows 100000] [--repeat 5] [--backends sqlite,postgres]
                                     [--pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

Fills a fresh audit store (SQLite file in a temp dir; a fresh PostgreSQL schema, dropped after)
with ``--rows`` runs over 30 days: 20 targets x 3 workflows, 80% succeeded, 10% failed, 3%
cancelled, 5% refused, 2% in progress, 70% automatic with first_failure_at/detected_at, one in
ten outages needing a second run. Then, for a 24 h window and for the whole 30 days, it times:

    floor     ``SELECT count(*)`` over the window: one pass over the rows, no aggregation; what
              any stats query has to pay at least
    stats     ``recovery.reporting.stats.compute_stats``: every number of ``recovery stats`` (5 SQL queries)
    naive     (baseline) fetch the window's rows into Python and compute the same numbers there,
              the obvious implementation without SQL aggregation

Each cell is the best of ``--repeat`` runs after one warm-up, wall-clock seconds.
Goal: stats < 1 s on 100,000 rows. Exit code 0 whether or not the goal is met (the table says).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recovery.audit import db as audit_store
from recovery.audit.models import RecoveryRun
from recovery.audit.sqlfuncs import unindexed
from recovery.audit.store import AuditStore
from recovery.reporting.stats import compute_stats

GOAL_SECONDS = 1.0
DAYS = 30
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def fake_rows(n: int, now: datetime, seed: int = 7) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    targets = [f"api-{i:02d}" for i in range(20)]
    workflows = ["api-failure-recovery", "database-recovery", "cache-recovery"]
    states = ["succeeded"] * 80 + ["failed"] * 10 + ["cancelled"] * 3 + ["refused"] * 5 + ["in_progress"] * 2
    errors = ["ProbeFailed", "StateUnavailable", "PermanentError", "FlowCrashed"]
    previous: dict[str, Any] | None = None
    for _ in range(n):
        started = now - timedelta(seconds=rng.uniform(0, DAYS * 86400))
        target, workflow = rng.choice(targets), rng.choice(workflows)
        state = rng.choice(states)
        automatic = rng.random() < 0.7
        first = detected = None
        if automatic:
            first = started - timedelta(seconds=rng.uniform(30, 120))
            detected = started - timedelta(seconds=rng.uniform(0, 5))
            follow_up = previous is not None and previous["first_failure_at"] and previous["finished_at"]
            if follow_up and rng.random() < 0.1:  # a second run of the same outage, after the first
                assert previous is not None
                target, workflow = previous["target"], previous["workflow"]
                first = previous["first_failure_at"]
                started = previous["finished_at"] + timedelta(seconds=rng.uniform(30, 90))
                detected = started - timedelta(seconds=rng.uniform(0, 5))
        duration = None if state == "in_progress" else (0.0 if state == "refused" else rng.uniform(1, 300))
        error = rng.choice(errors) if state in ("failed", "cancelled") else None
        row = {
            "id": str(uuid.uuid4()),
            "target": target,
            "workflow": workflow,
            "type": "automatic" if automatic else "manual",
            "state": state,
            "dry_run": False,
            "first_failure_at": first,
            "detected_at": detected,
            "started_at": started,
            "finished_at": started + timedelta(seconds=duration) if duration is not None else None,
            "duration_seconds": duration,
            "error_type": "RecoveryRefused" if state == "refused" else error,
            "error_message": f"{error}: simulated" if error else None,
            "flow_run_id": None,
        }
        previous = row
        yield row


def fill(store: AuditStore, n: int, now: datetime) -> None:
    rows = list(fake_rows(n, now))
    with store.engine.begin() as conn:
        for i in range(0, len(rows), 10_000):
            conn.execute(insert(RecoveryRun), rows[i : i + 10_000])
    if store.engine.dialect.name == "postgresql":
        # What autovacuum does to a table that grew this much: statistics and the visibility
        # map that index-only scans need.
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sqlalchemy.text("VACUUM ANALYZE recovery_runs"))


def floor_query(store: AuditStore, since: datetime, now: datetime) -> None:
    r = RecoveryRun
    started = unindexed(r.started_at)  # the same access path as the stats queries
    with store.engine.connect() as conn:
        query = select(func.count(r.duration_seconds))
        conn.execute(query.where(started >= since, started < now, r.dry_run.is_(False))).scalar()


def naive_python(store: AuditStore, since: datetime, now: datetime) -> None:
    """The same numbers computed in Python from every row of the window."""
    r = RecoveryRun
    query = select(r).where(r.started_at >= since, r.started_at < now, r.dry_run.is_(False))
    groups: dict[tuple[str, str], list[RecoveryRun]] = defaultdict(list)
    with sqlalchemy.orm.Session(store.engine) as session:
        for run in session.scalars(query):
            groups[(run.target, run.workflow)].append(run)
    for runs in groups.values():
        finished = [x for x in runs if x.state in ("succeeded", "failed", "cancelled")]
        durations = sorted(x.duration_seconds for x in finished)
        if len(durations) > 1:
            statistics.quantiles(durations, n=100, method="inclusive")
        incidents: dict[Any, list[RecoveryRun]] = defaultdict(list)
        for x in runs:
            if x.first_failure_at is not None:
                incidents[x.first_failure_at].append(x)
        for first, xs in incidents.items():
            detected = [x.detected_at for x in xs if x.detected_at]
            if detected:
                _ = (min(detected) - first).total_seconds()
        errors: dict[str, int] = defaultdict(int)
        for x in runs:
            if x.error_type:
                errors[x.error_type] += 1


def best_of(fn: Callable[[], None], repeat: int) -> float:
    fn()  # warm-up: plans, caches, connections
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@contextmanager
def backend(name: str, pg_url: str) -> Iterator[str]:
    if name == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{Path(tmp) / 'audit.db'}"
            yield url
            engine = audit_store._engines.pop(url, None)
            if engine is not None:
                engine.dispose()
        return
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    url = f"{pg_url}?options=-csearch_path%3D{schema}"
    try:
        yield url
    finally:
        engine = audit_store._engines.pop(url, None)
        if engine is not None:
            engine.dispose()
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--pg-url", default=PG_URL)
    args = parser.parse_args(argv)
    now = datetime.now(UTC)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{args.rows:,} audit rows over {DAYS} days; best of {args.repeat}; python {sys.version.split()[0]}; "
        f"{os.cpu_count()} CPUs, load average {load}"
    )
    header = (
        f"{'backend':<8} | {'window':>6} | {'rows':>7} | {'floor s':>7} | {'stats s':>7} | "
        f"{'naive s':>7} | {'naive/stats':>11} | goal < {GOAL_SECONDS:g} s"
    )
    print(header)
    print("-" * len(header))
    for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
        with backend(name, args.pg_url) as url:
            store = AuditStore(url)
            t0 = time.perf_counter()
            fill(store, args.rows, now)
            loading = time.perf_counter() - t0
            for label, span in (("24h", timedelta(hours=24)), (f"{DAYS}d", timedelta(days=DAYS + 1))):
                since = now - span
                report = compute_stats(store, since, now)
                rows = sum(g.runs for g in report.groups)
                floor = best_of(lambda s=since, a=store: floor_query(a, s, now), args.repeat)
                stats = best_of(lambda s=since, a=store: compute_stats(a, s, now) and None, args.repeat)
                naive = best_of(lambda s=since, a=store: naive_python(a, s, now), max(1, args.repeat // 2))
                verdict = "meets" if stats < GOAL_SECONDS else "MISSES"
                print(
                    f"{name:<8} | {label:>6} | {rows:>7} | {floor:>7.3f} | {stats:>7.3f} | "
                    f"{naive:>7.3f} | {naive / stats:>10.1f}x | {verdict}",
                    flush=True,
                )
            print(f"{'':<8}   (loading {args.rows:,} rows took {loading:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
