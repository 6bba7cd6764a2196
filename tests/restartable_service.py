"""A tiny stdlib HTTP service that a ``command`` step restarts (tests of custom steps).

``python restartable_service.py PORT PIDFILE``          serve /health (200) on 127.0.0.1:PORT
``python restartable_service.py PORT PIDFILE --start``  start it detached (own session, output to
    /dev/null, pid written to PIDFILE) and exit 0 once it answers, 1 if it does not within 10 s:
    what ``systemctl restart`` does for a real service.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import time
import urllib.request


class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status": "ok"}'
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def serve(port: int, pidfile: str) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Health)
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    server.serve_forever()


def start(port: int, pidfile: str) -> int:
    subprocess.Popen(
        [sys.executable, __file__, str(port), pidfile],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # survives the step's process group
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    print(f"started on port {port}")
                    return 0
        except OSError:
            time.sleep(0.05)
    print("did not come up", file=sys.stderr)
    return 1


if __name__ == "__main__":
    port_arg, pid_arg = int(sys.argv[1]), sys.argv[2]
    if sys.argv[3:] == ["--start"]:
        sys.exit(start(port_arg, pid_arg))
    serve(port_arg, pid_arg)
