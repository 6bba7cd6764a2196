"""Real services for the database/cache tests: a private redis-server, a TCP proxy in front of
PostgreSQL (stopping it drops every connection and refuses new ones, as a restart does), and the
10,000-key cache data set of issue 3.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import redis
from faultserver import free_port
from sqlalchemy import create_engine, text

N_KEYS = 10_000
CORRUPT_EVERY = 20  # keys with i % 20 == 7 are corrupted: exactly 500
CORRUPTIONS = {  # reason reported by the validator -> how the value is broken
    "invalid json": lambda i: f'{{"id": {i}, "name": "user-{i}"',
    "missing field name": lambda i: json.dumps({"id": i}),
    "not utf-8": lambda i: b"\xff\xfe\x00" + str(i).encode(),
    "not a json object": lambda i: json.dumps([i, f"user-{i}"]),
    "wrong type: hash": None,  # stored as a hash where a string belongs
}


def healthy_value(i: int) -> str:
    return json.dumps({"id": i, "name": f"user-{i}", "v": "cached"})


def source_value(i: int) -> str:
    return json.dumps({"id": i, "name": f"user-{i}", "v": "fresh"})


def corrupted_ids() -> list[int]:
    return [i for i in range(N_KEYS) if i % CORRUPT_EVERY == 7]


def seed_cache(url: str) -> dict[str, list[int]]:
    """10,000 ``user:{i}`` keys (500 corrupted, 5 kinds x 100) + 100 ``session:*`` keys outside the
    pattern. Healthy keys carry a TTL so a rewrite (which would drop it) is detectable."""
    client = redis.Redis.from_url(url)
    kinds = list(CORRUPTIONS)
    by_reason: dict[str, list[int]] = {k: [] for k in kinds}
    bad = set(corrupted_ids())
    with client.pipeline(transaction=False) as pipe:
        for n, i in enumerate(sorted(bad)):
            reason = kinds[n % len(kinds)]
            by_reason[reason].append(i)
            make = CORRUPTIONS[reason]
            if make is None:
                pipe.hset(f"user:{i}", mapping={"id": i})
            else:
                pipe.set(f"user:{i}", make(i))
        for i in range(N_KEYS):
            if i not in bad:
                pipe.set(f"user:{i}", healthy_value(i), ex=3600)
        for i in range(100):
            pipe.set(f"session:{i}", "{not json")
        pipe.execute()
    client.close()
    return by_reason


def seed_source_table(url: str) -> None:
    """The source of truth: ``users(id, name, payload)`` with 10,000 rows of fresh values."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE users (id integer PRIMARY KEY, name text, payload text)"))
            conn.execute(
                text("INSERT INTO users (id, name, payload) VALUES (:id, :name, :payload)"),
                [{"id": i, "name": f"user-{i}", "payload": source_value(i)} for i in range(N_KEYS)],
            )
    finally:
        engine.dispose()


def snapshot(url: str, pattern: str) -> dict[bytes, tuple[bytes, Any, int]]:
    """key -> (type, value, ttl>0) for every key matching ``pattern``."""
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=pattern, count=1000))
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.type(key)
            pipe.get(key)
            pipe.ttl(key)
        raw = pipe.execute(raise_on_error=False)
    client.close()
    out: dict[bytes, tuple[bytes, Any, int]] = {}
    for n, key in enumerate(keys):
        kind, value, ttl = raw[3 * n : 3 * n + 3]
        out[key] = (kind, None if isinstance(value, Exception) else value, int(ttl > 0))
    return out


class RedisServer:
    """A private redis-server (no persistence) on a free port, for faults the shared one must not
    suffer: maxmemory/evictions, a password, being down, renamed commands."""

    def __init__(self, *args: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0, password: str | None = None) -> str:
        auth = f":{password}@" if password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as in a crash (``start()`` restarts it
        on the same port)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@dataclass
class _Trip:
    marker: bytes
    after: int  # requests still to let through once the marker passed
    fault: Literal["drop", "blackhole", "stall"]
    stall_seconds: float
    armed: bool = False


