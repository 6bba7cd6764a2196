"""Check that the recovery artifacts render in the Prefect UI: headless Chromium screenshots.

    python docs/screenshots/capture.py [--out docs/screenshots] [--redis redis://127.0.0.1:6379/11]

Starts a throwaway ``prefect server start`` (its own PREFECT_HOME in a temp dir, a free port,
UI included), runs the real flows against it — a monitor cycle over four targets (one of them
down, with a secret token in its URL), ``recovery-stats`` and ``recovery-history`` over a scripted
audit timeline — then opens each artifact's page in headless Chromium and saves a PNG:

    recovery-status.png, recovery-stats.png, recovery-stats-summary.png, recovery-history.png

Look at them: each table must show its rows (not just the description), and no secret may
appear. The script also fails if the token is found in any artifact through the API.
Needs ``chromium`` (Debian: ``apt-get install -y chromium``), Redis (state; the DB given is
flushed) and about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # faultserver

from faultserver import FaultServer, free_port  # noqa: E402

from recovery.audit.store import AuditStore  # noqa: E402
from recovery.errors import ProbeFailed  # noqa: E402

KEYS = ("recovery-status", "recovery-stats", "recovery-stats-summary", "recovery-history")
TOKEN = "s3cr3t-demo-token-4711"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1900,1100",
    "--virtual-time-budget=30000",
]


def scripted_history(audit_url: str) -> None:
    """A day of recoveries of payments-api and orders-db, with controlled timestamps."""
    store = AuditStore(audit_url)
    now = datetime.now(UTC)
    for hours, wf, target, state, ttd, duration, error in (
        (9, "api-failure-recovery", "payments-api", "succeeded", 62.0, 41.5, None),
        (7, "api-failure-recovery", "payments-api", "failed", 58.0, 95.0, ProbeFailed("still 503")),
        (6.9, "api-failure-recovery", "payments-api", "succeeded", 61.0, 30.2, None),
        (5, "database-recovery", "orders-db", "succeeded", 90.0, 12.8, None),
        (2, "cache-recovery", "users-cache", "succeeded", 31.0, 7.4, None),
    ):
        first = now - timedelta(hours=hours)
        started = first + timedelta(seconds=ttd)
        run_id = store.start_run(
            target=target, workflow=wf, run_type="automatic", steps=(), first_failure_at=first,
            detected_at=started, now=started,
        )  # fmt: skip
        store.finish_run(run_id, state, error, now=started + timedelta(seconds=duration))


async def run_flows(config_path: str) -> None:
    from flows.monitor import monitor
    from flows.observability_flows import recovery_history, recovery_stats

    os.environ["RECOVERY_CONFIG"] = config_path  # flows load the config it names
    await monitor()
    await recovery_stats(since="24h")
    await recovery_history(limit=20)


def latest_ids(api: str) -> dict[str, str]:
    out = {}
    for key in KEYS:
        query = {"artifacts": {"key": {"any_": [key]}}}
        found = httpx.post(f"{api}/artifacts/latest/filter", json=query).json()
        assert found, f"no {key} artifact"
        out[key] = found[0]["latest_id"]
        data = httpx.get(f"{api}/artifacts/{out[key]}").json()
        assert TOKEN not in str(data), f"secret leaked into {key}"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent))
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("chromium not found (Debian: apt-get install -y chromium)")
    port = free_port()
    base, api = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/api"
    with tempfile.TemporaryDirectory() as tmp, FaultServer() as fs:
        env = {
            **os.environ,
            "PREFECT_HOME": tmp,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_URL": base,
            "PREFECT_UI_API_URL": api,
            "PREFECT_API_URL": api,
        }
        server = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(1)
            else:
                sys.exit("prefect server did not start")
            audit = f"sqlite:///{Path(tmp) / 'audit.db'}"
            config = Path(tmp) / "recovery.yaml"
            verify = "verify: {consecutive_successes: 1, interval_seconds: 0}"
            config.write_text(
                f"audit_url: {audit}\nstate_url: {args.redis}\n"
                "monitor: {interval_seconds: 5, failure_threshold: 1}\n"
                "strategy: {kind: exponential, base_seconds: 0.1, max_delay_seconds: 0.2, max_attempts: 2}\n"
                "targets:\n"
                f"  - {{name: payments-api, kind: http, url: '{fs.url}/health', {verify}}}\n"
                f"  - {{name: search-api, kind: http, url: 'http://127.0.0.1:9/h?token={TOKEN}', {verify}}}\n"
                f"  - {{name: orders-db, kind: database, url: 'sqlite:///{Path(tmp) / 'orders.db'}'}}\n"
                f"  - {{name: users-cache, kind: redis, url: '{args.redis}'}}\n"
            )
            import redis

            redis.Redis.from_url(args.redis).flushdb()
            scripted_history(audit)
            os.environ.update({k: env[k] for k in ("PREFECT_API_URL", "PREFECT_UI_URL")})
            asyncio.run(run_flows(str(config)))
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            for key, artifact_id in latest_ids(api).items():
                with tempfile.TemporaryDirectory() as profile:
                    subprocess.run(
                        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                         f"--screenshot={out / (key + '.png')}", f"{base}/artifacts/artifact/{artifact_id}"],
                        check=True, timeout=180, capture_output=True,
                    )  # fmt: skip
                print(f"{key}: {out / (key + '.png')}")
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
