"""Functions the ``python`` step tests reference (``custom_step_funcs:failover``...)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from recovery.kinds.custom import PythonStepContext


def failover(ctx: PythonStepContext) -> dict[str, Any]:
    """A sync step: it may block, so it must run off the event loop (the thread is recorded)."""
    ctx.logger.info("failing %s over", ctx.target.name)
    ctx.state.set_paused(ctx.target.name, f"failed over by {ctx.run_id}")
    return {
        "target": ctx.target.name,
        "run_id": ctx.run_id,
        "reason": ctx.reason,
        "workflow": ctx.workflow,
        "thread": threading.current_thread().name,
        "loop_running": _loop_running(),
    }


async def promote(ctx: PythonStepContext) -> str:
    await asyncio.sleep(0)
    return f"promoted replica of {ctx.target.name}"


def broken(ctx: PythonStepContext) -> None:
    raise RuntimeError("replica is not in sync")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


NOT_CALLABLE = 42