class TcpProxy:
    """127.0.0.1:port -> upstream. ``stop()`` closes the listener and every proxied connection:
    clients see their connections dropped and new ones refused, as while a server restarts;
    ``start()`` serves the same port again. ``freeze()``: connections stay open and new ones are
    accepted, but nothing is answered any more (a hung server, a silent network partition) until
    ``thaw()``; bytes sent meanwhile are dropped, so a frozen request is never answered late."""

    def __init__(self, upstream: tuple[str, int], port: int | None = None) -> None:
        self.upstream = upstream
        self.port = port or free_port()
        self._running = False
        self.frozen = False
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._frozen = threading.Event()
        self._trip: _Trip | None = None
        self._doomed: set[socket.socket] = set()  # client sockets whose next reply is lost

    def fault_at(
        self,
        marker: bytes,
        fault: Literal["drop", "blackhole", "stall"],
        after: int = 0,
        stall_seconds: float = 1.5,
    ) -> TcpProxy:
        """A fault at an exact point of a conversation (once): the ``after``-th client request
        following the one containing ``marker`` (0: that one) still reaches the server, so it is
        applied, and then ``drop``: its reply is lost and its connection closed (a reset after
        the command ran: redis-py retries it on a new connection); ``blackhole``: its reply and
        everything after it is lost, as with ``blackhole()``; ``stall``: its reply and everything
        after it is held for ``stall_seconds`` (``freeze()``, then ``thaw()``). A chunk read from
        the client counts as one request."""
        self._trip = _Trip(marker, after, fault, stall_seconds)
        return self

    def _trips(self, data: bytes, client: socket.socket) -> bool:
        """Apply a pending ``fault_at`` to this client request; True: forward it regardless."""
        with self._lock:
            trip = self._trip
            if trip is None or not (trip.armed or trip.marker in data):
                return False
            if trip.armed:
                trip.after -= 1
            trip.armed = True
            if trip.after > 0:
                return False
            self._trip = None
            if trip.fault == "drop":
                self._doomed.add(client)
        if trip.fault == "blackhole":
            self.frozen = True
        elif trip.fault == "stall":
            self.freeze()
            threading.Timer(trip.stall_seconds, self.thaw).start()
        return True

    def start(self) -> TcpProxy:
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(0.1)
        self._listener = listener
        self._running = True
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()
        return self

    def blackhole(self) -> TcpProxy:
        """A hung server that loses everything: bytes sent are dropped, never answered late."""
        self.frozen = True
        return self

    def unblackhole(self) -> TcpProxy:
        self.frozen = False
        return self

    def stop(self) -> None:
        self._running = False
        if self._thread is not None:
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def freeze(self) -> None:
        """A frozen server: connections are still accepted (old and new stay open) but nothing is
        forwarded either way until ``thaw()``; held bytes are delivered late then, as after a
        network stall. Clients see no error at all, only silence (their timeouts must act)."""
        self._frozen.set()

    def thaw(self) -> None:
        self._frozen.clear()

    def _hold(self) -> None:
        while self._frozen.is_set() and self._running:
            time.sleep(0.01)

    def _accept(self, listener: socket.socket) -> None:
        while self._running:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.frozen:  # accept, then never answer: the client's read timeout must fire
                client.settimeout(None)
                with self._lock:
                    self._conns.add(client)
                threading.Thread(target=self._pump, args=(client, None), daemon=True).start()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            client.settimeout(None)
            server.settimeout(None)
            with self._lock:
                self._conns.update((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst, src is client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket | None, from_client: bool = False) -> None:
        try:
            while data := src.recv(65536):
                forced = from_client and self._trips(data, src)  # the faulted request still goes
                if not forced:
                    self._hold()
                if dst in self._doomed:
                    break  # ``drop``: the reply is lost, the connection closed (finally)
                if dst is not None and (forced or not self.frozen):
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst) if dst is not None else (src,):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
                with self._lock:
                    self._conns.discard(sock)
                    self._doomed.discard(sock)


def corrupt_sqlite(path: Path) -> None:
    """A SQLite file with a table + index whose interior pages are overwritten with garbage."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("CREATE INDEX items_name ON items (name)")
    conn.executemany("INSERT INTO items (name) VALUES (?)", [(f"item-{i:06d}" * 4,) for i in range(5000)])
    conn.commit()
    conn.close()
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(page * 3, len(data) - page, page * 7):  # scribble over interior pages
        data[offset + 100 : offset + 400] = b"\xa5" * 300
    path.write_bytes(bytes(data))
