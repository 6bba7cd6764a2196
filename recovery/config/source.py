"""Reading the config file and turning its YAML into plain data, within fixed limits.

The file is untrusted input. ``read_config_text`` opens regular files only, without blocking (a
FIFO or ``/dev/zero`` as ``--config`` is refused, not waited on or read forever) and reads at most
``MAX_CONFIG_BYTES`` + 1 bytes. ``parse_yaml`` builds the document straight from the parser's
events instead of PyYAML's node graph: no node objects or marks are kept (~1 KB per value in
``yaml.safe_load``), aliases and anchors are refused (an alias bomb expands nothing), nesting,
value count and number length are bounded, and a duplicate or non-string key is an error naming
its line. Every failure is a ``ConfigError`` whose message starts with ``line N`` when known.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    StreamEndEvent,
)
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

from recovery.config.limits import MAX_CONFIG_BYTES, MAX_DEPTH, MAX_KEYS, MAX_NODES, MAX_NUMBER_CHARS
from recovery.errors import ConfigError, clip

# libyaml's parser gives the same events as PyYAML's ~5x faster; the pure-Python one is the
# fallback of a PyYAML built without it.
_EventParser: Any = getattr(yaml, "CBaseLoader", None) if yaml.__with_libyaml__ else None
if _EventParser is None:
    _EventParser = yaml.BaseLoader

_TAG = "tag:yaml.org,2002:"
_STR = _TAG + "str"
_UNSEEN = object()
# First character -> [(tag, regexp)]: YAML 1.1's implicit types (int, float, bool, null, ...).
_IMPLICIT: dict[str | None, list[tuple[str, re.Pattern[str]]]] = Resolver.yaml_implicit_resolvers
_NUMBER_TAGS = (_TAG + "int", _TAG + "float")
# The scalar types of YAML 1.1's safe schema a config can use; binary, merge keys (<<) and local
# tags (!x) have no meaning in this file and are refused by name.
_SCALARS: dict[str, Any] = {
    _TAG + name: SafeConstructor.yaml_constructors[_TAG + name]
    for name in ("null", "bool", "int", "float", "timestamp")
}
_COLLECTION_TAGS = (None, "!", _TAG + "seq", _TAG + "map")
# What YAML itself refuses (it allows tab, LF, CR, NEL and printable text); found here first so
# the error names the line and the character.
_NOT_YAML_RE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def read_config_text(path: Path, limit: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of the regular file ``path``; ``ConfigError`` naming ``--config`` otherwise."""
    shown = clip(str(path))

    def fail(reason: str) -> ConfigError:
        return ConfigError("--config", f"cannot read {shown}: {reason}")

    try:
        # stat first: opening a device can act on it (a tape rewinds, a tty becomes ours).
        _check_regular(os.stat(path), limit, fail)
        # O_NONBLOCK: if a FIFO replaced the file since, opening it must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise ConfigError("--config", f"file not found: {shown}") from None
    except IsADirectoryError:
        raise fail("IsADirectoryError") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise fail(
            exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        ) from None
    try:
        _check_regular(os.fstat(fd), limit, fail)  # what was opened, in case it was swapped
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # st_size can lie (/proc, a growing file): count what is read
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise fail(exc.strerror or type(exc).__name__) from None
    finally:
        os.close(fd)
    if size > limit:
        raise fail(f"larger than {limit} bytes")
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(shown, f"line {line}: not UTF-8 (byte {exc.start + 1})") from None


def _shown_tag(tag: str | None) -> str:
    return clip(str(tag).replace(_TAG, "!!"))


def _check_regular(info: os.stat_result, limit: int, fail: Callable[[str], ConfigError]) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise fail("IsADirectoryError")
    if not stat.S_ISREG(info.st_mode):
        raise fail("not a regular file")  # a FIFO blocks, /dev/zero never ends
    if info.st_size > limit:
        raise fail(f"larger than {limit} bytes")


class _Frame:
    """A collection being built: a list, or a dict and the key waiting for its value."""

    __slots__ = ("container", "key")

    def __init__(self, container: list[Any] | dict[str, Any]) -> None:
        self.container = container
        self.key: str | None = None  # keys are strings, so None means "the next scalar is a key"


class _Refused(Exception):
    def __init__(self, event: Event | None, message: str) -> None:
        self.line = event.start_mark.line + 1 if event is not None and event.start_mark else None
        self.message = message


def parse_yaml(text: str, source: str) -> Any:
    """One YAML document -> dicts, lists and scalars; ``ConfigError(source, "line N: ...")`` if bad."""
    shown = clip(source)
    bad = _NOT_YAML_RE.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        raise ConfigError(shown, f"line {line}: character U+{ord(bad[0]):04X} is not allowed in YAML")
    parser = _EventParser(text)
    try:
        return _Builder(parser).document()
    except _Refused as exc:
        where = f"line {exc.line}: " if exc.line is not None else ""
        raise ConfigError(shown, where + exc.message) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "YAML"
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(shown, f"{where}: {clip(problem)}") from None
    finally:
        parser.dispose()


