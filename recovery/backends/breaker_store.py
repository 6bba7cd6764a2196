"""Circuit-breaker state stores: pybreaker storages whose every transition is atomic.

pybreaker's ``CircuitRedisStorage`` reads and writes state, counters and ``opened_at`` in
separate commands (a failure counted on one worker can race a close on another), stores
``opened_at`` in whole seconds and keys that never expire, and raises from its constructor when
Redis is down. Here each transition is one step of ``recovery.backends.breaker_core`` (the rules
are documented there): ``RedisBreakerStore`` runs it as one Lua script
(``recovery/backends/lua/breaker_*.lua``), ``MemoryBreakerStore`` under a mutex.

Redis layout (``recovery.backends.keys``; PEXPIRE ``state_ttl_seconds`` on each write):
``breaker_key(target)`` hash ``state``, ``fail_counter``, ``success_counter``, ``opened_at``
(epoch seconds, microseconds), ``changed_at``, and while a recovery's close is unverified
``close_lease_owner`` + ``close_lease_until`` (epoch seconds: past it, the breaker is open);
``breaker_probe_key(target)`` string, PX lease, the probe's owner.

Every method raises ``StateUnavailable`` when Redis cannot be reached; ``recovery.client``
decides what a guarded call does then. Constructing a store performs no I/O and never raises.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pybreaker
import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff

from recovery.backends import breaker_core as core
from recovery.backends.breaker_core import (
    CLOSED,
    HALF_OPEN,
    OPEN,
    STATES,
    BreakerSnapshot,
    Failure,
    Ticket,
)
from recovery.backends.keys import breaker_key, breaker_probe_key
from recovery.backends.lua import script
from recovery.backends.state import DEFAULT_TIMEOUT_SECONDS, redis_client
from recovery.errors import StateUnavailable
from recovery.redact import redact, redact_url

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "BreakerSnapshot",
    "BreakerStore",
    "Failure",
    "RedisBreakerStore",
    "Ticket",
    "close_async_clients",
]

_SCRIPTS = ("admit", "succeeded", "failed", "release", "refresh", "force", "close_lease")


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class BreakerStore(pybreaker.CircuitBreakerStorage, ABC):
    """Atomic breaker state for one target, with pybreaker's storage interface on top of it.

    The async variants default to the sync ones: the in-memory store never waits."""

    description: str

    def __init__(self, target: str, ttl_seconds: float, clock: Callable[[], float], kind: str) -> None:
        super().__init__(kind)  # pybreaker's storage ``name`` is the kind ("memory", "redis")
        self.target = target
        self.ttl_seconds = ttl_seconds
        self.clock = clock

    @abstractmethod
    def snapshot(self) -> BreakerSnapshot: ...

    @abstractmethod
    def admit(self, reset_timeout: float, lease_seconds: float, owner: str) -> Ticket: ...

    @abstractmethod
    def succeeded(self, owner: str, probe: bool, success_threshold: int) -> str:
        """Record a success; returns the state after it."""

    @abstractmethod
    def failed(self, owner: str, probe: bool, fail_max: int) -> Failure:
        """Record a failure; returns the state after it and whether this failure opened it."""

    @abstractmethod
    def release(self, owner: str) -> None:
        """Give the probe lease back (a cancelled probe) if ``owner`` holds it."""

    @abstractmethod
    def refresh(self, owner: str, lease_seconds: float) -> bool:
        """Extend the probe lease if ``owner`` still holds it (a long recovery probing)."""

    @abstractmethod
    def force(
        self, state: str, trip: bool = False, lease_owner: str | None = None, lease_seconds: float = 0.0
    ) -> str:
        """Move to ``state`` (``trip``: only if not already open); returns the previous state.
        ``lease_owner``: close unverified, open again after ``lease_seconds`` (breaker_core)."""

    @abstractmethod
    def close_lease(self, owner: str, action: str, lease_seconds: float = 0.0) -> bool:
        """``extend`` / ``confirm`` / ``revoke`` ``owner``'s unverified close; False if not held."""

    async def aadmit(self, reset_timeout: float, lease_seconds: float, owner: str) -> Ticket:
        return self.admit(reset_timeout, lease_seconds, owner)

    async def asucceeded(self, owner: str, probe: bool, success_threshold: int) -> str:
        return self.succeeded(owner, probe, success_threshold)

    async def afailed(self, owner: str, probe: bool, fail_max: int) -> Failure:
        return self.failed(owner, probe, fail_max)

    async def arelease(self, owner: str) -> None:
        self.release(owner)

    # --- pybreaker's CircuitBreakerStorage interface ----------------------------------------------
    # pybreaker's own ``CircuitBreaker.open/half_open/close`` and ``fail_counter`` go through
    # these. The counter writes are no-ops: counting, tripping and resetting happen inside the
    # atomic transitions above, never as separate read-modify-write steps.

    @property
    def state(self) -> str:
        return self.snapshot().state

    @state.setter
    def state(self, state: str) -> None:
        self.force(state)

    @property
    def counter(self) -> int:
        return self.snapshot().fail_counter

    @property
    def success_counter(self) -> int:
        return self.snapshot().success_counter

    @property
    def opened_at(self) -> datetime | None:
        opened = self.snapshot().opened_at
        return datetime.fromtimestamp(opened, UTC) if opened is not None else None

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        pass  # set atomically together with the state by force(OPEN), with the store's clock

    def increment_counter(self) -> None:
        raise NotImplementedError("use failed(): counting and tripping are one atomic step")

    def reset_counter(self) -> None:
        pass  # closing resets the counters atomically

    def increment_success_counter(self) -> None:
        raise NotImplementedError("use succeeded(): counting and closing are one atomic step")

    def reset_success_counter(self) -> None:
        pass  # opening and half-opening reset it atomically


