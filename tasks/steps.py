"""The recovery step task: one attempt of one workflow step, retried per the target's strategy."""

from __future__ import annotations

from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, TaskRun
from prefect.runtime import task_run as current_task_run

from recovery.engine.runtime import RecoveryRuntime
from recovery.engine.workflows import PlannedStepRetry
from recovery.errors import TemporaryError
from recovery.kinds.base import Detail

PREFECT_MAX_RETRY_DELAYS = 50


def retry_only_temporary(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect retries a step only for ``TemporaryError``; a permanent failure fails at once."""
    # The engine hands over a Failed state whose ``data`` is the raised exception; calling
    # ``state.result()`` here would return an un-awaited coroutine inside async tasks.
    return isinstance(state.data, TemporaryError)


@task(name="recovery-step", cache_policy=NO_CACHE, retry_condition_fn=retry_only_temporary)
async def recovery_step(runtime: RecoveryRuntime, step: str) -> Detail:
    return await runtime.run_step(step, attempt=current_task_run.run_count)


def step_task(planned: PlannedStepRetry) -> Task[..., Any]:
    """``recovery_step`` named after the step, with the strategy's retries and delays."""
    # Prefect accepts at most 50 delays and repeats the final one for later retries; past 50
    # retries a capped strategy is at its cap anyway, so truncating changes nothing observable.
    delays = list(planned.plan.delays)[:PREFECT_MAX_RETRY_DELAYS]
    return recovery_step.with_options(
        name=planned.step.name,
        task_run_name=planned.step.name,
        retries=planned.plan.retries,
        retry_delay_seconds=delays if delays else 0,
    )
