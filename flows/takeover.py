"""What only Prefect can do for a takeover and for expected outcomes.

* ``cancel_taken_over``: an emergency took the lock over from an automatic run
  (``recovery.engine.takeover``); ask Prefect to cancel that run's flow run so the UI shows it
  ``Cancelling`` at once. Bounded in time and best effort: the automatic run stops on its own at
  its next step attempt (its lock refresh fails: ``LockLost``) and ends ``Cancelled`` whether or
  not this request arrives. ``force=False``: a run that ended meanwhile keeps its final state.
* ``ExpectedFailures``: a failed verification or a refusal is an outcome the runtime already
  describes in one line; Prefect's engines log every task/flow exception with its traceback. The
  filter drops the traceback (never the line) of our own ``RecoveryError`` family only: a bug's
  traceback is still logged. It also rewords the three lines Prefect 3.9 logs for a cancelled
  served run ("Crash detected!" for the interrupted step task, "Finished in state Running()")
  as info lines saying it was cancelled; the run's state is Prefect's ``Cancelled`` either way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from prefect.client.orchestration import get_client
from prefect.states import Cancelling

from recovery.engine.takeover import LockHolder
from recovery.errors import RecoveryError
from recovery.redact import redact

CANCEL_TIMEOUT_SECONDS = 10.0
PREFECT_RUN_LOGGERS = ("prefect.task_runs", "prefect.flow_runs")


async def request_cancel(flow_run_id: str, message: str, timeout: float = CANCEL_TIMEOUT_SECONDS) -> None:
    """Propose ``Cancelling`` for ``flow_run_id`` (raises on failure or after ``timeout`` s)."""
    async with asyncio.timeout(timeout), get_client() as client:
        await client.set_flow_run_state(flow_run_id, Cancelling(message=message), force=False)


async def cancel_taken_over(holder: LockHolder, logger: Any) -> None:
    """Log the takeover and ask Prefect to cancel the automatic flow run; never raises."""
    logger.warning("took over the lock from %s", holder.describe())
    if holder.flow_run_id is None:
        return
    try:
        await request_cancel(holder.flow_run_id, f"taken over (audit run {holder.audit_id})")
    except Exception as exc:  # it stops at its next step anyway (LockLost)
        logger.warning(
            "could not cancel flow run %s (%s); it stops at its next step",
            holder.flow_run_id,
            redact(str(exc)) or type(exc).__name__,
        )


# What Prefect 3.9 logs when a served run is cancelled (measured: tests/flows/test_rest_api.py):
# the task engine treats the step's CancelledError as a crash, and in a runner-managed process
# the runner, not the engine, records Cancelled, so the engine's last line shows its local state.
_CANCEL_NOISE = {
    "Crash detected! Execution was cancelled by the runtime environment.": (
        "Step interrupted: its flow run is being cancelled."
    ),
    "Finished in state Crashed('Execution was cancelled by the runtime environment.')": (
        "Step finished: interrupted by the cancellation."
    ),
    "Finished in state Running()": "Finished: cancelled (the runner records the Cancelled state).",
}


class ExpectedFailures(logging.Filter):
    """Strip the traceback from Prefect's run-log records of a ``RecoveryError``, and say a
    cancellation in words instead of Prefect's crash lines (info, not error)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, RecoveryError):
            record.exc_info, record.exc_text = None, None
        if not record.args and isinstance(record.msg, str) and record.msg in _CANCEL_NOISE:
            record.msg = _CANCEL_NOISE[record.msg]
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True

    @classmethod
    def install(cls) -> None:
        """On Prefect's flow- and task-run loggers (idempotent): before any handler formats it."""
        for name in PREFECT_RUN_LOGGERS:
            logger = logging.getLogger(name)
            if not any(isinstance(f, cls) for f in logger.filters):
                logger.addFilter(cls())
