"""Cache rebuild, a helper of the cache kind: warm a Redis target from its source of truth
(``rebuild`` in the config).

Rows from SQL (streamed), a JSON object from HTTP, or a Python ``module:function``, written in
pipelined batches with ``SET NX`` - only keys that are missing, so entries the application
wrote meanwhile are never overwritten (``overwrite: true`` writes all). A value that fails the
target's validation is counted as ``invalid`` and never written: the rebuild must not put back
what ``clear_corrupted_entries`` would delete.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from collections.abc import Iterable, Iterator, Mapping
from itertools import islice
from typing import Any

import httpx
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from recovery.config.loader import RedisTarget, TargetConfig
from recovery.errors import PermanentError, TemporaryError
from recovery.kinds.base import Detail
from recovery.kinds.cache_client import as_redis, invalid_reason, redis_error, sync_client
from recovery.kinds.sql import classify_db_error
from recovery.redact import redact_url


def _encode(value: Any) -> str | bytes | None:
    if value is None:
        return None
    if isinstance(value, str | bytes):
        return value
    return json.dumps(value, default=str, separators=(",", ":"))


def _batches(items: Iterable[tuple[str, Any]], size: int) -> Iterator[list[tuple[str, Any]]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _write(target: RedisTarget, items: Iterable[tuple[str, Any]]) -> dict[str, int]:
    """Write ``items`` in pipelined batches: SET NX (or plain SET with ``overwrite``), optional TTL."""
    rebuild = target.rebuild
    assert rebuild is not None
    counts = {"rows": 0, "written": 0, "existing": 0, "invalid": 0, "batches": 0}
    client = sync_client(target)
    try:
        for batch in _batches(items, target.batch_size):
            counts["rows"] += len(batch)
            with client.pipeline(transaction=False) as pipe:
                queued = 0
                for key, raw in batch:
                    value = _encode(raw)
                    if value is None or (
                        target.validation is not None and invalid_reason(value, target.validation)
                    ):
                        counts["invalid"] += 1
                        continue
                    pipe.set(key, value, nx=not rebuild.overwrite, ex=rebuild.ttl_seconds)
                    queued += 1
                results = pipe.execute() if queued else []
            counts["batches"] += 1
            written = sum(1 for r in results if r)
            counts["written"] += written
            counts["existing"] += len(results) - written
    except redis.RedisError as exc:
        raise redis_error(target, exc, "rebuilding the cache") from None
    finally:
        client.close()
    return counts


def _rebuild_from_sql(target: RedisTarget) -> dict[str, int]:
    assert target.rebuild is not None and target.rebuild.sql is not None
    source = target.rebuild.sql
    engine = create_engine(source.url.get_secret_value(), poolclass=NullPool)

    def rows() -> Iterator[tuple[str, Any]]:
        with engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=target.batch_size).execute(
                text(source.query)
            )
            for row in result.mappings():
                try:
                    key = source.key_template.format_map(row)
                except KeyError as exc:
                    raise PermanentError(f"rebuild.sql.key_template: no column {exc} in the query") from None
                yield key, (row[source.value_column] if source.value_column else dict(row))

    try:
        return _write(target, rows())
    except SQLAlchemyError as exc:
        reason = classify_db_error(exc)
        message = f"redis target {target.name}: rebuild source (sql): {reason}"
        if reason.startswith(("connection", "timeout", "server starting")):
            raise TemporaryError(message) from None
        raise PermanentError(message) from None
    finally:
        engine.dispose()


async def _fetch_http(target: RedisTarget) -> Mapping[str, Any]:
    assert target.rebuild is not None and target.rebuild.http is not None
    source = target.rebuild.http
    where = f"redis target {target.name}: rebuild source {redact_url(source.url)}"
    url, auth = source.endpoint()  # userinfo -> Basic auth, as for HTTP targets
    try:
        async with httpx.AsyncClient(timeout=source.timeout_seconds, trust_env=False) as client:
            response = await client.get(url, auth=auth)
    except httpx.HTTPError as exc:
        raise TemporaryError(f"{where}: {type(exc).__name__}") from None
    if response.status_code >= 500 or response.status_code == 429:
        raise TemporaryError(f"{where}: status {response.status_code}")
    if response.status_code != 200:
        raise PermanentError(f"{where}: status {response.status_code}")
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise PermanentError(f"{where}: expected a JSON object of key -> value")
    return data


async def _call_python(target: RedisTarget) -> Iterable[tuple[str, Any]]:
    assert target.rebuild is not None and target.rebuild.python is not None
    module_name, _, name = target.rebuild.python.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise PermanentError(f"rebuild.python: cannot load {target.rebuild.python}: {exc}") from None
    result = await fn() if inspect.iscoroutinefunction(fn) else await asyncio.to_thread(fn)
    if isinstance(result, Mapping):
        return list(result.items())
    return list(result)


async def rebuild_cache(target: TargetConfig) -> Detail:
    """Warm the cache from ``rebuild`` (sql, http or python); report keys written."""
    cache = as_redis(target)
    rebuild = cache.rebuild
    if rebuild is None:
        return None
    if rebuild.sql is not None:
        source, counts = "sql", await asyncio.to_thread(_rebuild_from_sql, cache)
    elif rebuild.http is not None:
        data = await _fetch_http(cache)
        source, counts = "http", await asyncio.to_thread(_write, cache, list(data.items()))
    else:
        items = await _call_python(cache)
        source, counts = "python", await asyncio.to_thread(_write, cache, items)
    return {"source": source, "overwrite": rebuild.overwrite, **counts}
