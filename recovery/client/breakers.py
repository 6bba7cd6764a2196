"""Circuit breakers per target on pybreaker, shared by a whole fleet through Redis.

``breaker_for`` is the factory both the recovery flows and the application use, so both see the
same breaker: same name, same keys (``recovery:breaker:{target}``, see ``breaker_storage``).
Without ``state_url`` the breaker lives in this process only.

``FleetBreaker`` subclasses ``pybreaker.CircuitBreaker`` and fixes what its Redis storage gets
wrong (pybreaker issues #7, #55, #69, #88):

* ``await breaker.call_async(fn, ...)`` (or decorating an ``async def``) guards coroutines: an
  exception raised inside the coroutine counts as a failure;
* the guarded call is not serialised behind a lock: only the admit and settle steps touch the
  store, each one atomic Lua script, so concurrent calls run concurrently;
* ``CancelledError``, ``KeyboardInterrupt`` and other non-``Exception`` exits are not failures
  (and not successes); a cancelled half-open probe gives its lease back;
* open -> half-open is a lease (``SET NX PX``): exactly one probe across all workers;
* ``opened_at`` keeps microseconds; keys expire ``state_ttl_seconds`` after the last change;
* Redis down: building a breaker never raises (no I/O until the first call) and a guarded call
  follows the target's ``on_state_unavailable``: ``allow`` (fail-open, the default: the call
  runs unguarded, a warning is logged) or ``reject`` (fail-closed: ``CircuitBreakerError``).
  After a Redis error the store is not asked again for ``REDIS_RETRY_SECONDS``, so a dead Redis
  costs one connection attempt per second, not one per call.

A closed breaker with no recent failure costs one Redis round trip per call.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

import pybreaker

from recovery.backends.breaker_memory import MemoryBreakerStore
from recovery.backends.breaker_store import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    BreakerSnapshot,
    BreakerStore,
    RedisBreakerStore,
    Ticket,
)
from recovery.config.loader import BreakerConfig, RecoveryConfig
from recovery.errors import StateUnavailable

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "BreakerSnapshot",
    "CircuitBreakerError",
    "FleetBreaker",
    "breaker_for",
    "breaker_for_target",
    "breaker_state",
    "close_breaker",
    "open_breaker",
]

logger = logging.getLogger("recovery.client.breakers")
CircuitBreakerError = pybreaker.CircuitBreakerError
REDIS_RETRY_SECONDS = 1.0
R = TypeVar("R")

_BYPASS = Ticket("bypass", "unknown")


class FleetBreaker(pybreaker.CircuitBreaker):
    """A pybreaker ``CircuitBreaker`` whose state transitions are atomic in a ``BreakerStore``."""

    def __init__(
        self,
        name: str,
        store: BreakerStore,
        *,
        fail_max: int = 5,
        reset_timeout: float = 60.0,
        success_threshold: int = 1,
        probe_lease_seconds: float = 30.0,
        on_state_unavailable: Literal["allow", "reject"] = "allow",
        exclude: list[type[BaseException] | Callable[[Any], bool]] | None = None,
        listeners: list[pybreaker.CircuitBreakerListener] | None = None,
        throw_new_error_on_trip: bool = True,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ready = False  # pybreaker's constructor reads the state; no I/O until the first call
        super().__init__(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            success_threshold=success_threshold,
            exclude=exclude,
            listeners=listeners,
            state_storage=store,
            name=name,
            throw_new_error_on_trip=throw_new_error_on_trip,
        )
        self._ready = True
        self.store = store
        self.probe_lease_seconds = probe_lease_seconds
        self.on_state_unavailable = on_state_unavailable
        self._monotonic = monotonic
        self._unavailable_until = 0.0
        self._seen_state = CLOSED
        self._seen_lock = threading.Lock()

    @property
    def current_state(self) -> str:
        """The shared state (``closed``/``open``/``half-open``); raises ``StateUnavailable``."""
        if not getattr(self, "_ready", False):
            return CLOSED
        return self.store.snapshot().state

    def snapshot(self) -> BreakerSnapshot:
        return self.store.snapshot()

    # --- admin transitions (raise StateUnavailable: an operator must know it did not happen) ----

    def open(self) -> bool:
        self._transition(self.store.force(OPEN), OPEN)
        return self._throw_new_error_on_trip

    def trip(self) -> str:
        """Open unless already open (an open breaker keeps its ``opened_at``); returns the old state."""
        previous = self.store.force(OPEN, trip=True)
        self._transition(previous, OPEN)
        return previous

    def half_open(self) -> None:
        self._transition(self.store.force(HALF_OPEN), HALF_OPEN)

    def close(self) -> None:
        self._transition(self.store.force(CLOSED), CLOSED)

    def try_probe(self, owner: str, lease_seconds: float | None = None) -> Ticket:
        """Take the half-open probe lease for ``owner`` if the reset timeout has elapsed."""
        ticket = self.store.admit(self.reset_timeout, lease_seconds or self.probe_lease_seconds, owner)
        if ticket.verdict == "probe":
            self._transition(ticket.state, HALF_OPEN)
        return ticket

    def refresh_probe(self, owner: str, lease_seconds: float | None = None) -> bool:
        """Extend ``owner``'s probe lease (False if it lapsed and someone else may probe)."""
        return self.store.refresh(owner, lease_seconds or self.probe_lease_seconds)

    def end_probe(self, owner: str, ok: bool | None) -> None:
        """A probe taken with ``try_probe`` ended: ok closes, failure re-opens, None releases."""
        if ok is None:
            self.store.release(owner)
        elif ok:
            self._transition(HALF_OPEN, self.store.succeeded(owner, True, 1))
        else:
            self.store.release(owner)
            self._transition(self.store.force(OPEN, trip=True), OPEN)

    # --- guarded calls ---------------------------------------------------------------------------

    def _unavailable(self, exc: StateUnavailable) -> Ticket:
        first = self._monotonic() >= self._unavailable_until
        self._unavailable_until = self._monotonic() + REDIS_RETRY_SECONDS
        if self.on_state_unavailable == "reject":
            if first:
                logger.warning("breaker %s: %s; rejecting calls (fail-closed)", self.name, exc)
            raise CircuitBreakerError(
                f"circuit breaker {self.name}: state unavailable (fail-closed)"
            ) from None
        if first:
            logger.warning("breaker %s: %s; calls run unguarded (fail-open)", self.name, exc)
        return _BYPASS

    def _down(self) -> Ticket | None:
        if self._monotonic() < self._unavailable_until:
            if self.on_state_unavailable == "reject":
                raise CircuitBreakerError(f"circuit breaker {self.name}: state unavailable (fail-closed)")
            return _BYPASS
        return None

    def _verdict(self, ticket: Ticket) -> Ticket:
        if ticket.verdict == "reject":
            if ticket.state == OPEN:
                self._transition(OPEN, OPEN)
                raise CircuitBreakerError(
                    f"circuit breaker {self.name} is open: timeout not elapsed yet "
                    f"(half-open in {ticket.retry_in or 0:.1f}s)"
                )
            self._transition(HALF_OPEN, HALF_OPEN)
            raise CircuitBreakerError(
                f"circuit breaker {self.name} is half-open: another worker holds the probe ({ticket.holder})"
            )
        if ticket.verdict == "probe":
            self._transition(ticket.state, HALF_OPEN)
        return ticket

    def _admit(self) -> Ticket:
        down = self._down()
        if down is not None:
            return down
        try:
            ticket = self.store.admit(self.reset_timeout, self.probe_lease_seconds, uuid.uuid4().hex)
        except StateUnavailable as exc:
            return self._unavailable(exc)
        return self._verdict(ticket)

    async def _aadmit(self) -> Ticket:
        down = self._down()
        if down is not None:
            return down
        try:
            ticket = await self.store.aadmit(self.reset_timeout, self.probe_lease_seconds, uuid.uuid4().hex)
        except StateUnavailable as exc:
            return self._unavailable(exc)
        return self._verdict(ticket)

    def _classify(self, exc: BaseException) -> str:
        if not isinstance(exc, Exception):
            return "ignore"  # CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit
        return "failure" if self.is_system_error(exc) else "success"

    def _after_failure(self, exc: BaseException, result: tuple[str, bool], probe: bool) -> None:
        for listener in self.listeners:
            listener.failure(self, exc)
        state, tripped = result
        if tripped:
            self._transition(HALF_OPEN if probe else CLOSED, state)
            logger.warning("breaker %s opened after %s", self.name, type(exc).__name__)
            if self._throw_new_error_on_trip:
                why = "the half-open trial call failed" if probe else "failures threshold reached"
                raise CircuitBreakerError(f"circuit breaker {self.name} opened: {why}")

    def _after_success(self, ticket: Ticket, state: str | None) -> None:
        if state is not None and ticket.verdict == "probe":
            self._transition(HALF_OPEN, state)
        for listener in self.listeners:
            listener.success(self)

    def _needs_success_write(self, ticket: Ticket) -> bool:
        return ticket.verdict == "probe" or (ticket.verdict == "pass" and ticket.fail_counter > 0)

    def _settle(self, ticket: Ticket, exc: BaseException | None) -> None:
        if ticket.verdict == "bypass":
            return
        kind = "success" if exc is None else self._classify(exc)
        probe = ticket.verdict == "probe"
        try:
            if kind == "ignore":
                if probe:
                    self.store.release(ticket.owner)
                return
            if kind == "success":
                state = (
                    self.store.succeeded(ticket.owner, probe, self.success_threshold)
                    if self._needs_success_write(ticket)
                    else None
                )
                self._after_success(ticket, state)
                return
            result = self.store.failed(ticket.owner, probe, self.fail_max)
        except StateUnavailable as exc_state:
            self._unavailable_until = self._monotonic() + REDIS_RETRY_SECONDS
            logger.warning("breaker %s: could not record the outcome: %s", self.name, exc_state)
            return
        assert exc is not None
        self._after_failure(exc, result, probe)

    async def _asettle(self, ticket: Ticket, exc: BaseException | None) -> None:
        if ticket.verdict == "bypass":
            return
        kind = "success" if exc is None else self._classify(exc)
        probe = ticket.verdict == "probe"
        try:
            if kind == "ignore":
                if probe:
                    await self.store.arelease(ticket.owner)
                return
            if kind == "success":
                state = (
                    await self.store.asucceeded(ticket.owner, probe, self.success_threshold)
                    if self._needs_success_write(ticket)
                    else None
                )
                self._after_success(ticket, state)
                return
            result = await self.store.afailed(ticket.owner, probe, self.fail_max)
        except StateUnavailable as exc_state:
            self._unavailable_until = self._monotonic() + REDIS_RETRY_SECONDS
            logger.warning("breaker %s: could not record the outcome: %s", self.name, exc_state)
            return
        assert exc is not None
        self._after_failure(exc, result, probe)

    def call(self, func: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run ``func`` guarded by the breaker (no lock is held while it runs)."""
        if inspect.iscoroutinefunction(func):
            raise TypeError(f"{func.__name__} is a coroutine function: use `await breaker.call_async(...)`")
        ticket = self._admit()
        for listener in self.listeners:
            listener.before_call(self, func, *args, **kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._settle(ticket, exc)
            raise
        self._settle(ticket, None)
        return result

    async def call_async(self, func: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        """Await ``func(*args, **kwargs)`` guarded by the breaker; concurrent calls run concurrently."""
        ticket = await self._aadmit()
        for listener in self.listeners:
            listener.before_call(self, func, *args, **kwargs)
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            await self._asettle(ticket, exc)
            raise
        await self._asettle(ticket, None)
        return result

    @contextmanager
    def calling(self) -> Iterator[None]:
        """``with breaker.calling(): ...`` guards the block like ``call``."""
        ticket = self._admit()
        try:
            yield
        except BaseException as exc:
            self._settle(ticket, exc)
            raise
        self._settle(ticket, None)

    def __call__(self, *call_args: Any, **call_kwargs: bool) -> Callable[..., Any]:
        """Decorator: ``@breaker`` guards a function or an ``async def``."""

        def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
            if inspect.iscoroutinefunction(func):

                @functools.wraps(func)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    return await self.call_async(func, *args, **kwargs)

                return async_wrapper

            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                return self.call(func, *args, **kwargs)

            return wrapper

        return decorate(call_args[0]) if call_args else decorate

    def _transition(self, old: str, new: str) -> None:
        """Keep pybreaker's cached state object in step; notify listeners of changes seen here.

        ``old`` is the shared state before the change (another worker may have made it)."""
        with self._seen_lock:
            previous = self._seen_state
            if previous == new and old == new:
                return
            self._seen_state = new
            old_obj = self._state
            self._state = self._create_new_state(new, prev_state=None, notify=False)
        if previous != new:
            logger.info("breaker %s: %s -> %s", self.name, old, new)
            for listener in self.listeners:
                listener.state_change(self, old_obj, self._state)


# --- the factory ---------------------------------------------------------------------------------

_breakers: dict[tuple[str, str | None, BreakerConfig], FleetBreaker] = {}
_memory_stores: dict[str, MemoryBreakerStore] = {}
_factory_lock = threading.Lock()


def breaker_for(
    target: str,
    config: BreakerConfig,
    state_url: str | None,
    *,
    clock: Callable[[], float] | None = None,
) -> FleetBreaker:
    """The breaker guarding ``target``; the same call in the application sees the same state.

    Never raises for an unreachable Redis (nothing is sent before the first call). Instances are
    cached per (target, state_url, config); pass ``clock`` (epoch seconds) only in tests.
    """
    key = (target, state_url, config)
    if clock is None:
        with _factory_lock:
            cached = _breakers.get(key)
            if cached is not None:
                return cached
    store: BreakerStore
    if state_url:
        store = RedisBreakerStore(target, state_url, config.state_ttl_seconds, clock or time.time)
    else:
        with _factory_lock:
            memory = _memory_stores.get(target)
            if memory is None:
                memory = _memory_stores[target] = MemoryBreakerStore(target, config.state_ttl_seconds)
        if clock is not None:
            memory.clock = clock
        store = memory
    breaker = FleetBreaker(
        target,
        store,
        fail_max=config.fail_max,
        reset_timeout=config.reset_timeout_seconds,
        success_threshold=config.success_threshold,
        probe_lease_seconds=config.probe_lease_seconds,
        on_state_unavailable=config.on_state_unavailable,
    )
    if clock is None:
        with _factory_lock:
            breaker = _breakers.setdefault(key, breaker)
    return breaker


def breaker_for_target(config: RecoveryConfig, target: str) -> FleetBreaker:
    """The application's entry point: ``breaker_for_target(load_config(), "payments-api")``."""
    target_config = config.target(target)
    state_url = config.state_url.get_secret_value() if config.state_url else None
    return breaker_for(target_config.name, target_config.breaker, state_url)


def breaker_state(breaker: pybreaker.CircuitBreaker) -> str:
    """Current shared state; raises ``StateUnavailable`` when it cannot be read."""
    return str(breaker.current_state)


def open_breaker(breaker: FleetBreaker) -> None:
    """Open ``breaker`` (monitor, target confirmed down). An already open breaker keeps its
    ``opened_at``: re-opening every monitor cycle must not postpone the reset timeout forever."""
    breaker.trip()


def close_breaker(breaker: pybreaker.CircuitBreaker) -> None:
    breaker.close()
