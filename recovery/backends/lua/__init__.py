"""The Redis Lua scripts of every store, one ``.lua`` file each, read once per process.

Scripts live in files (not Python strings) so they can be linted, diffed and run with
``redis-cli --eval`` on their own. ``script(name)`` reads ``{name}.lua`` from this package with
``importlib.resources`` (works from a wheel or a zip, not only a source tree) and caches the
text: a store registers the script once per Redis client, and the file is read once per process.
Breaker scripts use the ``breaker_`` prefix; everything else belongs to the state stores.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def script(name: str) -> str:
    """The source of ``lua/{name}.lua`` (``name`` without the extension)."""
    return resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
