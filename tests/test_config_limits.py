"""Issue 11 (5): the config loader cannot be weaponised.

The file and its YAML: each bad file of the issue is one ``ConfigError`` naming the field or the
YAML line (values: test_config_values.py; the CLI under resource limits: test_config_cli_limits.py).
"""

from __future__ import annotations

import os
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
    # A target whose variable is unset is set aside (unresolved) until a command touches it.
    config = parse_config({"targets": [_target(url="http://${" + name + "}/")]})
    with pytest.raises(ConfigError) as info:
        config.target(_target()["name"])
    message = str(info.value)
    assert "\n" not in message and len(message) < 300 and "…" in message


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


def test_loading_thousands_of_targets_is_linear() -> None:
    """Each config URL registers its secret parts for redaction; recompiling the mask pattern per
    URL made 300 targets take 8 s and 3,000 never finish. Now: one compile on first use."""
    import time

    from recovery.config.loader import parse_config
    from recovery.redact import redact

    targets = [
        {"name": f"t{i}", "kind": "http", "url": f"http://127.0.0.1:{8000 + i % 1000}/h{i}/x?token=s3cr3t{i}"}
        for i in range(3000)
    ]
    started = time.perf_counter()
    parse_config({"targets": targets})
    assert redact("GET /h2999/x?token=s3cr3t2999 failed") == "GET ***?token=*** failed"
    # Generous: ~0.5 s here; the quadratic version took minutes.
    assert time.perf_counter() - started < 20
