"""DurableAudit: the ``AuditStore`` interface, never losing a write while the store is down.

``Services.audit`` returns one, so the runtime, flows and commands use it unchanged.

Writes. A write goes to the store unless the store just failed (then it waits ``retry_seconds``
before trying again) or the spool still holds records. When the store cannot be reached or does
not answer within ``audit_timeout_seconds`` (``AuditUnavailable``), the write is appended to the
local spool (``recovery.audit.spool``) and the recovery goes on. Ordering: while the spool is not
empty every write of every process sharing it is spooled too (behind the older records), and a
background thread replays the spool; writes go live again only once it is empty, so a live
write never overtakes a spooled one, and a recovery never waits for a replay.
If the spool cannot take the write either, ``NoDurableRecord`` (a ``RecoveryRefused``) is raised:
``begin()`` refuses the run before any action, ``run_step()`` fails before the step acts.
``AuditRejected`` (the store answered "no": unknown run, duplicate id) is raised, never spooled.

Replay. ``replay()`` applies pending records in order, in batches of one transaction each,
moving the spool's cursor after each batch; a record applied twice is harmless
(``recovery.audit.fold``). One process replays at a time (a lock); a record the store rejects
is set aside in ``rejected-KEY.jsonl`` instead of blocking the ones after it, and never
retried. Every command and flow replays: in the background from the first use of the store
(construction) and when a write finds records pending; in the foreground before each read
(``catch_up``) and in ``recovery audit replay``.

Reads (``run``, ``history``, and the engine ``status``/``stats`` query) go to the store after a
replay attempt (``catch_up``). When the store is down they raise ``AuditUnavailable``, like
before (bounded by ``audit_timeout_seconds``): a history that silently lacked the spooled runs
would mislead. So does admission for an ``adaptive`` strategy, which reads the history.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from recovery.audit.db import DEFAULT_TIMEOUT_SECONDS
from recovery.audit.fold import apply_ops
from recovery.audit.ops import START_OPS, AuditOp
from recovery.audit.records import AuditRejected, AuditUnavailable, NoDurableRecord, RunRecord, error_text
from recovery.audit.spool import AuditSpool, store_key
from recovery.audit.store import AuditStore
from recovery.jsonable import Jsonable

logger = logging.getLogger("recovery.audit")

REPLAY_BATCH = 200
# A backlog this small (~150 records) is replayed in well under a second: a write then waits
# for it (at most the audit bound) and goes live, so spooling ends even under steady load.
TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class ReplayResult(Jsonable):
    spool: str
    store: str
    replayed: int  # records applied by this call
    rejected: int  # records the store refused (moved to rejected.jsonl)
    pending: int  # records still waiting
    busy: bool  # another process was replaying
    error: str | None  # why replay stopped early (the store is down)


def _one_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "unknown error"


class DurableAudit(AuditStore):
    """An ``AuditStore`` that spools writes locally while the store cannot be reached."""

    def __init__(
        self,
        url: str,
        spool_dir: str | Path,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        retry_seconds: float | None = None,
    ) -> None:
        super().__init__(url, timeout_seconds, lazy=True)
        self.spool = AuditSpool(spool_dir, store_key(self.description))
        # After a failure, writes go straight to the spool for this long: a frozen store then
        # costs a recovery one timeout per pause, not one per write.
        self.retry_seconds = retry_seconds if retry_seconds is not None else max(1.0, timeout_seconds)
        self._retry_at = 0.0
        self.last_error: str | None = None
        self.replayed = self.rejected = 0  # by this object, since it was built
        self._failures = 0
        self._spooling = False  # this object spooled since the store last answered
        self._replayer: threading.Thread | None = None
        self._replayer_lock = threading.Lock()
        self._in_background()  # connect, migrate, replay what earlier processes spooled

    # --- availability -------------------------------------------------------------------------

    def _due(self) -> bool:
        return time.monotonic() >= self._retry_at

    def _down(self, exc: BaseException) -> None:
        self.last_error = _one_line(error_text(exc))
        self._retry_at = time.monotonic() + self.retry_seconds
        self._failures += 1

    def _up(self) -> None:
        if self._spooling:
            logger.info("audit store %s answers again", self.description)
        self._spooling = False
        self.last_error = None
        self._retry_at = 0.0

    def _has_pending(self) -> bool:
        return self._pending_bytes() > 0  # an unreadable spool must not stop live audit writes

    # --- writes ---------------------------------------------------------------------------------

    def _write(self, op: AuditOp) -> None:
        if self._due():
            if self._has_pending():
                # Behind older records: this one queues after them, and a thread replays them
                # (the recovery never waits for a long spool, nor long for a frozen store).
                self._in_background()
                self._wait_for_tail()
            if not self._has_pending() and self._due():
                try:
                    super()._write(op)
                    self._up()
                    return
                except AuditRejected:
                    raise
                except AuditUnavailable as exc:
                    self._down(exc)
        self._spool(op)

    def _spool(self, op: AuditOp) -> None:
        try:
            self.spool.append(op)
            if not self._spooling:  # once per outage: the recovery goes on, its record waits here
                self._spooling = True
                logger.warning(
                    "audit store unavailable (%s): audit records go to the spool %s until it answers",
                    self.last_error or "busy replaying",
                    self.spool.directory,
                )
        except OSError as exc:
            raise NoDurableRecord(
                f"no durable record possible: audit store {self.description} unavailable "
                f"and spool {self.spool.directory} not writable: {_one_line(error_text(exc))}"
            ) from None

    # --- replay ---------------------------------------------------------------------------------

    def _pending_bytes(self) -> int:
        try:
            return self.spool.pending_bytes()
        except OSError:
            return 0

    def _wait_for_tail(self) -> None:
        replayer = self._replayer
        if replayer is not None and self._pending_bytes() <= TAIL_BYTES:
            replayer.join(self.timeout_seconds)

    def _in_background(self) -> None:
        with self._replayer_lock:
            if self._replayer is not None and self._replayer.is_alive():
                return
            self._replayer = threading.Thread(target=self._catch_up_now, name="audit-replay", daemon=True)
            self._replayer.start()

    def catch_up(self) -> None:
        """Connect and replay now, after any replay running in the background; never raises.

        Reads call it first, so they see the spooled runs. It tries the store even in the retry
        pause (a read asks the store anyway, and a person waiting for it wants the newest
        answer), unless the background attempt it waited for has just failed.
        """
        failures, replayer = self._failures, self._replayer
        if replayer is not None and replayer.is_alive():
            replayer.join()
            if self._failures != failures:
                return  # the store failed just now, in the background: no second wait
        self._catch_up_now(force=True)

    def _catch_up_now(self, force: bool = False) -> None:
        if not (force or self._due()):
            return
        if not self._migrated:  # never reached yet: connect (and migrate) now
            try:
                self._ensure_schema()
            except AuditUnavailable as exc:
                self._down(exc)
                return
            self._up()
        if self._has_pending():
            self.replay()

    def pending(self) -> int:
        """Records in the spool not yet replayed."""
        return self.spool.pending_count()

    def _apply_batch(
        self, batch: list[tuple[AuditOp | None, bytes]], gone: set[str], done: set[str]
    ) -> tuple[int, list[tuple[bytes, str]]]:
        """Apply one batch in one transaction: how many records were applied, and the ones the
        store refuses, with why (``done``: ids of records set aside before, skipped).

        Raises ``AuditUnavailable``. If the database itself refuses the batch (a value too long
        for its column...), the records are applied one per transaction to find the culprit.
        """
        readable = [(op, raw) for op, raw in batch if op is not None and op.id not in done]
        rejects = [(raw, "unreadable record") for op, raw in batch if op is None]
        unreadable = len(rejects)
        try:
            with self._session() as session:
                refused = apply_ops(session, [op for op, _ in readable], replay=True, gone=gone)
            return len(readable) - len(refused), rejects + [(readable[i][1], why) for i, why in refused]
        except AuditRejected:
            pass
        for op, raw in readable:
            try:
                with self._session() as session:
                    refused = apply_ops(session, [op], replay=True, gone=gone)
            except AuditRejected as exc:
                refused = [(0, str(exc))]
                if op.op in START_OPS:
                    gone.add(op.run_id)
            rejects += [(raw, why) for _, why in refused]
        return len(readable) - (len(rejects) - unreadable), rejects

    def replay(self) -> ReplayResult:
        """Apply the spool's pending records in order; stop (no raise) when the store fails."""
        replayed = rejected = 0
        busy = False
        error: str | None = None
        if not self._has_pending():
            return ReplayResult(str(self.spool.directory), self.description, 0, 0, 0, False, None)
        try:
            with self.spool.replay_lock() as held:
                busy = not held
                if held:
                    self._ensure_schema()
                    gone, done = self.spool.rejected_runs(), self.spool.rejected_ids()
                    while True:
                        end, batch = self.spool.batch(REPLAY_BATCH)
                        if not batch:
                            if self.spool.compact():
                                break
                            continue  # records arrived between reading and compacting
                        applied, rejects = self._apply_batch(batch, gone, done)
                        for raw, reason in rejects:
                            self.spool.reject(raw, reason)
                        self.spool.set_offset(end, sync=True)
                        replayed += applied
                        rejected += len(rejects)
            if not busy:
                self._up()
        except AuditUnavailable as exc:
            self._down(exc)
            error = self.last_error
        except OSError as exc:
            error = f"spool {self.spool.directory}: {_one_line(error_text(exc))}"
        if replayed or rejected:
            logger.info("audit spool: %d records replayed, %d rejected", replayed, rejected)
        self.replayed += replayed
        self.rejected += rejected
        try:
            pending = self.pending()
        except OSError:
            pending = -1
        return ReplayResult(
            str(self.spool.directory), self.description, replayed, rejected, pending, busy, error
        )

    def summary(self) -> ReplayResult:
        """What this object replayed since it was built, what is pending, the store's last error."""
        try:
            pending = self.pending()
        except OSError:
            pending = -1
        return ReplayResult(
            str(self.spool.directory),
            self.description,
            self.replayed,
            self.rejected,
            pending,
            False,
            self.last_error,
        )

    # --- reads ----------------------------------------------------------------------------------

    def _before_read(self) -> None:
        failures = self._failures
        self.catch_up()
        if self._failures != failures:  # it just failed: say so rather than wait for it again
            raise AuditUnavailable(f"audit store {self.description}: {self.last_error}")

    def run(self, run_id: str) -> RunRecord | None:
        self._before_read()
        return super().run(run_id)

    def history(self, target: str | None = None, limit: int = 20) -> list[RunRecord]:
        self._before_read()
        return super().history(target, limit)

    def incident_runs(self, target: str, first_failure_at: datetime, limit: int = 200) -> list[RunRecord]:
        self._before_read()
        return super().incident_runs(target, first_failure_at, limit)
