"""Issue 11 (6): CLI arguments are validated like the config file.

Regression tests for each case of the issue, then a fuzz of every command's arguments through
``main([...])`` in-process: exit 0, 1 or 2, never an uncaught exception, an error is one line.
No test here starts Prefect: flow-running commands are fuzzed against a config without targets
(every one refuses an unknown TARGET first) and ``prefect_environment`` is a trap.
"""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recovery_cli import main as cli_main
from recovery_cli.main import build_parser, main

REPO = Path(__file__).resolve().parent.parent
HUGE = "n" * 100_000
READ_ONLY = ["validate", "check", "history", "stats", "status", "breaker-status"]
WITH_TARGET = ["recover", "reset-breaker", "clear-cache", "reconnect-database"]


@pytest.fixture
def configs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """``one``: one HTTP target (nothing listens on port 1); ``none``: no targets. cwd: tmp_path."""
    audit = f"sqlite:///{tmp_path / 'audit.db'}"
    one = tmp_path / "one.yaml"
    one.write_text(
        f"audit_url: {audit}\ntargets:\n  - {{kind: http, name: api, url: 'http://127.0.0.1:1/h'}}\n"
    )
    none = tmp_path / "none.yaml"
    none.write_text(f"audit_url: {audit}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECOVERY_CONFIG", str(one))

    def no_prefect() -> None:
        raise AssertionError("a test started Prefect")

    monkeypatch.setattr("recovery_cli.runners.prefect_environment", no_prefect)
    yield {"one": str(one), "none": str(none)}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse: errors (2) and --help (0)
        code = exc.code if isinstance(exc.code, int) else 0
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    assert err.startswith("recovery: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err.removeprefix("recovery: error: ").rstrip("\n")


# --- regressions -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("since", ["999999999d", "3651d", "9" * 400 + "s", "1e9d", "inf", "nan", "-1d", "0h"])
def test_since_is_bounded(capsys: pytest.CaptureFixture[str], configs: dict[str, str], since: str) -> None:
    code, _, err = run(capsys, "stats", f"--since={since}")
    assert code == 2
    assert one_error_line(err).startswith("--since: ")


def test_since_ten_years_is_accepted(capsys: pytest.CaptureFixture[str], configs: dict[str, str]) -> None:
    code, out, _ = run(capsys, "stats", "--since", "3650d", "--json")
    assert (code, out) == (0, "[]\n")


@pytest.mark.parametrize(
    "argv",
    [
        ["history", "--target", ""],
        ["history", "--target", "  "],
        ["breaker-status", ""],
        ["recover", ""],
        ["reset-breaker", " ", "--reason", "r"],
        ["clear-cache", ""],
        ["reconnect-database", ""],
    ],
)
def test_empty_target_is_refused(
    capsys: pytest.CaptureFixture[str], configs: dict[str, str], argv: list[str]
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert one_error_line(err).endswith("target: must not be empty")


def test_empty_target_is_unknown_in_the_core_too(configs: dict[str, str]) -> None:
    # The circuit-breaker-status flow passes its parameter straight through.
    from recovery.config.loader import load_config
    from recovery.engine.breaker_admin import breaker_statuses
    from recovery.errors import ConfigError

    config = load_config(configs["one"])
    assert [s.target for s in breaker_statuses(config, None)] == ["api"]
    with pytest.raises(ConfigError, match="unknown target ''"):
        breaker_statuses(config, "")


@pytest.mark.parametrize(
    "argv",
    [
        ["history", "--target", HUGE],
        ["breaker-status", "a" * 5000],
        ["recover", "x" * 999],
        ["recover", "api", "--workflow", "w" * 999],
        ["recover", "api", "--type", HUGE],
        ["history", "--limit", HUGE],
        ["stats", "--since", "9" * 900],
        ["validate", "--config", "c" * 4000],
        ["history", HUGE],
        [HUGE],
    ],
)
def test_long_values_are_clipped(
    capsys: pytest.CaptureFixture[str], configs: dict[str, str], argv: list[str]
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    line = one_error_line(err)
    assert len(line) <= 400, line
    assert all(len(word) <= 81 for word in line.split(" ")), line


def test_unknown_target_is_clipped(capsys: pytest.CaptureFixture[str], configs: dict[str, str]) -> None:
    name = "a" * 63
    code, _, err = run(capsys, "breaker-status", name)
    assert code == 2
    assert one_error_line(err) == f"target: unknown target '{name}' (known: api)"


@pytest.mark.parametrize(
    "argv",
    [
        ["recover", "api", "--reason", "a\nb"],
        ["recover", "api", "--requested-by", "me\x1b[2J"],
        ["clear-cache", "api", "--pattern", "x\x00"],
        ["history", "--target", "api\n"],
        ["--config", "a\nb", "validate"],
        ["stats", "--since", "24h\n"],
        ["history", "--limit", "5\n"],
        ["serve", "--metrics-port", "9\t"],
    ],
)
def test_control_characters_are_refused(
    capsys: pytest.CaptureFixture[str], configs: dict[str, str], argv: list[str]
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    line = one_error_line(err)
    assert line.startswith("argument "), line
    assert not any(ord(c) < 32 or ord(c) == 127 for c in line)


def test_config_before_or_after_the_subcommand(
    capsys: pytest.CaptureFixture[str], configs: dict[str, str]
) -> None:
    for argv in (["--config", configs["none"], "validate"], ["validate", "--config", configs["none"]]):
        code, out, _ = run(capsys, *argv)
        assert (code, out) == (0, f"{configs['none']}: ok (0 targets; no targets; state: in-process)\n")
    # Absent after the subcommand, the one before it (or $RECOVERY_CONFIG) is kept.
    assert run(capsys, "validate")[1].startswith(f"{configs['one']}: ok (1 targets")
    code, _, err = run(capsys, "--config", configs["one"], "history", "--config", "missing.yaml")
    assert code == 2 and one_error_line(err) == "--config: file not found: missing.yaml"
    code, _, err = run(capsys, "validate", "--config", "")
    assert code == 2 and one_error_line(err) == "argument --config: must not be empty"


@pytest.fixture
def fake_serve(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """``serve`` without Prefect: the metrics server and ``serve_all`` record their arguments."""
    calls: list[Any] = []
    monkeypatch.setattr("recovery_cli.runners.prefect_environment", lambda: None)
    monkeypatch.setattr(
        "recovery.reporting.metrics.start_metrics_server",
        lambda port, host: calls.append(("metrics", port, host)),
    )
    fake = types.ModuleType("deployments.serve")
    fake.serve_all = lambda path, limit=None: calls.append(("serve", limit))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "deployments.serve", fake)
    return calls


def test_metrics_host(
    capsys: pytest.CaptureFixture[str], configs: dict[str, str], fake_serve: list[Any]
) -> None:
    assert run(capsys, "serve", "--metrics-port", "9464")[0] == 0
    assert fake_serve == [("metrics", 9464, "127.0.0.1"), ("serve", None)]  # loopback by default
    fake_serve.clear()
    assert run(capsys, "serve", "--metrics-port", "9464", "--metrics-host", "0.0.0.0", "--limit", "3")[0] == 0
    assert fake_serve == [("metrics", 9464, "0.0.0.0"), ("serve", 3)]
    fake_serve.clear()
    assert run(capsys, "serve", "--metrics-port", "9464", "--metrics-host", "::1")[0] == 0
    assert fake_serve[0] == ("metrics", 9464, "::1")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--metrics-port", "9464", "--metrics-host", "bad host"], "argument --metrics-host: expected an IP"),
        (["--metrics-port", "9464", "--metrics-host", ""], "argument --metrics-host: expected an IP"),
        (["--metrics-host", "127.0.0.1"], "--metrics-host: needs --metrics-port"),
        (["--metrics-port", "0"], "argument --metrics-port: expected a port number 1..65535, got '0'"),
        (
            ["--metrics-port", "99999"],
            "argument --metrics-port: expected a port number 1..65535, got '99999'",
        ),
    ],
)
def test_bad_metrics_arguments(
    capsys: pytest.CaptureFixture[str],
    configs: dict[str, str],
    fake_serve: list[Any],
    argv: list[str],
    expected: str,
) -> None:
    code, _, err = run(capsys, "serve", *argv)
    assert code == 2 and one_error_line(err).startswith(expected)
    assert fake_serve == []


@pytest.mark.parametrize("error", [RecursionError, MemoryError, OverflowError])
def test_input_errors_of_the_config_are_exit_2(
    capsys: pytest.CaptureFixture[str], configs: dict[str, str], monkeypatch: pytest.MonkeyPatch, error: type
) -> None:
    def boom(*_: Any) -> None:
        raise error()

    monkeypatch.setattr("recovery.config.loader.parse_yaml", boom)
    code, _, err = run(capsys, "--config", configs["none"], "status")
    assert code == 2
    assert one_error_line(err) == f"{configs['none']}: too large or too deeply nested ({error.__name__})"


@pytest.mark.parametrize("error", [RecursionError, MemoryError, OverflowError])
def test_input_errors_of_the_arguments_are_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, error: type
) -> None:
    class Exploding:
        def parse_args(self, argv: Any) -> None:
            raise error()

    monkeypatch.setattr(cli_main, "build_parser", Exploding)
    code, _, err = run(capsys, "status")
    assert code == 2 and one_error_line(err) == f"arguments too large ({error.__name__})"


def test_read_only_commands_do_not_import_prefect(configs: dict[str, str]) -> None:
    code = (
        "import sys; from recovery_cli.main import main\n"
        "for argv in (['validate'], ['history', '--target', 'api'], ['stats'], ['status'],\n"
        "             ['breaker-status'], ['history', '--target', ''], ['stats', '--since', '9999d']):\n"
        "    try: main(argv)\n"
        "    except SystemExit: pass\n"
        "assert 'prefect' not in sys.modules, 'prefect imported'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stderr


# --- fuzz --------------------------------------------------------------------------------------------------

TOKENS = [
    "--json", "--target", "api", "--limit", "5", "0", "-1", "--since", "24h", "7d", "999999999d", "--config",
    "--reason", "--requested-by", "--workflow", "--type", "emergency", "--pattern", "--dry-run", "--debug",
    "--older-than", "1d", "90d",
    "", " ", "\n", "\x00", "--", "-", "--bogus", "x" * 200, "api-failure-recovery", "--help",
]  # fmt: skip
args = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=30)), max_size=6)
FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _check_outcome(code: int, out: str, err: str) -> None:
    assert code in (0, 1, 2), (code, err)
    assert "Traceback" not in out + err
    assert "a test started Prefect" not in err
    if code == 2:
        assert len(one_error_line(err)) <= 400
    else:
        assert err.count("\n") <= 1, err


