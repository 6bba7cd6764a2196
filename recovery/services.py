"""The clients a process talks to, built once from the config and torn down in one place.

prefect-redis' model: the configuration owns its client. ``services_for(config)`` returns the
process's ``Services`` for that config's stores (one per ``audit_url`` + ``state_url``); every
run, task and command asks it instead of building its own Redis client, engine or breaker, so
connection pools, registered Lua scripts and timeouts are shared and secrets are read here
only. ``reset_services()`` is the one reset hook (tests, forked workers).

Nothing is connected at construction: each client is created on first use, so a command that
only reads the audit store never needs Redis, and vice versa.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from recovery.audit.durable import DurableAudit
from recovery.backends.rate import RateStore, rate_store_for
from recovery.backends.state import SharedState, open_state
from recovery.config.loader import DEFAULT_SPOOL_DIR, RecoveryConfig
from recovery.config.targets import TargetConfig

if TYPE_CHECKING:
    from recovery.client.breakers import FleetBreaker

T = TypeVar("T")


class Services:
    """State, audit, breakers and rates of one configuration; lazily connected, closed once.

    Every shared-state client (state, the rate and window stores on its connection pool,
    breakers) times out after ``config.state_timeout_seconds``.
    """

    def __init__(self, config: RecoveryConfig) -> None:
        self.config = config
        self._lock = threading.RLock()
        self._state: SharedState | None = None
        self._audit: DurableAudit | None = None
        self._rates: RateStore | None = None

    @property
    def audit_url(self) -> str:
        return self.config.audit_url.get_secret_value()

    @property
    def state_url(self) -> str | None:
        """``None``: in-process state (single worker, the demo)."""
        return self.config.state_url.get_secret_value() if self.config.state_url else None

    def _once(self, attr: str, build: Callable[[], T]) -> T:
        # An RLock: building the rate store asks for the state client under the same lock.
        with self._lock:
            value: T | None = getattr(self, attr)
            if value is None:
                value = build()
                setattr(self, attr, value)
            return value

    @property
    def state(self) -> SharedState:
        return self._once("_state", lambda: open_state(self.state_url, self.config.state_timeout_seconds))

    @property
    def audit(self) -> DurableAudit:
        """The audit store behind its spool (``recovery.audit.durable``): writes never lost while
        the store is down; built (connect, migrate, replay the spool) on first use."""
        with self._lock:
            spool = self.config.audit_spool or Path(DEFAULT_SPOOL_DIR).absolute()
            timeout = self.config.audit_timeout_seconds
            audit = self._audit
            if audit is not None and (audit.spool.directory, audit.timeout_seconds) != (spool, timeout):
                audit = None  # a newer config of the same stores moved the spool or the bound
            if audit is None:
                audit = self._audit = DurableAudit(self.audit_url, spool, timeout)
            return audit

    @property
    def rates(self) -> RateStore:
        return self._once("_rates", lambda: rate_store_for(self.state))

    def breaker(self, target: str | TargetConfig) -> FleetBreaker:
        """The fleet-wide breaker of ``target`` (shared with every worker through ``state_url``)."""
        from recovery.client.breakers import breaker_for

        spec = self.config.target(target) if isinstance(target, str) else target
        return breaker_for(spec.name, spec.breaker, self.state_url, timeout=self.config.state_timeout_seconds)

    def close(self) -> None:
        """Release connections; the next use reconnects (a closed ``Services`` stays usable)."""
        with self._lock:
            state, self._state, self._audit, self._rates = self._state, None, None, None
        if state is not None:
            with contextlib.suppress(Exception):  # teardown must not mask the caller's error
                state.close()


_services: dict[tuple[str, str | None], Services] = {}
_services_lock = threading.Lock()


def services_for(config: RecoveryConfig) -> Services:
    """The process's ``Services`` for ``config``'s stores (the newest config object wins)."""
    key = (
        config.audit_url.get_secret_value(),
        config.state_url.get_secret_value() if config.state_url else None,
    )
    with _services_lock:
        services = _services.get(key)
        if services is None:
            services = _services[key] = Services(config)
        else:
            # Same stores, maybe edited targets/strategies: clients stay valid, the config is newer.
            services.config = config
        return services


def reset_services() -> None:
    """Close and forget every ``Services`` (tests; a forked child must not share sockets)."""
    with _services_lock:
        items = list(_services.values())
        _services.clear()
    for services in items:
        services.close()
