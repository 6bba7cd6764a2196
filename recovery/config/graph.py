"""Escalation ladders and dependencies between targets: the fields, and the checks across targets.

``depends_on`` names other targets: while one of them (transitively) is unhealthy or recovering,
the target's own recovery waits (recovery/engine/monitor.py). Unknown names and cycles are bad
input: one line naming the field, exit 2. ``escalation`` names workflows; whether each rung can
recover the target's kind needs the workflow registry, a layer above this one
(``recovery.engine.escalation.check_escalation``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Annotated, Protocol

from pydantic import BaseModel, Field

from recovery.config.limits import MAX_DEPENDS_ON, MAX_RUNGS
from recovery.errors import ConfigError, clip

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"  # a target's (and a workflow's) name
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class DependencyFields(BaseModel):
    """Mixed into every target model (config/targets.py)."""

    depends_on: list[Name] = Field(
        default_factory=list,
        max_length=MAX_DEPENDS_ON,
        description="Targets this one needs: its recovery waits while one of them is down.",
    )
    escalation: list[Name] = Field(
        default_factory=list,
        max_length=MAX_RUNGS,
        description="Automatic recoveries: workflows tried in turn, one per detection of the same "
        "incident (`workflow`, or the kind's default, still serves manual runs).",
    )


class _Node(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def depends_on(self) -> list[str]: ...


def check_dependencies(targets: Sequence[_Node], also_known: Collection[str] = ()) -> None:
    """Every ``depends_on`` names a configured target (``also_known``: targets set aside for an
    unset ``${VAR}``) and the graph has no cycle; else ``ConfigError`` naming the field."""
    index = {t.name: i for i, t in enumerate(targets)}
    for i, target in enumerate(targets):
        for j, dep in enumerate(target.depends_on):
            if dep == target.name:
                raise ConfigError(f"targets[{i}].depends_on[{j}]", "a target cannot depend on itself")
            if dep not in index and dep not in also_known:
                raise ConfigError(f"targets[{i}].depends_on[{j}]", f"unknown target '{clip(dep)}'")
    # Iterative DFS (a recursion over 5,000 targets would hit Python's limit): white/grey/black.
    colour: dict[str, int] = {}
    graph = {t.name: [d for d in t.depends_on if d in index] for t in targets}
    for start in graph:
        if colour.get(start):
            continue
        path: list[str] = [start]
        stack = [iter(graph[start])]
        colour[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                colour[path.pop()] = 2
                stack.pop()
            elif colour.get(nxt) == 1:
                cycle = " -> ".join([*path[path.index(nxt) :], nxt])
                raise ConfigError(f"targets[{index[path[-1]]}].depends_on", f"cycle: {clip(cycle, 200)}")
            elif not colour.get(nxt):
                colour[nxt] = 1
                path.append(nxt)
                stack.append(iter(graph[nxt]))


def upstream(targets: Sequence[_Node], name: str) -> list[str]:
    """Every target ``name`` depends on, transitively, roots first (a dependency before whatever
    depends on it); empty for a target without ``depends_on``. Assumes a checked (acyclic) graph."""
    graph = {t.name: t.depends_on for t in targets}
    seen: list[str] = []
    stack: list[tuple[str, bool]] = [(d, False) for d in reversed(graph.get(name, []))]
    while stack:  # post-order: a node after all of its own dependencies
        node, expanded = stack.pop()
        if node in seen:
            continue
        if expanded:
            seen.append(node)
            continue
        stack.append((node, True))
        stack.extend((d, False) for d in reversed(graph.get(node, [])) if d not in seen)
    return seen


def layers(targets: Sequence[_Node]) -> list[list[str]]:
    """Target names by depth: layer 0 depends on nothing, a target one layer below its deepest
    dependency. Decided in this order, a dependency's outcome is known before its dependents'.
    Linear in targets + edges; assumes a checked (acyclic) graph."""
    graph = {t.name: t.depends_on for t in targets}
    depth: dict[str, int] = {}
    for target in targets:
        stack = [target.name]
        while stack:
            node = stack[-1]
            missing = [d for d in graph.get(node, []) if d in graph and d not in depth]
            if missing:
                stack.extend(missing)
                continue
            stack.pop()
            depth[node] = 1 + max((depth[d] for d in graph.get(node, []) if d in graph), default=-1)
    out: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for target in targets:
        out[depth[target.name]].append(target.name)
    return out
