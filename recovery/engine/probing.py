"""Health probes: every target probed concurrently, each classified healthy/unhealthy + reason.

Each target is probed by its kind's prober (``recovery.kinds`` registry); ``concurrency`` workers
take the targets in turn (no task or semaphore per target: at 5,000 targets those cost more
than the requests).

One HTTP stack per purpose:

* **Probes use aiohttp directly** (this batch, the http kind's prober, ``StepContext.probe()``
  of recovery steps): one ``aiohttp.ClientSession`` per batch, keep-alive connections up to
  ``concurrency``. It is the one hot path (every target, every cycle), and aiohttp is made for
  exactly this: measured here (benchmarks/probe_scale.py), httpx's API layer over the very same
  aiohttp transport costs 2-3x aiohttp alone, and httpx's default transport ~10x.
* **httpx for everything else** (step calls such as a cache rebuild from HTTP, the CLI's REST
  calls, admin requests): a few requests per run, where its API matters and its cost does not.

Both stacks trust the same CA bundle (``httpx.create_ssl_context()``, certificate verification on).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Sequence

import aiohttp
import httpx

from recovery.config.loader import TargetConfig
from recovery.kinds import kind_for
from recovery.kinds.base import ProbeContext, ProbeResult

# The reason of a probe cut off by the cycle's deadline. Not a prober's verdict ("timeout" is):
# the monitor did not wait for it, so it is reported but not counted (engine.monitor.decide).
PROBE_TIMED_OUT = "timed out"
CANCEL_GRACE_SECONDS = 1.0
KEEPALIVE_SECONDS = 5.0  # httpx's default keep-alive expiry, kept from the httpx client


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs ~50 ms; every probe batch would pay it again. The same trust
    # store (and SSL_CERT_FILE / SSL_CERT_DIR handling) as the project's httpx clients.
    return httpx.create_ssl_context()


def make_http_client(concurrency: int = 100) -> aiohttp.ClientSession:
    """The batch's HTTP session; create it inside the running event loop (aiohttp binds to it).

    No timeout of its own: each prober bounds its request with ``asyncio.timeout`` (one timer
    per probe instead of two). No cookie jar: a probe must not see what another target set.
    IP-literal hosts skip the resolver (aiohttp checks ``is_ip_address`` first).
    """
    connector = aiohttp.TCPConnector(
        limit=concurrency,
        limit_per_host=0,  # one host may be every target (a gateway): the global limit bounds it
        ssl=_ssl_context(),
        keepalive_timeout=KEEPALIVE_SECONDS,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,  # no proxy or .netrc from the environment, as before
        auto_decompress=False,  # a probe reads the status and headers; the body is drained
        raise_for_status=False,
    )


async def probe_one(target: TargetConfig, ctx: ProbeContext) -> ProbeResult:
    prober = kind_for(target.kind).prober  # an unregistered kind is a programming error: raise
    try:
        return await prober(target, ctx)
    except Exception as exc:  # a prober bug must not sink the whole batch
        return ProbeResult(target.name, target.kind, False, f"probe error: {exc.__class__.__name__}", 0.0)


def timed_out(target: TargetConfig, seconds: float) -> ProbeResult:
    """The result of a probe still running when the cycle's probing time ran out."""
    return ProbeResult(target.name, target.kind, False, PROBE_TIMED_OUT, seconds * 1000)


async def probe_targets(
    targets: Sequence[TargetConfig], concurrency: int = 100, timeout: float | None = None
) -> list[ProbeResult]:
    """Probe all ``targets`` at most ``concurrency`` at a time; results keep the input order.

    ``timeout``: probes still running (or not started) after that many seconds are cancelled
    and reported as ``timed out`` (``PROBE_TIMED_OUT``); the others keep their results.
    """
    if not targets:
        return []
    results: list[ProbeResult | None] = [None] * len(targets)
    pending_indexes = iter(range(len(targets)))  # shared by the workers: each takes the next one

    async with make_http_client(concurrency) as session:
        ctx = ProbeContext(http=session)

        async def worker() -> None:
            for i in pending_indexes:
                results[i] = await probe_one(targets[i], ctx)

        workers = [asyncio.ensure_future(worker()) for _ in range(min(concurrency, len(targets)))]
        try:
            done, pending = await asyncio.wait(workers, timeout=timeout)
        finally:
            for task in workers:
                task.cancel()  # no-op for finished workers; ends hung probes (and a cancelled caller's)
        if pending:  # let them unwind before the shared session closes; a prober that
            await asyncio.wait(pending, timeout=CANCEL_GRACE_SECONDS)  # ignores it is left behind
        for task in done:
            task.result()  # a worker that died raises here (an unregistered kind: a programming error)
    return [
        result if result is not None else timed_out(target, timeout or 0.0)
        for result, target in zip(results, targets, strict=True)
    ]


def probe_targets_sync(targets: Sequence[TargetConfig], concurrency: int = 100) -> list[ProbeResult]:
    return asyncio.run(probe_targets(targets, concurrency))


async def probe_once(target: TargetConfig) -> ProbeResult:
    """One probe of one target (what a recovery step's ``ctx.probe()`` does)."""
    return (await probe_targets([target], concurrency=1))[0]
