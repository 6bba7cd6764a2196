"""Two gaps pybreaker's own suite found in the fleet breaker, on Redis and in process.

* a generator function wrapped by the breaker was not guarded: failures raised while iterating
  must count (pybreaker's semantics: the outcome is recorded when the iteration ends);
* a failed half-open probe was not counted: ``breaker-status`` showed "open, failures 0/5".
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from recovery.backends.breaker_memory import MemoryBreakerStore
from recovery.backends.breaker_store import RedisBreakerStore
from recovery.client.breakers import CircuitBreakerError, FleetBreaker, breaker_for_target
from recovery.config.loader import parse_config
from recovery.engine.breaker_admin import breaker_statuses


class Boom(Exception):
    pass


@pytest.fixture(params=["redis", "memory"])
def make(request: pytest.FixtureRequest) -> Iterator[Any]:
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    now = [1000.0]
    counter = iter(range(1000))

    def build(**kw: Any) -> tuple[FleetBreaker, list[float]]:
        name = f"fix{next(counter)}"

        def clock() -> float:  # injected: no sleeps in these tests
            return now[0]

        store = RedisBreakerStore(name, url, 3600, clock) if url else MemoryBreakerStore(name, 3600, clock)
        return FleetBreaker(name, store, **kw), now

    yield build


# --- generators ------------------------------------------------------------------------------------


def test_failure_while_iterating_counts(make: Any) -> None:
    breaker: FleetBreaker = make(fail_max=5)[0]

    @breaker
    def rows(n: int) -> Iterator[int]:
        yield from range(n)
        raise Boom("connection dropped mid-stream")

    stream = rows(2)
    assert breaker.fail_counter == 0  # nothing has run yet
    assert [next(stream), next(stream)] == [0, 1]
    with pytest.raises(Boom):
        next(stream)
    assert breaker.fail_counter == 1


def test_a_finished_generator_is_a_success(make: Any) -> None:
    breaker: FleetBreaker = make(fail_max=5)[0]

    @breaker
    def rows() -> Iterator[int]:
        yield 1

    fresh = rows()  # admitted before the failure below: must still reset the count when done
    with pytest.raises(Boom), breaker.calling():
        raise Boom
    assert breaker.fail_counter == 1
    assert list(fresh) == [1]
    assert breaker.fail_counter == 0


def test_generator_failures_trip_the_breaker(make: Any) -> None:
    breaker: FleetBreaker = make(fail_max=2)[0]

    def rows() -> Iterator[int]:
        yield 1
        raise Boom

    with pytest.raises(Boom):
        list(breaker.call(rows))
    with pytest.raises(CircuitBreakerError, match="opened"):
        list(breaker.call(rows))
    assert breaker.current_state == "open"
    with pytest.raises(CircuitBreakerError, match="is open"):
        breaker.call(rows)  # rejected when called, before anything is iterated


def test_send_throw_and_close_reach_the_wrapped_generator(make: Any) -> None:
    breaker: FleetBreaker = make(fail_max=5)[0]
    seen: list[Any] = []

    @breaker
    def echo() -> Generator[int, str, None]:
        try:
            while True:
                seen.append((yield len(seen)))
        except GeneratorExit:
            seen.append("closed")
            raise

    gen = echo()
    next(gen)
    assert gen.send("a") == 1
    gen.close()  # GeneratorExit is not a failure
    assert seen == ["a", "closed"] and breaker.fail_counter == 0

    @contextmanager
    @breaker
    def session() -> Iterator[None]:
        try:
            yield
        except KeyError:
            raise Boom from None

    with pytest.raises(Boom), session():
        raise KeyError("thrown into the generator")
    assert breaker.fail_counter == 1


# --- failed half-open probes ---------------------------------------------------------------------


def test_failed_probe_is_counted(make: Any) -> None:
    breaker, now = make(fail_max=5, reset_timeout=30)
    breaker.trip()  # the monitor opened it: no failure counted yet
    now[0] += 30
    with pytest.raises(CircuitBreakerError, match="half-open trial call failed"):
        breaker.call(_raise_boom)
    snap = breaker.snapshot()
    assert (snap.state, snap.fail_counter, snap.opened_at) == ("open", 1, now[0])
    now[0] += 30
    with pytest.raises(CircuitBreakerError):
        breaker.call(_raise_boom)
    assert breaker.fail_counter == 2


def test_failed_recovery_probe_is_counted(make: Any) -> None:
    breaker, now = make(fail_max=5, reset_timeout=30)
    breaker.trip()
    now[0] += 31
    assert breaker.try_probe("recovery-run").verdict == "probe"
    breaker.end_probe("recovery-run", ok=False)
    assert (breaker.current_state, breaker.fail_counter) == ("open", 1)


def _raise_boom() -> None:
    raise Boom


def test_status_never_shows_open_with_zero_failures_after_a_failed_probe(redis_url: str) -> None:
    config = parse_config(
        {
            "state_url": redis_url,
            "targets": [
                {"kind": "http", "name": "pay", "url": "http://127.0.0.1:1/", "breaker": {"fail_max": 5}}
            ],
        }
    )
    breaker = breaker_for_target(config, "pay")
    breaker.half_open()  # as if the reset timeout had elapsed (no clock in the factory path)
    with pytest.raises(CircuitBreakerError):
        breaker.call(_raise_boom)
    [status] = breaker_statuses(config, "pay")
    assert (status.state, status.fail_counter, status.fail_max) == ("open", 1, 5)
