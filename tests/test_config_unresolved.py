"""Read-only commands need only the secrets of what they touch.

A target whose ``${VAR}`` is unset is unresolved: `history`, `stats` and `status` work without
it (the real CLI, no Prefect; `history --target` of the unresolved target too: audit rows
only), a command that touches it fails naming the variable, and
``audit_url`` / ``state_url`` must always resolve.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from recovery.config.loader import parse_config
from recovery.errors import ConfigError

VAR = "RT_PAYMENTS_TOKEN_UNSET"
TARGETS = [
    {
        "name": "payments-api",
        "kind": "http",
        "url": "http://127.0.0.1:9/h",
        "headers": {"X-Token": f"${{{VAR}}}"},
    },
    {"name": "search", "kind": "http", "url": "http://127.0.0.1:9/s"},
]


def test_unset_variable_sets_only_its_target_aside(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VAR, raising=False)
    config = parse_config({"targets": TARGETS})
    assert [t.name for t in config.targets] == ["search"]
    assert list(config.unresolved) == ["payments-api"]
    with pytest.raises(ConfigError, match=f"targets\\[0\\].headers.X-Token: .*{VAR} is not set"):
        config.target("payments-api")
    with pytest.raises(ConfigError, match=VAR):
        config.require_resolved()
    assert config.target("search").name == "search"
    monkeypatch.setenv(VAR, "tok")
    assert parse_config({"targets": TARGETS}).require_resolved().target("payments-api")


def test_top_level_urls_and_target_names_must_resolve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(VAR, raising=False)
    for data in (
        {"state_url": f"redis://127.0.0.1:6379/${{{VAR}}}"},
        {"targets": [{"name": f"${{{VAR}}}", "kind": "http", "url": "http://127.0.0.1:9/"}]},
        {"targets": [TARGETS[0], TARGETS[0]]},  # two unresolved targets of one name
        {"targets": [TARGETS[0], {**TARGETS[1], "name": "payments-api"}]},  # and one resolved
    ):
        with pytest.raises(ConfigError):
            parse_config(data)


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != VAR}
    return subprocess.run(
        [sys.executable, "-m", "recovery_cli.main", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_read_only_commands_do_not_need_untouched_secrets(tmp_path: Path, sqlite_url: str) -> None:
    config = tmp_path / "recovery.yaml"
    config.write_text(
        f"audit_url: {sqlite_url}\ntargets:\n"
        "  - {name: payments-api, kind: http, url: 'http://127.0.0.1:9/h',\n"
        f"     headers: {{X-Token: '${{{VAR}}}'}}}}\n"
        "  - {name: search, kind: http, url: 'http://127.0.0.1:9/s'}\n"
    )
    # history of the unresolved target too: it reads audit rows, not the target.
    for args in (
        ("history",),
        ("history", "--target", "search"),
        ("history", "--target", "payments-api"),
        ("stats",),
        ("status",),
    ):
        result = run(config, *args)
        assert result.returncode in (0, 1), (args, result.stderr)
        assert "error" not in result.stderr, (args, result.stderr)
    status = run(config, "status")
    assert f"payments-api' is unresolved: environment variable {VAR} is not set" in status.stderr
    assert "search" in status.stdout
    for args in (
        ("validate",),
        ("check",),  # probes every target
        ("recover", "payments-api", "--dry-run"),
    ):
        result = run(config, *args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert f"environment variable {VAR} is not set" in result.stderr, (args, result.stderr)
