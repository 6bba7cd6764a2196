"""HTTP probes against a real uvicorn server with injected faults (no mocked transport)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator
from typing import Any

import pytest
from faultserver import FaultApp, FaultServer, Receive, Scope, Send

from recovery.config.loader import HttpTarget
from recovery.engine.probing import probe_targets, probe_targets_sync
from recovery.kinds.base import ProbeResult
from recovery.kinds.http import parse_retry_after


def http(name: str, url: str, **overrides: Any) -> HttpTarget:
    return HttpTarget.model_validate({"kind": "http", "name": name, "url": url, **overrides})


async def probe(target: HttpTarget) -> ProbeResult:
    [result] = await probe_targets([target])
    return result


async def test_healthy(fault_server: FaultServer) -> None:
    result = await probe(http("api", f"{fault_server.url}/health"))
    assert (result.healthy, result.reason, result.status) == (True, "ok", 200)
    assert result.target == "api" and result.kind == "http"
    assert not result.rate_limited
    assert 0 < result.latency_ms < 2000
    assert result.as_json()["reason"] == "ok"


async def test_userinfo_is_sent_as_basic_auth(fault_server: FaultServer) -> None:
    # aiohttp refuses a URL with credentials; the probe strips them and sends Basic auth instead.
    fault_server.app.basic_auth = "svc:p@ss:w0rd"
    url = f"http://svc:p%40ss%3Aw0rd@127.0.0.1:{fault_server.port}/private/x"
    result = await probe(http("api", url))
    assert (result.healthy, result.reason, result.status) == (True, "ok", 200)
    wrong = await probe(http("api", url.replace("w0rd", "nope")))
    assert (wrong.healthy, wrong.reason) == (False, "status 401")
    assert all(a.startswith("Basic ") for a in fault_server.app.authorizations)


async def test_unexpected_status(fault_server: FaultServer) -> None:
    fault_server.app.set_mode("status:503")
    result = await probe(http("api", f"{fault_server.url}/health"))
    assert (result.healthy, result.reason, result.status) == (False, "status 503", 503)
    assert not result.rate_limited


async def test_expect_status_list(fault_server: FaultServer) -> None:
    ok = await probe(http("api", f"{fault_server.url}/status/204", expect_status=[200, 204]))
    assert (ok.healthy, ok.status) == (True, 204)
    bad = await probe(http("api", f"{fault_server.url}/status/200", expect_status=[204]))
    assert (bad.healthy, bad.reason) == (False, "status 200")


async def test_head_method(fault_server: FaultServer) -> None:
    result = await probe(http("api", f"{fault_server.url}/health", method="HEAD"))
    assert (result.healthy, result.status) == (True, 200)


async def test_rate_limited_with_retry_after(fault_server: FaultServer) -> None:
    result = await probe(http("api", f"{fault_server.url}/ratelimit?retry_after=7"))
    assert result.healthy is False
    assert result.rate_limited is True
    assert result.reason == "rate limited (429)"
    assert result.status == 429
    assert result.retry_after_seconds == 7.0


async def test_rate_limited_mode_on_health(fault_server: FaultServer) -> None:
    fault_server.app.set_mode("ratelimit:3")
    result = await probe(http("api", f"{fault_server.url}/health"))
    assert (result.rate_limited, result.retry_after_seconds) == (True, 3.0)


async def test_hang_times_out_quickly(fault_server: FaultServer) -> None:
    started = time.perf_counter()
    result = await probe(http("api", f"{fault_server.url}/hang", timeout_seconds=0.3))
    elapsed = time.perf_counter() - started
    assert (result.healthy, result.reason, result.status) == (False, "timeout", None)
    assert elapsed < 1.0
    assert 250 <= result.latency_ms < 1000


async def test_health_hang_mode_times_out(fault_server: FaultServer) -> None:
    fault_server.app.set_mode("hang")
    result = await probe(http("api", f"{fault_server.url}/health", timeout_seconds=0.3))
    assert result.reason == "timeout"


async def test_connection_refused_after_stop(fault_server: FaultServer) -> None:
    target = http("api", f"{fault_server.url}/health")
    assert (await probe(target)).healthy
    fault_server.stop()
    result = await probe(target)
    assert (result.healthy, result.reason, result.status) == (False, "connection refused", None)
    # start() brings the same URL back.
    fault_server.start()
    assert (await probe(target)).healthy


async def test_fail_next_mode(fault_server: FaultServer) -> None:
    fault_server.app.set_mode("fail-next:2")
    target = http("api", f"{fault_server.url}/health")
    reasons = [(await probe(target)).reason for _ in range(4)]
    assert reasons == ["status 503", "status 503", "ok", "ok"]


async def test_admin_route_sets_mode(fault_server: FaultServer) -> None:
    import httpx

    async with httpx.AsyncClient() as client:
        response = await client.post(f"{fault_server.url}/admin/mode", params={"value": "status:502"})
    assert response.json() == {"mode": "status:502"}
    assert (await probe(http("api", f"{fault_server.url}/health"))).reason == "status 502"


async def test_flaky_route(fault_server: FaultServer) -> None:
    target = http("api", f"{fault_server.url}/flaky/probe-test?fail=3")
    results = [await probe(target) for _ in range(5)]
    assert [r.healthy for r in results] == [False, False, False, True, True]
    assert results[0].reason == "status 503"
    assert fault_server.app.flaky_calls["probe-test"] == 5


class QuotaApp(FaultApp):
    """FaultApp plus a route the stock server lacks: 200 with ``X-RateLimit-Remaining: 0``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/quota-exhausted":
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", b"2"),
                (b"x-ratelimit-remaining", b"0"),
                (b"retry-after", b"12"),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        if scope["path"] == "/quota-left":
            headers = [(b"content-length", b"2"), (b"x-ratelimit-remaining", b"10")]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        await super().__call__(scope, receive, send)


