"""Issue 11: no secret of the config reaches any output, through success and failure paths.

A unique canary sits in every URL position (userinfo password, path segment, query values with
names no list would know - ``jwt``, ``session``, ``client_name``, ``application_name`` - and the
fragment) and in every header value, of every target kind and every URL source: HTTP targets,
database and Redis target URLs, the cache rebuild SQL and HTTP sources, ``error_cache_url``,
``audit_url`` and ``state_url``. Healthy targets run on the real services (Redis and PostgreSQL
ignore the passwords, the FaultServer checks the Basic credentials); broken ones point at dead
ports so errors are raised. The real CLI then runs every command, and the test scans what came
out: stdout/stderr, every audit row (all columns), every key and value of the state database,
Prefect's logs, flow and task runs with all their states, events and artifacts on the session's
test server, and the Prometheus exposition of the CLI processes' metrics. 0 canaries allowed.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy
import yaml
from faultserver import FaultServer, free_port
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventOccurredFilter
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

pytestmark = pytest.mark.prefect

ONE_SHOT = {
    "kind": "exponential",
    "base_seconds": 0.1,
    "factor": 2,
    "max_delay_seconds": 0.2,
    "max_attempts": 1,
    "jitter": "none",
}
FAST_VERIFY = {"consecutive_successes": 1, "interval_seconds": 0}


class Canaries:
    """One unique token per position; a leak names the position it came from."""

    def __init__(self) -> None:
        self.by_position: dict[str, str] = {}

    def __call__(self, position: str) -> str:
        token = f"Cnry{len(self.by_position):02d}{uuid.uuid4().hex[:12]}"
        self.by_position[position] = token
        return token

    def found_in(self, text: str) -> list[str]:
        return [position for position, token in self.by_position.items() if token in text]


def http_url(c: Canaries, name: str, port: int, user: str = "svc") -> tuple[str, str]:
    """An HTTP URL with a canary in the password, a path segment, two query values and the
    fragment; returns it and its user:password (the FaultServer's Basic credentials)."""
    password = c(f"{name} userinfo password")
    url = (
        f"http://{user}:{password}@127.0.0.1:{port}/private/{c(f'{name} path segment')}/x"
        f"?jwt={c(f'{name} ?jwt=')}&session={c(f'{name} ?session=')}#{c(f'{name} #fragment')}"
    )
    return url, f"{user}:{password}"


def redis_url_with(c: Canaries, name: str, base: str) -> str:
    """``base`` (redis://host:port/db) with a canary password, client_name and fragment."""
    password = c(f"{name} password")
    url = base.replace("redis://", f"redis://:{password}@", 1)
    return f"{url}?client_name={c(f'{name} ?client_name=')}#{c(f'{name} #fragment')}"


def pg_url_with(c: Canaries, name: str, pg_url: str) -> str:
    """The test schema's URL with a canary password and application_name (trust auth)."""
    url = pg_url.replace("postgres@", f"postgres:{c(f'{name} password')}@", 1)
    return f"{url}&application_name={c(f'{name} ?application_name=')}"


def dead_pg_url(c: Canaries, name: str) -> str:
    return (
        f"postgresql+psycopg://postgres:{c(f'{name} password')}@127.0.0.1:{free_port()}/"
        f"{c(f'{name} database (path)')}?application_name={c(f'{name} ?application_name=')}"
    )


def build_config(
    c: Canaries, tmp_path: Path, pg_url: str, redis_url: str, api: FaultServer, source: FaultServer
) -> Path:
    api_url, api.app.basic_auth = http_url(c, "http target", api.port)
    source_url, source.app.basic_auth = http_url(c, "rebuild http source", source.port)
    source.app.private_body = {"user:1": json.dumps({"id": 1}), "user:2": json.dumps({"id": 2})}
    down_api_url, _ = http_url(c, "dead http target", free_port())
    dead_source_url, _ = http_url(c, "dead rebuild http source", free_port())
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    common = {"verify": FAST_VERIFY}
    targets: list[dict[str, Any]] = [
        {
            "name": "api-ok",
            "kind": "http",
            "url": api_url,
            "headers": {"X-Api-Key": c("http header value"), "X-Auth": f"Bearer {c('http bearer header')}"},
            "error_cache_pattern": "errors:api-ok:*",
            "error_cache_url": redis_url_with(c, "error_cache_url", redis_url),
            **common,
        },
        {
            "name": "api-down",
            "kind": "http",
            "url": down_api_url,
            "timeout_seconds": 1,
            "headers": {"X-Api-Key": c("dead http header value")},
            "error_cache_pattern": "errors:api-down:*",
            "error_cache_url": redis_url_with(c, "dead error_cache_url", dead_redis),
            **common,
        },
        {"name": "orders-db", "kind": "database", "url": pg_url_with(c, "database url", pg_url), **common},
        {
            "name": "down-db",
            "kind": "database",
            "url": dead_pg_url(c, "dead database url"),
            "connect_timeout_seconds": 1,
            **common,
        },
        {
            "name": "users-cache",
            "kind": "redis",
            "url": redis_url_with(c, "redis target url", redis_url),
            "validate": {"key_pattern": "user:*"},
            "rebuild": {"http": {"url": source_url, "timeout_seconds": 5}},
            **common,
        },
        {
            "name": "sql-cache",
            "kind": "redis",
            "url": redis_url,
            "validate": {"key_pattern": "sqlcache:*"},
            "rebuild": {
                "sql": {
                    "url": pg_url_with(c, "rebuild sql source", pg_url),
                    "query": "SELECT 1 AS id, 'x' AS name",
                    "key_template": "sqlcache:{id}",
                }
            },
            **common,
        },
        {
            "name": "down-cache",
            "kind": "redis",
            "url": redis_url_with(c, "dead redis target url", dead_redis),
            "timeout_seconds": 0.5,
            "validate": {"key_pattern": "user:*"},
            **common,
        },
        {
            "name": "cold-cache",
            "kind": "redis",
            "url": redis_url,
            "validate": {"key_pattern": "cold:*"},
            "rebuild": {"http": {"url": dead_source_url, "timeout_seconds": 2}},
            **common,
        },
        {
            "name": "cold-sql-cache",
            "kind": "redis",
            "url": redis_url,
            "validate": {"key_pattern": "coldsql:*"},
            "rebuild": {
                "sql": {
                    "url": dead_pg_url(c, "dead rebuild sql source"),
                    "query": "SELECT 1 AS id",
                    "key_template": "coldsql:{id}",
                }
            },
            **common,
        },
    ]
    document = {
        "audit_url": pg_url_with(c, "audit_url", pg_url),
        "state_url": redis_url_with(c, "state_url", redis_url),
        "monitor": {"interval_seconds": 1, "failure_threshold": 1},
        "strategy": ONE_SHOT,
        "targets": targets,
    }
    path = tmp_path / "recovery.yaml"
    # A JSON round trip unshares ``common``'s dicts: yaml would write them as anchors, which the
    # config loader refuses (recovery.config.source).
    path.write_text(yaml.safe_dump(json.loads(json.dumps(document)), sort_keys=False))
    return path


# --- what the runs left behind ---------------------------------------------------------------------


def audit_rows(pg_url: str) -> str:
    engine = sqlalchemy.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            return "\n".join(
                str(row[0])
                for table in ("recovery_runs", "recovery_steps")
                for row in conn.execute(sqlalchemy.text(f"SELECT row_to_json(t)::text FROM {table} t"))
            )
    finally:
        engine.dispose()


def redis_dump(url: str) -> str:
    client = redis.Redis.from_url(url, decode_responses=False)
    chunks: list[str] = []
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key).decode()
            value: Any = None
            if kind == "string":
                value = client.get(key)
            elif kind == "hash":
                value = client.hgetall(key)
            elif kind == "list":
                value = client.lrange(key, 0, -1)
            elif kind == "set":
                value = client.smembers(key)
            elif kind == "zset":
                value = client.zrange(key, 0, -1, withscores=True)
            chunks.append(f"{key!r} {kind} {value!r}")
    finally:
        client.close()
    return "\n".join(chunks)


