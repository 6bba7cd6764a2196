"""The target-kind registry: a kind registered from outside is probed and recovered like a built-in."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from recovery.engine.probing import probe_targets
from recovery.engine.workflows import select_workflow, workflow_named, workflows
from recovery.kinds import Kind, kinds, register, unregister
from recovery.kinds.base import Detail, ProbeContext, ProbeResult, StepContext, StepSpec, WorkflowSpec


@dataclass(frozen=True)
class FakeTarget:
    """Stands in for a target model: the registry and the batch only read ``name`` and ``kind``."""

    name: str
    kind: str = "fake"


async def probe_fake(target: FakeTarget, ctx: ProbeContext) -> ProbeResult:
    return ProbeResult(target.name, "fake", target.name != "down", "fake says so", 0.5)


async def poke(ctx: StepContext) -> Detail:
    return {"poked": ctx.target.name}


FAKE_RECOVERY = WorkflowSpec(
    name="fake-recovery",
    kinds=("fake",),
    description="Poke the fake.",
    steps=(StepSpec("poke", "Poke it.", poke),),
)


@pytest.fixture
def fake_kind() -> Iterator[Kind]:
    kind = register(Kind("fake", probe_fake, (FAKE_RECOVERY,)))
    try:
        yield kind
    finally:
        unregister("fake")


async def test_a_registered_kind_is_probed_and_recovered(fake_kind: Kind) -> None:
    up, down = FakeTarget("up"), FakeTarget("down")
    assert select_workflow(down) is FAKE_RECOVERY  # type: ignore[arg-type]
    assert workflow_named("fake-recovery", down) is FAKE_RECOVERY  # type: ignore[arg-type]
    results = await probe_targets([up, down])  # type: ignore[list-item]
    assert [(r.target, r.kind, r.healthy, r.reason) for r in results] == [
        ("up", "fake", True, "fake says so"),
        ("down", "fake", False, "fake says so"),
    ]


def test_unregistering_removes_the_kind(fake_kind: Kind) -> None:
    unregister("fake")
    assert "fake" not in kinds() and "fake-recovery" not in workflows()
    with pytest.raises(LookupError, match="no recovery workflow for target kind 'fake'"):
        select_workflow(FakeTarget("x"))  # type: ignore[arg-type]


def test_a_kind_registers_once(fake_kind: Kind) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(fake_kind)


def test_builtin_workflows_are_unchanged() -> None:
    """Names, kinds, steps, optional and retryable flags exactly as before the registry."""
    shape = {
        name: (spec.kinds, spec.manual, [(s.name, s.optional, s.retryable) for s in spec.steps])
        for name, spec in workflows().items()
    }
    check = ("check_service_health", False, False)
    tail = [("reset_circuit_breaker", False, True), ("test_connectivity", False, True)]
    restore = ("restore_operations", False, True)
    assert shape == {
        "api-failure-recovery": (
            ("http",),
            False,
            [check, ("clear_error_cache", True, True), *tail, restore],
        ),
        "rate-limit-recovery": (
            ("http",),
            False,
            [
                check,
                ("adjust_request_rate", False, True),
                ("wait_for_rate_limit_reset", False, False),
                *tail,
                restore,
            ],
        ),
        "database-recovery": (
            ("database",),
            False,
            [
                check,
                ("clear_stuck_sessions", False, True),
                ("reset_connection_pool", False, True),
                ("verify_integrity", False, True),
                *tail,
                restore,
            ],
        ),
        "reconnect-database": (
            ("database",),
            True,
            [check, ("reset_connection_pool", False, True), ("test_connectivity", False, True)],
        ),
        "cache-recovery": (
            ("redis",),
            False,
            [
                ("check_cache_health", False, False),
                ("clear_corrupted_entries", False, True),
                ("rebuild_cache", True, True),
                *tail,
                restore,
            ],
        ),
        "clear-cache": (("redis",), True, [("clear_cache_keys", False, True)]),
    }
