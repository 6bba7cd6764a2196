"""Helpers of ``benchmarks/soak.py``: process trees read from /proc, and the soak's target service.

Everything here reads from outside the measured processes (Linux /proc, no psutil), so the soak
works with any design of the served monitor: it only knows the pids it started.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Stat:
    pid: int
    ppid: int
    cpu: float  # own user + system seconds
    children_cpu: float  # user + system seconds of children it has waited for (reaped)
    started: float  # seconds after boot


def stat(pid: int) -> Stat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone meanwhile
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may contain spaces and ")"
    ticks = [int(x) for x in fields[11:15]]  # utime stime cutime cstime
    return Stat(
        pid,
        int(fields[1]),
        (ticks[0] + ticks[1]) / CLK_TCK,
        (ticks[2] + ticks[3]) / CLK_TCK,
        int(fields[19]) / CLK_TCK,
    )


def parents() -> dict[int, int]:
    """{pid: ppid} of every process now."""
    out: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (s := stat(int(entry))) is not None:
            out[s.pid] = s.ppid
    return out


def descendants(root: int, ppids: dict[int, int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in ppids.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def rss(pid: int) -> int:
    """Resident set size in bytes (0 if the process is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def sockets(pid: int) -> int:
    """Open sockets of ``pid`` (TCP, Unix...): its file descriptors that are sockets."""
    count = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return count


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@dataclass
class ChildWatch:
    """Polls the direct children of ``root`` every ``period`` s: the short-lived ones (a flow-run
    process each, in the served design) are counted by distinct pid, with their CPU as last seen
    (their exact total is also in the root's ``children_cpu`` once reaped)."""

    root: int
    period: float = 1.0
    seen: dict[int, float] = field(default_factory=dict)  # pid -> CPU seconds last seen
    started: dict[int, float] = field(default_factory=dict)  # pid -> start (s after boot)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            ppids = parents()
            for pid in (p for p, pp in ppids.items() if pp == self.root):
                if (s := stat(pid)) is not None:
                    self.seen[pid] = s.cpu
                    self.started.setdefault(pid, s.started)


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


# --- the soak's HTTP targets ---------------------------------------------------------------------


class Targets:
    """Answers ``GET /t/<name>``: 200, except the *flapping* target (failing every other
    ``flap_seconds``) and the *outage* target (failing ``outage_seconds`` out of every 60 s).
    Time-driven, so the schedule holds whatever the monitor's cadence."""

    def __init__(self, flap_seconds: float = 15.0, outage_seconds: float = 20.0) -> None:
        self.t0 = time.monotonic()
        self.flap_seconds, self.outage_seconds = flap_seconds, outage_seconds
        self.requests = 0
        targets = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                targets.requests += 1
                ok = targets.healthy(self.path.rsplit("/", 1)[-1])
                body = b'{"status": "ok"}' if ok else b'{"status": "failing"}'
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def healthy(self, name: str) -> bool:
        elapsed = time.monotonic() - self.t0
        if name == "flapping":
            return int(elapsed // self.flap_seconds) % 2 == 0
        if name == "outage":
            return not (20.0 <= elapsed % 60.0 < 20.0 + self.outage_seconds)
        return True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
