"""One way to turn a result dataclass into its JSON object: ``to_json``.

A foundation module (standard library only): the records, boards and reports of every layer
spell their ``as_json`` with it instead of listing their fields by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from datetime import datetime, tzinfo
from typing import Any


def json_value(value: Any, *, naive_tz: tzinfo | None = None) -> Any:
    """A field's JSON value: datetime -> ISO 8601 text (a naive one first gets ``naive_tz`` if
    given), an object with ``as_json`` -> its ``as_json()``, a tuple -> a list of its values
    converted; anything else (numbers, strings, enums, dicts, None) as it is."""
    if isinstance(value, datetime):
        if naive_tz is not None and value.tzinfo is None:
            value = value.replace(tzinfo=naive_tz)
        return value.isoformat()
    if callable(getattr(value, "as_json", None)):
        return value.as_json()
    if isinstance(value, tuple):
        return [json_value(v, naive_tz=naive_tz) for v in value]
    return value


def to_json(
    obj: Any,
    *,
    exclude: Collection[str] = (),
    after: str | None = None,
    naive_tz: tzinfo | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The dataclass ``obj`` as a dict: its fields in declaration order, minus ``exclude``,
    each converted by ``json_value``.

    An override named like a field replaces that field's value in place; any other override is
    a new key, put right after the field ``after`` (default: at the end), in the order given.
    """
    names = [f.name for f in dataclasses.fields(obj) if f.name not in exclude]
    extra = {k: v for k, v in overrides.items() if k not in names}
    out: dict[str, Any] = {}
    for name in names:
        value = overrides[name] if name in overrides else json_value(getattr(obj, name), naive_tz=naive_tz)
        out[name] = value
        if name == after:
            out.update(extra)
    if after is None or after not in names:
        out.update(extra)
    return out


class Jsonable:
    """Base of a result dataclass whose ``as_json`` is all its fields, by ``to_json``."""

    def as_json(self) -> dict[str, Any]:
        return to_json(self)
