"""``FleetBreaker``: pybreaker's ``CircuitBreaker`` with its state in an atomic ``BreakerStore``.

What is pybreaker's and what is ours:

* pybreaker's: the configuration API (``fail_max``, ``reset_timeout``, ``success_threshold``,
  ``exclude``/``is_system_error``, listeners), ``open``/``half_open``/``close`` (they go through
  the storage interface of ``BreakerStore``, i.e. one atomic ``force``), ``fail_counter``, and
  listener notification (through the public ``state`` setter).
* ours: the guarded call. pybreaker runs the whole call under one ``RLock`` and updates the
  storage in separate read-modify-write steps (racy across processes, issue #69). Here a call is
  *admit* (one atomic store step: pass / reject / take the fleet-wide half-open probe lease),
  the call itself with no lock held, then *settle* (one atomic step recording the outcome).

Admit and settle are written once, as generators that yield the store operation they need
(``_Io``) and receive its result ("sans-I/O"); ``_drive`` runs them against the sync store
methods and ``_adrive`` against the async ones. The drivers do I/O only, so ``call``,
``call_async`` and ``calling`` cannot drift apart.

Exits that are not ``Exception`` (``CancelledError``, ``KeyboardInterrupt``, ``GeneratorExit``)
are neither failures nor successes; a cancelled probe gives its lease back. When the store is
down a call follows ``on_state_unavailable``: ``allow`` runs it unguarded (logged), ``reject``
raises ``CircuitBreakerError``; the store is then not asked again for ``REDIS_RETRY_SECONDS``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
import types
import uuid
from collections.abc import Awaitable, Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar, cast, overload

import pybreaker

from recovery.backends.breaker_core import CLOSED, HALF_OPEN, OPEN, BreakerSnapshot, Failure, Ticket
from recovery.backends.breaker_store import BreakerStore
from recovery.errors import StateUnavailable

logger = logging.getLogger("recovery.client.breakers")
CircuitBreakerError = pybreaker.CircuitBreakerError
REDIS_RETRY_SECONDS = 1.0
R = TypeVar("R")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])  # a decorated function keeps its signature

_BYPASS = Ticket("bypass", "unknown")


@dataclass(frozen=True)
class _Io:
    """One store operation a flow needs: ``store.<op>(*args)`` or ``await store.a<op>(*args)``."""

    op: Literal["admit", "succeeded", "failed", "release"]
    args: tuple[Any, ...]


_Flow = Generator[_Io, Any, T]


class _Run:
    """One flow being driven: the I/O it waits for (None once it returned ``result``)."""

    def __init__(self, flow: _Flow[Any]) -> None:
        self._flow = flow
        self.pending: _Io | None = None
        self.result: Any = None
        self._advance(lambda: next(flow))

    def _advance(self, step: Callable[[], _Io]) -> None:
        try:
            self.pending = step()
        except StopIteration as done:
            self.pending, self.result = None, done.value

    def resume(self, answer: Any, error: StateUnavailable | None) -> None:
        """Send the store's answer into the flow, or throw the store's failure into it."""
        flow = self._flow
        self._advance((lambda: flow.throw(error)) if error is not None else (lambda: flow.send(answer)))


def _outcome(op: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, StateUnavailable | None]:
    try:
        return op(*args), None
    except StateUnavailable as exc:
        return None, exc


async def _aoutcome(
    op: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
) -> tuple[Any, StateUnavailable | None]:
    try:
        return await op(*args), None
    except StateUnavailable as exc:
        return None, exc


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
        self._observe_lock = threading.Lock()

    @property
    def current_state(self) -> str:
        """The shared state (``closed``/``open``/``half-open``); raises ``StateUnavailable``."""
        if not getattr(self, "_ready", False):
            return CLOSED
        return self.store.snapshot().state

    def snapshot(self) -> BreakerSnapshot:
        return self.store.snapshot()

    # --- admin transitions (raise StateUnavailable: an operator must know it did not happen) ----
    # open(), half_open() and close() are pybreaker's own.

    def trip(self) -> str:
        """Open unless already open (an open breaker keeps its ``opened_at``); returns the old state."""
        previous = self.store.force(OPEN, trip=True)
        self._observe(OPEN)
        return previous

    def close_unverified(self, owner: str, lease_seconds: float) -> str:
        """Close for a recovery that has yet to verify the target; returns the old state.

        The close is a lease: unless ``owner`` extends or confirms it within ``lease_seconds``,
        every reader and every call sees the breaker open again (opened when the lease ended), so
        a recovery that dies after closing cannot leave a broken target unguarded."""
        previous = self.store.force(CLOSED, lease_owner=owner, lease_seconds=lease_seconds)
        self._observe(CLOSED)
        return previous

    def extend_close(self, owner: str, lease_seconds: float) -> bool:
        """Keep ``owner``'s unverified close for ``lease_seconds`` more (False: it lapsed)."""
        return self.store.close_lease(owner, "extend", lease_seconds)

    def confirm_close(self, owner: str) -> bool:
        """``owner`` verified the target: its close stands without a lease (False: not held)."""
        return self.store.close_lease(owner, "confirm")

    def revoke_close(self, owner: str) -> bool:
        """Re-open now if ``owner``'s unverified close is still pending (never someone else's)."""
        revoked = self.store.close_lease(owner, "revoke")
        if revoked:
            self._observe(OPEN)
        return revoked

    def try_probe(self, owner: str, lease_seconds: float | None = None) -> Ticket:
        """Take the half-open probe lease for ``owner`` if the reset timeout has elapsed."""
        ticket = self.store.admit(self.reset_timeout, lease_seconds or self.probe_lease_seconds, owner)
        if ticket.verdict == "probe":
            self._observe(HALF_OPEN)
        return ticket

    def refresh_probe(self, owner: str, lease_seconds: float | None = None) -> bool:
        """Extend ``owner``'s probe lease (False if it lapsed and someone else may probe)."""
        return self.store.refresh(owner, lease_seconds or self.probe_lease_seconds)

    def end_probe(self, owner: str, ok: bool | None) -> None:
        """A probe taken with ``try_probe`` ended: ok closes, failure re-opens, None releases."""
        if ok is None:
            self.store.release(owner)
        elif ok:
            self._observe(self.store.succeeded(owner, True, 1))
        else:
            failure = self.store.failed(owner, True, self.fail_max)  # counted, like any probe
            if not failure.tripped:  # the lease lapsed meanwhile: the target is still down
                self.store.force(OPEN, trip=True)
            self._observe(OPEN)

    # --- the flows: all decisions, no I/O ----------------------------------------------------------

    def _bypass(self, exc: StateUnavailable | None) -> Ticket:
        """The store is down (``exc``: just found out; None: still inside the retry window)."""
        if exc is not None:
            self._unavailable_until = self._monotonic() + REDIS_RETRY_SECONDS
        if self.on_state_unavailable == "reject":
            if exc is not None:
                logger.warning("breaker %s: %s; rejecting calls (fail-closed)", self.name, exc)
            raise CircuitBreakerError(
                f"circuit breaker {self.name}: state unavailable (fail-closed)"
            ) from None
        if exc is not None:
            logger.warning("breaker %s: %s; calls run unguarded (fail-open)", self.name, exc)
        return _BYPASS

    def _admission(self) -> _Flow[Ticket]:
        if self._monotonic() < self._unavailable_until:
            return self._bypass(None)
        try:
            ticket: Ticket = yield _Io(
                "admit", (self.reset_timeout, self.probe_lease_seconds, uuid.uuid4().hex)
            )
        except StateUnavailable as exc:
            return self._bypass(exc)
        if ticket.verdict == "reject":
            self._observe(ticket.state)
            if ticket.state == OPEN:
                raise CircuitBreakerError(
                    f"circuit breaker {self.name} is open: timeout not elapsed yet "
                    f"(half-open in {ticket.retry_in or 0:.1f}s)"
                )
            raise CircuitBreakerError(
                f"circuit breaker {self.name} is half-open: another worker holds the probe ({ticket.holder})"
            )
        self._observe(HALF_OPEN if ticket.verdict == "probe" else CLOSED)
        return ticket

    def _settlement(self, ticket: Ticket, exc: BaseException | None) -> _Flow[None]:
        if ticket.verdict == "bypass":
            return
        probe = ticket.verdict == "probe"
        try:
            if exc is not None and not isinstance(exc, Exception):
                if probe:  # cancelled or interrupted: not an outcome; let someone else probe
                    yield _Io("release", (ticket.owner,))
                return
            if exc is None or not self.is_system_error(exc):  # excluded errors are successes
                # A closed breaker with no failures to reset needs no write: one round trip a call.
                if probe or ticket.fail_counter > 0:
                    self._observe((yield _Io("succeeded", (ticket.owner, probe, self.success_threshold))))
                for listener in self.listeners:
                    listener.success(self)
                return
            failure: Failure = yield _Io("failed", (ticket.owner, probe, self.fail_max))
        except StateUnavailable as lost:
            self._unavailable_until = self._monotonic() + REDIS_RETRY_SECONDS
            logger.warning("breaker %s: could not record the outcome: %s", self.name, lost)
            return
        for watcher in self.listeners:
            watcher.failure(self, exc)
        self._observe(failure.state)
        if failure.tripped:
            logger.warning("breaker %s opened after %s", self.name, type(exc).__name__)
            if self._throw_new_error_on_trip:  # pybreaker's option (read only)
                why = "the half-open trial call failed" if probe else "failures threshold reached"
                raise CircuitBreakerError(f"circuit breaker {self.name} opened: {why}") from exc

    def _observe(self, new: str) -> None:
        """Tell listeners (once per instance) about a state this instance has just seen.

        ``_state`` is pybreaker's cached state object; it is only *read* here (pybreaker has no
        public read that skips a storage round trip) and written through pybreaker's public
        ``state`` setter, which builds the state object and notifies the listeners."""
        with self._observe_lock:
            old = self._state.name
            if old == new:
                return
            self.state = new  # pybreaker's setter takes the state's name
        logger.info("breaker %s: %s -> %s", self.name, old, new)

    # --- the drivers: I/O only -------------------------------------------------------------------

    def _drive(self, flow: _Flow[T]) -> T:
        run = _Run(flow)
        while (io := run.pending) is not None:
            run.resume(*_outcome(getattr(self.store, io.op), io.args))
        return cast(T, run.result)

    async def _adrive(self, flow: _Flow[T]) -> T:
        run = _Run(flow)
        while (io := run.pending) is not None:
            run.resume(*await _aoutcome(getattr(self.store, f"a{io.op}"), io.args))
        return cast(T, run.result)

    # --- guarded calls ---------------------------------------------------------------------------

    def _before_call(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener.before_call(self, func, *args, **kwargs)

    def call(self, func: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        """Run ``func`` guarded by the breaker (no lock is held while it runs).

        A generator function is guarded while it is iterated, as in pybreaker: the outcome is
        recorded when the generator finishes (or raises), not when it is created."""
        if inspect.iscoroutinefunction(func):
            raise TypeError(f"{func.__name__} is a coroutine function: use `await breaker.call_async(...)`")
        ticket = self._drive(self._admission())
        self._before_call(func, args, kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            self._drive(self._settlement(ticket, exc))
            raise
        if isinstance(result, types.GeneratorType):
            return cast(R, self._guard_generator(ticket, result))
        self._drive(self._settlement(ticket, None))
        return result

    def _guard_generator(self, ticket: Ticket, gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
        # ``yield from`` forwards send(), throw() and close() to the wrapped generator, so a
        # ``@contextmanager`` over a guarded generator behaves exactly as without the breaker.
        try:
            result = yield from gen
        except BaseException as exc:
            self._drive(self._settlement(ticket, exc))
            raise
        # The failure count seen at admission may be stale by now (other calls ran while this
        # generator was iterated): always record the success so that it resets the count.
        self._drive(self._settlement(replace(ticket, fail_counter=max(1, ticket.fail_counter)), None))
        return result

    async def call_async(self, func: Callable[..., Awaitable[R]], *args: Any, **kwargs: Any) -> R:
        """Await ``func(*args, **kwargs)`` guarded by the breaker; concurrent calls run concurrently."""
        ticket = await self._adrive(self._admission())
        self._before_call(func, args, kwargs)
        try:
            result = await func(*args, **kwargs)
        except BaseException as exc:
            await self._adrive(self._settlement(ticket, exc))
            raise
        await self._adrive(self._settlement(ticket, None))
        return result

    @contextmanager
    def calling(self) -> Iterator[None]:
        """``with breaker.calling(): ...`` guards the block like ``call``."""
        ticket = self._drive(self._admission())
        try:
            yield
        except BaseException as exc:
            self._drive(self._settlement(ticket, exc))
            raise
        self._drive(self._settlement(ticket, None))

    @overload
    def __call__(self, func: F, /) -> F: ...

    @overload
    def __call__(self, **call_kwargs: bool) -> Callable[[F], F]: ...

    @overload  # pybreaker's own signature (``breaker(func, __pybreaker_call_async=True)``)
    def __call__(self, *call_args: Any, **call_kwargs: bool) -> Callable[..., Any]: ...

    def __call__(self, *call_args: Any, **call_kwargs: bool) -> Any:
        """Decorator: ``@breaker`` guards a function, a generator function or an ``async def``.

        Plain functions use pybreaker's own decorator (which calls ``self.call``, and keeps
        pybreaker's Tornado option); ``async def`` gets a wrapper around ``call_async``."""
        if not call_args:
            return lambda func: self(func, **call_kwargs)
        func = call_args[0]
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def guarded(*args: Any, **kwargs: Any) -> Any:
                return await self.call_async(func, *args, **kwargs)

            return guarded
        return super().__call__(*call_args, **call_kwargs)
