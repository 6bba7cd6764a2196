"""Prefect fixtures: ONE test API server for the whole session (Prefect tests live here).

An ephemeral Prefect server costs ~15 s per process and a SQLite-backed one answers 503
"database is locked" under load, so every flow test in the session shares one harness, and CLI
subprocesses are pointed at it through PREFECT_API_URL instead of starting their own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from dbcache_services import TcpProxy
    from served_stack import Api

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        url = PREFECT_API_URL.value()
        assert url, "the Prefect test harness did not set an API URL"
        yield str(url)


CliRunner = Callable[..., subprocess.CompletedProcess[str]]


CLI = [sys.executable, "-m", "recovery_cli.main"]


@pytest.fixture
def cli_env(prefect_api: str) -> dict[str, str]:
    """Environment for CLI subprocesses: talk to the session's test API, no analytics."""
    return {**os.environ, "PREFECT_API_URL": prefect_api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


@pytest.fixture
def run_cli(cli_env: dict[str, str]) -> CliRunner:
    """Run the real `recovery` console entry point in a subprocess against the test API."""

    def run(
        *args: str, timeout: float = 180, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd or REPO,
            env={**cli_env, **(env or {})},
        )

    return run


@pytest.fixture
def redis_proxy(redis_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """A TCP proxy in front of the test Redis DB (its URL): ``blackhole()`` it to make Redis hang."""
    from dbcache_services import TcpProxy

    db = redis_url.rsplit("/", 1)[1]
    proxy = TcpProxy(("127.0.0.1", 6379)).start()
    try:
        yield proxy, f"redis://127.0.0.1:{proxy.port}/{db}"
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """ONE real `prefect server start` (with its UI and its scheduler) for the REST, served and
    browser tests; each test serves its own deployments on it (served_stack.serving)."""
    from served_stack import Api, start_server, stop

    # The scheduler creates a schedule's runs within seconds, not its default minute.
    env = {"PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}
    server, base = start_server(tmp_path_factory.mktemp("prefect-home"), ui=True, env=env)
    try:
        yield Api(base)
    finally:
        stop(server)