async def _pages(read: Callable[[int], Any]) -> list[Any]:
    items: list[Any] = []
    while batch := await read(len(items)):
        items += batch
    return items


async def prefect_texts(since: float) -> dict[str, str]:
    """Everything the test server holds: logs, flow/task runs and all their states, events,
    artifacts (other tests' runs too: the canaries are unique, so that is harmless)."""
    async with get_client() as client:
        logs = await _pages(lambda offset: client.read_logs(limit=200, offset=offset))
        flow_runs = await _pages(lambda offset: client.read_flow_runs(limit=200, offset=offset))
        task_runs = await _pages(lambda offset: client.read_task_runs(limit=200, offset=offset))
        flow_states = [await client.read_flow_run_states(r.id) for r in flow_runs]
        task_states = [await client.read_task_run_states(r.id) for r in task_runs]
        artifacts = await _pages(lambda offset: client.read_artifacts(limit=200, offset=offset))
        window = EventOccurredFilter(
            since=datetime.fromtimestamp(since - 5, UTC),
            until=datetime.fromtimestamp(time.time() + 3600, UTC),
        )
        page = await client.read_events(filter=EventFilter(occurred=window), limit=50)
        events = list(page.events)
        while page.next_page:
            page = await client.read_events_page(page.next_page)
            events += page.events

    def dump(items: Iterable[Any]) -> str:
        return "\n".join(i.model_dump_json() for i in items)

    return {
        "prefect logs": "\n".join(f"{log.name} {log.message}" for log in logs),
        "prefect flow runs": dump(flow_runs),
        "prefect flow run states": "\n".join(dump(states) for states in flow_states),
        "prefect task runs": dump(task_runs),
        "prefect task run states": "\n".join(dump(states) for states in task_states),
        "prefect events": dump(events),
        "prefect artifacts": dump(artifacts),
    }


