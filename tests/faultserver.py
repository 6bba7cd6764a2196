"""A real HTTP service with injectable faults, for the demo, tests and benchmarks.

Runs uvicorn in a background thread on loopback. Faults are real: a 503, a 429 with
Retry-After, a slow or hanging response, N failures then success, and "connection refused" by
stopping the server (the port is kept so ``start()`` brings the same URL back).

Routes:
    GET /health                  answers according to the current mode (set_mode / admin route)
    GET /status/{code}           always ``code``
    GET /ratelimit?retry_after=S 429 with Retry-After: S
    GET /slow?seconds=S          200 after S seconds
    GET /hang                    never answers
    GET /flaky/{key}?fail=N      503 for the first N calls of ``key``, then 200
    GET /private/{anything}      401 unless Basic auth matches ``app.basic_auth`` ("user:password",
                                 when set); then 200 with ``app.private_body`` (JSON). Every
                                 Authorization header received is kept in ``app.authorizations``
    POST /admin/mode?value=M     modes: ok | status:CODE | ratelimit:SECONDS | hang |
                                 slow:SECONDS | fail-next:N (503 N times, then ok)
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FaultApp:
    """The ASGI application; state is plain attributes guarded by a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.mode = "ok"
        self.fail_remaining = 0
        self.flaky_calls: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.basic_auth: str | None = None
        self.private_body: Any = {"status": "ok"}
        self.authorizations: list[str] = []

    def set_mode(self, mode: str) -> None:
        with self._lock:
            self.mode = mode
            if mode.startswith("fail-next:"):
                self.fail_remaining = int(mode.split(":", 1)[1])

    def _health_mode(self) -> str:
        with self._lock:
            if self.mode.startswith("fail-next:"):
                if self.fail_remaining > 0:
                    self.fail_remaining -= 1
                    return "status:503"
                self.mode = "ok"
            return self.mode

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        with self._lock:
            self.requests[path] += 1
        if path == "/health":
            await self._by_mode(self._health_mode(), send)
        elif path.startswith("/status/"):
            await _respond(send, int(path.rsplit("/", 1)[1]))
        elif path == "/ratelimit":
            await self._by_mode(f"ratelimit:{query.get('retry_after', '1')}", send)
        elif path == "/slow":
            await self._by_mode(f"slow:{query.get('seconds', '1')}", send)
        elif path == "/hang":
            await self._by_mode("hang", send)
        elif path.startswith("/flaky/"):
            key = path.rsplit("/", 1)[1]
            with self._lock:
                self.flaky_calls[key] += 1
                calls = self.flaky_calls[key]
            await _respond(send, 503 if calls <= int(query.get("fail", "1")) else 200)
        elif path.startswith("/private/"):
            headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
            authorization = headers.get("authorization", "")
            with self._lock:
                self.authorizations.append(authorization)
                expected = self.basic_auth
            if (
                expected is not None
                and authorization != f"Basic {base64.b64encode(expected.encode()).decode()}"
            ):
                await _respond(send, 401, {"error": "unauthorized"})
            else:
                await _respond(send, 200, self.private_body)
        elif path == "/admin/mode" and scope["method"] == "POST":
            self.set_mode(query.get("value", "ok"))
            await _respond(send, 200, {"mode": self.mode})
        else:
            await _respond(send, 404, {"error": "not found"})

    async def _by_mode(self, mode: str, send: Send) -> None:
        kind, _, arg = mode.partition(":")
        if kind == "ok":
            await _respond(send, 200, {"status": "ok"})
        elif kind == "status":
            await _respond(send, int(arg), {"status": "failing"})
        elif kind == "ratelimit":
            await _respond(send, 429, {"error": "rate limited"}, [(b"retry-after", arg.encode())])
        elif kind == "slow":
            await asyncio.sleep(float(arg))
            await _respond(send, 200, {"status": "ok"})
        elif kind == "hang":
            # Never answers; cancelled when the client gives up or the server stops.
            await asyncio.sleep(3600)
        else:
            await _respond(send, 500, {"error": f"unknown mode {mode}"})


async def _respond(
    send: Send, status: int, body: Any = None, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    payload = json.dumps(body if body is not None else {"status": status}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": head + (headers or [])})
    await send({"type": "http.response.body", "body": payload})


class FaultServer:
    """uvicorn in a thread. ``stop()`` frees the port (connection refused); ``start()`` reuses it."""

    def __init__(self, port: int | None = None, app: FaultApp | None = None) -> None:
        self.port = port or free_port()
        self.app = app or FaultApp()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> FaultServer:
        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="critical",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            backlog=4096,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"faultserver-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"fault server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._server.force_exit = True  # hanging requests must not keep the port open
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
