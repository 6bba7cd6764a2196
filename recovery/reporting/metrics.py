"""Prometheus metrics of the recovery pipelines (prometheus_client, Prefect already depends on it).

    recovery_runs_total{target,workflow,type,state}    counter: recovery runs by final state
                                                       (succeeded/failed/cancelled/refused)
    recovery_duration_seconds{target,workflow}         histogram: duration of finished runs
    target_up{target}                                  gauge: 1 last probe passed, 0 it failed
    circuit_breaker_state{target}                      gauge: 0 closed, 1 half-open, 2 open
    target_flapping{target}                            gauge: 1 while flap detection holds off
                                                       automatic recovery
    process_asyncio_tasks                              gauge: unfinished asyncio tasks of the
                                                       exporting process (all its event loops),
                                                       counted at scrape time: a leak shows as growth

The monitor flow updates the gauges every cycle and the recovery flows count their runs (the
flows layer calls the ``record_*`` / ``observe_*`` functions below). Two ways out:

* ``start_metrics_server(port)``: an HTTP endpoint for Prometheus to scrape (``/metrics``);
  ``recovery serve --metrics-port`` starts it.
* ``write_textfile(path)``: the node_exporter textfile collector format, written atomically
  (for cron-style ``recovery monitor --once`` runs that exit before any scrape).

Flow runs started by ``recovery serve`` (or a worker) run in *subprocesses*. To see their
updates in the serving process, set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before
starting it (it is inherited): every process then writes its values there and the endpoint and
the textfile aggregate them (counters and histograms are summed, gauges show the most recent
value). Without it only the current process's values are exported.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
    write_to_textfile,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
DURATION_BUCKETS = (1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, float("inf"))
BREAKER_VALUES = {"closed": 0.0, "half-open": 1.0, "open": 2.0}

REGISTRY = CollectorRegistry(auto_describe=True)

RECOVERY_RUNS = Counter(
    "recovery_runs",
    "Recovery runs by target, workflow, type (automatic/manual/scheduled/emergency) and final state.",
    ["target", "workflow", "type", "state"],
    registry=REGISTRY,
)
RECOVERY_DURATION = Histogram(
    "recovery_duration_seconds",
    "Duration of finished recovery runs (refused runs excluded).",
    ["target", "workflow"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
TARGET_UP = Gauge(
    "target_up",
    "1 if the target's last monitor probe passed, 0 if it failed.",
    ["target"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
CIRCUIT_BREAKER_STATE = Gauge(
    "circuit_breaker_state",
    "The target's circuit breaker: 0 closed, 1 half-open, 2 open.",
    ["target"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
TARGET_FLAPPING = Gauge(
    "target_flapping",
    "1 while the target flaps and automatic recovery is held off.",
    ["target"],
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)


def asyncio_task_count() -> float:
    """Unfinished asyncio tasks of this process, over every event loop and thread; NaN if unknown.

    ``asyncio.all_tasks()`` needs the loop and its thread; the metrics endpoint runs in its own
    thread and knows neither. CPython <= 3.11 registers every task in ``asyncio.tasks._all_tasks``
    (a WeakSet), which is read here; a loop adding a task meanwhile can make the copy fail, so it
    is retried. Costs one pass over the live tasks per scrape, nothing between scrapes."""
    tasks = getattr(asyncio.tasks, "_all_tasks", None)
    if tasks is None:  # a Python that keeps tasks elsewhere: say "unknown", never a wrong 0
        return math.nan
    for _ in range(5):
        try:
            return float(sum(1 for task in list(tasks) if not task.done()))
        except RuntimeError:  # "set changed size during iteration": another thread's loop ran
            continue
    return math.nan


class _AsyncioTasks:
    """``process_asyncio_tasks`` of the process serving ``/metrics`` (a soak watches it for leaks)."""

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "process_asyncio_tasks",
            "Unfinished asyncio tasks of the exporting process, counted at scrape time.",
            value=asyncio_task_count(),
        )


REGISTRY.register(_AsyncioTasks())


# --- updates -------------------------------------------------------------------------------------


def record_run(
    target: str, workflow: str, run_type: str, state: str, duration_seconds: float | None = None
) -> None:
    """Count one recovery run in its final state; observe its duration unless it was refused."""
    RECOVERY_RUNS.labels(target=target, workflow=workflow, type=run_type, state=state).inc()
    if duration_seconds is not None and state != "refused":
        RECOVERY_DURATION.labels(target=target, workflow=workflow).observe(max(0.0, duration_seconds))


def set_target_up(target: str, up: bool) -> None:
    TARGET_UP.labels(target=target).set(1.0 if up else 0.0)


def set_breaker_state(target: str, state: str) -> None:
    """``closed``/``half-open``/``open``; an unknown state removes the series (no stale value)."""
    value = BREAKER_VALUES.get(state)
    if value is None:
        with contextlib.suppress(KeyError):
            CIRCUIT_BREAKER_STATE.remove(target)
        return
    CIRCUIT_BREAKER_STATE.labels(target=target).set(value)


def set_flapping(target: str, flapping: bool) -> None:
    TARGET_FLAPPING.labels(target=target).set(1.0 if flapping else 0.0)


class _Row(Protocol):
    @property
    def target(self) -> str: ...


class _ProbeOutcome(_Row, Protocol):
    @property
    def healthy(self) -> bool: ...
    @property
    def flapping(self) -> bool: ...


class _BoardRow(_Row, Protocol):
    @property
    def breaker_state(self) -> str: ...


def observe_decisions(decisions: Iterable[_ProbeOutcome]) -> None:
    """After a monitor cycle: ``target_up`` and ``target_flapping`` from its decisions."""
    for d in decisions:
        set_target_up(d.target, d.healthy)
        set_flapping(d.target, d.flapping)


def observe_status(rows: Iterable[_BoardRow]) -> None:
    """After the status board is built: ``circuit_breaker_state`` of every target."""
    for row in rows:
        set_breaker_state(row.target, row.breaker_state)


# --- export --------------------------------------------------------------------------------------


def exposition_registry() -> CollectorRegistry:
    """What to export: every process's values in multiprocess mode, else this process's."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    registry.register(_AsyncioTasks())  # per process by nature: the exporting process's own count
    return registry


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint; ``close()`` stops it."""

    host: str
    port: int
    _server: object
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        shutdown = getattr(self._server, "shutdown", None)
        if shutdown is not None:
            shutdown()
        server_close = getattr(self._server, "server_close", None)
        if server_close is not None:
            server_close()
        self._thread.join(timeout=5)


def start_metrics_server(port: int, host: str = "0.0.0.0") -> MetricsServer:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread (port 0: any free port)."""
    server, thread = start_http_server(port, addr=host, registry=exposition_registry())
    return MetricsServer(host, int(server.server_port), server, thread)


def write_textfile(path: str | Path) -> Path:
    """Write every metric for node_exporter's textfile collector (``*.prom``), atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(target), exposition_registry())
    return target
