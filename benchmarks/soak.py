"""Does a served monitor stay flat over time? A soak of ``recovery serve`` against a real Prefect server.

    python benchmarks/soak.py [--minutes 30] [--sample-seconds 10] [--warmup-minutes 2] [--baseline]
                              [--redis-url redis://127.0.0.1:6379/15] [--keep]

Starts a ``prefect server`` (SQLite in a temp PREFECT_HOME, analytics and UI off), 20 HTTP
targets on a local stdlib server (``soak_proc.Targets``: 18 healthy, ``flapping`` alternating
every 15 s, ``outage`` failing 20 s of every minute) and ``recovery serve --metrics-port`` with
interval 5 s, threshold 2, audit on SQLite, state on Redis (the DB is flushed first: give the soak
its own). ``--baseline`` also runs ``recovery monitor`` (one process, in-process flow runs, its
own audit file and in-process state) against the same Prefect server and targets: its RSS and
sockets form the baseline column (the Prefect counts then include both monitors).

Every ``--sample-seconds`` it reads, from outside (``/proc``, no psutil): RSS and sockets of the
Prefect server's process tree, of the ``recovery serve`` process and of its long-lived children
(alive >= 60 s; the others are per-flow-run processes: counted by distinct pid and their CPU
reported apart), ``process_asyncio_tasks`` from the serve process's /metrics, the audit store's
rows and file size and the Prefect database's size. At the end: the Prefect database's row counts
per table, ``recovery-status`` artifact versions, and whether every recovery flow run in Prefect
has its audit row (``flow_run_id``). The table compares the warm-up point with the end (median of
3 samples each) with the goals of issue 13: RSS growth < 10 %, no growth of sockets or tasks,
database growth per hour reported and bounded. Exit 0 whatever the verdicts (the table says).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # faultserver
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "flows"))
from served_stack import stop as stop_group
from soak_proc import ChildWatch, Targets, descendants, parents, rss, sockets, stat, uptime

REPO = Path(__file__).resolve().parent.parent
RECOVERY_FLOWS = ["api-failure-recovery"]  # what the HTTP targets' automatic recoveries run
LONG_LIVED = 60.0  # a child of ``recovery serve`` alive this long is long-lived, not a flow run
MB = 1024 * 1024


def default_redis() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    db = int(worker[2:]) + 1 if worker.startswith("gw") and worker[2:].isdigit() else 15
    return f"redis://127.0.0.1:6379/{db}"


def write_config(path: Path, audit: Path, state_url: str | None, url: str) -> Path:
    lines = [f"audit_url: sqlite:///{audit}"]
    if state_url:
        lines.append(f"state_url: {state_url}")
    lines += [
        "monitor: {interval_seconds: 5, failure_threshold: 2}",
        "strategy: {kind: exponential, base_seconds: 1, factor: 2, max_delay_seconds: 5, "
        "max_attempts: 12, jitter: none}",
        "targets:",
    ]
    names = [f"api-{i:02d}" for i in range(18)] + ["flapping", "outage"]
    for name in names:
        lines.append(
            f"  - {{name: {name}, kind: http, url: '{url}/t/{name}', timeout_seconds: 2, "
            "verify: {consecutive_successes: 2, interval_seconds: 0.5}}"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        stop_group(proc)  # SIGTERM to its process group, SIGKILL after 20 s


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"soak: {proc.args!r} exited during start-up (see its log)")
        time.sleep(1)
    raise SystemExit(f"soak: {url} not healthy in {timeout:.0f} s")


def file_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())  # + -wal/-shm


def audit_rows(path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT count(*) FROM recovery_runs").fetchone()[0])
    except sqlite3.Error:
        return 0


def tasks_gauge(port: int) -> float | None:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5, trust_env=False).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("process_asyncio_tasks "):
            return float(line.split()[1])
    return None


def tree(root: int, ppids: dict[int, int]) -> list[int]:
    return [root, *descendants(root, ppids)]


def sample(ctx: dict[str, Any], t: float) -> dict[str, float]:
    ppids = parents()
    now = uptime()
    server = tree(ctx["server"].pid, ppids)
    serve = ctx["serve"].pid
    kids = descendants(serve, ppids)
    long_kids = [p for p in kids if (s := stat(p)) is not None and now - s.started >= LONG_LIVED]
    root = stat(serve)
    row: dict[str, float] = {
        "t": t,
        "server_rss": sum(map(rss, server)) / MB,
        "server_sockets": sum(map(sockets, server)),
        "server_cpu": sum(s.cpu + s.children_cpu for p in server if (s := stat(p)) is not None),
        "serve_rss": rss(serve) / MB,
        "serve_sockets": sockets(serve),
        "serve_cpu": root.cpu if root else 0.0,
        "flowrun_cpu": (root.children_cpu if root else 0.0)
        + sum(s.cpu for p in kids if (s := stat(p)) is not None),
        "long_children": len(long_kids),
        "long_children_rss": sum(map(rss, long_kids)) / MB,
        "long_children_sockets": sum(map(sockets, long_kids)),
        "children_now": len(kids),
        "tasks": float("nan") if (tasks := tasks_gauge(ctx["metrics_port"])) is None else tasks,
        "audit_rows": audit_rows(ctx["audit"]),
        "audit_bytes": file_size(ctx["audit"]),
        "prefect_bytes": file_size(ctx["prefect_db"]),
    }
    if ctx.get("baseline") is not None:
        base = tree(ctx["baseline"].pid, ppids)
        row["base_rss"] = sum(map(rss, base)) / MB
        row["base_sockets"] = sum(map(sockets, base))
        row["base_cpu"] = sum(s.cpu + s.children_cpu for p in base if (s := stat(p)) is not None)
        row["base_audit_rows"] = audit_rows(ctx["baseline_audit"])
    return row


def prefect_counts(db: Path) -> dict[str, int]:
    """Rows per table of the Prefect database (read-only; the server keeps writing)."""
    out: dict[str, int] = {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for name in names:
            if name.startswith(("sqlite_", "alembic")):
                continue
            out[name] = int(conn.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0])
        q = "SELECT f.name, count(*) FROM flow_run r JOIN flow f ON r.flow_id = f.id GROUP BY f.name"
        for flow, count in conn.execute(q):
            out[f"flow runs of {flow}"] = int(count)
    return out


def recovery_flow_runs(api: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    with httpx.Client(base_url=api, timeout=30, trust_env=False) as client:
        while True:
            body = {"flows": {"name": {"any_": RECOVERY_FLOWS}}, "limit": 200, "offset": len(runs)}
            page = client.post("/flow_runs/filter", json=body).json()
            runs += page
            if len(page) < 200:
                return runs


def artifact_versions(api: str, key: str) -> int:
    body = {"artifacts": {"key": {"any_": [key]}}}
    return int(httpx.post(f"{api}/artifacts/count", json=body, timeout=30, trust_env=False).json())


def audited_flow_runs(*paths: Path) -> set[str]:
    ids: set[str] = set()
    for path in paths:
        if path.exists():
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
                q = "SELECT flow_run_id FROM recovery_runs WHERE flow_run_id IS NOT NULL"
                ids |= {r[0] for r in db.execute(q)}
    return ids


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--warmup-minutes", type=float, help="default: min(2, minutes / 3)")
    parser.add_argument("--baseline", action="store_true", help="also run `recovery monitor` side by side")
    parser.add_argument("--redis-url", default=default_redis(), help="flushed first (default: gwN -> DB N+1)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (logs, databases)")
    args = parser.parse_args()
    warmup = 60 * (args.warmup_minutes if args.warmup_minutes is not None else min(2.0, args.minutes / 3))
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    redis.Redis.from_url(args.redis_url, socket_timeout=5).flushdb()
    targets = Targets()
    home = tmp / "prefect-home"
    port = _free_port()
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "false"}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server_env = {**env, "PREFECT_HOME": str(home), "PREFECT_API_URL": ""}
    py = [sys.executable, "-m"]
    ctx: dict[str, Any] = {"audit": tmp / "audit.db", "prefect_db": home / "prefect.db"}
    ctx["baseline_audit"] = tmp / "audit-baseline.db"
    procs: list[subprocess.Popen[bytes]] = []
    rows: list[dict[str, float]] = []
    try:
        cmd = [*py, "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        ctx["server"] = start(cmd, server_env, tmp / "prefect-server.log")
        procs.append(ctx["server"])
        api = f"http://127.0.0.1:{port}/api"
        wait_healthy(f"{api}/health", ctx["server"])
        client_env = {**env, "PREFECT_API_URL": api}
        config = write_config(tmp / "served.yaml", ctx["audit"], args.redis_url, targets.url)
        ctx["metrics_port"] = _free_port()
        cmd = [*py, "recovery_cli.main", "--config", str(config), "serve"]
        cmd += ["--metrics-port", str(ctx["metrics_port"]), "--metrics-host", "127.0.0.1"]
        ctx["serve"] = start(cmd, client_env, tmp / "serve.log")
        procs.append(ctx["serve"])
        if args.baseline:
            config = write_config(tmp / "baseline.yaml", ctx["baseline_audit"], None, targets.url)
            cmd = [*py, "recovery_cli.main", "--config", str(config), "monitor"]
            ctx["baseline"] = start(cmd, client_env, tmp / "baseline.log")
            procs.append(ctx["baseline"])
        watch = ChildWatch(ctx["serve"].pid)
        watch.start()
        t0 = time.monotonic()
        print(f"soak: {args.minutes:g} min, temp dir {tmp}", flush=True)
        while (t := time.monotonic() - t0) < args.minutes * 60:
            for proc in procs:
                if proc.poll() is not None:
                    raise SystemExit(f"soak: {proc.args!r} exited early (see the logs in {tmp})")
            rows.append(sample(ctx, t))
            r = rows[-1]
            print(
                f"  {t / 60:5.1f} min  server {r['server_rss']:6.0f} MB  serve {r['serve_rss']:5.0f} MB"
                f"  long children {int(r['long_children'])} {r['long_children_rss']:5.0f} MB"
                f"  sockets {int(r['server_sockets'])}/{int(r['serve_sockets'])}  tasks {r['tasks']:g}"
                f"  audit {int(r['audit_rows'])}  prefect.db {r['prefect_bytes'] / MB:.1f} MB",
                flush=True,
            )
            time.sleep(max(0.0, args.sample_seconds - (time.monotonic() - t0 - t)))
        watch.stop()
        end = {
            "counts": prefect_counts(ctx["prefect_db"]),
            "status_versions": artifact_versions(api, "recovery-status"),
            "runs": recovery_flow_runs(api),
            "audited": audited_flow_runs(ctx["audit"], ctx["baseline_audit"]),
            "flowruns_seen": len(watch.seen),
            "flowruns_cpu_seen": sum(watch.seen.values()),
        }
    finally:
        for proc in reversed(procs):
            stop(proc)
        targets.close()
    from soak_report import report

    report(rows, end, warmup, args.minutes, args.baseline)
    if args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
