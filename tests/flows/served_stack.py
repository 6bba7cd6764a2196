"""A real `prefect server start` and real `recovery serve` processes, as another system sees them.

One server is started per test session (`prefect_server` in conftest.py): its start-up costs
25-60 s on this machine, and five test modules used to pay it once per test. Each test starts
its own `recovery serve` with its own config (`serving`), and on the way out deletes every
deployment, so the next test's `serve` registers fresh deployment ids: a later test never picks
up, counts or schedules an earlier test's runs (tests filter runs by deployment or run id).

Tests that need a server of their own (API auth, a server killed on purpose) call
`start_server` and `stop`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from faultserver import free_port

REPO = Path(__file__).resolve().parents[2]
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
AUTH = ("admin", "Sup3rSecretAuth")


class Api:
    """Minimal REST client: JSON in/out, retries 503 like the README's curl recipe."""

    def __init__(self, base: str, auth: tuple[str, str] | None = None) -> None:
        self.base = base
        self.client = httpx.Client(base_url=base, auth=auth, timeout=30)

    def call(self, method: str, path: str, expect: int | tuple[int, ...] = (200, 201), **kw: Any) -> Any:
        expected = (expect,) if isinstance(expect, int) else expect
        for attempt in range(20):
            response = self.client.request(method, path, **kw)
            if response.status_code != 503:
                break
            time.sleep(min(0.2 * 2**attempt, 3))
        assert response.status_code in expected, (method, path, response.status_code, response.text)
        return response.json() if response.content else None

    def deployment_id(self, flow: str, deployment: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while True:
            response = self.client.get(f"/deployments/name/{flow}/{deployment}")
            if response.status_code == 200:
                return str(response.json()["id"])
            assert time.monotonic() < deadline, f"deployment {flow}/{deployment} never appeared"
            time.sleep(1)

    def trigger(self, deployment_id: str, parameters: dict[str, Any]) -> str:
        run = self.call(
            "POST", f"/deployments/{deployment_id}/create_flow_run", json={"parameters": parameters}
        )
        return str(run["id"])

    def wait(self, flow_run_id: str, timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            run = self.call("GET", f"/flow_runs/{flow_run_id}")
            if run["state"] and run["state"]["type"] in FINAL:
                return dict(run)
            assert time.monotonic() < deadline, f"flow run stuck in {run['state']}"
            time.sleep(0.5)

    def forget_deployments(self) -> None:
        """Delete every deployment: their scheduled runs go with them, and no later `serve`
        polls for their ids."""
        for deployment in self.call("POST", "/deployments/filter", json={"limit": 200}):
            self.call("DELETE", f"/deployments/{deployment['id']}", expect=(200, 204, 404))


def start_server(
    home: Path,
    auth: bool = False,
    ui: bool = False,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """A `prefect server start` on ``port`` (default: a free loopback port); ``ui``: also serve
    the UI (which calls the API at ``PREFECT_SERVER_UI_API_URL``). Its own session (process
    group): ``os.killpg(proc.pid, ...)`` reaches every process it forks."""
    port = port or free_port()
    server_env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": str(ui).lower(),
        "PREFECT_SERVER_UI_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_API_URL": "",
        **(env or {}),
    }
    if auth:
        server_env["PREFECT_SERVER_API_AUTH_STRING"] = ":".join(AUTH)
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2, auth=AUTH if auth else None).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, "prefect server exited during start-up"
        time.sleep(0.5)
    stop(proc)
    raise AssertionError("prefect server did not start in 180 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@contextmanager
def serving(
    api: Api,
    config: Path,
    limit: int | None = 4,
    env: Mapping[str, str] | None = None,
) -> Iterator[Api]:
    """`recovery --config CONFIG serve` against ``api``'s server for the length of the block."""
    serve_env = {
        **os.environ,
        "PREFECT_API_URL": api.base,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **(env or {}),
    }
    serve_env.pop("RECOVERY_CONFIG", None)  # only --config names the config
    argv = [sys.executable, "-m", "recovery_cli.main", "--config", str(config), "serve"]
    worker = subprocess.Popen(
        [*argv, "--limit", str(limit)] if limit is not None else argv,
        env=serve_env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield api
    finally:
        stop(worker)
        api.forget_deployments()
