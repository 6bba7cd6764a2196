"""Rate limits in recovery: 429 probes, the rate-limit-recovery workflow's steps, end to end.

HTTP is the real fault server (its /ratelimit route answers 429 with Retry-After); shared state
is a real Redis (or the in-process store). Clocks are injected wherever a test asserts timing,
except the end-to-end test, which waits for real (~2 s).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import redis
from faultserver import FaultApp, FaultServer, Receive, Scope, Send
from ratelimit_helpers import NOW, http_config

from recovery.backends.keys import rate_key
from recovery.backends.rate import rate_store_for
from recovery.backends.state import SharedState
from recovery.backends.state_memory import MemoryState
from recovery.backends.state_redis import RedisState
from recovery.engine.monitor import decide
from recovery.engine.probing import probe_once, probe_targets
from recovery.engine.runtime import RecoveryRequest, RecoveryRuntime
from recovery.engine.workflows import select_workflow
from recovery.errors import EscalationRequired, TemporaryError
from recovery.kinds.base import ProbeResult
from recovery.kinds.ratelimit import adjust_request_rate, wait_for_rate_limit_reset

# --- probes against the real fault server -------------------------------------------------------


async def test_429_probe_is_rate_limited_and_selects_rate_limit_recovery(fault_server: FaultServer) -> None:
    config = http_config(f"{fault_server.url}/ratelimit?retry_after=2")
    [result] = await probe_targets(config.targets)
    assert (result.healthy, result.status, result.rate_limited, result.retry_after_seconds) == (
        False,
        429,
        True,
        2.0,
    )
    assert select_workflow(config.targets[0], result).name == "rate-limit-recovery"
    fault_server.app.set_mode("status:503")
    [down] = await probe_targets(http_config(f"{fault_server.url}/health").targets)
    assert select_workflow(config.targets[0], down).name == "api-failure-recovery"
    assert select_workflow(config.targets[0]).name == "api-failure-recovery"


class HeaderApp(FaultApp):
    """The fault server plus a route announcing limits the GitHub way (no Retry-After)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] != "/quota":
            await super().__call__(scope, receive, send)
            return
        headers = [
            (b"content-type", b"application/json"),
            (b"x-ratelimit-limit", b"600"),
            (b"x-ratelimit-remaining", b"0"),
            (b"x-ratelimit-reset", str(int(time.time()) + 30).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps({"ok": True}).encode()})


async def test_x_ratelimit_headers_from_a_real_server() -> None:
    with FaultServer(app=HeaderApp()) as server:
        config = http_config(f"{server.url}/quota", limit_window_seconds=60)
        [result] = await probe_targets(config.targets)
    assert result.rate_limited and result.status == 200
    assert result.retry_after_seconds is not None and 28 <= result.retry_after_seconds <= 30
    assert result.rate_limit_per_second == 10.0


# --- the workflow's steps -------------------------------------------------------------------------


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


async def test_wait_uses_the_monitors_record_and_a_fake_clock() -> None:
    state = MemoryState()
    config = http_config("http://127.0.0.1:9/health")
    rate_store_for(state).note_limited("api", NOW, 2.0, None, 60)
    sleep = FakeSleep()
    detail = await wait_for_rate_limit_reset(state, config.targets[0], sleep=sleep, clock=lambda: NOW + 0.5)
    assert sleep.calls == [1.5]
    assert detail == {
        "reset_in_seconds": 1.5,
        "waited_seconds": 1.5,
        "max_wait_seconds": 300.0,
        "source": "monitor",
    }


async def test_wait_beyond_the_cap_escalates_without_sleeping() -> None:
    state = MemoryState()
    config = http_config("http://127.0.0.1:9/health", max_wait_seconds=60)
    rate_store_for(state).note_limited("api-big", NOW, 3600.0, None, 60)
    target = config.targets[0].model_copy(update={"name": "api-big"})
    sleep = FakeSleep()
    with pytest.raises(EscalationRequired, match=r"resets in 3600s, beyond max_wait_seconds \(60s\)"):
        await wait_for_rate_limit_reset(state, target, sleep=sleep, clock=lambda: NOW)
    assert sleep.calls == []


async def test_wait_without_a_record_asks_the_server(fault_server: FaultServer) -> None:
    state = MemoryState()
    config = http_config(f"{fault_server.url}/ratelimit?retry_after=2")
    target = config.targets[0].model_copy(update={"name": "api-fresh"})
    sleep = FakeSleep()
    detail = await wait_for_rate_limit_reset(state, target, lambda: probe_once(target), sleep=sleep)
    assert sleep.calls == [2.0] and detail is not None and detail["source"] == "probe"
    healthy = config.targets[0].model_copy(update={"name": "api-ok", "url": f"{fault_server.url}/health"})
    probe_healthy = lambda: probe_once(healthy)  # noqa: E731
    assert await wait_for_rate_limit_reset(state, healthy, probe_healthy, sleep=sleep) is None  # not limited


