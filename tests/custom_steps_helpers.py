"""Shared pieces of the custom-step tests: configs, a runtime to run steps in, local services."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from recovery.audit.records import RunRecord, StepRecord
from recovery.config.loader import RecoveryConfig, parse_config
from recovery.engine.runtime import RecoveryRequest, RecoveryRuntime
from recovery.services import services_for

TESTS = Path(__file__).resolve().parent
SERVICE = TESTS / "restartable_service.py"
# One attempt per step: a failing step's row is final at once (retries are Prefect's, tested in flows/).
ONE_ATTEMPT = {"kind": "exponential", "base_seconds": 0.01, "max_attempts": 1, "jitter": "none"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_with(
    audit_url: str, steps: list[dict[str, Any]], url: str = "http://127.0.0.1:9/health", **extra: Any
) -> RecoveryConfig:
    """A config whose one target ``payments-api`` recovers with workflow ``custom`` = ``steps``."""
    data: dict[str, Any] = {
        "audit_url": audit_url,
        "strategy": ONE_ATTEMPT,
        "workflows": {"custom": {"steps": steps}},
        "targets": [
            {
                "name": "payments-api",
                "kind": "http",
                "url": url,
                "timeout_seconds": 1,
                "workflow": "custom",
                "verify": {"consecutive_successes": 1, "interval_seconds": 0},
            }
        ],
        **extra,
    }
    return parse_config(data)


STARTED: list[RecoveryRuntime] = []


def begin(config: RecoveryConfig, reason: str = "disk full") -> RecoveryRuntime:
    """A started run (lock taken, audit row written); ``finish_started`` ends it after the test."""
    request = RecoveryRequest("payments-api", None, "manual", "tester", reason)
    rt = RecoveryRuntime.begin(config, request)
    STARTED.append(rt)
    return rt


def finish_started() -> None:
    """Finish every run a test began and left open (its lock would refuse the next test's run)."""
    while STARTED:
        rt = STARTED.pop()
        run = rt.audit.run(rt.run_id)
        if run is not None and run.state == "in_progress":
            rt.finish("failed")


def audited(config: RecoveryConfig, run_id: str) -> RunRecord:
    run = services_for(config).audit.run(run_id)
    assert run is not None
    return run


def step_row(config: RecoveryConfig, run_id: str, name: str) -> StepRecord:
    return next(s for s in audited(config, run_id).steps if s.name == name)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie waiting to be reaped counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_service(port: int, pidfile: Path) -> None:
    import subprocess

    done = subprocess.run([sys.executable, str(SERVICE), str(port), str(pidfile), "--start"], timeout=30)
    assert done.returncode == 0


def stop_pidfile(pidfile: Path) -> None:
    if pidfile.exists():
        with suppress(ProcessLookupError):
            os.kill(int(pidfile.read_text()), 9)


class Recorder(BaseHTTPRequestHandler):
    """Records every request (method, path, headers, body) on ``server.requests``."""

    def _record(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        self.server.requests.append(  # type: ignore[attr-defined]
            {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
        )
        status = int(self.headers.get("X-Answer", "200"))
        payload = json.dumps({"ok": status < 400}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_POST = do_PUT = do_GET = _record  # the stdlib's names

    def log_message(self, format: str, *args: object) -> None:
        return


@contextmanager
def recording_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.requests  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