@FUZZ
@given(sub=st.sampled_from(["prune", "replay"]), rest=args)
def test_fuzz_audit_commands(
    capsys: pytest.CaptureFixture[str], configs: dict[str, str], sub: str, rest: list[str]
) -> None:
    """`audit prune` deletes: whatever the arguments, one line and exit 2, or a clean run."""
    _check_outcome(*run(capsys, "audit", sub, *rest))


@FUZZ
@given(command=st.sampled_from(READ_ONLY), rest=args, config_first=st.booleans())
def test_fuzz_read_only_commands(
    capsys: pytest.CaptureFixture[str],
    configs: dict[str, str],
    command: str,
    rest: list[str],
    config_first: bool,
) -> None:
    config = ["--config", configs["one"]]
    argv = [*config, command, *rest] if config_first else [command, *rest]
    _check_outcome(*run(capsys, *argv))


@FUZZ
@given(command=st.sampled_from(WITH_TARGET), rest=args)
def test_fuzz_flow_commands_before_prefect(
    capsys: pytest.CaptureFixture[str], configs: dict[str, str], command: str, rest: list[str]
) -> None:
    # No targets: each of these refuses its TARGET (exit 2) before it would import Prefect.
    argv = [command, *rest, "--config", configs["none"]]
    _check_outcome(*run(capsys, *argv))


@FUZZ
@given(command=st.sampled_from(["monitor", "serve", "demo"]), rest=args)
def test_fuzz_parse_of_the_other_commands(
    capsys: pytest.CaptureFixture[str], command: str, rest: list[str]
) -> None:
    # These run Prefect right after parsing: their arguments are fuzzed through the parser only.
    try:
        build_parser().parse_args([command, *rest])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    _, err = capsys.readouterr()
    assert code in (0, 2)
    if code == 2:
        assert len(one_error_line(err)) <= 400
