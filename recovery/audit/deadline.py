"""A client-side bound on audit store calls: a server that accepts and then says nothing.

libpq's ``connect_timeout`` bounds connecting and PostgreSQL's ``statement_timeout`` bounds a
statement the server is running; neither helps when the server (or the network in between)
goes silent after the connection is up: the client waits in ``recv`` forever. ``deadline()``
covers that: while a thread is inside it, every statement it sends must be answered within
``seconds`` (the clock restarts at each statement, so a long replay batch of quick statements
is fine). One watchdog thread checks the running deadlines; when one passes, it shuts down the
sockets of that engine's connections, and the blocked call fails at once.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, event

WATCH_INTERVAL = 0.05

# The DBAPI connections each tracked engine opened (weak: a closed connection drops out).
_connections: weakref.WeakKeyDictionary[Engine, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()
_current = threading.local()  # the calling thread's Deadline, while inside ``deadline()``


@dataclass(eq=False)
class Deadline:
    engine: Engine | None
    seconds: float
    ends_at: float = field(default=0.0)
    expired: bool = False

    def restart(self) -> None:
        self.ends_at = time.monotonic() + self.seconds


def _restart(*_args: Any) -> None:
    bound: Deadline | None = getattr(_current, "deadline", None)
    if bound is not None:
        bound.restart()


def _within_deadline(dialect: Any, _rec: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
    """A (re)connect inside a deadline gets only the time left, and none once it expired: pre-ping
    reconnects after the watchdog severed a silent connection, which must not wait a second bound."""
    bound: Deadline | None = getattr(_current, "deadline", None)
    if bound is None:
        return
    left = bound.ends_at - time.monotonic()
    if bound.expired or left <= 0:
        raise dialect.loaded_dbapi.OperationalError(f"no answer within {bound.seconds:g}s")
    cparams["connect_timeout"] = min(int(cparams.get("connect_timeout", 2)), max(2, math.ceil(left)))


def track(engine: Engine) -> None:
    """Make ``deadline()`` effective on ``engine`` (network databases; SQLite has no socket)."""
    opened: weakref.WeakSet[Any] = weakref.WeakSet()
    _connections[engine] = opened
    event.listen(engine, "connect", lambda dbapi_conn, _rec: opened.add(dbapi_conn))
    event.listen(engine, "do_connect", _within_deadline)
    event.listen(engine, "before_cursor_execute", _restart)


def _sever(engine: Engine) -> None:
    """Shut every socket of ``engine`` down so blocked calls fail now.

    All of them, not only the late caller's: a server that did not answer one statement within
    the bound is not trusted with the others; the pool reconnects (pre-ping) when it answers.
    """
    for conn in list(_connections.get(engine, ())):
        with contextlib.suppress(Exception):  # closed meanwhile, or no socket: nothing to sever
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            with sock:
                sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One thread for every deadline of the process; it runs only while there are some."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: set[Deadline] = set()
        self._thread: threading.Thread | None = None

    def add(self, bound: Deadline) -> None:
        with self._lock:
            self._active.add(bound)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-deadline", daemon=True)
                self._thread.start()

    def remove(self, bound: Deadline) -> None:
        with self._lock:
            self._active.discard(bound)

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL)
            now = time.monotonic()
            with self._lock:
                if not self._active:
                    self._thread = None
                    return
                late = [b for b in self._active if not b.expired and now >= b.ends_at]
                for bound in late:
                    bound.expired = True
            for engine in {b.engine for b in late if b.engine is not None}:
                _sever(engine)


_watchdog = _Watchdog()


@contextmanager
def deadline(engine: Engine, seconds: float) -> Iterator[Deadline]:
    """Inside the block, each statement on ``engine`` must be answered within ``seconds``."""
    bound = Deadline(engine if engine in _connections else None, seconds)
    bound.restart()
    if bound.engine is None:  # SQLite: its busy timeout is the bound
        yield bound
        return
    outer, _current.deadline = getattr(_current, "deadline", None), bound
    _watchdog.add(bound)
    try:
        yield bound
    finally:
        _watchdog.remove(bound)
        _current.deadline = outer
