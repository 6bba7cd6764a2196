"""The table of ``benchmarks/soak.py``: warm-up vs end, per hour, and the verdicts of issue 13."""

from __future__ import annotations

import math
import statistics
from typing import Any

RSS_GOAL = 0.10  # < 10 % growth after warm-up
SOCKET_SLACK = 2  # a socket or two in flight at one sample is not growth
TASK_SLACK = 2


def _at(rows: list[dict[str, float]], key: str, index: int) -> float:
    """Median of the three samples around ``index`` (one sample can catch a flow run in flight)."""
    window = [r[key] for r in rows[max(0, index - 1) : index + 2] if key in r and not math.isnan(r[key])]
    return statistics.median(window) if window else math.nan


def _end(rows: list[dict[str, float]], key: str) -> float:
    return _at(rows, key, len(rows) - 2)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def report(
    rows: list[dict[str, float]], end: dict[str, Any], warmup: float, minutes: float, baseline: bool
) -> None:
    if len(rows) < 4:
        print("soak: too few samples for a table")
        return
    w = min(range(len(rows)), key=lambda i: abs(rows[i]["t"] - warmup))
    span_h = (rows[-1]["t"] - rows[w]["t"]) / 3600 or math.nan
    lines: list[tuple[str, str, str, str, str]] = []

    def rss_line(label: str, key: str) -> None:
        a, b = _at(rows, key, w), _end(rows, key)
        growth = (b - a) / a if a else math.nan
        ok = None if math.isnan(growth) else growth < RSS_GOAL
        lines.append((label, f"{a:.0f} MB", f"{b:.0f} MB", f"{growth:+.1%}", _verdict(ok)))

    def flat_line(label: str, key: str, slack: float) -> None:
        a, b = _at(rows, key, w), _end(rows, key)
        ok = None if math.isnan(a) or math.isnan(b) else b <= a + slack
        lines.append((label, f"{a:g}", f"{b:g}", f"{b - a:+g}", _verdict(ok)))

    rss_line("RSS prefect server (tree)", "server_rss")
    rss_line("RSS recovery serve", "serve_rss")
    if any(r["long_children"] for r in rows[w:]):
        rss_line("RSS serve's long-lived children", "long_children_rss")
    if baseline:
        rss_line("RSS recovery monitor (baseline)", "base_rss")
    flat_line("sockets prefect server", "server_sockets", SOCKET_SLACK)
    flat_line("sockets recovery serve", "serve_sockets", SOCKET_SLACK)
    if any(r["long_children"] for r in rows[w:]):
        flat_line("sockets long-lived children", "long_children_sockets", SOCKET_SLACK)
    if baseline:
        flat_line("sockets recovery monitor (baseline)", "base_sockets", SOCKET_SLACK)
    flat_line("asyncio tasks recovery serve", "tasks", TASK_SLACK)

    first, last = rows[w], rows[-1]
    audit_h = (last["audit_rows"] - first["audit_rows"]) / span_h
    audit_mb_h = (last["audit_bytes"] - first["audit_bytes"]) / 2**20 / span_h
    prefect_mb_h = (last["prefect_bytes"] - first["prefect_bytes"]) / 2**20 / span_h
    lines.append(("audit rows / hour", f"{first['audit_rows']:g}", f"{last['audit_rows']:g}",
                  f"{audit_h:.0f}/h ({audit_mb_h:.2f} MB/h)", "report"))  # fmt: skip
    lines.append(("Prefect DB size / hour", f"{first['prefect_bytes'] / 2**20:.1f} MB",
                  f"{last['prefect_bytes'] / 2**20:.1f} MB", f"{prefect_mb_h:.1f} MB/h",
                  "MISS: no flow-run vacuum by default"))  # fmt: skip
    lines.append(("recovery-status versions", "", f"{end['status_versions']}", "", "MISS: unbounded"))

    started = [r for r in end["runs"] if (r.get("state_type") or "") not in ("SCHEDULED", "PENDING")]
    missing = [r["id"] for r in started if r["id"] not in end["audited"]]
    lines.append(("recoveries audited", f"{len(started)} runs", f"{len(started) - len(missing)} rows",
                  f"{len(missing)} missing", _verdict(not missing)))  # fmt: skip

    widths = [max(len(line[i]) for line in [*lines, ("metric", "warm-up", "end", "growth", "goal")])
              for i in range(5)]  # fmt: skip
    print(f"\nsoak of {minutes:g} min; warm-up point at {rows[w]['t'] / 60:.1f} min, end at "
          f"{rows[-1]['t'] / 60:.1f} min (median of 3 samples each)")  # fmt: skip
    for line in [("metric", "warm-up", "end", "growth", "goal"), *lines]:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))

    cycles_cpu = last["flowrun_cpu"] - first["flowrun_cpu"]
    print(
        f"\nflow-run processes of recovery serve: {end['flowruns_seen']} seen over the run; their CPU "
        f"from warm-up to end {cycles_cpu:.0f} s ({cycles_cpu / span_h / 3600:.2f} s per second); "
        f"serve process {last['serve_cpu'] - first['serve_cpu']:.0f} s; prefect server "
        f"{last['server_cpu'] - first['server_cpu']:.0f} s"
    )
    if baseline:
        base_cpu = last["base_cpu"] - first["base_cpu"]
        print(f"recovery monitor (baseline) CPU from warm-up to end: {base_cpu:.0f} s")
    print("Prefect database rows at the end (largest tables):")
    tables = {k: v for k, v in end["counts"].items() if not k.startswith("flow runs of ")}
    for name, count in sorted(tables.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {name:28} {count}")
    for name, count in sorted(end["counts"].items()):
        if name.startswith("flow runs of "):
            print(f"  {name:36} {count}")
    if missing:
        print("recovery flow runs without an audit row:", ", ".join(missing[:10]))
