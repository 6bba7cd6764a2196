"""The local audit spool: fsynced JSON lines kept while the audit store cannot be reached.

One directory (config ``audit_spool``) holds, per audit store (``KEY``: a digest of the store's
redacted URL, so configs with different stores never replay into each other's database):

    audit-KEY.jsonl      the records, one ``AuditOp`` per line, in write order, append-only
    audit-KEY.offset     the replay cursor: the byte offset up to which records were applied
    audit-KEY.lock       flock'ed while appending or compacting (several processes may spool)
    replay-KEY.lock      flock'ed by the one process replaying
    rejected-KEY.jsonl   records the store refused on replay (kept, never retried)

An append is durable when ``append`` returns: written under the lock, fsynced (the directory too
when the file is new); a failed write is cut back so no torn line is left behind. The cursor
moves after each applied record and is fsynced per replay batch: after a crash it may lag, and
the records since are applied again, which the ops allow (``recovery.audit.ops``). When the
cursor reaches the end, the file is emptied under the append lock (cursor reset first: a crash
in between replays the old records again, never skips new ones).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path

from recovery.audit.ops import AuditOp
from recovery.redact import redact

OFFSET_WIDTH = 20


def store_key(description: str) -> str:
    """The spool files' name for an audit store (its redacted URL: no secret goes into it)."""
    return hashlib.sha256(description.encode()).hexdigest()[:16]


class AuditSpool:
    def __init__(self, directory: str | Path, key: str = "default") -> None:
        self.directory = Path(directory)
        self.data_path = self.directory / f"audit-{key}.jsonl"
        self.offset_path = self.directory / f"audit-{key}.offset"
        self.lock_path = self.directory / f"audit-{key}.lock"
        self.replay_lock_path = self.directory / f"replay-{key}.lock"
        self.rejected_path = self.directory / f"rejected-{key}.jsonl"

    # --- locks ------------------------------------------------------------------------------------

    @contextmanager
    def _flock(self, path: Path, blocking: bool = True) -> Iterator[bool]:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    @contextmanager
    def replay_lock(self) -> Iterator[bool]:
        """``True`` if this process may replay now; ``False``: another one is replaying."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._flock(self.replay_lock_path, blocking=False) as held:
            yield held

    # --- appending --------------------------------------------------------------------------------

    def append(self, op: AuditOp) -> None:
        """Append one record durably; ``OSError`` if the spool cannot take it (nothing left behind)."""
        line = (op.to_line() + "\n").encode()
        new_dir = not self.directory.is_dir()
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._flock(self.lock_path):
            new_file = not self.data_path.exists()
            fd = os.open(self.data_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                try:
                    view = memoryview(line)
                    while view:
                        view = view[os.write(fd, view) :]
                    _datasync(fd)
                except OSError:
                    with contextlib.suppress(OSError):  # disk full mid-line: no torn record
                        os.ftruncate(fd, size)
                    raise
            finally:
                os.close(fd)
            if new_file or new_dir:
                _fsync_dir(self.directory)  # the new file's entry must survive a power cut too

    # --- the cursor and the records after it -------------------------------------------------------

    def offset(self) -> int:
        try:
            with open(self.offset_path, "rb") as handle:
                return int(handle.read(OFFSET_WIDTH + 1).strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0  # no cursor, or a garbled one: replaying from the start is safe

    def set_offset(self, offset: int, sync: bool = False) -> None:
        # Fixed width, written in place: one small write that never leaves a shorter number behind.
        fd = os.open(self.offset_path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, f"{offset:0{OFFSET_WIDTH}d}\n".encode(), 0)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def sync_offset(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(self.offset_path, os.O_WRONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _size(self) -> int:
        try:
            return self.data_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _cursor(self, size: int) -> int:
        offset = self.offset()
        # Past the end only if the file was removed by hand: its new records start at 0.
        return offset if offset <= size else 0

    def pending_bytes(self) -> int:
        """Bytes of records not yet replayed (cheap: a stat and a small read; before live writes)."""
        size = self._size()
        return size - self._cursor(size)

    def has_pending(self) -> bool:
        return self.pending_bytes() > 0

    def records(self) -> Generator[tuple[int, AuditOp | None, bytes], None, None]:
        """``(end offset, op, raw line)`` of every complete record after the cursor; ``op`` is
        ``None`` for a line this version cannot read."""
        try:
            handle = open(self.data_path, "rb")  # noqa: SIM115 (a generator keeps it open)
        except FileNotFoundError:
            return
        with handle:
            offset = self._cursor(os.fstat(handle.fileno()).st_size)
            handle.seek(offset)
            for raw in handle:
                if not raw.endswith(b"\n"):
                    return  # being appended right now: the next replay takes it
                offset += len(raw)
                try:
                    op: AuditOp | None = AuditOp.from_line(raw)
                except (ValueError, KeyError, TypeError, AssertionError):
                    op = None
                yield offset, op, raw

    def batch(self, limit: int) -> tuple[int, list[tuple[AuditOp | None, bytes]]]:
        """The next ``limit`` pending records and the offset just after them."""
        items: list[tuple[AuditOp | None, bytes]] = []
        end = 0
        records = self.records()
        try:
            for offset, op, raw in records:
                items.append((op, raw))
                end = offset
                if len(items) >= limit:
                    break
        finally:
            records.close()  # release the file now, not when the generator is collected
        return end, items

    def pending_count(self) -> int:
        """How many records wait for replay."""
        return sum(1 for _ in self.records())

    def compact(self) -> bool:
        """Empty the spool if every record was replayed; ``False`` if new ones arrived meanwhile."""
        with self._flock(self.lock_path):
            size = self._size()
            if size > self._cursor(size):
                return False
            if size:
                self.set_offset(0, sync=True)  # cursor first: a crash now replays, never skips
                with open(self.data_path, "r+b") as handle:
                    handle.truncate(0)
                    os.fsync(handle.fileno())
            return True

    # --- rejected records ------------------------------------------------------------------------

    def reject(self, raw: bytes, reason: str) -> None:
        """Keep a record the store refused, with why (``recovery audit replay`` reports them)."""
        try:
            record = json.loads(raw)
        except ValueError:
            record = raw.decode("utf-8", "replace")
        line = json.dumps({"reason": redact(reason), "record": record}, separators=(",", ":"), default=str)
        with self._flock(self.lock_path), open(self.rejected_path, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def rejected(self) -> list[dict[str, object]]:
        try:
            with open(self.rejected_path, encoding="utf-8") as handle:
                return [json.loads(line) for line in handle if line.strip()]
        except FileNotFoundError:
            return []

    def rejected_ids(self) -> set[str]:
        """Records set aside before: a replay from a lagging cursor must not try them again."""
        out = set()
        for entry in self.rejected():
            record = entry.get("record")
            if isinstance(record, dict):
                out.add(str(record.get("id")))
        return out

    def rejected_runs(self) -> set[str]:
        """Runs whose first record was rejected: their later records cannot apply either."""
        out = set()
        for entry in self.rejected():
            record = entry.get("record")
            if isinstance(record, dict) and record.get("op") in ("start_run", "refuse"):
                out.add(str(record.get("run_id")))
        return out


# fdatasync (Linux) skips the inode's timestamps but keeps the size an append changes: the
# record is as durable, one seek cheaper.
_datasync = getattr(os, "fdatasync", os.fsync)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a directory; the data itself is synced
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)