class _SwallowedCancel(asyncio.CancelledError):
    """A cancellation redis-py swallowed after the script ran; ``raw`` is the script's result."""

    def __init__(self, raw: Any) -> None:
        super().__init__()
        self.raw = raw


def _ticket(raw: list[Any], owner: str) -> Ticket:
    verdict, state, number, holder = (str(x) for x in raw)
    if verdict == "pass":
        return Ticket(verdict, state, fail_counter=int(number), owner=owner)
    if verdict == "probe":
        return Ticket(verdict, state, owner=owner)
    if state == OPEN:
        return Ticket(verdict, state, retry_in=float(number), owner=owner)
    return Ticket(verdict, state, holder=holder or None, owner=owner)


def _failure(raw: list[Any]) -> Failure:
    return Failure(str(raw[0]), bool(int(raw[1])))


class RedisBreakerStore(BreakerStore):
    """Shared by every process pointed at the same Redis: recovery flows and the application."""

    def __init__(
        self,
        target: str,
        url: str,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        super().__init__(target, ttl_seconds, clock, "redis")
        self.url = url
        self.timeout = timeout
        self.description = f"redis ({redact_url(url)})"
        self.keys = [breaker_key(target), breaker_probe_key(target)]
        self._client: redis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, dict[str, Any]]] = (
            weakref.WeakKeyDictionary()
        )
        self._init_lock = threading.Lock()

    def _fail(self, exc: BaseException) -> StateUnavailable:
        return StateUnavailable(
            f"breaker state {redact_url(self.url)}: {redact(str(exc)) or type(exc).__name__}"
        )

    def _connect(self) -> redis.Redis:
        with self._init_lock:
            if self._client is None:
                self._client = redis_client(self.url, timeout=self.timeout)
                self._scripts = {n: self._client.register_script(script(f"breaker_{n}")) for n in _SCRIPTS}
            return self._client

    def _async_script(self, name: str) -> Any:
        # redis.asyncio connections belong to the loop that opened them: one client per loop.
        loop = asyncio.get_running_loop()
        entry = self._async.get(loop)
        if entry is None:
            client = redis.asyncio.Redis.from_url(
                self.url,
                decode_responses=True,
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                # As the sync client's (backends.state.bounded_retry): never retry a timeout.
                retry=AsyncRetry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            )
            entry = (client, {n: client.register_script(script(f"breaker_{n}")) for n in _SCRIPTS})
            self._async[loop] = entry
        return entry[1][name]

    def _run(self, name: str, args: list[Any]) -> Any:
        try:
            self._connect()
            return self._scripts[name](keys=self.keys, args=args)
        except (redis.RedisError, OSError, ValueError) as exc:
            raise self._fail(exc) from None

    async def _arun(self, name: str, args: list[Any]) -> Any:
        # redis-py's asyncio client can swallow a cancellation that arrives while it sets up a
        # connection (it retries, or reports a timeout). The caller was cancelled: it must get
        # CancelledError, never a fail-open call or a result.
        task = asyncio.current_task()
        before = task.cancelling() if task is not None else 0
        try:
            raw = await self._async_script(name)(keys=self.keys, args=args)
        except (redis.RedisError, OSError, ValueError) as exc:
            if task is not None and task.cancelling() > before:
                raise asyncio.CancelledError from exc
            raise self._fail(exc) from None
        if task is not None and task.cancelling() > before:
            raise _SwallowedCancel(raw)
        return raw

    # Argument lists, shared by the sync and async entry points (which only differ in I/O).

    def _admit_args(self, reset_timeout: float, lease_seconds: float, owner: str) -> list[Any]:
        return [
            repr(self.clock()),
            repr(float(reset_timeout)),
            _ms(lease_seconds),
            owner,
            _ms(self.ttl_seconds),
        ]

    def _settle_args(self, owner: str, probe: bool, limit: int) -> list[Any]:
        return [repr(self.clock()), owner, "1" if probe else "0", limit, _ms(self.ttl_seconds)]

    def admit(self, reset_timeout: float, lease_seconds: float, owner: str) -> Ticket:
        return _ticket(self._run("admit", self._admit_args(reset_timeout, lease_seconds, owner)), owner)

    async def aadmit(self, reset_timeout: float, lease_seconds: float, owner: str) -> Ticket:
        try:
            raw = await self._arun("admit", self._admit_args(reset_timeout, lease_seconds, owner))
        except _SwallowedCancel as cancel:
            if _ticket(cancel.raw, owner).verdict == "probe":
                self.release(owner)  # cancelled before the call ran: give the probe back
            raise
        return _ticket(raw, owner)

    def succeeded(self, owner: str, probe: bool, success_threshold: int) -> str:
        return str(self._run("succeeded", self._settle_args(owner, probe, success_threshold)))

    async def asucceeded(self, owner: str, probe: bool, success_threshold: int) -> str:
        return str(await self._arun("succeeded", self._settle_args(owner, probe, success_threshold)))

    def failed(self, owner: str, probe: bool, fail_max: int) -> Failure:
        return _failure(self._run("failed", self._settle_args(owner, probe, fail_max)))

    async def afailed(self, owner: str, probe: bool, fail_max: int) -> Failure:
        return _failure(await self._arun("failed", self._settle_args(owner, probe, fail_max)))

    def release(self, owner: str) -> None:
        self._run("release", [owner])

    async def arelease(self, owner: str) -> None:
        await self._arun("release", [owner])

    def refresh(self, owner: str, lease_seconds: float) -> bool:
        return bool(self._run("refresh", [owner, _ms(lease_seconds)]))

    def force(
        self, state: str, trip: bool = False, lease_owner: str | None = None, lease_seconds: float = 0.0
    ) -> str:
        if state not in STATES:
            raise ValueError(f"unknown breaker state {state!r}")
        now = self.clock()
        # The hash must outlive an unverified close's lease, or its expiry would read "closed".
        ttl = max(self.ttl_seconds, lease_seconds) if lease_owner is not None else self.ttl_seconds
        args: list[Any] = [state, repr(now), _ms(ttl), "trip" if trip else "always"]
        if lease_owner is not None:
            args += [lease_owner, repr(now + lease_seconds)]  # the core computes the same float
        return str(self._run("force", args))

    def close_lease(self, owner: str, action: str, lease_seconds: float = 0.0) -> bool:
        if action not in core.CLOSE_LEASE_ACTIONS:
            raise ValueError(f"unknown close-lease action {action!r}")
        now = self.clock()
        ttl = _ms(max(self.ttl_seconds, lease_seconds))
        return bool(self._run("close_lease", [repr(now), owner, action, repr(now + lease_seconds), ttl]))

    def snapshot(self) -> BreakerSnapshot:
        try:
            with self._connect().pipeline(transaction=True) as pipe:
                pipe.hgetall(self.keys[0])
                pipe.get(self.keys[1])
                pipe.pttl(self.keys[1])
                raw, holder, pttl = pipe.execute()
        except (redis.RedisError, OSError, ValueError) as exc:
            raise self._fail(exc) from None
        now = self.clock()

        def number(field: str) -> float | None:
            value = raw.get(field)
            return float(value) if value else None

        # A read applies the core's rules (a lapsed close lease reads open) without writing.
        record = core.Record(
            state=raw.get("state", CLOSED),
            fail_counter=int(raw.get("fail_counter", 0)),
            success_counter=int(raw.get("success_counter", 0)),
            opened_at=number("opened_at"),
            changed_at=number("changed_at"),
            lease_owner=holder,
            lease_expires_at=now + pttl / 1000 if holder is not None and pttl > 0 else None,
            close_lease_owner=raw.get("close_lease_owner"),
            close_lease_until=number("close_lease_until"),
        )
        return core.view(record, now)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


async def close_async_clients(store: BreakerStore) -> None:
    """Close the running loop's Redis client of ``store`` (optional tidy-up at application exit)."""
    if isinstance(store, RedisBreakerStore):
        entry = store._async.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[0].aclose()
