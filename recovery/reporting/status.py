"""The status board: one row per target, from shared state and the audit store (no Prefect).

The monitor flow publishes it as the ``recovery-status`` table artifact every cycle and
``recovery status`` prints it; both call ``collect_status``. Each row holds what an on-call
engineer asks first: is it up, how many probes failed in a row, is its breaker open, how fast
may the application call it, is it paused, flapping, being recovered, and how did the last
recovery end.

Reading the board never changes state. Values that cannot be read (a breaker store that is
down) show as ``unknown`` rather than failing the whole board; an unreachable shared state or
audit store does raise (``StateUnavailable`` / ``AuditUnavailable``): a board of blanks would
read as "all fine".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from recovery.audit.models import RecoveryRun
from recovery.audit.records import AuditUnavailable, error_text
from recovery.audit.store import AuditStore
from recovery.backends.keys import (
    blocked_key,
    flapping_key,
    health_key,
    ladder_key,
    lock_key,
    paused_key,
    probe_history_key,
)
from recovery.backends.rate import rate_store_for
from recovery.backends.state import HealthCounters, SharedState, parse_health, parse_probe_history
from recovery.backends.state_redis import RedisState
from recovery.client.breakers import breaker_state
from recovery.config.loader import RecoveryConfig, TargetConfig
from recovery.errors import StateUnavailable
from recovery.jsonable import Jsonable
from recovery.policy.flapping import percent_state_change
from recovery.redact import redact, redact_url
from recovery.services import services_for

STATUS_THREADS = 4
PIPELINE_CHUNK = 1000
NONE = "—"  # not "-": Prefect's UI renders table cells as markdown ("-" is a bullet)


@dataclass(frozen=True)
class LastRecovery(Jsonable):
    run_id: str
    workflow: str
    type: str
    state: str
    started_at: datetime
    finished_at: datetime | None
    flow_run_id: str | None
    error_type: str | None


@dataclass(frozen=True)
class TargetStatus(Jsonable):
    target: str
    kind: str
    health: str  # "healthy" | "unhealthy" | "unknown" (never probed through this shared state)
    reason: str | None
    probed_at: datetime | None
    consecutive_failures: int
    breaker_state: str  # "closed" | "open" | "half-open" | "unknown"
    allowed_rate_per_second: float | None  # HTTP targets: the AIMD rate (lowered after a 429)
    rate_lowered: bool
    paused: str | None  # why the application should hold traffic
    flapping: bool
    flap_percent: float
    recovery_in_progress: bool
    last_recovery: LastRecovery | None
    # Audit records still in the local spool (written while the audit store was down, not yet
    # replayed): the same number on every row, since the JSON board is a list of rows; above 0,
    # ``last_recovery`` may lag behind what really happened.
    audit_spool_pending: int = 0
    blocked_by: str | None = None  # the dependency (depends_on) whose outage this target waits for
    rung: int | None = None  # escalation ladder: the rung last started in this incident
    rungs: int = 0  # escalation ladder: how many rungs (0: no ladder)
    rung_outcome: str | None = None  # running, or how that rung's run ended


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def last_recoveries(store: AuditStore, targets: Sequence[str]) -> dict[str, LastRecovery]:
    """The latest audited run (dry runs excluded) of each target, in one query."""
    if not targets:
        return {}
    r = RecoveryRun
    ranked = (
        select(
            r.id,
            r.target,
            r.workflow,
            r.type,
            r.state,
            r.started_at,
            r.finished_at,
            r.flow_run_id,
            r.error_type,
            func.row_number().over(partition_by=r.target, order_by=(r.started_at.desc(), r.id)).label("rn"),
        )
        .where(r.target.in_(list(targets)), r.dry_run.is_(False))
        .subquery()
    )
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(select(ranked).where(ranked.c.rn == 1)).all()
    except SQLAlchemyError as exc:
        raise AuditUnavailable(f"audit store {store.description}: {error_text(exc)}") from None
    return {
        row.target: LastRecovery(
            run_id=row.id,
            workflow=row.workflow,
            type=row.type,
            state=row.state,
            started_at=_aware(row.started_at) or datetime.now(UTC),
            finished_at=_aware(row.finished_at),
            flow_run_id=row.flow_run_id,
            error_type=row.error_type,
        )
        for row in rows
    }


def _breaker(config: RecoveryConfig, target: TargetConfig) -> str:
    try:
        return str(breaker_state(services_for(config).breaker(target)))
    except Exception:  # the board shows what it cannot read instead of failing
        return "unknown"


def _rate(state: SharedState, target: TargetConfig) -> tuple[float | None, bool]:
    limits = getattr(target, "rate_limit", None)
    normal = getattr(limits, "normal_rate_per_second", None)
    try:
        current = rate_store_for(state).read(target.name)
    except Exception:
        return (float(normal) if normal is not None else None), False
    if current is not None and current.allowed is not None:
        return current.allowed, True
    return (float(normal) if normal is not None else None), False


@dataclass(frozen=True)
class _Shared:
    """What shared state says about one target (read in one pipeline on Redis)."""

    counters: HealthCounters | None
    history: list[bool]
    flapping: bool
    paused: str | None
    locked: bool
    blocked_by: str | None = None
    ladder: str | None = None  # the raw ladder mark (JSON; engine/escalation.py)


def _ladder(raw: str | None) -> tuple[int | None, str | None]:
    """(rung, outcome) of a ladder mark (the reporting layer reads what the engine wrote)."""
    try:
        d = json.loads(raw) if raw else None
        return (int(d["rung"]), str(d["outcome"])) if isinstance(d, dict) else (None, None)
    except (ValueError, KeyError, TypeError):
        return None, None


def _read_shared(state: SharedState, names: Sequence[str]) -> dict[str, _Shared]:
    if not isinstance(state, RedisState):
        out = {}
        for name in names:
            try:
                history, flapping = state.probe_history(name), state.flapping_since(name) is not None
            except NotImplementedError:
                history, flapping = [], False
            blocked, ladder = state.get_marks([blocked_key(name), ladder_key(name)])
            locked = state.lock_owner(name) is not None
            out[name] = _Shared(
                state.health(name), history, flapping, state.paused(name), locked, blocked, ladder
            )
        return out
    # Redis: seven reads per target, pipelined (1,000 targets: one round trip per chunk, not 7,000).
    out = {}
    try:
        for i in range(0, len(names), PIPELINE_CHUNK):
            chunk = names[i : i + PIPELINE_CHUNK]
            with state.client.pipeline(transaction=False) as pipe:
                for name in chunk:
                    pipe.hgetall(health_key(name))
                    pipe.lrange(probe_history_key(name), 0, -1)
                    pipe.get(flapping_key(name))
                    pipe.get(paused_key(name))
                    pipe.exists(lock_key(name))
                    pipe.get(blocked_key(name))
                    pipe.get(ladder_key(name))
                flat = pipe.execute()
            for j, name in enumerate(chunk):
                raw, history, flapping, paused, locked, blocked, ladder = flat[7 * j : 7 * j + 7]
                out[name] = _Shared(
                    parse_health(raw),
                    parse_probe_history(history),
                    flapping is not None,
                    paused,
                    bool(locked),
                    blocked,
                    ladder,
                )
    except (redis.RedisError, OSError) as exc:
        raise StateUnavailable(f"shared state {redact_url(state.url)}: {redact(str(exc))}") from None
    return out


def _row(
    config: RecoveryConfig,
    state: SharedState,
    target: TargetConfig,
    shared: _Shared,
    last: LastRecovery | None,
    spool_pending: int,
) -> TargetStatus:
    counters = shared.counters
    rate, lowered = _rate(state, target)
    health = "unknown" if counters is None else "healthy" if counters.healthy else "unhealthy"
    rung, rung_outcome = _ladder(shared.ladder) if target.escalation else (None, None)
    return TargetStatus(
        target=target.name,
        kind=target.kind,
        health=health,
        reason=redact(counters.reason) if counters else None,
        probed_at=datetime.fromtimestamp(counters.probed_at, UTC) if counters else None,
        consecutive_failures=counters.failures if counters else 0,
        breaker_state=_breaker(config, target),
        allowed_rate_per_second=rate,
        rate_lowered=lowered,
        paused=redact(shared.paused) if shared.paused else None,
        flapping=shared.flapping,
        flap_percent=round(percent_state_change(shared.history), 1),
        recovery_in_progress=shared.locked,
        last_recovery=last,
        audit_spool_pending=spool_pending,
        blocked_by=shared.blocked_by,
        rung=rung,
        rungs=len(target.escalation),
        rung_outcome=rung_outcome,
    )


def collect_status(
    config: RecoveryConfig, state: SharedState | None = None, store: AuditStore | None = None
) -> list[TargetStatus]:
    """One ``TargetStatus`` per configured target, in config order.

    Shared state is read in pipelines; each target's breaker and rate still cost a round trip
    each, overlapped by ``STATUS_THREADS`` threads (1,000 targets on Redis: well under a second).
    """
    if state is None:
        state = services_for(config).state
    if store is None:
        store = services_for(config).audit
    names = [t.name for t in config.targets]
    store.catch_up()  # spooled runs first (durable audit), so last_recovery includes them
    last = last_recoveries(store, names)
    shared = _read_shared(state, names)
    pending = store.pending()

    def row(target: TargetConfig) -> TargetStatus:
        return _row(config, state, target, shared[target.name], last.get(target.name), pending)

    if len(names) <= 1:
        return [row(t) for t in config.targets]
    with ThreadPoolExecutor(max_workers=min(STATUS_THREADS, len(names))) as pool:
        return list(pool.map(row, config.targets))


# --- rendering -----------------------------------------------------------------------------------


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else NONE


def _rate_text(row: TargetStatus) -> str:
    if row.allowed_rate_per_second is None:
        return NONE
    text = f"{row.allowed_rate_per_second:g}/s"
    return f"{text} (lowered)" if row.rate_lowered else text


def _outcome(last: LastRecovery | None) -> str:
    if last is None:
        return NONE
    return f"{last.state} ({last.error_type})" if last.error_type else last.state


def _escalation(row: TargetStatus) -> str:
    if not row.rungs:
        return NONE
    if row.rung is None:
        return f"0/{row.rungs}"
    exhausted = row.rung >= row.rungs and row.rung_outcome not in ("running", "succeeded")
    return f"{row.rung}/{row.rungs} ({row.rung_outcome}{', exhausted' if exhausted else ''})"


def status_table(rows: Sequence[TargetStatus]) -> list[dict[str, str]]:
    """The board as the ``recovery-status`` table artifact: strings only, secrets redacted."""
    table = []
    for row in rows:
        last = row.last_recovery
        health = row.health if not row.reason or row.health == "healthy" else f"{row.health} ({row.reason})"
        table.append(
            {
                "target": row.target,
                "kind": row.kind,
                "health": health,
                "consecutive failures": str(row.consecutive_failures),
                "breaker": row.breaker_state,
                "allowed rate": _rate_text(row),
                "paused": row.paused or "no",
                "flapping": f"yes ({row.flap_percent:g}%)" if row.flapping else f"no ({row.flap_percent:g}%)",
                "recovery in progress": "yes" if row.recovery_in_progress else "no",
                "blocked": f"blocked by {row.blocked_by}" if row.blocked_by else "no",
                "escalation": _escalation(row),
                "last recovery": f"{last.workflow} {_when(last.started_at)}" if last else NONE,
                "outcome": _outcome(last),
            }
        )
    return [{k: redact(v) for k, v in r.items()} for r in table]


def format_status(rows: Sequence[TargetStatus]) -> list[str]:
    """Plain-text board for ``recovery status``."""
    table = status_table(rows)
    if not table:
        return ["no targets configured"]
    headers = list(table[0])
    widths = {h: max(len(h), *(len(r[h]) for r in table)) for h in headers}
    lines = ["  ".join(h.upper().ljust(widths[h]) for h in headers).rstrip()]
    lines += ["  ".join(r[h].ljust(widths[h]) for h in headers).rstrip() for r in table]
    if rows[0].audit_spool_pending:
        lines.append(
            f"audit spool: {rows[0].audit_spool_pending} records not yet replayed into the audit store "
            "(`recovery audit replay`)"
        )
    return lines
