"""Backend plumbing: the Lua loader, cheap constructors, stores sharing a state's client."""

from __future__ import annotations

from importlib import resources

import pytest
import redis

from recovery.backends.lua import Scripts, script
from recovery.backends.rate import rate_store_for
from recovery.backends.rate_memory import MemoryRateStore
from recovery.backends.rate_redis import RedisRateStore
from recovery.backends.state import open_state
from recovery.backends.state_memory import MemoryState
from recovery.backends.state_redis import RedisState
from recovery.config.targets import RateLimitConfig

NOW = 1_700_000_000.0
OUR_SCRIPTS = ("record_probe", "refresh_lock", "release_lock", "sliding_window", "rate_lower", "rate_raise")


@pytest.mark.parametrize("name", OUR_SCRIPTS)
def test_every_script_ships_with_the_package(name: str) -> None:
    assert resources.files("recovery.backends.lua").joinpath(f"{name}.lua").is_file()
    assert "redis.call" in script(name)
    assert script(name) is script(name)  # read once per process


def test_open_state_is_a_cheap_constructor() -> None:
    # Nothing listens on port 1: constructing must not connect (scripts register on first use).
    backend = open_state("redis://127.0.0.1:1/0")
    try:
        assert isinstance(backend, RedisState)
        assert isinstance(rate_store_for(backend), RedisRateStore)
    finally:
        backend.close()


def test_in_process_rates_are_shared_by_the_whole_process() -> None:
    store = rate_store_for(MemoryState())
    assert isinstance(store, MemoryRateStore)
    assert rate_store_for(None) is store is rate_store_for(open_state(None)) is rate_store_for("")


@pytest.mark.redis
def test_redis_stores_share_the_state_client_and_its_scripts(redis_url: str) -> None:
    state = RedisState(redis_url)
    try:
        rates = rate_store_for(state)
        assert isinstance(rates, RedisRateStore)
        assert rates.client is state.client and rates.scripts is state.scripts
        assert state.windows.client is state.client and state.windows.scripts is state.scripts
        rates.lower("api", RateLimitConfig(normal_rate_per_second=4, safety_factor=0.5), NOW, 10, "429")
        assert rates.scripts("rate_lower") is state.scripts("rate_lower")  # registered once
        read = rate_store_for(redis_url).read("api")  # a store from the URL sees the same rate
        assert read is not None and read.allowed == 2.0
    finally:
        state.close()


@pytest.mark.redis
def test_scripts_register_once_per_client(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    scripts = Scripts(client)
    assert scripts("release_lock") is scripts("release_lock")
    assert Scripts(client)("release_lock").sha == scripts("release_lock").sha
