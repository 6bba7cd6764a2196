"""How fast does the project probe N HTTP targets, compared with what asyncio itself can do?

    python benchmarks/probe_scale.py [--sizes 100,1000,5000] [--repeat 3] [--httpx-repeat 1]
                                     [--server subprocess|thread]

For each N, against one local uvicorn server (``tests/faultserver.py``, /health in
"ok" mode), each client below makes N GET requests with 100 in flight:

    floor     bare asyncio streams speaking HTTP/1.1, 100 keep-alive connections reused; no HTTP
              library at all, so nothing the project does can be faster than this
    project   ``recovery.engine.probing.probe_targets`` with N ``HttpTarget`` configs, concurrency 100
              (aiohttp directly; includes building and closing its session, as every cycle does)
    httpx+aio the project's previous probe batch, kept as the baseline it replaced: the httpx API
              over httpx-aiohttp's transport, a task + semaphore per target, same prober logic
    httpx     httpx.AsyncClient with its default (httpcore) transport, limits 100/100, 100 in flight
              (slow: ``--httpx-repeat 0`` leaves it out)
    aiohttp   (diagnostic) a bare aiohttp.ClientSession.get loop: what the project's prober adds
              on top of aiohttp itself

Each cell is the best of ``--repeat`` runs after one warm-up (``--httpx-repeat`` for the slow
httpx column), in wall-clock seconds; the clients' runs are interleaved round by round. The
``cpu`` column is the client process's CPU seconds for those runs. Target configs are built once,
outside the timed region (a monitor loads its config once); the project's HTTP client is built
inside it, as every monitor cycle builds one.

Where the server runs matters. By default it runs in a *subprocess*: in a thread of this process
it would share the GIL with the client, so every client microsecond also delays the server and
the measurement mixes the two. ``--server thread`` is kept to show that effect.

Goal: project <= 1.5 x floor. Exit code 0 whether or not the goal is met (the table says). A
request that fails (timeout, connection reset on an overloaded machine) is counted, not fatal;
the row then lists the failures per client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

# Runnable from a checkout without installing: the repository root holds the ``recovery`` package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # faultserver

from faultserver import FaultServer, free_port

from recovery.config.loader import HttpTarget
from recovery.engine.probing import _ssl_context, probe_targets

INFLIGHT = 100
GOAL = 1.5
HOST = "127.0.0.1"

_SERVER_SNIPPET = """
import sys, time
from faultserver import FaultServer
server = FaultServer(port=int(sys.argv[1])).start()
print("ready", flush=True)
try:
    while True:
        time.sleep(3600)
finally:
    server.stop()
"""


@contextmanager
def running_server(where: str) -> Iterator[int]:
    """Yield the port of a started FaultServer, in a subprocess or in a thread of this process."""
    if where == "thread":
        with FaultServer() as server:
            yield server.port
        return
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(
            None,
            [
                str(Path(__file__).resolve().parent.parent),
                str(Path(__file__).resolve().parent.parent / "tests"),
                env.get("PYTHONPATH"),
            ],
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER_SNIPPET, str(port)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"fault server subprocess did not start (got {line!r})")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- the clients; each returns how many requests got a 200 ---------------------------------


async def floor_client(port: int, n: int) -> int:
    """Raw asyncio streams: INFLIGHT workers, one keep-alive connection each, HTTP/1.1 by hand."""
    request = (
        f"GET /health HTTP/1.1\r\nHost: {HOST}:{port}\r\nUser-Agent: floor/1\r\nAccept: */*\r\n\r\n"
    ).encode()
    remaining = n
    ok = 0

    async def worker() -> None:
        nonlocal remaining, ok
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        while remaining > 0:
            remaining -= 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(HOST, port)
                assert reader is not None
                writer.write(request)
                status = int((await reader.readline()).split()[1])
                length, keep_alive = 0, True
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        keep_alive = False
                await reader.readexactly(length)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                # Counted as failed, like the other clients' errors; reconnect for the next one.
                if writer is not None:
                    writer.close()
                reader = writer = None
                continue
            ok += status == 200
            if not keep_alive:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    await asyncio.gather(*(worker() for _ in range(min(INFLIGHT, n))))
    return ok


_targets: dict[tuple[int, int], list[HttpTarget]] = {}


def targets_for(port: int, n: int) -> list[HttpTarget]:
    """The N target configs, built once outside the timed region (a monitor loads them once)."""
    key = (port, n)
    if key not in _targets:
        _targets[key] = [
            HttpTarget(kind="http", name=f"t{i}", url=f"http://{HOST}:{port}/health") for i in range(n)
        ]
    return _targets[key]


async def project_client(port: int, n: int) -> int:
    results = await probe_targets(targets_for(port, n), concurrency=INFLIGHT)
    return sum(r.healthy for r in results)


async def httpx_aiohttp_client(port: int, n: int) -> int:
    """The probe batch before aiohttp was used directly (kept as the baseline it replaced)."""
    limits = httpx.Limits(max_connections=INFLIGHT, max_keepalive_connections=INFLIGHT)
    semaphore = asyncio.Semaphore(INFLIGHT)
    transport = AiohttpTransport(verify=_ssl_context(), limits=limits, trust_env=False)
    async with httpx.AsyncClient(transport=transport, follow_redirects=False, trust_env=False) as client:

        async def one(target: HttpTarget) -> int:
            url, auth = target.endpoint()
            async with semaphore:
                try:
                    async with asyncio.timeout(target.timeout_seconds):
                        response = await client.request(
                            target.method, url, auth=auth, timeout=target.timeout_seconds
                        )
                        await response.aread()
                except (httpx.HTTPError, TimeoutError):
                    return 0
                return int(response.status_code in target.expect_status)

        tasks = [asyncio.ensure_future(one(t)) for t in targets_for(port, n)]
        return sum(await asyncio.gather(*tasks))


async def aiohttp_direct_client(port: int, n: int) -> int:
    """Diagnostic: a bare aiohttp loop, to show what the project's prober adds to aiohttp."""
    url = f"http://{HOST}:{port}/health"
    semaphore = asyncio.Semaphore(INFLIGHT)
    timeout = aiohttp.ClientTimeout(total=2.0)
    connector = aiohttp.TCPConnector(limit=INFLIGHT)
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:

        async def one() -> int:
            try:
                async with semaphore, session.get(url, timeout=timeout) as response:
                    await response.read()
                    return int(response.status == 200)
            except (aiohttp.ClientError, TimeoutError):
                return 0

        return sum(await asyncio.gather(*(one() for _ in range(n))))


