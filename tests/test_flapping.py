"""Flap detection: Nagios' weighted state-change percentage over the last 21 probes, the probe
history in shared state (Redis list / in-process), and the monitor holding off recovery."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from recovery.backends.keys import probe_history_key
from recovery.backends.state import SharedState
from recovery.backends.state_memory import MemoryState
from recovery.backends.state_redis import RedisState
from recovery.config.loader import RecoveryConfig, parse_config
from recovery.engine.monitor import decide
from recovery.errors import ConfigError
from recovery.kinds.base import ProbeResult
from recovery.policy.flapping import HISTORY_SIZE, evaluate, percent_state_change


def nagios_percent(states: list[bool]) -> float:
    """flapping.c, transcribed: a 21-slot circular history initialised with the first state."""
    size = 21
    history = [states[0]] * size
    index = 0
    for s in states:  # add_state_history: overwrite the oldest slot, advance the index
        history[index] = s
        index = (index + 1) % size
    curved = 0.0
    last = None
    y = index  # the oldest entry
    for x in range(size):
        value = history[y]
        y = (y + 1) % size
        if x == 0:
            last = value
            continue
        if last != value:
            curved += ((x - 1) * (1.25 - 0.75)) / (size - 2) + 0.75
        last = value
    return curved * 100.0 / (size - 1)


@pytest.mark.parametrize(
    "states",
    [
        [True] * 21,
        [True, False] * 11,
        [True] * 20 + [False],
        [False] + [True] * 20,
        [True, True, False],
        [True] * 5 + [False] * 3 + [True] * 4 + [False] * 3 + [True] * 6,
        [False, True, True, False, False, False, True] * 5,
    ],
)
def test_percent_matches_nagios(states: list[bool]) -> None:
    assert percent_state_change(states) == pytest.approx(nagios_percent(states), abs=1e-6)


def test_weights_newest_change_counts_most() -> None:
    assert percent_state_change([True] * 21) == 0.0
    assert percent_state_change([True, False] * 10 + [True]) == pytest.approx(100.0)
    assert percent_state_change([True] * 20 + [False]) == pytest.approx(1.25 * 100 / 20)  # 6.25
    assert percent_state_change([True] + [False] * 20) == pytest.approx(0.75 * 100 / 20)  # 3.75
    # Older than 21 probes is forgotten; fewer than 21 are padded with the oldest state.
    assert percent_state_change([False] * 30 + [True] * 21) == 0.0
    assert percent_state_change([True, False]) == pytest.approx(6.25)


def test_hysteresis() -> None:
    flapping = [True, False] * 10 + [True]
    calm = [True] * 21
    middle = [True] * 9 + [False, True, False, True] + [True] * 8  # 4 changes, ~20%
    assert 15 < percent_state_change(middle) < 30
    assert evaluate(flapping, False, 15, 30).started
    assert not evaluate(middle, False, 15, 30).flapping, "between the thresholds: stays off"
    assert evaluate(middle, True, 15, 30).flapping, "between the thresholds: stays on"
    stopped = evaluate(calm, True, 15, 30)
    assert stopped.stopped and not stopped.flapping
    with pytest.raises(ValueError):
        evaluate(calm, False, 40, 30)


def test_thresholds_validated() -> None:
    with pytest.raises(ConfigError, match="flap_low_threshold"):
        parse_config({"monitor": {"flap_low_threshold": 50, "flap_high_threshold": 20}})
    config = parse_config({})
    assert (config.monitor.flap_low_threshold, config.monitor.flap_high_threshold) == (15.0, 25.0)


# --- shared state ----------------------------------------------------------------------------------


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def state(request: pytest.FixtureRequest) -> Iterator[SharedState]:
    backend: SharedState = (
        RedisState(request.getfixturevalue("redis_url")) if request.param == "redis" else MemoryState()
    )
    try:
        yield backend
    finally:
        backend.close()


def test_probe_history_is_capped_and_ordered(state: SharedState) -> None:
    assert state.probe_history("api") == []
    pushed = [i % 3 != 0 for i in range(30)]
    for i, healthy in enumerate(pushed):
        history = state.push_probe_history("api", healthy)
        assert history == pushed[: i + 1][-HISTORY_SIZE:]
    assert state.probe_history("api") == pushed[-HISTORY_SIZE:]
    assert state.probe_history("other") == []
    if isinstance(state, RedisState):
        assert state.client.llen(probe_history_key("api")) == HISTORY_SIZE


def test_flapping_flag(state: SharedState) -> None:
    assert state.flapping_since("api") is None
    state.set_flapping("api", 1234.5)
    assert state.flapping_since("api") == 1234.5
    state.set_flapping("api", None)
    assert state.flapping_since("api") is None


# --- the monitor -----------------------------------------------------------------------------------


def probe(target: str, healthy: bool) -> ProbeResult:
    return ProbeResult(target, "http", healthy, "ok" if healthy else "status 503", 1.0)


def config_for(name: str, state_url: str | None, detection: bool = True) -> RecoveryConfig:
    data: dict[str, object] = {
        "monitor": {"failure_threshold": 1, "flap_detection": detection},
        "targets": [{"kind": "http", "name": name, "url": "http://127.0.0.1:9/health"}],
    }
    if state_url:
        data["state_url"] = state_url
    return parse_config(data)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def state_url(request: pytest.FixtureRequest) -> str | None:
    return str(request.getfixturevalue("redis_url")) if request.param == "redis" else None


def test_monitor_holds_off_recovery_while_flapping(state_url: str | None) -> None:
    name = f"api-{uuid.uuid4().hex[:8]}"
    config = config_for(name, state_url)
    state: SharedState = RedisState(state_url) if state_url else MemoryState()
    actions, started = [], []
    history: list[bool] = []
    for i in range(24):  # up, down, up, down...: each outage alone would be recovered
        healthy = i % 2 == 0
        history.append(healthy)
        (d,) = decide(config, state, [probe(name, healthy)], now=1000.0 + i)
        assert d.flap_percent == pytest.approx(percent_state_change(history))
        actions.append(d.action)
        started.append(d.flap_started)
        if d.action == "recover":  # the recovery ran and released the target
            assert d.lock_token is not None
            state.release_lock(name, d.lock_token)
            state.clear_paused(name)
        if d.action == "flapping":
            assert state.lock_owner(name) is None, "no lock taken for a flapping target"
            assert state.paused(name) is None
            assert d.as_json()["flapping"] is True
    first = actions.index("flapping")
    assert "recover" in actions[:first], "normal outages are recovered before it flaps"
    assert set(actions[first:]) == {"none", "flapping"}, "never recovered automatically while it flaps"
    assert started.count(True) == 1 and started.index(True) <= first
    assert percent_state_change(history[: first + 1]) > config.monitor.flap_high_threshold
    assert state.flapping_since(name) is not None

    # Stable again: the changes age out of the 21-probe window and flapping stops (< 15%).
    for i in range(21):
        (d,) = decide(config, state, [probe(name, True)], now=2000.0 + i)
    assert not d.flapping and state.flapping_since(name) is None
    (d,) = decide(config, state, [probe(name, False)], now=3000.0)
    assert d.action == "recover", "a new outage of a calm target is recovered again"
    state.close()


def test_flap_detection_can_be_disabled(state_url: str | None) -> None:
    name = f"api-{uuid.uuid4().hex[:8]}"
    config = config_for(name, state_url, detection=False)
    state: SharedState = RedisState(state_url) if state_url else MemoryState()
    for i in range(24):
        (d,) = decide(config, state, [probe(name, i % 2 == 0)], now=1000.0 + i)
        assert not d.flapping and d.action in ("none", "recover")
        if d.action == "recover":
            assert d.lock_token is not None
            state.release_lock(name, d.lock_token)
    if state_url:
        assert redis.Redis.from_url(state_url).exists(probe_history_key(name)) == 0
    state.close()


def test_defaults_recover_two_outages_and_hold_off_the_third(state_url: str | None) -> None:
    """With the defaults (failure_threshold 3, flap 15/25 %): within 21 probes two outages are
    recovered automatically, the third is held off and escalated (docs/monitoring.md)."""
    name = f"api-{uuid.uuid4().hex[:8]}"
    data: dict[str, object] = {"targets": [{"kind": "http", "name": name, "url": "http://127.0.0.1:9/h"}]}
    if state_url:
        data["state_url"] = state_url
    config = parse_config(data)
    state: SharedState = RedisState(state_url) if state_url else MemoryState()
    outages: list[str] = []
    probes = [True] * 6 + ([False] * 3 + [True] * 3) * 2 + [False] * 3
    for i, healthy in enumerate(probes):
        (d,) = decide(config, state, [probe(name, healthy)], now=1000.0 + i)
        if d.action in ("recover", "flapping"):
            outages.append(d.action)
        if d.lock_token:
            state.release_lock(name, d.lock_token)
            state.clear_paused(name)
    assert outages == ["recover", "recover", "flapping"]
    state.close()
