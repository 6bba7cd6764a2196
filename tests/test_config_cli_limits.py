"""Issue 11 (5): each bad config file of the issue through the real CLI under a 512 MB
address-space limit: exit 2, one line, bounded CPU time and memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_config_limits import ALIAS_BOMB

from recovery.config.limits import MAX_CONFIG_BYTES

REPO = Path(__file__).resolve().parent.parent


# The CLI's main() in a fresh interpreter under a 512 MB address-space limit. It reports its own
# peak RSS (VmHWM, reset by exec: the rusage of a child forked from a large pytest process still
# counts the parent's pages) and CPU time on stdout, which ``validate`` leaves empty on error.
_LIMITED_CLI = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))
from recovery_cli.main import main
try:
    code = main(["--config", sys.argv[1], "validate"])
except SystemExit as exc:
    code = exc.code
usage = resource.getrusage(resource.RUSAGE_SELF)
hwm = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(hwm, usage.ru_utime + usage.ru_stime)
sys.exit(code)
"""


def _run_limited(config: Path, env: dict[str, str]) -> tuple[int, str, float, float, float]:
    """Run ``recovery --config CONFIG validate``; exit code, stderr, wall s, CPU s, peak RSS MB."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", _LIMITED_CLI, str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=config.parent,
        env=env,
    )
    wall = time.monotonic() - started
    hwm_kb, cpu = result.stdout.split()
    return result.returncode, result.stderr, wall, float(cpu), int(hwm_kb) / 1024


def _fit(unit: str) -> str:
    """``a: [unit,unit,...]`` of just under MAX_CONFIG_BYTES."""
    return "a: [" + ",".join([unit] * ((MAX_CONFIG_BYTES - 8) // (len(unit) + 1))) + "]\n"


BAD_FILES: dict[str, str] = {
    "alias-bomb": ALIAS_BOMB,
    "inf": "monitor: {lock_ttl_seconds: .inf}\n",
    "1e308": "targets:\n  - {kind: http, name: a, url: 'http://h/', verify: {interval_seconds: 1e308}}\n",
    "port": "targets:\n  - {kind: http, name: a, url: 'http://h:99999/'}\n",
    "nul-url": 'targets:\n  - {kind: http, name: a, url: "http://h/\\0"}\n',
    "http-audit-url": "audit_url: http://audit.internal/\n",
    "unexpanded": "targets:\n  - {kind: http, name: a, url: 'http://${HOST/'}\n",
    "duplicate": "monitor: {}\nmonitor: {}\n",
    "deep": "a: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "ints": _fit("0"),
    "empty-lists": _fit("[]"),
    "empty-maps": _fit("{}"),
    "wide": "".join(f"k{i}: 1\n" for i in range(40_000)),
    "bad-targets": "targets:\n" + "".join("  - {}\n" for _ in range(40_000)),
    "long-string": "a: '" + "x" * (MAX_CONFIG_BYTES - 10) + "'\n",
    "long-number": "a: " + "1" * (MAX_CONFIG_BYTES - 10) + "\n",
    "env-bomb": "a:\n" + "".join("  - ${RT_BIG}\n" for _ in range(20_000)),
    "too-large": "a: 1\n" + "#" * MAX_CONFIG_BYTES + "\n",
}


@pytest.fixture(scope="module")
def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "RT_BIG": "x" * 100_000}


@pytest.mark.parametrize("name", [*BAD_FILES, "fifo", "dev-zero"])
def test_cli_bad_file_is_one_line_exit_2_bounded(name: str, tmp_path: Path, cli_env: dict[str, str]) -> None:
    if name == "fifo":
        config = tmp_path / "fifo.yaml"
        os.mkfifo(config)
    elif name == "dev-zero":
        config = Path("/dev/zero")
    else:
        config = tmp_path / f"{name}.yaml"
        config.write_text(BAD_FILES[name])
    code, stderr, wall, cpu, rss_mb = _run_limited(config, cli_env)
    assert code == 2, stderr
    assert stderr.startswith("recovery: error: ") and stderr.count("\n") == 1, stderr
    assert "Traceback" not in stderr
    # CPU time is the cost of the input; wall time also counts waiting for a CPU on a busy
    # machine, so it gets slack (it still catches a hang).
    assert cpu < 2.0, (cpu, stderr)
    assert wall < 6.0, (wall, stderr)
    assert rss_mb < 100, (rss_mb, stderr)
