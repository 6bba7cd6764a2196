"""Recovery statistics per target and workflow over a time window, aggregated in the database.

Every number is computed by SQL (``GROUP BY``; percentiles by ``percentile_cont`` on PostgreSQL,
on SQLite by ranking or ``LIMIT 2 OFFSET k`` over a covering index); Python only assembles one
object per target/workflow. Dry runs are excluded; a run is in the window by its ``started_at``.
100,000 runs take well under a second on both (benchmarks/stats_bench.py).

    runs            audit rows in the window (+ runs only Prefect knows about, see below)
    succeeded, failed, cancelled, refused   runs in that final state (the rest are in progress)
    success_rate    succeeded / (succeeded + failed + cancelled); refused runs never started
    duration_*      p50 / p95 (linear interpolation, like ``percentile_cont``) and max of the
                    durations of finished runs (succeeded, failed, cancelled)
    mttd_seconds    mean time to detect: first failed probe -> detection (``detected_at``)
    mttr_seconds    mean time to recover: first failed probe -> verified healthy (``finished_at``
                    of the succeeded run; it succeeds only after the verification probes passed)
    error_types     {error_type: count} over the window's runs
    last_failure    the latest failed run: when, its error type and (redacted) message

MTTD and MTTR are means over *incidents*, not runs: the monitor keeps a target's
``first_failure_at`` until a probe passes, so all automatic runs of one outage share it; an
outage whose first recovery failed and second succeeded counts once, first probe to success.

Prefect's run history of the recovery flows can know of runs the audit does not: a flow run that
crashed before it wrote its audit row. The Prefect layer finds those (``audited_flow_run_ids``
tells it which are audited) and ``merge_unaudited`` counts them as failed; the CLI reports
audit-only numbers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, and_, case, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from recovery.audit.models import RecoveryRun
from recovery.audit.records import AuditUnavailable, error_text
from recovery.audit.sqlfuncs import seconds_between, unindexed
from recovery.audit.store import AuditStore
from recovery.errors import ConfigError, clip
from recovery.jsonable import Jsonable, to_json

FINISHED = ("succeeded", "failed", "cancelled")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Bounded digits: "9" * 400 is a float of inf, and timedelta(inf) an OverflowError.
_WINDOW_RE = re.compile(r"^\s*(\d{1,12}(?:\.\d{1,9})?)\s*([smhdw])\s*$", re.ASCII)
MAX_WINDOW_SECONDS = 3650 * 86400  # ten years: older than any audit row worth a statistic


def parse_window(text: str, argument: str = "--since") -> timedelta:
    """``90s``, ``15m``, ``24h``, ``7d``, ``2w`` -> timedelta; ``ConfigError`` naming ``argument``."""
    match = _WINDOW_RE.match(text)
    if not match or float(match[1]) <= 0:
        raise ConfigError(argument, f"expected a duration like 30m, 24h or 7d, got '{clip(text)}'")
    seconds = float(match[1]) * _UNITS[match[2]]
    if seconds > MAX_WINDOW_SECONDS:
        raise ConfigError(argument, f"at most 3650d (ten years), got '{clip(text)}'")
    return timedelta(seconds=seconds)


def _count_state(*states: str) -> ColumnElement[int]:
    return func.coalesce(func.sum(case((RecoveryRun.state.in_(states), 1), else_=0)), 0)


def _utc(value: datetime) -> datetime:
    # SQLite stores naive UTC; bound values must be UTC for the string comparison to hold.
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LastFailure(Jsonable):
    at: datetime
    run_id: str
    error_type: str | None
    error_message: str | None


@dataclass(frozen=True)
class GroupStats:
    """The statistics of one target/workflow pair over the window."""

    target: str
    workflow: str
    runs: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    refused: int = 0
    duration_p50_seconds: float | None = None
    duration_p95_seconds: float | None = None
    duration_max_seconds: float | None = None
    mttd_seconds: float | None = None
    mttr_seconds: float | None = None
    incidents: int = 0  # outages (distinct first_failure_at) behind the MTTD
    error_types: dict[str, int] = field(default_factory=dict)
    last_failure: LastFailure | None = None
    unaudited: int = 0  # runs only Prefect knows about (crashed before their audit row)

    @property
    def success_rate(self) -> float | None:
        attempted = self.succeeded + self.failed + self.cancelled
        return round(self.succeeded / attempted, 6) if attempted else None

    def as_json(self) -> dict[str, Any]:
        """The ``recovery stats --json`` object: target, workflow and the issue's fields."""
        return to_json(
            self,
            exclude=("incidents", "unaudited"),
            after="refused",
            success_rate=self.success_rate,
            error_types=dict(sorted(self.error_types.items())),
        )


