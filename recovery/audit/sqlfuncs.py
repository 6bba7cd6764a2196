"""Portable SQL expressions for aggregating the audit trail on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import QueryableAttribute
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement


class seconds_between(FunctionElement[float]):
    """``end - start`` in seconds (float) on SQLite and PostgreSQL."""

    type = Float()
    inherit_cache = True
    name = "seconds_between"


@compiles(seconds_between)
def _seconds_generic(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    start, end = list(element.clauses)
    return f"EXTRACT(EPOCH FROM ({compiler.process(end, **kw)} - {compiler.process(start, **kw)}))"


@compiles(seconds_between, "sqlite")
def _seconds_sqlite(element: seconds_between, compiler: SQLCompiler, **kw: Any) -> str:
    # julianday() keeps milliseconds, hence results rounded to ms (``_round``) on every backend;
    # it is ~3x cheaper here than strftime('%s') plus the fraction parsed separately.
    start, end = (compiler.process(c, **kw) for c in element.clauses)
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


class unindexed(FunctionElement[Any]):
    """A column the SQLite planner must not pick an index for (``+col``); the column elsewhere.

    Stats scan most of a table; SQLite would otherwise range-scan ``started_at`` and look every
    row up, several times slower than the covering indexes of revision 0002.
    """

    inherit_cache = True
    name = "unindexed"

    def __init__(self, column: ColumnElement[Any] | QueryableAttribute[Any]) -> None:
        super().__init__(column)
        self.type = next(iter(self.clauses)).type


@compiles(unindexed)
def _unindexed_generic(element: unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return str(compiler.process(next(iter(element.clauses)), **kw))


@compiles(unindexed, "sqlite")
def _unindexed_sqlite(element: unindexed, compiler: SQLCompiler, **kw: Any) -> str:
    return "+" + str(compiler.process(next(iter(element.clauses)), **kw))
