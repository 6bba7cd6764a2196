"""HTTP targets: the probe, clearing cached error responses, and the api-failure workflow.

The probe uses the batch's shared ``aiohttp.ClientSession`` (``ProbeContext.http``): aiohttp
directly, not httpx, because probing is the hot path (why: ``recovery.engine.probing``). A 429
or ``X-RateLimit-Remaining: 0`` is reported as ``rate_limited`` so selection picks
rate-limit-recovery instead of "repairing" the API.
"""

from __future__ import annotations

import asyncio
import base64
import time

import redis

from recovery.backends.state import redis_client, scan_delete
from recovery.blocking import blocking
from recovery.config.keyspace import pattern_problem
from recovery.config.loader import HttpTarget
from recovery.errors import ConfigError, PermanentError, StateUnavailable
from recovery.kinds.base import Detail, Kind, ProbeContext, ProbeResult, StepContext, StepSpec
from recovery.kinds.common import recovery_workflow
from recovery.kinds.ratelimit_headers import observed_limit, reset_after_seconds
from recovery.kinds.ratelimit_headers import parse_retry_after as _parse_retry_after
from recovery.redact import redact, redact_url


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: RFC 9110 delta-seconds (digits only) or an HTTP date."""
    return _parse_retry_after(value, now, strict=True)


def _classify_exception(exc: BaseException) -> str:
    """Map transport errors to a stable reason; the cause chain says more than the wrapper.

    Only fixed words and an exception's class name: never its text, which can hold the URL."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for err in chain:
        if isinstance(err, ConnectionRefusedError):
            return "connection refused"
        if isinstance(err, TimeoutError):  # asyncio.timeout's, and aiohttp's ServerTimeoutError
            return "timeout"
    text = " ".join(str(e) for e in chain).lower()
    if "connect call failed" in text or "connection refused" in text:
        return "connection refused"
    if "timeout" in text or "timed out" in text:
        return "timeout"
    if "disconnected" in text or "reset by peer" in text:
        return "connection reset"
    return f"connection error: {redact(exc.__class__.__name__)}"


def _request_parts(target: HttpTarget) -> tuple[str, dict[str, str]]:
    """The URL without userinfo and the headers to send, userinfo as Basic ``Authorization``.

    aiohttp refuses credentials in a URL, and its ``auth=``/``BasicAuth`` are deprecated (a
    warning per call); UTF-8 credentials, as httpx encoded them.
    The URL's credentials replace a configured Authorization header, as httpx's ``auth=`` did.
    """
    headers = {k: v.get_secret_value() for k, v in target.headers.items()}
    url, userinfo = target.endpoint()
    if userinfo is not None:
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        user, password = userinfo
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return url, headers


async def probe_http(target: HttpTarget, ctx: ProbeContext) -> ProbeResult:
    url, headers = _request_parts(target)
    started = time.perf_counter()
    try:
        # asyncio.timeout is the one bound (the session has none): it covers connect, the
        # response and its body, so a server that accepts and then never answers cannot hold
        # the batch longer than the target's timeout.
        async with (
            asyncio.timeout(target.timeout_seconds),
            ctx.http.request(target.method, url, headers=headers, allow_redirects=False) as response,
        ):
            await response.read()
    except Exception as exc:
        latency = (time.perf_counter() - started) * 1000
        return ProbeResult(target.name, "http", False, _classify_exception(exc), latency)
    latency = (time.perf_counter() - started) * 1000
    status = response.status
    response_headers = response.headers  # case-insensitive
    remaining = response_headers.get("x-ratelimit-remaining")
    if status == 429 or (remaining is not None and remaining.strip() == "0"):
        # Retry-After (seconds or HTTP date), else X-RateLimit-Reset (epoch or seconds).
        retry_after = reset_after_seconds(response_headers)
        limit = observed_limit(response_headers, target.rate_limit.limit_window_seconds)
        return ProbeResult(
            target.name, "http", False, f"rate limited ({status})", latency, status, True, retry_after, limit
        )
    if status in target.expect_status:
        return ProbeResult(target.name, "http", True, "ok", latency, status)
    return ProbeResult(target.name, "http", False, f"status {status}", latency, status)


def as_http(target: object) -> HttpTarget:
    if not isinstance(target, HttpTarget):
        raise PermanentError(f"{getattr(target, 'name', target)} is not an http target")
    return target


async def clear_error_cache(ctx: StepContext) -> Detail:
    """Delete the target's cached error responses so clients stop serving stale failures."""
    target = as_http(ctx.target)
    if not target.error_cache_pattern:
        return None
    problem = pattern_problem(target.error_cache_pattern)  # validated at load; checked again here
    if problem is not None:
        raise ConfigError("error_cache_pattern", f"refused, nothing deleted: {problem}")
    url_secret = target.error_cache_url or ctx.config.state_url
    if url_secret is None:
        return None
    url = url_secret.get_secret_value()
    # Each Redis call times out like the state's; SCAN + UNLINK run on recovery.blocking's
    # threads, so a frozen error cache delays this recovery only, not the others in the loop.
    client = redis_client(url, timeout=ctx.config.state_timeout_seconds)
    try:
        deleted = await blocking(scan_delete, client, target.error_cache_pattern)
    except redis.RedisError as exc:
        raise StateUnavailable(f"error cache {redact_url(url)}: {redact(str(exc))}") from None
    finally:
        client.close()
    return {"pattern": target.error_cache_pattern, "deleted": deleted}


API_FAILURE = recovery_workflow(
    "api-failure-recovery",
    "http",
    "Recover an HTTP dependency: clear cached errors, reset its breaker, verify, resume.",
    StepSpec(
        "clear_error_cache",
        "Delete cached error responses (SCAN + UNLINK).",
        clear_error_cache,
        optional=True,
    ),
)

KIND = Kind("http", probe_http, (API_FAILURE,))
