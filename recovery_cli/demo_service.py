"""The demo's local HTTP service: ``/health`` answers 200, or 503 while an outage is injected.

Standard library only (``ThreadingHTTPServer`` on loopback) so the product carries no web-server
dependency for its demo; the tests' fault server (``tests/faultserver.py``, uvicorn) has far more
fault modes and stays a dev dependency.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    server: DemoService._Server

    def do_GET(self) -> None:
        status = self.server.owner.status if self.path.startswith("/health") else 404
        body = b'{"ok": true}' if status == 200 else b'{"ok": false}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # the demo prints its own timeline
        return


class DemoService:
    """A started service on a free loopback port; ``fail()`` / ``heal()`` switch its answer."""

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        owner: DemoService

    def __init__(self) -> None:
        self.status = 200
        self._server = self._Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-service", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> DemoService:
        self._thread.start()
        return self

    def fail(self, status: int = 503) -> None:
        self.status = status

    def heal(self) -> None:
        self.status = 200

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
