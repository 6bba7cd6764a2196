"""Admin deployments through the REST API: a bad request is refused before a flow run exists,
no caller (nor a PATCH) can make a run load another config, and the UI's Retry of a failed
`recover` run is a second audited attempt linked to the first.

A real `prefect server start` and a real `recovery serve` (helpers of test_rest_api.py), raw
HTTP as another system would send it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from faultserver import FaultServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from served_stack import Api, serving

from recovery.audit.store import AuditStore
from recovery_cli.readonly import format_run

Served = tuple[Api, dict[str, Any]]


@pytest.fixture
def served(
    tmp_path: Path, fault_server: FaultServer, redis_url: str, sqlite_url: str, prefect_server: Api
) -> Iterator[Served]:
    config = tmp_path / "recovery.yaml"
    config.write_text(
        f"audit_url: {sqlite_url}\nstate_url: {redis_url}\n"
        "monitor: {interval_seconds: 3600}\n"
        "manual_triggers: {max_triggers: 50, window_seconds: 60}\n"
        "strategy: {kind: exponential, base_seconds: 0.1, factor: 2, max_delay_seconds: 0.2,"
        " max_attempts: 2, jitter: none}\n"
        "targets:\n"
        f"  - {{name: payments-api, kind: http, url: '{fault_server.url}/health', timeout_seconds: 1,\n"
        "     verify: {consecutive_successes: 1, interval_seconds: 0}}\n"
        f"  - {{name: sessions, kind: redis, url: '{redis_url}'}}\n"
    )
    with serving(prefect_server, config) as api:
        yield api, {"fault": fault_server, "audit": sqlite_url, "tmp": tmp_path}


def runs_of(api: Api, deployment_id: str) -> list[dict[str, Any]]:
    return list(
        api.call("POST", "/flow_runs/filter", json={"deployments": {"id": {"any_": [deployment_id]}}})
    )


def test_bad_requests_are_refused_before_a_run_exists_and_patch_cannot_choose_the_config(
    served: Served,
) -> None:
    api, ctx = served
    recover = api.deployment_id("recover", "recover")
    clear = api.deployment_id("clear-cache", "clear-cache")
    reconnect = api.deployment_id("reconnect-database", "reconnect-database")
    ok = {"target": "payments-api", "requested_by": "ops-bot"}
    refused = [
        (recover, {**ok, "config_path": "/etc/passwd"}),  # unknown extra parameter
        (recover, {**ok, "run_type": "automatic"}),
        (recover, {**ok, "lock_token": "stolen"}),
        (recover, {**ok, "requested_by": "   "}),
        (recover, {**ok, "requested_by": "ops\x00bot"}),
        (recover, {**ok, "requested_by": "x" * 201}),
        (recover, {"target": "payments-api"}),  # requested_by is required
        (recover, {**ok, "request_id": "r" * 100}),
        (recover, {**ok, "type": "scheduled"}),
        (recover, {**ok, "type": "emergency"}),  # an emergency needs a reason
        (recover, {**ok, "type": "emergency", "reason": "   "}),
        (recover, {**ok, "workflow": "clear-cache"}),  # not a workflow of an http target
        (clear, {**ok}),  # clear-cache lists only cache targets
        (clear, {"target": "sessions"}),
        (clear, {"target": "sessions", "requested_by": "ops", "lock_token": "x"}),
        (reconnect, {"target": "sessions", "requested_by": "ops"}),  # no database target at all
    ]
    for deployment_id, parameters in refused:
        api.call(
            "POST",
            f"/deployments/{deployment_id}/create_flow_run",
            expect=(409, 422),
            json={"parameters": parameters},
        )
    for deployment_id in (recover, clear, reconnect):
        assert runs_of(api, deployment_id) == [], "a refused request created a flow run"

    emergency = api.trigger(recover, {**ok, "type": "emergency", "reason": "INC-4711"})
    assert api.wait(emergency)["state"]["type"] == "COMPLETED"
    [record] = [r for r in AuditStore(ctx["audit"]).history() if r.flow_run_id == emergency]
    assert (record.type, record.reason, record.state) == ("emergency", "INC-4711", "succeeded")

    # There is no config parameter to unfreeze: with schema checks off, a run that names a
    # config file still loads only the worker's, and fails before acting.
    schema = api.call("GET", f"/deployments/{recover}")["parameter_openapi_schema"]
    assert not {"config_path", "run_type", "lock_token"} & set(schema["properties"])
    api.call("PATCH", f"/deployments/{recover}", expect=204, json={"enforce_parameter_schema": False})
    evil_db = ctx["tmp"] / "evil.db"
    evil = ctx["tmp"] / "evil.yaml"
    evil.write_text(f"audit_url: sqlite:///{evil_db}\ntargets: []\n")
    sneaky = api.trigger(recover, {**ok, "config_path": str(evil)})
    blank = api.trigger(recover, {**ok, "requested_by": "   "})
    for run_id in (sneaky, blank):
        assert api.wait(run_id)["state"]["type"] in ("FAILED", "CRASHED")
        assert not [r for r in AuditStore(ctx["audit"]).history() if r.flow_run_id == run_id]
    assert not evil_db.exists(), "the caller's config was loaded"


def test_ui_retry_of_a_failed_recover_run_is_a_second_audited_attempt(served: Served) -> None:
    api, ctx = served
    recover = api.deployment_id("recover", "recover")
    ctx["fault"].app.set_mode("status:503")
    request_id = str(uuid.uuid4())
    run_id = api.trigger(
        recover, {"target": "payments-api", "requested_by": "ops-bot", "request_id": request_id}
    )
    assert api.wait(run_id)["state"]["type"] == "FAILED"
    audit = AuditStore(ctx["audit"])
    first = audit.run(request_id)
    assert first is not None and first.state == "failed" and first.flow_run_id == run_id

    ctx["fault"].app.set_mode("ok")
    # What the UI's Retry button sends (prefect-ui-library: retryFlowRun).
    result = api.call(
        "POST",
        f"/flow_runs/{run_id}/set_state",
        json={
            "state": {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"},
            "force": False,
        },
    )
    assert result["status"] == "ACCEPT", result
    run = api.wait(run_id)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert run["run_count"] == 2
    attempts = sorted(
        (r for r in audit.history("payments-api") if r.flow_run_id == run_id), key=lambda r: r.started_at
    )
    assert [(r.id, r.state) for r in attempts] == [
        (request_id, "failed"),
        (f"{uuid.UUID(run_id).hex}.2", "succeeded"),
    ]
    assert {(r.requested_by, r.type) for r in attempts} == {("ops-bot", "manual")}
    # `recovery history` shows the retry's link to the first attempt (the same flow run).
    assert f"attempt 2 of flow run {run_id}" in format_run(attempts[1])[0]


def test_a_run_a_schedule_created_is_audited_as_scheduled(served: Served) -> None:
    """``scheduled`` is no caller's choice: the run type of a run the scheduler created."""
    api, ctx = served
    recover = api.deployment_id("recover", "recover")
    params = {"target": "payments-api", "requested_by": "nightly", "type": "emergency", "reason": "drill"}
    start = datetime.now(UTC) + timedelta(seconds=5)
    schedule = {"interval": 3600, "anchor_date": start.isoformat()}
    api.call("POST", f"/deployments/{recover}/schedules", json=[{"schedule": schedule, "parameters": params}])
    deadline = time.monotonic() + 120
    while not (due := [r for r in runs_of(api, recover) if r["auto_scheduled"]]):
        assert time.monotonic() < deadline, "the scheduler created no run"
        time.sleep(1)
    first = min(due, key=lambda r: r["expected_start_time"])
    assert api.wait(first["id"])["state"]["type"] == "COMPLETED"
    [record] = [r for r in AuditStore(ctx["audit"]).history() if r.flow_run_id == first["id"]]
    assert (record.type, record.requested_by, record.state) == ("scheduled", "nightly", "succeeded")


