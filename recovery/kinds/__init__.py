"""Target kinds: each kind module knows how to probe its targets and how to recover them.

The registry maps a target's ``kind`` (``http``, ``database``, ``redis``...) to a ``Kind``: its
prober and its workflow specs. The probe batch and the workflow selection read it; nothing else
lists kinds. The built-in kinds are registered in ``recovery.kinds.builtin``, loaded on first use
rather than on import, so importing one kind module (or ``recovery.kinds.base``) never drags in
the others and no module imports the registry it is being registered in.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from recovery.kinds.base import Kind

__all__ = ["Kind", "kind_for", "kinds", "register", "unregister"]

_KINDS: dict[str, Kind] = {}
_builtins_loaded = False


def register(kind: Kind) -> Kind:
    """Add ``kind``; a second kind with the same name is a programming error."""
    if kind.name in _KINDS:
        raise ValueError(f"target kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a kind (tests, plugins that replace a built-in kind)."""
    _KINDS.pop(name, None)


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        import recovery.kinds.builtin  # noqa: F401  (registers on import)


def kinds() -> Mapping[str, Kind]:
    """Every registered kind, built-ins first, in registration order (read-only view)."""
    _load_builtins()
    return MappingProxyType(_KINDS)


def kind_for(name: str) -> Kind:
    """The kind of a target's ``kind`` value; ``LookupError`` if none is registered."""
    found = kinds().get(name)
    if found is None:
        raise LookupError(f"no target kind {name!r} registered (known: {', '.join(_KINDS)})")
    return found