def test_adjust_uses_the_announced_limit() -> None:
    state = MemoryState()
    config = http_config("http://127.0.0.1:9/health", normal_rate_per_second=50)
    target = config.targets[0].model_copy(update={"name": "api-adjust"})
    rate_store_for(state).note_limited("api-adjust", NOW, None, 10.0, 60)
    detail = adjust_request_rate(config, state, target, now=NOW)
    assert detail == {
        "before_per_second": 50.0,
        "allowed_per_second": 5.0,
        "normal_per_second": 50.0,
        "observed_per_second": 10.0,
    }


# --- end to end in the core: 429 + Retry-After: 2 -> waited ~2 s, lowered, raised back ------------


async def run_workflow(rt: RecoveryRuntime) -> dict[str, Any]:
    """What the Prefect flow does, without Prefect: each step, TemporaryError retried per plan."""
    import asyncio

    details: dict[str, Any] = {}
    for name, planned in rt.plans.items():
        for attempt in range(1, planned.plan.max_attempts + 1):
            started = time.perf_counter()
            try:
                detail = await rt.run_step(name, attempt)
                details[name] = (detail, time.perf_counter() - started, time.time())
                break
            except TemporaryError:
                if attempt == planned.plan.max_attempts:
                    raise
                await asyncio.sleep(planned.plan.delays[attempt - 1])
    rt.finish("succeeded")
    return details


@pytest.mark.parametrize("backend", ["redis", "memory"])
async def test_rate_limited_target_waits_lowers_and_recovers(
    fault_server: FaultServer, sqlite_url: str, request: pytest.FixtureRequest, backend: str
) -> None:
    state_url = request.getfixturevalue("redis_url") if backend == "redis" else None
    config = http_config(f"{fault_server.url}/health", state_url, sqlite_url)
    state: SharedState = RedisState(state_url) if state_url else MemoryState()
    import recovery.backends.state as state_module

    if state_url is None:  # the runtime opens the process-wide in-memory state
        state = state_module.open_state(None)
    rate_store_for(state).clear("api")
    fault_server.app.set_mode("ratelimit:2")

    limited_at = time.time()
    [probe] = await probe_targets(config.targets)
    [decision] = decide(config, state, [probe])
    assert (decision.action, decision.workflow) == ("recover", "rate-limit-recovery")

    # The dependency lifts its limit after ~1.5 s; the workflow waits for the announced 2 s.
    threading.Timer(1.5, fault_server.app.set_mode, args=("ok",)).start()
    rt = RecoveryRuntime.begin(
        config,
        RecoveryRequest(
            target="api", workflow=decision.workflow, run_type="automatic", lock_token=decision.lock_token
        ),
    )
    details = await run_workflow(rt)
    wait_detail, waited, wait_ended = details["wait_for_rate_limit_reset"]
    assert wait_detail["source"] == "monitor"
    # Waited until ~2 s after the 429 (Retry-After: 2), less what detection and setup took.
    assert 1.9 <= wait_ended - limited_at <= 4.0
    assert 0.3 <= wait_detail["waited_seconds"] <= 2.0 and waited >= wait_detail["waited_seconds"] - 0.05
    adjust, _, _ = details["adjust_request_rate"]
    assert (adjust["before_per_second"], adjust["allowed_per_second"]) == (4.0, 2.0)
    record = rt.audit.run(rt.run_id)
    assert record is not None and record.state == "succeeded" and record.workflow == "rate-limit-recovery"

    rates = rate_store_for(state)
    assert rates.read("api").allowed == 2.0  # type: ignore[union-attr]
    if state_url:
        raw = redis.Redis.from_url(state_url, decode_responses=True).hget(rate_key("api"), "allowed")
        assert raw is not None and float(raw) == 2.0  # the rate the application fleet reads
    # Healthy monitor cycles raise it additively (fake clock: one cycle every 10 s).
    healthy = ProbeResult("api", "http", True, "ok", 1.0, 200)
    start = time.time()
    seen = []
    for cycle in range(1, 4):
        decide(config, state, [healthy], now=start + 10 * cycle)
        current = rates.read("api")
        seen.append(current.allowed if current is not None and current.allowed is not None else 4.0)
    assert seen == [3.0, 4.0, 4.0]
