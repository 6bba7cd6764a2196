"""Other systems drive recoveries through the Prefect REST API — raw HTTP, no Prefect client.

A real `prefect server start` (SQLite) on loopback, a real `recovery serve` process serving the
deployments, and plain httpx calls the way a shell script with curl would make them, including
retrying the 503 "database is locked" a SQLite-backed Prefect server answers under load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from faultserver import FaultServer
from served_stack import AUTH, Api, serving, start_server, stop

from deployments.serve import DEPLOYMENTS, deployment_schema, load_flow
from recovery.audit.store import AuditStore
from recovery.backends.state_redis import RedisState
from recovery.config.loader import load_config


def _write_config(path: Path, audit_url: str, state_url: str, url: str) -> Path:
    path.write_text(
        f"audit_url: {audit_url}\nstate_url: {state_url}\n"
        # The served monitor's first cycle runs at once and sees the test's 503s: a high
        # threshold keeps it from starting an automatic recovery that would hold the lock the
        # REST-triggered runs under test need (seen in CI: the manual run refused).
        "monitor: {interval_seconds: 3600, failure_threshold: 1000}\n"
        "manual_triggers: {max_triggers: 50, window_seconds: 60}\n"
        "strategy: {kind: exponential, base_seconds: 0.5, factor: 2, max_delay_seconds: 2, "
        "max_attempts: 30, jitter: none}\n"
        f"targets:\n  - {{name: payments-api, kind: http, url: '{url}/health', timeout_seconds: 1,\n"
        "     verify: {consecutive_successes: 2, interval_seconds: 0.05}}\n"
    )
    return path


@pytest.fixture
def served(
    tmp_path: Path,
    fault_server: FaultServer,
    redis_url: str,
    sqlite_url: str,
    request: pytest.FixtureRequest,
    prefect_server: Api,
) -> Iterator[tuple[Api, str, dict[str, Any]]]:
    """`recovery serve` on the session's Prefect server; ``auth``: on a server of its own that
    demands the API auth string."""
    auth = bool(getattr(request, "param", False))
    config = _write_config(tmp_path / "recovery.yaml", sqlite_url, redis_url, fault_server.url)
    ctx = {"config": config, "fault": fault_server, "audit": sqlite_url, "redis": redis_url}
    if not auth:
        with serving(prefect_server, config) as api:
            yield api, api.base, ctx
        return
    server, base = start_server(tmp_path / "prefect-home", auth=True)
    try:
        with serving(Api(base, AUTH), config, env={"PREFECT_API_AUTH_STRING": ":".join(AUTH)}) as api:
            yield api, base, ctx
    finally:
        stop(server)


def test_rest_trigger_recover_and_history(served: tuple[Api, str, dict[str, Any]]) -> None:
    api, _, ctx = served
    recover_id = api.deployment_id("recover", "recover")

    # Unknown target: rejected by the API's parameter schema, no flow run created.
    api.call(
        "POST",
        f"/deployments/{recover_id}/create_flow_run",
        expect=(409, 422),
        json={"parameters": {"target": "no-such-api", "requested_by": "ops-bot"}},
    )

    ctx["fault"].app.set_mode("fail-next:2")
    request_id = str(uuid.uuid4())
    run_id = api.trigger(
        recover_id,
        {
            "target": "payments-api",
            "requested_by": "ops-bot",
            "reason": "pager #4711",
            "request_id": request_id,
        },
    )
    run = api.wait(run_id)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    record = AuditStore(ctx["audit"]).run(request_id)
    assert record is not None and record.state == "succeeded"
    assert (record.type, record.requested_by, record.reason) == ("manual", "ops-bot", "pager #4711")
    assert record.flow_run_id == run_id
    assert [s.state for s in record.steps][-1] == "succeeded"

    history_id = api.deployment_id("recovery-history", "recovery-history")
    hist = api.wait(api.trigger(history_id, {"limit": 5}))
    assert hist["state"]["type"] == "COMPLETED", hist["state"]


def test_rest_cancel_marks_audit_cancelled_and_releases_lock(
    served: tuple[Api, str, dict[str, Any]],
) -> None:
    api, _, ctx = served
    recover_id = api.deployment_id("recover", "recover")
    ctx["fault"].app.set_mode("status:503")  # verification keeps retrying until we cancel
    request_id = str(uuid.uuid4())
    run_id = api.trigger(
        recover_id, {"target": "payments-api", "requested_by": "ops-bot", "request_id": request_id}
    )
    audit = AuditStore(ctx["audit"])
    deadline = time.monotonic() + 120
    while (rec := audit.run(request_id)) is None or not any(s.attempts for s in rec.steps[3:4]):
        assert time.monotonic() < deadline, "recovery never reached verification"
        time.sleep(0.5)
    assert RedisState(ctx["redis"]).lock_owner("payments-api") == request_id
    api.call(
        "POST",
        f"/flow_runs/{run_id}/set_state",
        json={"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True},
    )
    run = api.wait(run_id)
    assert run["state"]["type"] == "CANCELLED", run["state"]
    deadline = time.monotonic() + 60
    while (rec := audit.run(request_id)) is not None and rec.state == "in_progress":
        assert time.monotonic() < deadline, "audit row never left in_progress"
        time.sleep(0.5)
    assert rec is not None and rec.state == "cancelled"
    # The row is finished before the lock goes (a row never stays in_progress without its lock:
    # invariant I1), so the release follows the row by moments. The served monitor's first
    # cycle also sees the 503 and may start an automatic recovery as soon as the lock is free:
    # what must be gone is this run's lock.
    deadline = time.monotonic() + 20
    state = RedisState(ctx["redis"])
    while (owner := state.lock_owner("payments-api")) is not None:
        automatic = [r for r in audit.in_progress() if r.target == "payments-api" and r.type == "automatic"]
        if owner != request_id and automatic:
            break  # the monitor's automatic recovery holds it now, audited as one
        assert time.monotonic() < deadline, f"the lock outlived the cancelled run (held by {owner})"
        time.sleep(0.2)
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}
    logs = [str(e["message"]) for e in api.call("POST", "/logs/filter", json=body)]
    # A cancel is no crash: no "Crash detected!", no "Finished in state Running()" (issue 14).
    assert not any("Crash detected" in line or "state Running()" in line for line in logs), logs


@pytest.mark.parametrize("served", [True], indirect=True)
def test_rest_auth_required(served: tuple[Api, str, dict[str, Any]]) -> None:
    api, base, ctx = served
    anonymous = httpx.post(f"{base}/deployments/filter", json={}, timeout=30)
    assert anonymous.status_code == 401
    recover_id = api.deployment_id("recover", "recover")
    request_id = str(uuid.uuid4())
    run = api.wait(
        api.trigger(
            recover_id, {"target": "payments-api", "requested_by": "ops-bot", "request_id": request_id}
        )
    )
    assert run["state"]["type"] == "COMPLETED", run["state"]
    record = AuditStore(ctx["audit"]).run(request_id)
    assert record is not None and record.state == "succeeded"


def test_prefect_deploy_all_accepts_prefect_yaml(
    tmp_path: Path, sqlite_url: str, prefect_server: Api
) -> None:
    """`prefect deploy --all` against a local server creates every deployment of prefect.yaml."""
    base = prefect_server.base
    try:
        config = tmp_path / "recovery.yaml"
        config.write_text(
            f"audit_url: {sqlite_url}\ntargets:\n"
            "  - {name: payments-api, kind: http, url: 'http://127.0.0.1:9/health'}\n"
        )
        env = {
            **os.environ,
            "PREFECT_API_URL": base,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "RECOVERY_CONFIG": str(config),
        }
        repo = Path(__file__).resolve().parents[2]
        prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
        pool = subprocess.run(
            [*prefect, "work-pool", "create", "recovery-pool", "--type", "process"],
            env=env,
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert pool.returncode == 0, pool.stdout + pool.stderr
        deploy = subprocess.run(
            [*prefect, "deploy", "--all"], env=env, cwd=repo, capture_output=True, text=True, timeout=600
        )
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        api = Api(base)
        deployments = api.call("POST", "/deployments/filter", json={})
        names = {d["name"] for d in deployments}
        assert names == {
            "monitor",
            "recover",
            "recovery-status",
            "reset-circuit-breaker",
            "circuit-breaker-status",
            "clear-cache",
            "reconnect-database",
            "recovery-history",
            "recovery-stats",
        }
        by_name = {d["name"]: d for d in deployments}
        # No deployment names a config file: runs load their worker's RECOVERY_CONFIG.
        for d in deployments:
            assert "config_path" not in d["parameters"], d["name"]
            assert "config_path" not in d["parameter_openapi_schema"]["properties"], d["name"]
            for name, prop in d["parameter_openapi_schema"]["properties"].items():
                assert prop.get("description"), f"{d['name']}.{name}: no help text in the form"
        # Prefect 3 reports a deployment's concurrency limit as a global concurrency limit.
        monitor_limit = by_name["monitor"].get("global_concurrency_limit") or {}
        assert monitor_limit.get("limit") == 2, by_name["monitor"]
        options = by_name["monitor"].get("concurrency_options") or {}
        assert options.get("collision_strategy") == "CANCEL_NEW", by_name["monitor"]

        # `prefect deploy` publishes the signature's schema only; `recovery publish-schemas`
        # adds the config's choices and rules: afterwards each schema is the one `serve` uses.
        assert "allOf" not in by_name["recover"]["parameter_openapi_schema"]
        published = subprocess.run(
            [sys.executable, "-m", "recovery_cli.main", "--config", str(config), "publish-schemas", "--json"],
            env=env,
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert published.returncode == 0, published.stdout + published.stderr
        assert json.loads(published.stdout)["missing"] == []
        for spec in DEPLOYMENTS:
            got = api.call("GET", f"/deployments/name/{load_flow(spec.entrypoint).name}/{spec.name}")
            assert got["parameter_openapi_schema"] == deployment_schema(spec, load_config(config)), spec.name
        ok = {"target": "payments-api", "requested_by": "ops"}
        for deployment, bad in (
            ("recover", {**ok, "type": "emergency"}),  # an emergency needs a reason
            ("recover", {**ok, "target": "no-such-target"}),
            ("recover", {**ok, "config_path": "/etc/passwd"}),
            ("clear-cache", ok),  # payments-api is no cache target
        ):
            path = f"/deployments/{by_name[deployment]['id']}/create_flow_run"
            api.call("POST", path, expect=(409, 422), json={"parameters": bad})
        admin = [by_name[n]["id"] for n in ("recover", "clear-cache")]  # (schedules make monitor runs)
        runs = api.call("POST", "/flow_runs/filter", json={"deployments": {"id": {"any_": admin}}})
        assert runs == [], "a refused request created a run"
    finally:
        prefect_server.forget_deployments()
