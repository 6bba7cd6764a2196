"""The process's Services, the run lifecycle hooks, config memoisation and testing mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from recovery.config.loader import load_config, parse_config
from recovery.config.strategy import ExponentialStrategyConfig
from recovery.engine.lifecycle import Phase, RunDetails, emit, set_hooks
from recovery.enums import RunState, RunType
from recovery.policy.strategies import build_strategy, retry_plan
from recovery.services import reset_services, services_for
from recovery.testing import set_testing


def _config(audit_url: str, state_url: str | None = None) -> dict[str, object]:
    data: dict[str, object] = {
        "audit_url": audit_url,
        "targets": [{"name": "api", "kind": "http", "url": "http://127.0.0.1:9/health"}],
    }
    if state_url:
        data["state_url"] = state_url
    return data


def test_services_are_built_once_per_store_and_reset_by_one_hook(sqlite_url: str, redis_url: str) -> None:
    first = parse_config(_config(sqlite_url, redis_url))
    again = parse_config(_config(sqlite_url, redis_url))
    services = services_for(first)
    assert services_for(again) is services, "same stores -> same clients"
    assert services.config is again, "the newest config object is the one runs see"
    state, audit = services.state, services.audit
    assert services.state is state and services.audit is audit, "clients are created once"
    state.set_paused("api", "test")  # really talks to Redis
    assert services.state.paused("api") == "test"
    assert services.breaker("api") is services.breaker("api")
    other = services_for(parse_config(_config(sqlite_url)))
    assert other is not services and other.state_url is None
    reset_services()
    fresh = services_for(first)
    assert fresh is not services and fresh.state is not state


def test_services_connect_lazily(tmp_path: Path) -> None:
    # Nothing listens on port 9: building Services and asking for the audit store must not
    # touch Redis (a read-only command needs only what it reads).
    services = services_for(parse_config(_config(f"sqlite:///{tmp_path / 'a.db'}", "redis://127.0.0.1:9/0")))
    assert services.audit.history(None, 5) == []


def _details(state: RunState = RunState.FAILED) -> RunDetails:
    return RunDetails(Phase.FINISHED, "api", "api-failure-recovery", RunType.AUTOMATIC, "run-1", state)


async def test_hooks_are_called_in_order_and_a_failing_hook_does_not_stop_the_others() -> None:
    seen: list[str] = []

    def broken(details: RunDetails) -> None:
        raise RuntimeError("metrics backend down")

    def sync_hook(details: RunDetails) -> None:
        seen.append(f"sync:{details.state}")

    async def async_hook(details: RunDetails) -> None:
        seen.append(f"async:{details.error_type}")

    previous = set_hooks([broken, sync_hook, async_hook])
    try:
        await emit(RunDetails(**{**_details().__dict__, "error": ValueError("boom")}))
    finally:
        set_hooks(previous)
    assert seen == ["sync:failed", "async:ValueError"]


def test_run_details_redact_their_error() -> None:
    details = RunDetails(
        **{**_details().__dict__, "error": RuntimeError("cannot reach redis://u:hunter2secret@h:1/0")}
    )
    assert details.error_type == "RuntimeError"
    assert details.error_text is not None and "hunter2secret" not in details.error_text


def test_load_config_is_memoised_on_content_and_referenced_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "recovery.yaml"
    monkeypatch.setenv("API_PORT", "9")
    text = "audit_url: sqlite:///{db}\ntargets:\n  - {{name: api, kind: http, url: 'http://127.0.0.1:${{API_PORT}}/h'}}\n"
    path.write_text(text.format(db=tmp_path / "a.db"))
    first = load_config(path)
    assert load_config(str(path)) is first, "a second load of the same file costs one read"
    monkeypatch.setenv("API_PORT", "10")
    changed = load_config(path)
    assert changed is not first and "10" in changed.targets[0].url  # type: ignore[union-attr]
    path.write_text(text.format(db=tmp_path / "b.db"))
    assert load_config(path).audit_url.get_secret_value().endswith("b.db"), "an edit is seen at once"


def test_testing_mode_keeps_attempts_and_zeroes_delays() -> None:
    strategy = build_strategy(ExponentialStrategyConfig(base_seconds=5, max_attempts=4, jitter="none"))
    real = retry_plan(strategy)
    assert real.max_attempts == 4 and sum(real.delays) > 0
    set_testing(True)
    try:
        fast = retry_plan(strategy)
    finally:
        set_testing(False)
    assert fast.max_attempts == real.max_attempts and fast.delays == (0.0,) * len(real.delays)


def test_testing_mode_follows_the_environment_for_subprocesses(monkeypatch: pytest.MonkeyPatch) -> None:
    from recovery import testing

    monkeypatch.setenv(testing.ENV_VAR, "1")
    testing._testing = None  # follow the environment, as a fresh subprocess does
    assert testing.is_testing() and testing.delay(3.0) == 0.0
    monkeypatch.setenv(testing.ENV_VAR, "0")
    assert not testing.is_testing() and testing.delay(3.0) == 3.0