async def wait_for_failure_events(targets: set[str], since: float, timeout: float = 60) -> None:
    """Events are persisted asynchronously: wait until each failing target's recovery.failed is in."""
    deadline = time.monotonic() + timeout
    window = EventOccurredFilter(
        since=datetime.fromtimestamp(since - 5, UTC), until=datetime.fromtimestamp(time.time() + 3600, UTC)
    )
    async with get_client() as client:
        while time.monotonic() < deadline:
            page = await client.read_events(filter=EventFilter(occurred=window), limit=50)
            events = list(page.events)
            while page.next_page:
                page = await client.read_events_page(page.next_page)
                events += page.events
            seen = {e.resource.get("prefect.resource.name") for e in events if e.event == "recovery.failed"}
            if targets <= seen:
                return
            await asyncio.sleep(0.5)
    raise AssertionError(f"recovery.failed events not persisted for {targets - seen}")


# --- the test ---------------------------------------------------------------------------------------


async def test_no_canary_in_any_output(
    run_cli: Any, prefect_api: str, pg_url: str, redis_url: str, fault_server: FaultServer, tmp_path: Path
) -> None:
    started = time.time()
    c = Canaries()
    source = FaultServer().start()
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    try:
        config = str(build_config(c, tmp_path, pg_url, redis_url, fault_server, source))
        redis.Redis.from_url(redis_url).set("errors:api-ok:1", "cached 503")

        def cli(*args: str) -> tuple[list[str], Any]:
            return list(args), run_cli("--config", config, *args, env=env, timeout=240)

        runs = [cli("validate"), cli("check"), cli("check", "--json")]
        recoveries = ["api-ok", "api-down", "orders-db", "down-db", "users-cache", "sql-cache", "down-cache"]
        with ThreadPoolExecutor(5) as pool:  # different targets: their recoveries may overlap
            runs += list(
                pool.map(lambda target: cli("recover", target, "--reason", "canary test"), recoveries)
            )
            runs += list(pool.map(lambda target: cli("recover", target), ["cold-cache", "cold-sql-cache"]))
        runs += [
            cli("clear-cache", "users-cache", "--dry-run"),
            cli("clear-cache", "users-cache", "--json"),
            cli("monitor", "--once"),
            cli("status", "--json"),
            cli("status"),
            cli("history", "--json", "--limit", "100"),
            cli("history"),
            cli("stats"),
            cli("stats", "--json"),
            cli("breaker-status"),
        ]
        codes = {" ".join(args): result.returncode for args, result in runs}
        outputs = {
            f"{' '.join(args)} {stream}": getattr(result, stream)
            for args, result in runs
            for stream in ("stdout", "stderr")
        }

        # The paths ran as intended: the healthy targets recovered (Basic auth, both rebuild
        # sources, the error cache), the dead ones failed with errors (that name their URLs).
        expected = {
            "validate": 0,
            "check": 1,
            "recover api-ok --reason canary test": 0,
            "recover api-down --reason canary test": 1,
            "recover orders-db --reason canary test": 0,
            "recover down-db --reason canary test": 1,
            "recover users-cache --reason canary test": 0,
            "recover sql-cache --reason canary test": 0,
            "recover down-cache --reason canary test": 1,
            "recover cold-cache": 0,
            "recover cold-sql-cache": 0,
            "clear-cache users-cache --dry-run": 0,
            "clear-cache users-cache --json": 0,
            "monitor --once": 1,
        }
        assert {k: codes[k] for k in expected} == expected, outputs
        assert fault_server.app.authorizations and all(
            a.startswith("Basic ") for a in fault_server.app.authorizations
        )
        assert source.app.authorizations, "the rebuild source was never asked"
        history = json.loads(outputs["history --json --limit 100 stdout"])
        errors = " ".join(str(r["error_message"]) + json.dumps(r["steps"]) for r in history)
        for shown in (
            "rebuild source http://***@127.0.0.1:",
            "redis target down-cache (redis://***@127.0.0.1:",
            "error cache redis://***@127.0.0.1:",
        ):
            assert shown in errors, shown
        cache = redis.Redis.from_url(redis_url)
        assert cache.exists("errors:api-ok:1") == 0 and cache.exists("sqlcache:1") == 1  # error cache cleared
        cache.close()
        assert (
            "2 key(s) match 'user:*'" in outputs["clear-cache users-cache --dry-run stdout"]
        )  # from the source

        await wait_for_failure_events({"api-down", "down-db", "down-cache"}, started)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
        scanned = {
            **outputs,
            "audit rows": audit_rows(pg_url),
            "state redis": redis_dump(redis_url),
            **await prefect_texts(started),
            "metrics exposition": generate_latest(registry).decode(),
        }
        assert "recovery_runs_total" in scanned["metrics exposition"]
        assert "api-down" in scanned["prefect logs"] and "recovery.failed" in scanned["prefect events"]
        leaks = {where: c.found_in(text) for where, text in scanned.items() if c.found_in(text)}
        assert not leaks, f"{len(c.by_position)} canaries x {len(scanned)} outputs; leaked: {leaks}"
    finally:
        source.stop()
