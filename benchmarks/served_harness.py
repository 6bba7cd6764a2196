"""Shared plumbing of the served-monitor benchmarks (monitor_cpu.py, time_to_recover.py).

A real ``prefect server start`` (SQLite, its own PREFECT_HOME), a real monitor served against it,
process-tree CPU read from /proc, and the Prefect REST API read with plain httpx. Two monitors:

    project    ``recovery serve``: the ``monitor`` deployment's run cycles in-process for a
               period (flows/monitor_period.py)
    baseline   the previous design, served the same way: one ``flows.monitor:monitor`` flow run
               per cycle on an interval schedule, concurrency limit 1 (each run a new process)
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # faultserver
sys.path.insert(0, str(REPO / "tests" / "flows"))  # served_stack: the tests' prefect server

from faultserver import FaultServer  # noqa: E402
from served_stack import start_server, stop  # noqa: E402

__all__ = ["FaultServer", "served", "tree_cpu", "write_config"]

TICKS = os.sysconf("SC_CLK_TCK")

# The previous design, served as `recovery serve` served it before the period runs.
BASELINE_SERVE = """
import os, sys
from datetime import timedelta
from prefect import serve
from flows.monitor import monitor
interval = float(sys.argv[1])
serve(monitor.to_deployment(name="monitor", interval=timedelta(seconds=interval), concurrency_limit=1),
      pause_on_shutdown=False)
"""


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    return kids


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and all its descendants, alive or reaped (user + system)."""
    total = 0.0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # utime, stime, cutime, cstime: fields 14-17 of stat (11-14 after the command name)
        total += sum(int(x) for x in fields[11:15]) / TICKS
        stack += _children(p)
    return total


@dataclass
class Served:
    api: httpx.Client
    server: subprocess.Popen[bytes]
    monitor: subprocess.Popen[bytes]

    def cpu(self) -> tuple[float, float]:
        """(monitor process tree, Prefect server process tree) CPU seconds so far."""
        return tree_cpu(self.monitor.pid), tree_cpu(self.server.pid)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        for attempt in range(20):
            r = self.api.request(method, path, **kw)
            if r.status_code != 503:  # SQLite "database is locked" under load
                r.raise_for_status()
                return r.json()
            time.sleep(min(0.2 * 2**attempt, 3))
        r.raise_for_status()

    def probe_task_starts(self) -> list[float]:
        """Start times (epoch) of every cycle's probe task run: one per monitor cycle."""
        runs = self.call("POST", "/task_runs/filter", json={"limit": 200, "sort": "EXPECTED_START_TIME_DESC"})
        out = []
        for t in runs:
            if "probe-targets" in t["name"] and t["start_time"]:
                from datetime import datetime

                out.append(datetime.fromisoformat(t["start_time"]).timestamp())
        return sorted(out)


@contextmanager
def served(config: Path, mode: str, interval: float, home: Path) -> Iterator[Served]:
    """A Prefect server and a monitor (``project`` or ``baseline``) served against it."""
    server, base = start_server(home)
    monitor: subprocess.Popen[bytes] | None = None
    try:
        client_env = {
            **os.environ,
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_API_URL": base,
            "RECOVERY_CONFIG": str(config),
        }
        if mode == "project":
            cmd = [sys.executable, "-m", "recovery_cli.main", "--config", str(config), "serve"]
        else:
            cmd = [sys.executable, "-c", BASELINE_SERVE, str(interval)]
        monitor = subprocess.Popen(
            cmd,
            env=client_env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        yield Served(httpx.Client(base_url=base, timeout=30), server, monitor)
    finally:
        if monitor is not None:
            stop(monitor)
        stop(server)


def write_config(
    path: Path, audit_url: str, state_url: str, url: str, names: list[str], monitor: str, strategy: str = ""
) -> Path:
    lines = [f"audit_url: {audit_url}", f"state_url: {state_url}", f"monitor: {monitor}"]
    if strategy:
        lines.append(f"strategy: {strategy}")
    lines.append("targets:")
    lines += [
        f"  - {{name: {n}, kind: http, url: '{url}/health?t={i}', timeout_seconds: 2}}"
        for i, n in enumerate(names)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path
