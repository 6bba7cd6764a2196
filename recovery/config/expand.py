"""``${VAR}`` / ``${VAR:-default}`` in string values, replaced from the environment, with bounds.

Expansion walks the whole document, so it also bounds what ``parse_config`` accepts from Python
callers: nesting (``MAX_DEPTH``), values (``MAX_NODES``) and the characters all expansions may
add (``MAX_EXPANDED_CHARS``: ``${BIG}`` repeated in a 1 MiB file must not cost gigabytes).
A ``${`` that does not start a well-formed reference is an error rather than text left
unexpanded, which would only fail later, at run time, as a strange URL or password.
Only values are expanded; keys are field names.
"""

from __future__ import annotations

import os
import re
from typing import Any

from recovery.config.limits import MAX_DEPTH, MAX_EXPANDED_CHARS, MAX_KEYS, MAX_NODES
from recovery.errors import ConfigError, clip

ENV_NAME_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")
_REF_RE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
_SYNTAX = "expected ${NAME} or ${NAME:-default}"


def expand_env(data: Any, root: str) -> Any:
    """A copy of ``data`` with every reference in its string values replaced."""
    return _Expansion(root).value(data, "", 0)


class _Expansion:
    def __init__(self, root: str) -> None:
        self.root = root
        self.nodes = 0
        self.left = MAX_EXPANDED_CHARS

    def value(self, node: Any, path: str, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise ConfigError(path or self.root, f"more than {MAX_NODES} values in one config")
        if isinstance(node, str):
            return self.string(node, path or self.root)
        if not isinstance(node, (dict, list, tuple)):
            return node
        if depth >= MAX_DEPTH:
            raise ConfigError(path or self.root, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            if len(node) > MAX_KEYS:
                raise ConfigError(path or self.root, f"more than {MAX_KEYS} keys in one mapping")
            return {
                k: self.value(v, f"{path}.{clip(k)}" if path else clip(k), depth + 1) for k, v in node.items()
            }
        return [self.value(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node)]

    def string(self, value: str, path: str) -> str:
        start = value.find("${")
        if start < 0:
            return value
        out: list[str] = []
        end = 0
        while start >= 0:
            ref = _REF_RE.match(value, start)
            if ref is None or "${" in (ref["default"] or ""):
                raise ConfigError(path, f"malformed '${{' at character {start + 1} ({_SYNTAX})")
            replacement = os.environ.get(ref["name"], ref["default"])
            if replacement is None:
                raise ConfigError(path, f"environment variable {clip(ref['name'])} is not set")
            self.left -= len(replacement)
            if self.left < 0:
                raise ConfigError(path, f"${{...}} expansions exceed {MAX_EXPANDED_CHARS} characters in all")
            out += (value[end:start], replacement)
            end = ref.end()
            start = value.find("${", end)
        out.append(value[end:])
        return "".join(out)
