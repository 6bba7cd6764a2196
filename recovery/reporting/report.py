"""Rendering of stats and history for people: CLI text, Prefect table and markdown artifacts.

Pure functions over ``recovery.reporting.stats`` / audit records. Every string that can carry text from
outside (error messages, reasons) goes through ``redact`` here, so an artifact can never show a
secret even if an upstream redaction was missed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from recovery.audit.records import RunRecord
from recovery.redact import redact
from recovery.reporting.stats import GroupStats, StatsReport

MAX_CELL = 160
# Placeholder for "no value". Not "-": Prefect's UI renders table cells as markdown, where a
# lone "-" becomes a list bullet.
NONE = "—"


def seconds(value: float | None) -> str:
    """``None`` -> ``-``; 4.25 -> ``4.25s``; 754 -> ``12m 34s``; 7300 -> ``2h 1m``."""
    if value is None:
        return NONE
    if value < 120:
        return f"{value:.2f}s" if value < 10 else f"{value:.1f}s"
    if value < 7200:
        return f"{int(value // 60)}m {int(value % 60)}s"
    return f"{int(value // 3600)}h {int(value % 3600 // 60)}m"


def _rate(value: float | None) -> str:
    return NONE if value is None else f"{value * 100:.1f}%"


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else NONE


def _cell(text: str) -> str:
    text = redact(" ".join(text.split()))
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _errors(group: GroupStats) -> str:
    items = sorted(group.error_types.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{name} x{count}" for name, count in items) or NONE


def _last_failure(group: GroupStats) -> str:
    last = group.last_failure
    if last is None:
        return NONE
    what = f"{last.error_type}: {last.error_message}" if last.error_message else (last.error_type or "")
    return _cell(f"{_when(last.at)} {what}".strip())


# --- stats ---------------------------------------------------------------------------------------


def stats_table(report: StatsReport) -> list[dict[str, str]]:
    """One row per target/workflow (the ``recovery-stats`` table artifact)."""
    return [
        {
            "target": g.target,
            "workflow": g.workflow,
            "runs": str(g.runs),
            "succeeded": str(g.succeeded),
            "failed": str(g.failed),
            "cancelled": str(g.cancelled),
            "refused": str(g.refused),
            "success rate": _rate(g.success_rate),
            "p50": seconds(g.duration_p50_seconds),
            "p95": seconds(g.duration_p95_seconds),
            "max": seconds(g.duration_max_seconds),
            "MTTD": seconds(g.mttd_seconds),
            "MTTR": seconds(g.mttr_seconds),
            "error types": _cell(_errors(g)),
            "last failure": _last_failure(g),
            "only in Prefect": str(g.unaudited),
        }
        for g in report.groups
    ]


def _weighted(groups: Sequence[GroupStats], attr: str) -> float | None:
    pairs = [(getattr(g, attr), g.incidents) for g in groups if getattr(g, attr) is not None and g.incidents]
    total = sum(n for _, n in pairs)
    return sum(v * n for v, n in pairs) / total if total else None


def stats_markdown(report: StatsReport) -> str:
    """A short summary for the ``recovery-stats-summary`` markdown artifact."""
    g = report.groups
    runs = sum(x.runs for x in g)
    succeeded, failed = sum(x.succeeded for x in g), sum(x.failed for x in g)
    cancelled, refused = sum(x.cancelled for x in g), sum(x.refused for x in g)
    attempted = succeeded + failed + cancelled
    rate = succeeded / attempted if attempted else None
    unaudited = sum(x.unaudited for x in g)
    lines = [
        "# Recovery statistics",
        "",
        f"Window: {_when(report.since)} to {_when(report.until)}",
        "",
        "| runs | succeeded | failed | cancelled | refused | success rate | MTTD* | MTTR* |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {runs} | {succeeded} | {failed} | {cancelled} | {refused} | {_rate(rate)} | "
        f"{seconds(_weighted(g, 'mttd_seconds'))} | {seconds(_weighted(g, 'mttr_seconds'))} |",
        "",
        "\\* means of the per-target values, weighted by incidents.",
        "",
    ]
    worst = sorted(
        (x for x in g if x.failed + x.cancelled), key=lambda x: (-(x.failed + x.cancelled), x.target)
    )
    if worst:
        lines.append("## Most failures")
        lines.append("")
        for x in worst[:5]:
            lines.append(
                f"- **{x.target}** ({x.workflow}): {x.failed} failed, {x.cancelled} cancelled of {x.runs}; "
                f"errors: {_errors(x)}; last: {_last_failure(x)}"
            )
        lines.append("")
    if unaudited:
        lines.append(
            f"{unaudited} run(s) are known only to Prefect (the flow run ended before its audit row "
            "was written) and are counted as failed/cancelled."
        )
    if not g:
        lines.append("No recoveries in this window.")
    lines.append("MTTD/MTTR per target and workflow are in the `recovery-stats` table artifact.")
    return redact("\n".join(lines))


def format_stats(report: StatsReport) -> list[str]:
    """Plain-text table for ``recovery stats``."""
    if not report.groups:
        return [f"no recoveries since {_when(report.since)}"]
    columns = ["target", "workflow", "runs", "succeeded", "failed", "cancelled", "refused"]
    columns += ["success rate", "p50", "p95", "max", "MTTD", "MTTR", "error types"]
    rows = [{k: r[k] for k in columns} for r in stats_table(report)]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    lines = [f"since {_when(report.since)}"]
    lines.append("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    lines += ["  ".join(r[c].ljust(widths[c]) for c in columns).rstrip() for r in rows]
    for g in report.groups:
        if g.last_failure:
            lines.append(f"last failure of {g.target}/{g.workflow}: {_last_failure(g)}")
    return lines


# --- history -------------------------------------------------------------------------------------


def flow_run_url(ui_url: str | None, flow_run_id: str | None) -> str | None:
    """Link to a flow run in the Prefect UI (``PREFECT_UI_URL``), if both are known."""
    if not ui_url or not flow_run_id:
        return None
    return f"{ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}"


def history_table(runs: Sequence[RunRecord], ui_url: str | None) -> list[dict[str, Any]]:
    """The last runs (``recovery-history`` table artifact), each linking to its flow run."""
    return [
        {
            "started": _when(r.started_at),
            "target": r.target,
            "workflow": r.workflow,
            "type": r.type,
            "state": r.state + (" (dry run)" if r.dry_run else ""),
            "duration": seconds(r.duration_seconds),
            "flow run": flow_run_url(ui_url, r.flow_run_id) or NONE,
            "requested by": _cell(r.requested_by or NONE),
            "error": _cell(f"{r.error_type}: {r.error_message}") if r.error_type else NONE,
        }
        for r in runs
    ]


def history_markdown(runs: Sequence[RunRecord], ui_url: str | None) -> str:
    """The runs that have a flow run, as a markdown list of links (clickable in every Prefect UI)."""
    lines = []
    for r in runs:
        url = flow_run_url(ui_url, r.flow_run_id)
        if url and r.flow_run_id:
            lines.append(
                f"- {_when(r.started_at)} {r.target} {r.workflow} {r.type}: **{r.state}** "
                f"([flow run {r.flow_run_id[:8]}]({url}))"
            )
    return redact("\n".join(lines))
