"""Custom step types run for real: processes, a local HTTP server, python functions.

Each test runs one config-defined workflow's steps through ``RecoveryRuntime.run_step`` (the
same call the Prefect task makes; the flows layer is tested in tests/flows/test_custom_flows.py)
and reads the audit rows back.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from custom_steps_helpers import (
    alive,
    audited,
    begin,
    config_with,
    finish_started,
    recording_server,
    step_row,
)

from recovery.config.workflows import CommandStep
from recovery.errors import PermanentError, StepFailed
from recovery.kinds.custom import run_command, substitute, substitute_json

SECRET = "s3cr3t-hook-token-4711"


@pytest.fixture(autouse=True)
def _finish_runs() -> Iterator[None]:
    yield
    finish_started()


def test_substitution_replaces_exactly_the_four_names() -> None:
    values = {"target": "api", "reason": "down", "run_id": "r1", "workflow": "wf"}
    text = "{target} {reason} {run_id} {workflow} {other} {target.__class__} {0} {{target}}"
    assert substitute(text, values) == "api down r1 wf {other} {target.__class__} {0} {api}"
    assert substitute_json({"t": ["{target}", 1, None], "{workflow}": True}, values) == {
        "t": ["api", 1, None],
        "wf": True,
    }


async def test_failing_command_fails_the_step_with_its_redacted_output(sqlite_url: str) -> None:
    lines = ["import os, sys", "print('token', os.environ['HOOK_TOKEN'])", "print('boom', file=sys.stderr)"]
    script = "\n".join([*lines, "sys.exit(1)"])
    step = {"name": "restart", "command": [sys.executable, "-c", script], "env": {"HOOK_TOKEN": SECRET}}
    config = config_with(sqlite_url, [step])
    rt = begin(config)
    with pytest.raises(StepFailed, match="exited 1"):
        await rt.run_step("restart", 1)
    row = step_row(config, rt.run_id, "restart")
    assert row.state == "failed" and row.detail is not None
    assert row.detail["exit_code"] == 1
    assert row.detail["stdout"] == "token ***\n"  # the env value is a config secret: redacted
    assert row.detail["stderr"] == "boom\n"
    assert SECRET not in json.dumps(row.detail) and SECRET not in (row.error_message or "")


async def test_command_timeout_kills_the_whole_process_group(sqlite_url: str, tmp_path: Path) -> None:
    child_pid = tmp_path / "child.pid"
    # The command starts a grandchild and both sleep: a timeout must kill both, not only the leader.
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(child_pid)!r}, 'w').write(str(p.pid))\n"
        f"print('waiting with {SECRET}', flush=True)\n"
        "time.sleep(60)\n"
    )
    step = {"name": "restart", "command": {"argv": [sys.executable, "-c", script], "timeout_seconds": 1.5}}
    config = config_with(sqlite_url, [step])
    from recovery.redact import register_secret

    register_secret(SECRET)  # as if it came from the config's ${VAR}
    rt = begin(config)
    started = time.monotonic()
    with pytest.raises(StepFailed, match=r"timed out after 1\.5s"):
        await rt.run_step("restart", 1)
    assert time.monotonic() - started < 1.5 + 5  # SIGTERM grace included, never the 60 s sleep
    row = step_row(config, rt.run_id, "restart")
    assert row.state == "failed" and row.detail is not None and row.detail["timed_out"] is True
    assert row.detail["stdout"] == "waiting with ***\n"
    assert not alive(row.detail["pid"])
    assert not alive(int(child_pid.read_text()))


async def test_command_that_cannot_start_is_permanent(sqlite_url: str) -> None:
    config = config_with(sqlite_url, [{"name": "restart", "command": ["/nonexistent/restart-it"]}])
    rt = begin(config)
    with pytest.raises(PermanentError, match="could not start"):
        await rt.run_step("restart", 1)
    assert step_row(config, rt.run_id, "restart").state == "failed"


async def test_http_step_sends_the_substituted_request(sqlite_url: str) -> None:
    with recording_server() as (base, requests):
        step = {
            "name": "notify",
            "http": {
                "method": "PUT",
                "url": base + "/hooks/{target}?token=" + SECRET,
                "headers": {"X-Run": "{run_id}", "Authorization": f"Bearer {SECRET}"},
                "json": {"text": "{target}: {reason}", "via": "{workflow}", "keep": "{other}"},
            },
        }
        config = config_with(sqlite_url, [step])
        rt = begin(config, reason="disk full")
        detail = await rt.run_step("notify", 1)
    assert len(requests) == 1
    sent = requests[0]
    assert sent["method"] == "PUT"
    assert sent["path"] == f"/hooks/payments-api?token={SECRET}"
    assert json.loads(sent["body"]) == {"text": "payments-api: disk full", "via": "custom", "keep": "{other}"}
    assert sent["headers"]["X-Run"] == "{run_id}"  # headers are not substituted: only argv/url/body/messages
    assert detail is not None and detail["status"] == 200
    row = step_row(config, rt.run_id, "notify")
    assert row.state == "succeeded" and SECRET not in json.dumps(row.detail)
    assert row.detail is not None and row.detail["url"].endswith("/***")  # the URL is redacted


async def test_http_step_fails_on_an_unexpected_status(sqlite_url: str) -> None:
    with recording_server() as (base, requests):
        step = {
            "name": "notify",
            "http": {"url": base + "/x", "headers": {"X-Answer": "503"}, "body": "{target}"},
        }
        config = config_with(sqlite_url, [step])
        rt = begin(config)
        with pytest.raises(StepFailed, match="answered 503"):
            await rt.run_step("notify", 1)
    assert requests[0]["method"] == "POST" and requests[0]["body"] == "payments-api"
    row = step_row(config, rt.run_id, "notify")
    assert row.state == "failed" and row.detail is not None and row.detail["status"] == 503


async def test_python_steps_sync_off_the_loop_and_async(sqlite_url: str) -> None:
    steps = [
        {"name": "failover", "python": "custom_step_funcs:failover"},
        {"name": "promote", "python": "custom_step_funcs:promote"},
        {"name": "broken", "python": "custom_step_funcs:broken", "optional": True},
    ]
    config = config_with(sqlite_url, steps)
    rt = begin(config, reason="primary lost")
    detail = await rt.run_step("failover", 1)
    assert detail is not None
    assert detail["target"] == "payments-api" and detail["run_id"] == rt.run_id
    assert detail["reason"] == "primary lost" and detail["workflow"] == "custom"
    assert detail["loop_running"] is False and detail["thread"] != "MainThread"  # off the event loop
    assert rt.state.paused("payments-api") == f"failed over by {rt.run_id}"  # ctx.state is the real state
    assert await rt.run_step("promote", 1) == {"result": "promoted replica of payments-api"}
    with pytest.raises(RuntimeError, match="not in sync"):
        await rt.run_step("broken", 1)
    rt.finish("succeeded")
    run = audited(config, rt.run_id)
    assert [(s.name, s.state) for s in run.steps] == [
        ("failover", "succeeded"),
        ("promote", "succeeded"),
        ("broken", "failed"),
    ]


async def test_cancelling_a_command_kills_its_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "leader.pid"
    script = f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n"
    spec = CommandStep(argv=[sys.executable, "-c", script], timeout_seconds=120)
    values = {"target": "t", "reason": "", "run_id": "r", "workflow": "w"}
    running = asyncio.ensure_future(run_command(spec, values))
    deadline = time.monotonic() + 20
    while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    pid = int(pidfile.read_text())
    assert alive(pid)
    running.cancel()  # the flow run was cancelled (or the CLI got SIGTERM)
    with pytest.raises(asyncio.CancelledError):
        await running
    assert not alive(pid)


async def test_http_step_percent_encodes_placeholders_in_the_url(sqlite_url: str) -> None:
    with recording_server() as (base, requests):
        config = config_with(
            sqlite_url, [{"name": "notify", "http": {"url": base + "/incident/{reason}?t={target}"}}]
        )
        rt = begin(config, reason="../admin?drop=1#x")
        await rt.run_step("notify", 1)
    assert requests[0]["path"] == "/incident/..%2Fadmin%3Fdrop%3D1%23x?t=payments-api"
