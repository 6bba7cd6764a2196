"""Issue 11 (5): the config loader cannot be weaponised.

Each bad file of the issue is one ``ConfigError`` naming the field or the YAML line; run through
the real CLI under a 512 MB address-space limit it is one exit-2 line in bounded time and memory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from recovery.config.limits import (
    MAX_CONFIG_BYTES,
    MAX_DEPTH,
    MAX_EXPANDED_CHARS,
    MAX_KEYS,
    MAX_NODES,
)
from recovery.config.loader import load_config, parse_config
from recovery.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "recovery_cli.main"]
MiB = 1 << 20

# The alias bomb of the issue: 668 bytes that safe_load expands to 9**9 strings to ${VAR}-expand.
ALIAS_BOMB = (
    'a: &a ["${HOME}","${HOME}","${HOME}","${HOME}","${HOME}","${HOME}","${HOME}","${HOME}","${HOME}"]\n'
    + "".join(f"{n}: &{n} [{','.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True))
)


def _target(**overrides: Any) -> dict[str, Any]:
    return {"kind": "http", "name": "api", "url": "http://127.0.0.1:8080/health", **overrides}


def _load_error(tmp_path: Path, text: str | bytes) -> str:
    path = tmp_path / "recovery.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    return message.removeprefix(f"{path}: ")


def _parse_error(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert "\n" not in str(info.value)
    return str(info.value)


# --- the file ----------------------------------------------------------------------------------------------


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(fifo)
    assert str(info.value) == f"--config: cannot read {fifo}: not a regular file"
    assert time.monotonic() - started < 1


def test_dev_zero_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("/dev/zero")
    assert str(info.value) == "--config: cannot read /dev/zero: not a regular file"


def test_file_over_the_size_limit(tmp_path: Path) -> None:
    message = _load_error(tmp_path, "a: 1\n" + "#" * MAX_CONFIG_BYTES)
    assert message.endswith(f"larger than {MAX_CONFIG_BYTES} bytes")


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    assert _load_error(tmp_path, b"monitor: {}\nx: \xff\n") == "line 2: not UTF-8 (byte 16)"


def test_nul_in_the_file_names_the_line(tmp_path: Path) -> None:
    assert _load_error(tmp_path, "monitor: {}\nx: a\x00b\n") == (
        "line 2: character U+0000 is not allowed in YAML"
    )


def test_long_path_is_clipped(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("x" * 100_000)
    assert len(str(info.value)) < 150 and "…" in str(info.value)


# --- the YAML ----------------------------------------------------------------------------------------------


def test_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    assert len(ALIAS_BOMB) < 700
    started = time.monotonic()
    assert _load_error(tmp_path, ALIAS_BOMB) == "line 1: anchors (&a) are not allowed"
    assert time.monotonic() - started < 1


def test_alias_without_anchor_is_refused(tmp_path: Path) -> None:
    # Undefined alias: libyaml parses it as an alias event; refused before any lookup.
    assert _load_error(tmp_path, "a: *nowhere\n") == "line 1: aliases (*nowhere) are not allowed"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("monitor: {}\nmonitor: {}\n", "line 2: duplicate key 'monitor'", id="top-level"),
        pytest.param(
            "targets:\n  - kind: http\n    name: a\n    url: http://h/\n    name: b\n",
            "line 5: duplicate key 'name'",
            id="nested",
        ),
    ],
)
def test_duplicate_keys_name_key_and_line(tmp_path: Path, text: str, expected: str) -> None:
    assert _load_error(tmp_path, text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a: " + "[" * 100_000 + "]" * 100_000 + "\n", id="flow"),
        pytest.param("".join(" " * i + f"k{i}:\n" for i in range(1200)), id="block"),
    ],
)
def test_deep_nesting_is_one_line(tmp_path: Path, text: str) -> None:
    message = _load_error(tmp_path, text)
    assert message.startswith("line ")
    assert "nest" in message  # ours at 32 levels, or libyaml's own (its scanner runs ahead)


def test_nesting_limit_is_exact(tmp_path: Path) -> None:
    ok = "a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n"
    assert _load_error(tmp_path, ok) == "a: unknown field"  # parsed: 32 levels, the root mapping included
    deeper = "a: " + "[" * MAX_DEPTH + "]" * MAX_DEPTH + "\n"
    assert _load_error(tmp_path, deeper) == f"line 1: nested deeper than {MAX_DEPTH} levels"


def test_value_and_key_counts_are_bounded(tmp_path: Path) -> None:
    many = "a: [" + ",".join(["0"] * (MAX_NODES + 1)) + "]\n"
    assert _load_error(tmp_path, many) == f"line 1: more than {MAX_NODES} values in one file"
    wide = "".join(f"k{i}: 1\n" for i in range(MAX_KEYS + 1))
    assert _load_error(tmp_path, wide) == f"line {MAX_KEYS + 1}: more than {MAX_KEYS} keys in one mapping"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("1: x\n", "line 1: mapping key 1 must be a string (quote it)", id="int-key"),
        pytest.param("? [a]\n: b\n", "line 1: mapping keys must be strings, not collections", id="seq-key"),
        pytest.param("<<: {a: 1}\n", "line 1: merge keys (<<) are not allowed", id="merge"),
        pytest.param("a: !!binary aGk=\n", "line 1: tag !!binary is not supported", id="binary"),
        pytest.param(
            "a: !!python/name:os.system x\n",
            "line 1: tag !!python/name:os.system is not supported",
            id="python",
        ),
        pytest.param("a: !custom x\n", "line 1: tag !custom is not supported", id="local-tag"),
        pytest.param("a: 2001-02-30\n", "line 1: invalid timestamp '2001-02-30'", id="bad-date"),
        pytest.param("a: " + "1:" * 60 + "1\n", "line 1: number longer than 100 characters", id="base60"),
        pytest.param("a: 1\n---\nb: 2\n", "line 2: expected a single YAML document", id="two-docs"),
        pytest.param("targets: [unclosed\n", "line 2: did not find expected ',' or ']'", id="syntax"),
    ],
)
def test_yaml_refusals_name_the_line(tmp_path: Path, text: str, expected: str) -> None:
    assert _load_error(tmp_path, text) == expected


def test_yaml_types_still_load(tmp_path: Path) -> None:
    path = tmp_path / "types.yaml"
    path.write_text(
        "monitor: {interval_seconds: 1.5, failure_threshold: 0x2, flap_detection: no}\n"
        "targets:\n  - {kind: http, name: a, url: 'http://h:8080/x', expect_status: [200, '204']}\n"
    )
    config = load_config(path)
    assert config.monitor.failure_threshold == 2 and config.monitor.flap_detection is False
    assert config.targets[0].expect_status == [200, 204]  # type: ignore[union-attr]


# --- ${VAR} expansion --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["${}", "${A", "${1X}", "${A B}", "${A:-${B}}", "x${"])
def test_malformed_reference_is_refused(ref: str) -> None:
    message = _parse_error({"targets": [_target(url=f"http://h/{ref}")]})
    assert message.startswith("targets[0].url: malformed '${' at character ")


def test_expansion_output_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RT_BIG", "x" * 100_000)
    data = {
        "targets": [_target(headers={f"h{i}": "${RT_BIG}" for i in range(MAX_EXPANDED_CHARS // 100_000 + 1)})]
    }
    assert _parse_error(data).endswith(f"expansions exceed {MAX_EXPANDED_CHARS} characters in all")


def test_expansion_is_on_values_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RT_KEY", "monitor")
    assert _parse_error({"${RT_KEY}": {}}) == "${RT_KEY}: unknown field"


def test_long_variable_name_is_clipped(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "V" * 10_000
    monkeypatch.delenv(name, raising=False)
    message = _parse_error({"targets": [_target(url="http://${" + name + "}/")]})
    assert len(message) < 200 and "…" in message


def test_parse_config_bounds_python_input_too() -> None:
    deep: Any = {}
    node = deep
    for _ in range(100):
        node["x"] = {}
        node = node["x"]
    assert _parse_error({"targets": [_target(headers=deep)]}).endswith(
        f"nested deeper than {MAX_DEPTH} levels"
    )
    assert _parse_error({"targets": [0] * (MAX_NODES + 1)}).endswith(
        f"more than {MAX_NODES} values in one config"
    )


# --- numbers -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "monitor: {lock_ttl_seconds: .inf}\n",
            "monitor.lock_ttl_seconds: Input should be a finite number",
            id="inf",
        ),
        pytest.param(
            "monitor: {interval_seconds: .nan}\n",
            "monitor.interval_seconds: Input should be a finite number",
            id="nan",
        ),
        pytest.param(
            "targets:\n  - {kind: http, name: a, url: 'http://h/', verify: {interval_seconds: 1e308}}\n",
            "targets[0].verify.interval_seconds: Input should be less than or equal to 3600",
            id="1e308",
        ),
        pytest.param(
            "strategy: {kind: exponential, max_delay_seconds: 1e9}\n",
            "strategy.max_delay_seconds: Input should be less than or equal to 86400",
            id="delay",
        ),
        pytest.param(
            "monitor: {failure_threshold: 1.0e+308}\n",
            "monitor.failure_threshold: Unable to parse input string as an integer, exceeded maximum size",
            id="int-1e308",
        ),
    ],
)
def test_numbers_are_finite_and_bounded(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "n.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == expected


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            {"monitor": {"lock_ttl_seconds": float("inf")}},
            "monitor.lock_ttl_seconds: Input should be a finite number",
        ),
        (
            {"manual_triggers": {"window_seconds": 1e12}},
            "manual_triggers.window_seconds: Input should be less than or equal to 2592000",
        ),
        (
            {"strategy": {"seed": 2**80}},
            "strategy.seed: Input should be less than or equal to 9223372036854775807",
        ),
        (
            {"targets": [_target(breaker={"fail_max": 10**6})]},
            "targets[0].breaker.fail_max: Input should be less than or equal to 1000",
        ),
        (
            {"targets": [_target(rate_limit={"normal_rate_per_second": float("nan")})]},
            "targets[0].rate_limit.normal_rate_per_second: Input should be a finite number",
        ),
        (
            {"targets": [_target(expect_status=[200] * 101)]},
            "targets[0].expect_status: List should have at most 100 items after validation, not 101",
        ),
    ],
)
def test_model_bounds(data: Any, expected: str) -> None:
    assert _parse_error(data) == expected


# --- URLs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"targets": [_target(url="http://h:99999/")]}, "targets[0].url: invalid URL: port must be 1-65535"),
        ({"targets": [_target(url="http://h:-1/")]}, "targets[0].url: invalid URL: port must be 1-65535"),
        ({"targets": [_target(url="http://h:abc/")]}, "targets[0].url: invalid URL: port must be 1-65535"),
        ({"targets": [_target(url="http://h:0/")]}, "targets[0].url: invalid URL: port must be 1-65535"),
        (
            {"targets": [_target(url="http://h/a\x00b")]},
            "targets[0].url: invalid URL: whitespace or control character",
        ),
        (
            {"targets": [_target(url="http://h/a b")]},
            "targets[0].url: invalid URL: whitespace or control character",
        ),
        (
            {"targets": [_target(url="http://h/a\nb")]},
            "targets[0].url: invalid URL: whitespace or control character",
        ),
        ({"targets": [_target(url="http://[::1/")]}, "targets[0].url: invalid URL"),
        ({"targets": [_target(url="http:///path")]}, "targets[0].url: invalid URL"),
        (
            {"audit_url": "http://audit.internal/"},
            "audit_url: invalid SQLAlchemy URL: dialect 'http' (expected sqlite or postgresql)",
        ),
        (
            {"audit_url": "mysql://h/db"},
            "audit_url: invalid SQLAlchemy URL: dialect 'mysql' (expected sqlite or postgresql)",
        ),
        (
            {"audit_url": "postgresql+nodriver://h/db"},
            "audit_url: invalid SQLAlchemy URL: unknown dialect 'postgresql+nodriver'",
        ),
        ({"audit_url": "postgresql://h:99999/db"}, "audit_url: invalid SQLAlchemy URL: port must be 1-65535"),
        ({"audit_url": "postgresql://h:abc/db"}, "audit_url: invalid SQLAlchemy URL"),
        ({"audit_url": "sqlite:///a\x00.db"}, "audit_url: invalid SQLAlchemy URL: control character"),
        (
            {"state_url": "http://127.0.0.1:6379"},
            "state_url: invalid Redis URL (expected redis://host:port/db)",
        ),
        (
            {"state_url": "redis://h:6379/abc"},
            "state_url: invalid Redis URL: the database must be a number (redis://host:port/0)",
        ),
        ({"state_url": "redis://h:70000/0"}, "state_url: invalid Redis URL: port must be 1-65535"),
        ({"state_url": "redis:///0"}, "state_url: invalid Redis URL (expected redis://host:port/db)"),
        (
            {"targets": [{"kind": "redis", "name": "c", "url": "redis://h/0?db=x"}]},
            "targets[0].url: invalid Redis URL: the database must be a number (redis://host:port/0)",
        ),
        (
            {"targets": [{"kind": "database", "name": "d", "url": "mysql://h/db"}]},
            "targets[0].url: invalid SQLAlchemy URL: dialect 'mysql' (expected sqlite or postgresql)",
        ),
        (
            {"targets": [_target(headers={"X-A": "a\r\nInjected: 1"})]},
            "targets[0].headers: header 'X-A': control character in the value",
        ),
        (
            {"targets": [_target(headers={"bad name": "v"})]},
            "targets[0].headers: invalid header name 'bad name'",
        ),
    ],
)
def test_urls_are_checked_per_scheme(data: Any, expected: str) -> None:
    message = _parse_error(data)
    assert message == expected


def test_good_urls_pass() -> None:
    config = parse_config(
        {
            "audit_url": "postgresql+psycopg://u:pw@db.internal:5432/recovery",
            "state_url": "rediss://:pw@redis.internal:6380/2",
            "targets": [
                _target(url="https://[::1]:8443/health?x=1", headers={"Authorization": "Bearer\tx"}),
                {"kind": "redis", "name": "cache", "url": "unix:///run/redis.sock?db=1"},
                {"kind": "database", "name": "db", "url": "sqlite:////var/lib/my app/db.sqlite"},
            ],
        }
    )
    assert [t.name for t in config.targets] == ["api", "cache", "db"]


def test_echoed_values_are_clipped() -> None:
    message = _parse_error({"targets": [_target(kind="k" * 100_000)]})
    assert len(message) < 200 and "…" in message
    message = _parse_error({"x" * 100_000 + "\n": 1})
    assert message == "x" * 80 + "…: unknown field"


# --- the CLI under resource limits -------------------------------------------------------------------------


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