async def httpx_default_client(port: int, n: int) -> int:
    url = f"http://{HOST}:{port}/health"
    limits = httpx.Limits(max_connections=INFLIGHT, max_keepalive_connections=INFLIGHT)
    semaphore = asyncio.Semaphore(INFLIGHT)
    async with httpx.AsyncClient(limits=limits, trust_env=False) as client:

        async def one() -> int:
            async with semaphore:
                try:
                    response = await client.get(url)
                except httpx.HTTPError:
                    return 0
                return int(response.status_code == 200)

        return sum(await asyncio.gather(*(one() for _ in range(n))))


Client = Callable[[int, int], Awaitable[int]]


@dataclass(frozen=True)
class Timing:
    wall: float
    cpu: float
    failed: int = 0  # requests without a 200 in this run (timeouts, resets under load)


def run_once(client: Client, port: int, n: int) -> Timing:
    """One timed run in a fresh event loop (as each monitor cycle gets)."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    ok = asyncio.run(client(port, n))
    return Timing(time.perf_counter() - wall0, time.process_time() - cpu0, n - ok)


def measure_row(
    clients: dict[str, tuple[Client, int]], port: int, n: int
) -> tuple[dict[str, Timing], dict[str, int]]:
    """Best clean run per client, and each client's failed requests over all its runs.

    Runs are interleaved round by round, so drift in machine load hits every client alike instead
    of whichever happened to run during it. Each client gets a warm-up. A run with failed requests
    is only reported when a client has no clean run (its failures are then shown in the table).
    A client with 0 runs is left out."""
    clients = {name: spec for name, spec in clients.items() if spec[1] > 0}
    for client, _ in clients.values():
        asyncio.run(client(port, min(n, INFLIGHT)))  # warm-up: imports, code paths, first sockets
    best: dict[str, Timing] = {}
    failed = dict.fromkeys(clients, 0)
    for round_ in range(max(runs for _, runs in clients.values())):
        for name, (client, runs) in clients.items():
            if round_ < runs:
                timing = run_once(client, port, n)
                failed[name] += timing.failed
                current = best.get(name)
                if current is None or (timing.failed, timing.wall) < (current.failed, current.wall):
                    best[name] = timing
    return best, failed


COLUMNS = ("floor", "project", "httpx+aio", "httpx", "aiohttp")  # the order of the cpu column


def _wall(row: dict[str, Timing], name: str) -> str:
    return f"{row[name].wall:.3f}" if name in row else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,5000", help="comma-separated target counts")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; the best is reported")
    parser.add_argument(
        "--httpx-repeat", type=int, default=1, help="runs for the slow httpx-default column (0: none)"
    )
    parser.add_argument("--server", choices=("subprocess", "thread"), default="subprocess")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    print(
        f"server: FaultServer /health (uvicorn, {args.server}); {INFLIGHT} in flight; "
        f"best of {args.repeat} (httpx-default: {args.httpx_repeat}); "
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    header = (
        f"{'N':>6} | {'floor s':>8} | {'project s':>9} | {'ratio':>5} | {'httpx+aio s':>11} | {'ratio':>5} | "
        f"{'httpx-default s':>15} | {'aiohttp s':>9} | {'client cpu s ' + '/'.join(COLUMNS):>46} | "
        f"goal <= {GOAL}x"
    )
    print(header)
    print("-" * len(header))
    with running_server(args.server) as port:
        for n in sizes:
            targets_for(port, n)
            row, failed = measure_row(
                {
                    "floor": (floor_client, args.repeat),
                    "project": (project_client, args.repeat),
                    "httpx+aio": (httpx_aiohttp_client, args.repeat),
                    "httpx": (httpx_default_client, args.httpx_repeat),
                    "aiohttp": (aiohttp_direct_client, args.repeat),
                },
                port,
                n,
            )

            floor = row["floor"].wall
            ratio = row["project"].wall / floor
            cpu = "/".join(f"{row[c].cpu:.2f}" if c in row else "-" for c in COLUMNS)
            verdict = "meets" if ratio <= GOAL else "MISSES"
            if any(failed.values()):
                verdict += " (failed requests " + ", ".join(f"{k} {v}" for k, v in failed.items()) + ")"
            cells = [
                f"{n:>6}",
                f"{floor:>8.3f}",
                f"{_wall(row, 'project'):>9}",
                f"{ratio:>5.2f}",
                f"{_wall(row, 'httpx+aio'):>11}",
                f"{row['httpx+aio'].wall / floor:>5.2f}",
                f"{_wall(row, 'httpx'):>15}",
                f"{_wall(row, 'aiohttp'):>9}",
                f"{cpu:>46}",
                verdict,
            ]
            print(
                " | ".join(cells),
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