@pytest.fixture
def quota_server() -> Iterator[FaultServer]:
    server = FaultServer(app=QuotaApp()).start()
    try:
        yield server
    finally:
        server.stop()


async def test_ratelimit_remaining_zero_header(quota_server: FaultServer) -> None:
    exhausted, left = await probe_targets(
        [
            http("exhausted", f"{quota_server.url}/quota-exhausted"),
            http("left", f"{quota_server.url}/quota-left"),
        ]
    )
    assert exhausted.healthy is False
    assert exhausted.rate_limited is True
    assert exhausted.reason == "rate limited (200)"
    assert exhausted.retry_after_seconds == 12.0
    assert (left.healthy, left.rate_limited) == (True, False)


async def test_results_keep_input_order(fault_server: FaultServer) -> None:
    base = fault_server.url
    targets = [
        http("slowest", f"{base}/slow?seconds=0.4"),
        http("down", f"{base}/status/500"),
        http("slow", f"{base}/slow?seconds=0.2"),
        http("hangs", f"{base}/hang", timeout_seconds=0.3),
        http("fast", f"{base}/status/200"),
        http("limited", f"{base}/ratelimit?retry_after=1"),
    ]
    results = await probe_targets(targets, concurrency=10)
    assert [r.target for r in results] == [t.name for t in targets]
    assert [r.reason for r in results] == [
        "ok",
        "status 500",
        "ok",
        "timeout",
        "ok",
        "rate limited (429)",
    ]


async def test_empty_batch() -> None:
    assert await probe_targets([]) == []


async def test_many_targets_run_concurrently(fault_server: FaultServer) -> None:
    targets = [http(f"t{i}", f"{fault_server.url}/slow?seconds=0.2") for i in range(200)]
    started = time.perf_counter()
    results = await probe_targets(targets, concurrency=100)
    elapsed = time.perf_counter() - started
    assert all(r.healthy for r in results)
    assert [r.target for r in results] == [t.name for t in targets]
    # Sequentially this is 200 * 0.2 s = 40 s; two waves of 100 take ~0.4 s.
    assert elapsed < 3.0, f"200 probes took {elapsed:.2f}s"
    assert fault_server.app.requests["/slow"] == 200


async def test_concurrency_limit_is_respected(fault_server: FaultServer) -> None:
    targets = [http(f"t{i}", f"{fault_server.url}/slow?seconds=0.2") for i in range(30)]
    started = time.perf_counter()
    await probe_targets(targets, concurrency=10)
    elapsed = time.perf_counter() - started
    # 30 probes, 10 at a time, 0.2 s each: at least three waves.
    assert elapsed >= 0.58


def test_sync_wrapper(fault_server: FaultServer) -> None:
    [result] = probe_targets_sync([http("api", f"{fault_server.url}/health")])
    assert result.healthy


def test_parse_retry_after_seconds() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 5 ") == 5.0
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    future = email.utils.formatdate(now + 90, usegmt=True)  # e.g. "Tue, 14 Nov 2023 22:14:50 GMT"
    assert parse_retry_after(future, now=now) == pytest.approx(90.0)
    past = email.utils.formatdate(now - 90, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0
    # Without ``now`` the wall clock is used.
    live = parse_retry_after(email.utils.formatdate(time.time() + 60, usegmt=True))
    assert live is not None and 55 <= live <= 61
