"""Run a command's event loop so that SIGINT and SIGTERM stop it within seconds, cleanly.

The loop runs in a worker thread; the main thread only waits and handles signals. Why: while a
flow runs, Prefect's engine replaces the *main thread's* SIGTERM handler with one that raises
``TerminationSignal`` wherever that thread happens to be (often inside the event loop's
``select``, which tears the loop down mid-flight: a traceback, exit 1). Prefect installs it in
the main thread only, so with the loop elsewhere this process keeps its own handlers, and a
signal becomes an ordinary asyncio cancellation of the command's main task: a recovery in
flight runs its ``finish`` path (audited ``cancelled``, lock released), then ``Interrupted``
makes the process exit 128 + the signal number (SIGINT 130, SIGTERM 143), as a shell reports a
process killed by that signal.

A second signal, or ``SHUTDOWN_GRACE_SECONDS`` without the loop finishing, exits at once: the
audit row may stay ``in_progress`` and the lock expires by its TTL.

``watch`` (the Prefect API's health, recovery_cli.common) is polled from its own thread: when the
API dies mid-run, Prefect's client would retry every request for minutes (measured: 233 s to a
traceback); instead the run is cancelled the same way (audited ``cancelled``, lock released) and
the command fails with one line naming the API.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Generic, NoReturn, TypeVar

from recovery.errors import RecoveryError

T = TypeVar("T")
SIGNALS = (signal.SIGINT, signal.SIGTERM)
SHUTDOWN_GRACE_SECONDS = 8.0
POLL_SECONDS = 0.1
WATCH_INTERVAL_SECONDS = 2.0
WATCH_FAILURES = 3  # ~6 s of a dead API: stop, rather than Prefect's minutes of client retries


class Interrupted(Exception):
    """The command was stopped by a signal; the process exits ``exit_code``."""

    def __init__(self, signum: int, abandoned: bool = False) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        self.abandoned = abandoned  # clean-up did not finish in time: exit_now()
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def exit_now(code: int) -> NoReturn:
    """Exit without the interpreter's exit hooks, once the run is settled or given up on.

    At exit Prefect drains its event and log queues to the API, retrying each item for ~7 s
    when the API is gone (measured: 30+ s after a killed server). That is only worth it while
    the API answers; with a dead API (``Stopped``) or after a forced stop it only delays exit.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Stopped(RecoveryError):
    """The command's ``watch`` found a dependency gone for good (the Prefect API): exit 1."""


# Returns why the command cannot go on (the Prefect API stopped answering), or None.
Watch = Callable[[], str | None]


@dataclass
class _Run(Generic[T]):
    signals: list[int] = field(default_factory=list)
    stop_reason: str | None = None  # set by the watchdog thread
    loop: asyncio.AbstractEventLoop | None = None
    task: asyncio.Task[Any] | None = None
    value: T | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def watchdog(self, watch: Watch) -> None:
        """``WATCH_FAILURES`` failed checks in a row, ``WATCH_INTERVAL_SECONDS`` apart: stop."""
        failures = 0
        while not self.done.wait(WATCH_INTERVAL_SECONDS):
            reason = watch()
            failures = failures + 1 if reason else 0
            if reason and failures >= WATCH_FAILURES:
                self.stop_reason = reason
                return


def run_with_signals(main: Callable[[], Coroutine[Any, Any, T]], watch: Watch | None = None) -> T:
    """``asyncio.run(main())`` that a SIGINT/SIGTERM cancels (then raises ``Interrupted``), as does
    ``watch`` reporting the same problem ``WATCH_FAILURES`` times in a row (then ``Stopped``)."""
    run: _Run[T] = _Run()

    async def wrapper() -> T:
        run.loop, run.task = asyncio.get_running_loop(), asyncio.current_task()
        return await main()

    def body() -> None:
        try:
            run.value = asyncio.run(wrapper())
        except BaseException as exc:  # CancelledError after a signal, or the command's error
            run.error = exc
        finally:
            run.done.set()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        run.signals.append(signum)  # acted on by the waiting loop below, not in the handler

    if threading.current_thread() is not threading.main_thread():
        return asyncio.run(main())  # no signals to handle here (tests calling main() in a thread)
    previous = {sig: signal.signal(sig, on_signal) for sig in SIGNALS}
    threading.Thread(target=body, name="recovery-loop", daemon=True).start()
    if watch is not None:
        threading.Thread(target=run.watchdog, args=(watch,), name="recovery-watchdog", daemon=True).start()
    cancelled_at: float | None = None
    abandoned = False
    try:
        while not run.done.wait(POLL_SECONDS):
            if not (run.signals or run.stop_reason):
                continue
            if cancelled_at is None and run.loop is not None and run.task is not None:
                cancelled_at = time.monotonic()
                # The message reaches the run's audit row as its error message.
                why = f"stopped by {signal.Signals(run.signals[0]).name}" if run.signals else run.stop_reason
                run.loop.call_soon_threadsafe(run.task.cancel, why)
            elif cancelled_at is not None and (
                len(run.signals) > 1 or time.monotonic() - cancelled_at > SHUTDOWN_GRACE_SECONDS
            ):
                if run.signals:
                    print("recovery: stopping without waiting for clean-up", file=sys.stderr)
                abandoned = True
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if run.signals:
        raise Interrupted(run.signals[0], abandoned)
    if run.stop_reason is not None:
        raise Stopped(run.stop_reason)
    if run.error is not None:
        raise run.error
    return run.value  # type: ignore[return-value]  # T itself may be None
