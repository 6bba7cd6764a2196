"""The Redis Lua scripts of every store, one ``.lua`` file each, read once per process.

Scripts live in files (not Python strings) so they can be linted, diffed and run with
``redis-cli --eval`` on their own. ``script(name)`` reads ``{name}.lua`` from this package with
``importlib.resources`` (works from a wheel or a zip, not only a source tree) and caches the
text: the file is read once per process; ``Scripts`` registers it once per Redis client.
Breaker scripts use the ``breaker_`` prefix; everything else belongs to the state stores.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import redis
from redis.commands.core import Script

_INCLUDE = "-- include: "


@cache
def script(name: str) -> str:
    """The source of ``lua/{name}.lua`` (``name`` without the extension), with every
    ``-- include: other`` line replaced by ``other.lua``: the breaker transitions share one
    prelude instead of six copies of it (Redis has no ``require``)."""
    text = resources.files(__name__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    lines = [
        script(line.removeprefix(_INCLUDE).strip()) if line.startswith(_INCLUDE) else line
        for line in text.splitlines(keepends=True)
    ]
    return "".join(lines)


class Scripts:
    """The registered scripts of one Redis client, each registered on first use.

    A store built on an existing client (a ``RedisState``'s) takes that client's ``Scripts``,
    so a script is registered once per client, however many stores share it.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._registered: dict[str, Script] = {}

    def __call__(self, name: str) -> Script:
        registered = self._registered.get(name)
        if registered is None:  # a race registers twice: harmless, both hold the same SHA
            registered = self._registered[name] = self.client.register_script(script(name))
        return registered