# One invalid thing per request, the rest valid: each must be refused by the API's schema
# check (409/422) before a flow run exists, whatever the invalid thing is.
_CONTROL = st.characters(min_codepoint=0, max_codepoint=31)
_bad_text = st.one_of(
    st.text(alphabet=" \t", min_size=1, max_size=5),  # blank
    st.builds(lambda a, c, b: a + c + b, st.text(max_size=5), _CONTROL, st.text(max_size=5)),
    st.text(alphabet="x", min_size=201, max_size=300),  # too long
)
_mutations = st.one_of(
    st.builds(lambda k, v: ("extra", k, v), st.from_regex(r"[a-z_]{1,12}", fullmatch=True), st.integers()),
    st.builds(lambda v: ("requested_by", "requested_by", v), _bad_text),
    st.builds(lambda v: ("target", "target", v), st.text(min_size=1, max_size=30)),
    st.builds(lambda v: ("type", "type", v), st.sampled_from(["automatic", "scheduled", "EMERGENCY", ""])),
    st.builds(lambda v: ("request_id", "request_id", v), st.text(min_size=37, max_size=60)),
)


_BASES = {  # a valid request per admin deployment; each example breaks exactly one thing
    ("recover", "recover"): {"target": "payments-api", "requested_by": "ops-bot"},
    ("clear-cache", "clear-cache"): {"target": "sessions", "requested_by": "ops-bot"},
    ("reset-circuit-breaker", "reset-circuit-breaker"): {
        "target": "payments-api",
        "requested_by": "ops-bot",
        "reason": "INC-1",
    },
}


@settings(
    max_examples=int(os.environ.get("REST_FUZZ_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one server for every example
)
@given(which=st.sampled_from(sorted(_BASES)), mutation=_mutations)
def test_fuzzed_bad_parameters_never_create_a_run(
    served: Served, which: tuple[str, str], mutation: tuple[str, str, Any]
) -> None:
    api, _ = served
    deployment = api.deployment_id(*which)
    kind, key, value = mutation
    base = _BASES[which]
    if kind == "extra":
        key = f"x_{key}"  # never a real parameter name
    if kind == "target":
        value = f"{value}-unknown"  # never a configured target
    if kind in ("type", "request_id") and which[0] != "recover":
        key = f"x_{key}"  # not a parameter of this deployment: an unknown one
    parameters = {**base, key: value}
    path = f"/deployments/{deployment}/create_flow_run"
    api.call("POST", path, expect=(409, 422), json={"parameters": parameters})
    assert runs_of(api, deployment) == [], f"{parameters!r} created a flow run"