@dataclass(frozen=True)
class StatsReport:
    since: datetime
    until: datetime
    groups: tuple[GroupStats, ...]

    def as_json(self) -> list[dict[str, Any]]:
        return [g.as_json() for g in self.groups]


# --- the queries ---------------------------------------------------------------------------------

_P = (50, 95)
SMALL_WINDOW = 5000  # finished runs in the window; up to this, one ranking pass beats the index walk


def _round(value: Any) -> float | None:
    """Seconds to the millisecond (SQLite's julianday() resolution), None stays None."""
    return round(float(value), 3) if value is not None else None


def _interpolate(n: int, q: int, picked: Sequence[Any]) -> float | None:
    """Linear interpolation between the ranks around (n - 1) * q / 100 (``percentile_cont``)."""
    if not picked or picked[0] is None:
        return None
    lo = float(picked[0])
    hi = float(picked[1]) if len(picked) > 1 and picked[1] is not None else lo
    frac = ((n - 1) * q % 100) / 100.0
    return _round(lo + frac * (hi - lo))


def _counts(in_window: ColumnElement[bool], postgres: bool) -> Select[Any]:
    r = RecoveryRun
    finished = and_(r.state.in_(FINISHED), r.duration_seconds.is_not(None))
    columns: list[Any] = [
        r.target,
        r.workflow,
        func.count().label("runs"),
        *(_count_state(state).label(state) for state in ("succeeded", "failed", "cancelled", "refused")),
        func.count(case((finished, 1))).label("n"),
        func.max(case((finished, r.duration_seconds))).label("dmax"),
    ]
    if postgres:  # percentile_cont ignores the NULLs of unfinished runs
        duration = case((finished, r.duration_seconds))
        columns += [func.percentile_cont(q / 100).within_group(duration).label(f"p{q}") for q in _P]
    return select(*columns).where(in_window).group_by(r.target, r.workflow)


def _incident_means(in_window: ColumnElement[bool]) -> Select[Any]:
    """Per incident (target, workflow, first_failure_at): time to detect and to recover; averaged."""
    r = RecoveryRun
    healed = func.min(case((r.state == "succeeded", r.finished_at)))
    incident = (
        select(
            r.target,
            r.workflow,
            seconds_between(r.first_failure_at, func.min(r.detected_at)).label("ttd"),
            seconds_between(r.first_failure_at, healed).label("ttr"),
        )
        .where(in_window, r.first_failure_at.is_not(None))
        .group_by(r.target, r.workflow, r.first_failure_at)
        .subquery()
    )
    return select(
        incident.c.target,
        incident.c.workflow,
        func.avg(incident.c.ttd).label("mttd"),
        func.avg(incident.c.ttr).label("mttr"),
        func.count().label("incidents"),
    ).group_by(incident.c.target, incident.c.workflow)


def _last_failures(in_window: ColumnElement[bool]) -> Select[Any]:
    r = RecoveryRun
    at = func.coalesce(r.finished_at, r.started_at)
    order = func.row_number().over(partition_by=(r.target, r.workflow), order_by=(at.desc(), r.id))
    latest = (
        select(r.target, r.workflow, r.id, at.label("at"), r.error_type, r.error_message, order.label("rn"))
        .where(in_window, r.state == "failed")
        .subquery()
    )
    return select(latest).where(latest.c.rn == 1)


def _ranked_percentiles(
    conn: Connection, in_window: ColumnElement[bool]
) -> dict[tuple[str, str], tuple[float | None, float | None]]:
    """p50/p95 of a small window in one pass: rank its durations with window functions."""
    r = RecoveryRun
    key = (r.target, r.workflow)
    ranked = (
        select(
            *key,
            r.duration_seconds.label("d"),
            func.row_number().over(partition_by=key, order_by=r.duration_seconds).label("rn"),
            func.count().over(partition_by=key).label("n"),
        )
        .where(in_window, r.state.in_(FINISHED), r.duration_seconds.is_not(None))
        .subquery()
    )
    picks = []
    for q in _P:
        lo = (ranked.c.n - 1) * q // 100 + 1
        picks.append(func.max(case((ranked.c.rn == lo, ranked.c.d))).label(f"p{q}_lo"))
        picks.append(func.max(case((ranked.c.rn == lo + 1, ranked.c.d))).label(f"p{q}_hi"))
    query = select(ranked.c.target, ranked.c.workflow, ranked.c.n, *picks).group_by(
        ranked.c.target, ranked.c.workflow, ranked.c.n
    )
    return {
        (p.target, p.workflow): (
            _interpolate(p.n, 50, [p.p50_lo, p.p50_hi]),
            _interpolate(p.n, 95, [p.p95_lo, p.p95_hi]),
        )
        for p in conn.execute(query)
    }