class _Builder:
    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.constructor = SafeConstructor()
        self.nodes = 0
        self.plain: dict[str, Any] = {}

    def document(self) -> Any:
        p = self.parser
        p.get_event()  # StreamStart
        if p.check_event(StreamEndEvent):
            return None  # an empty file
        p.get_event()  # DocumentStart
        root = self.node()
        p.get_event()  # DocumentEnd
        if p.check_event(DocumentStartEvent):
            raise _Refused(p.peek_event(), "expected a single YAML document")
        return root

    def node(self) -> Any:
        """The next complete node, built without recursion (depth is data, not stack frames)."""
        stack: list[_Frame] = []
        while True:
            event = self.parser.get_event()
            if isinstance(event, ScalarEvent):
                self.count(event)
                value = self.scalar(event)
            elif isinstance(event, CollectionStartEvent):
                self.count(event)
                if stack and isinstance(stack[-1].container, dict) and stack[-1].key is None:
                    raise _Refused(event, "mapping keys must be strings, not collections")
                if event.tag not in _COLLECTION_TAGS:
                    raise _Refused(event, f"tag {_shown_tag(event.tag)} is not supported")
                if len(stack) >= MAX_DEPTH:
                    raise _Refused(event, f"nested deeper than {MAX_DEPTH} levels")
                stack.append(_Frame({} if isinstance(event, MappingStartEvent) else []))
                continue
            elif isinstance(event, (SequenceEndEvent, MappingEndEvent)):
                value = stack.pop().container
            elif isinstance(event, AliasEvent):
                raise _Refused(event, f"aliases (*{clip(event.anchor)}) are not allowed")
            else:  # inside a document the parser yields only the events above
                raise _Refused(event, f"unexpected {type(event).__name__}")
            if not stack:
                return value
            frame = stack[-1]
            if isinstance(frame.container, list):
                frame.container.append(value)
            elif frame.key is None:
                frame.key = self.key(frame.container, event, value)
            else:
                frame.container[frame.key] = value
                frame.key = None

    def count(self, event: ScalarEvent | CollectionStartEvent) -> None:
        if event.anchor is not None:
            raise _Refused(event, f"anchors (&{clip(event.anchor)}) are not allowed")
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Refused(event, f"more than {MAX_NODES} values in one file")

    @staticmethod
    def key(mapping: dict[str, Any], event: Event, key: Any) -> str:
        if not isinstance(key, str):
            raise _Refused(event, f"mapping key {clip(key)} must be a string (quote it)")
        if key in mapping:
            raise _Refused(event, f"duplicate key '{clip(key)}'")
        if len(mapping) >= MAX_KEYS:
            raise _Refused(event, f"more than {MAX_KEYS} keys in one mapping")
        return key

    def scalar(self, event: ScalarEvent) -> Any:
        value = event.value
        tag = event.tag
        if tag is None or tag == "!":
            if not event.implicit[0]:
                return value  # quoted or "!": always a string
            known = self.plain.get(value, _UNSEEN)
            if known is not _UNSEEN:
                return known  # resolving and constructing cost ~8 µs, repeats are common
            tag = _resolve_plain(value)
            self.plain[value] = known = self.build(event, tag)
            return known
        return self.build(event, tag)

    def build(self, event: ScalarEvent, tag: str) -> Any:
        if tag == _STR:
            return event.value
        if tag == _TAG + "merge":
            raise _Refused(event, "merge keys (<<) are not allowed")
        build = _SCALARS.get(tag)
        if build is None:
            raise _Refused(event, f"tag {_shown_tag(tag)} is not supported")
        if tag in _NUMBER_TAGS and len(event.value) > MAX_NUMBER_CHARS:
            raise _Refused(event, f"number longer than {MAX_NUMBER_CHARS} characters")
        try:
            return build(self.constructor, ScalarNode(tag, event.value))
        except (ValueError, OverflowError, yaml.YAMLError):  # e.g. 2001-02-30 as a timestamp
            raise _Refused(event, f"invalid {tag.removeprefix(_TAG)} '{clip(event.value)}'") from None


def _resolve_plain(value: str) -> str:
    """The tag of a plain scalar: ``yaml.resolver.Resolver.resolve`` without its (unused) path
    resolvers, so a string that cannot be anything else costs one dict lookup."""
    for tag, pattern in _IMPLICIT.get(value[:1], ()):
        if pattern.match(value):
            return str(tag)
    return _STR
