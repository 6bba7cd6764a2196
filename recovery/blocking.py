"""Blocking calls from async code: state, audit and breaker I/O off the event loop.

The store clients (redis-py, SQLAlchemy) are synchronous. Called from an async flow they would
block its event loop, and with it every other target's recovery running in that loop, for as
long as the call takes (up to ``state_timeout_seconds`` against a frozen Redis). ``blocking``
runs them on this module's pool instead: its own threads, so a burst of frozen calls never
queues behind ``asyncio.to_thread`` users (that pool has ``cpu_count + 4`` threads; 6 here).

``blocking_to_end`` is for bookkeeping that must complete even when the caller is cancelled
(finishing an audit row, releasing a lock): it waits for the call, then re-raises the
cancellation (``CancelledAfter``, carrying the call's result).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

MAX_THREADS = 32

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="recovery-io")
        return _executor


def _submit(fn: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
    # The caller's context variables (run loggers, settings) follow the call, as with to_thread.
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return asyncio.get_running_loop().run_in_executor(_pool(), call)


def submit_detached(fn: Callable[..., Any], *args: Any) -> None:
    """Run ``fn(*args)`` on the I/O pool with nobody waiting (clean-up from a callback)."""
    _pool().submit(fn, *args)


async def blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` on the I/O pool; the event loop keeps serving other tasks."""
    return await _submit(fn, *args, **kwargs)


class CancelledAfter(asyncio.CancelledError):
    """The caller was cancelled while ``blocking_to_end`` waited; ``result`` is what the call
    returned (None if it raised), so the caller can undo it (finish a run it just began)."""

    def __init__(self, result: Any) -> None:
        super().__init__()
        self.result = result


async def blocking_to_end(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Like ``blocking``, but a cancellation waits for ``fn`` to return before it propagates
    (as ``CancelledAfter``).

    The call is bounded by the stores' own timeouts, so this delays a cancellation by at most
    that; without it a second cancel (a shutdown) could end the process before the audit row
    is finished and the lock released.
    """
    future = _submit(fn, *args, **kwargs)
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait({future})  # never cancels ``future``, never raises its error
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        failed = future.cancelled() or future.exception() is not None  # (retrieves the error)
        raise CancelledAfter(None if failed else future.result())
    return future.result()