def _walked_percentiles(
    conn: Connection, in_window: ColumnElement[bool], count_rows: Sequence[Any]
) -> dict[tuple[str, str], tuple[float | None, float | None]]:
    """p50/p95 of a large window: per group, the two ranks around (n - 1) * q / 100, read in
    duration order from ix_recovery_runs_stats (``LIMIT 2 OFFSET k``: no sort at all)."""
    r = RecoveryRun
    out = {}
    for c in (c for c in count_rows if c.n):
        values = []
        for q in _P:
            around = (
                select(r.duration_seconds)
                .where(in_window, r.state.in_(FINISHED), r.duration_seconds.is_not(None))
                .where(r.target == c.target, r.workflow == c.workflow)
                .order_by(r.duration_seconds)
                .limit(2)
                .offset((c.n - 1) * q // 100)
            )
            values.append(_interpolate(c.n, q, conn.execute(around).scalars().all()))
        out[(c.target, c.workflow)] = (values[0], values[1])
    return out


def compute_stats(store: AuditStore, since: datetime, until: datetime | None = None) -> StatsReport:
    """Aggregate the audit rows whose ``started_at`` is in [since, until) (default until: now)."""
    since = _utc(since)
    until = _utc(until) if until is not None else datetime.now(UTC)
    store.catch_up()  # runs spooled while the store was down count too
    r = RecoveryRun
    key = (r.target, r.workflow)
    postgres = store.engine.dialect.name == "postgresql"
    try:
        with store.engine.connect() as conn:
            size = conn.execute(select(func.count()).where(r.started_at >= since, r.started_at < until))
            small = size.scalar_one() <= SMALL_WINDOW
            # A small window is found through the started_at index; a large one is read from
            # the covering indexes of revision 0002 (SQLite would pick started_at otherwise).
            started = r.started_at if small else unindexed(r.started_at)
            in_window = and_(started >= since, started < until, r.dry_run.is_(False))
            count_rows = conn.execute(_counts(in_window, postgres)).all()
            if postgres:
                pcts = {(c.target, c.workflow): (_round(c.p50), _round(c.p95)) for c in count_rows}
            elif small:
                pcts = _ranked_percentiles(conn, in_window)
            else:
                pcts = _walked_percentiles(conn, in_window, count_rows)
            mean_rows = conn.execute(_incident_means(in_window)).all()
            errors = select(*key, r.error_type, func.count().label("n")).where(
                in_window, r.error_type.is_not(None)
            )
            error_rows = conn.execute(errors.group_by(*key, r.error_type)).all()
            last_rows = conn.execute(_last_failures(in_window)).all()
    except SQLAlchemyError as exc:
        raise AuditUnavailable(f"audit store {store.description}: {error_text(exc)}") from None

    mean = {(m.target, m.workflow): m for m in mean_rows}
    errs: dict[tuple[str, str], dict[str, int]] = {}
    for e in error_rows:
        errs.setdefault((e.target, e.workflow), {})[e.error_type] = int(e.n)
    lasts = {
        (x.target, x.workflow): LastFailure(_aware(x.at) or since, x.id, x.error_type, x.error_message)
        for x in last_rows
    }
    groups = []
    for c in count_rows:
        k = (c.target, c.workflow)
        m = mean.get(k)
        p50, p95 = pcts.get(k, (None, None))
        groups.append(
            GroupStats(
                target=c.target,
                workflow=c.workflow,
                runs=int(c.runs),
                succeeded=int(c.succeeded),
                failed=int(c.failed),
                cancelled=int(c.cancelled),
                refused=int(c.refused),
                duration_p50_seconds=p50,
                duration_p95_seconds=p95,
                duration_max_seconds=_round(c.dmax),
                mttd_seconds=_round(m.mttd) if m else None,
                mttr_seconds=_round(m.mttr) if m else None,
                incidents=int(m.incidents) if m else 0,
                error_types=errs.get(k, {}),
                last_failure=lasts.get(k),
            )
        )
    groups.sort(key=lambda g: (g.target, g.workflow))
    return StatsReport(since, until, tuple(groups))
