"""Secret redaction for URLs, free text, and log records.

Every URL of the config is a secret except its scheme, host and port: a token can sit in the
userinfo, in any path segment, in any query value whatever its name, or in the fragment, so
``redact_url`` keeps only ``scheme://host:port`` and replaces the rest with ``***``. A list
of "sensitive parameter names" cannot be complete (``?jwt=``, ``?session=``, ``/hooks/<token>``).

Free text (exception messages, driver errors, log lines) is masked three ways:

* a URL on the host:port of a config URL (``register_url``) is cut to the ``redact_url`` form;
* each secret part of a config URL and every other registered value is masked wherever it
  appears (``register_url`` / ``register_secret``);
* heuristics for URLs the config never named (a redirect, a driver's own URL): the userinfo of
  any ``scheme://user:pw@host`` and query values of password-like parameter names.

``RedactingFilter`` applies ``redact`` to every log record, including Prefect's own handlers,
which do no redaction of their own.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from collections.abc import Iterable
from urllib.parse import unquote, unquote_plus

MASK = "***"
ELLIPSIS = "…"

# Any "scheme://user[:password]@" in free text: the whole userinfo goes (a username can be a token,
# e.g. https://TOKEN@host). The userinfo runs to the *last* "@" before the host.
_USERINFO_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/\s@'\"<>]+(?:@[^/\s@'\"<>]*)*@")
_SENSITIVE_PARAMS = ("token", "key", "secret", "password", "passwd", "pwd", "auth", "signature", "sig")
_QUERY_RE = re.compile(
    r"(?P<k>[?&;](?:[a-zA-Z0-9_\-]*?)(?:"
    + "|".join(_SENSITIVE_PARAMS)
    + r")[a-zA-Z0-9_\-]*=)(?P<v>[^&#\s'\"]+)",
    re.IGNORECASE,
)
_URL_IN_TEXT_RE = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>`]+")
_TRAILING_PUNCTUATION = ".,;:!?)}]"
_DEFAULT_PORTS = {"http": "80", "https": "443", "redis": "6379", "rediss": "6379", "postgresql": "5432"}
_WORD = "A-Za-z0-9_"

# Values masked wherever they appear (passwords, header values, whole userinfo).
_known_secrets: set[str] = set()
# Parts of config URLs (path, query values, fragment): masked only as a whole token, so a path
# "/test" or a value "require" does not eat "/test_run" or "required" in ordinary text.
_url_parts: set[str] = set()
_url_parts_re: re.Pattern[str] | None = None
# Compiled on the first redact() after a registration, not per registration: recompiling the
# whole alternation for each of N config URLs made loading N targets O(N^2) (300 targets: 8 s).
_url_parts_dirty = False
# host:port of every config URL: any URL on one of them in free text is cut to its redact_url form.
_authorities: set[str] = set()
_lock = threading.Lock()

MIN_SECRET = 4  # shorter registered values would mask ordinary words and digits everywhere
MIN_URL_PART = 6  # URL parts this short ("true", "json", "/api") are no secrets; redact_url hides them


def register_secret(value: str | None) -> None:
    """Remember a secret value so ``redact`` masks it wherever it appears verbatim."""
    if value and len(value) >= MIN_SECRET:
        with _lock:
            _known_secrets.add(value)


def register_secrets(values: Iterable[str | None]) -> None:
    for value in values:
        register_secret(value)


def _split(url: str) -> tuple[str, str, str, str] | None:
    """``url`` -> (scheme, userinfo, host:port, rest after the authority), or None if not a URL.

    Text-based rather than ``urlsplit``: a password holding "#", "?" or "@" must still end up in
    the userinfo (``urlsplit`` would cut it at the "#"), and nothing here may raise.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.\-]*", scheme):
        return None
    slash = rest.find("/")
    head = rest if slash < 0 else rest[:slash]
    userinfo = ""
    if "@" in head:
        userinfo, rest = rest[: head.rfind("@")], rest[head.rfind("@") + 1 :]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    return scheme, userinfo, rest[:end], rest[end:]


def _authority(scheme: str, hostport: str) -> str:
    """host:port with the scheme's default port filled in, lower-cased: one spelling per server."""
    host, colon, port = hostport.rpartition(":")
    if not colon or "]" in port:  # no port (an IPv6 literal's colons are inside the brackets)
        host, port = hostport, _DEFAULT_PORTS.get(scheme.lower().split("+", 1)[0], "")
    return f"{host.lower()}:{port}"


def redact_url(url: str) -> str:
    """``url`` reduced to what is never secret: ``scheme://host:port``.

    * ``https://u:pw@api.example.com:8443/v1/T0KEN?jwt=x#f`` -> ``https://***@api.example.com:8443/***``
      (``***@``: credentials were given; ``/***``: a path, query or fragment was given);
    * ``http://api.example.com/`` and ``redis://cache:6379`` are shown whole: nothing to hide;
    * SQLite keeps its file name, the one thing that tells databases apart and no secret:
      ``sqlite:////var/lib/recovery/audit.db`` -> ``sqlite:///…/audit.db``;
    * anything that is not ``scheme://...`` -> ``***``.
    """
    parts = _split(url)
    if parts is None:
        return MASK
    scheme, userinfo, hostport, rest = parts
    if scheme.lower().split("+", 1)[0] == "sqlite":
        path, query = rest.partition("?")[0], "?" in rest
        name = path.rsplit("/", 1)[-1]
        shown = f"{ELLIPSIS}/{name}" if "/" in path.lstrip("/") else name
        return f"{scheme}:///{shown}{'?' + MASK if query else ''}" if path else f"{scheme}://"
    out = f"{scheme}://{MASK + '@' if userinfo else ''}{hostport}"
    return f"{out}/{MASK}" if rest.strip("/") else out


def url_secret_parts(url: str) -> tuple[list[str], list[str]]:
    """(values to mask anywhere, URL parts to mask as whole tokens) of one config URL.

    Anywhere: the userinfo with its password, the password, the Basic credentials an HTTP
    client derives from them. As tokens: the path (not SQLite's file path: not secret, and it names the audit
    database in messages), every query value and the fragment - raw and percent-decoded.
    """
    parts = _split(url)
    if parts is None:
        return [], []
    scheme, userinfo, _, rest = parts
    anywhere: list[str] = []
    user, _, password = userinfo.partition(":")
    if password:
        basic = f"{unquote(user)}:{unquote(password)}".encode()
        anywhere += [userinfo, unquote(userinfo), password, unquote(password)]
        anywhere.append(base64.b64encode(basic).decode())
    # A lone username is not registered: "postgres" would be masked inside "postgresql://". It
    # is still never shown in a URL (redact_url, and the userinfo rule of ``redact``).
    rest, _, fragment = rest.partition("#")
    path, _, query = rest.partition("?")
    tokens = [fragment, unquote(fragment)]
    if scheme.lower().split("+", 1)[0] != "sqlite":
        tokens += [path, unquote(path)]
    for piece in query.split("&"):  # every value, whatever its name: ?jwt=, ?session=...
        for value in piece.split("=", 1)[1:]:
            tokens += [value, unquote_plus(value)]
    return [v for v in anywhere if v], [v for v in tokens if v]


def register_url(url: str | None) -> None:
    """Register a config URL: its secret parts are masked in free text, and any URL on its
    host:port is cut to the ``redact_url`` form."""
    if not url:
        return
    parts = _split(url)
    if parts is None:
        register_secret(url)
        return
    anywhere, tokens = url_secret_parts(url)
    register_secrets(anywhere)
    global _url_parts_dirty
    with _lock:
        if parts[2]:
            _authorities.add(_authority(parts[0], parts[2]))
        new = {t for t in tokens if len(t) >= MIN_URL_PART} - _url_parts
        if new:
            _url_parts.update(new)
            _url_parts_dirty = True


def _url_parts_pattern() -> re.Pattern[str] | None:
    """The URL-part alternation, compiled once per batch of registrations (caller holds _lock)."""
    global _url_parts_re, _url_parts_dirty
    if _url_parts_dirty:
        ordered = sorted(_url_parts, key=len, reverse=True)  # longest first: no visible tail
        _url_parts_re = re.compile("|".join(_as_token(t) for t in ordered))
        _url_parts_dirty = False
    return _url_parts_re


def _as_token(value: str) -> str:
    """A regex matching ``value`` only where it is not glued to a longer word: "/health" is
    masked in "GET /health?x" and in "host:8080/health", "require" is not masked in "required".

    A path is also not masked inside a longer path ("/var/lib/recovery/x" keeps "/recovery")
    nor right after a "/" ("postgresql://recovery:pw@" is no path "/recovery").
    """
    path = value.startswith("/")
    # A path token never starts inside a longer path or file name ("/tmp/x8/recovery.yaml" keeps
    # "/recovery"); URLs on a config host:port are cut whole by ``_cut_config_urls`` instead.
    before = f"(?<![{_WORD}/.])" if path else f"(?<![{_WORD}])" if re.match(f"[{_WORD}]", value[0]) else ""
    glued = _WORD + ("/" if path else "")
    after = f"(?![{glued}])" if re.match(f"[{_WORD}]", value[-1]) or path else ""
    return f"{before}{re.escape(value)}{after}"


def _cut_config_urls(text: str, authorities: set[str]) -> str:
    def cut(match: re.Match[str]) -> str:
        url = match[0]
        tail = ""
        while url and url[-1] in _TRAILING_PUNCTUATION:
            url, tail = url[:-1], url[-1] + tail
        parts = _split(url)
        if parts is None or _authority(parts[0], parts[2]) not in authorities:
            return match[0]
        return redact_url(url) + tail

    return _URL_IN_TEXT_RE.sub(cut, text)


def redact(text: str) -> str:
    """Mask config URLs, registered secrets, URL credentials and sensitive query parameters."""
    if not text:
        return text
    with _lock:
        secrets = sorted(_known_secrets, key=len, reverse=True)
        authorities = set(_authorities)
        parts_re = _url_parts_pattern()
    # Config URLs first, while they are still whole: masking a part first would leave a URL
    # this pass no longer recognises.
    out = _cut_config_urls(text, authorities) if authorities else text
    # Known secrets before the URL patterns: a pattern could mask only part of one (up to an "@").
    for secret in secrets:
        if secret in out:
            out = out.replace(secret, MASK)
    if parts_re is not None:
        out = parts_re.sub(MASK, out)
    out = _USERINFO_RE.sub(lambda m: f"{m['scheme']}{MASK}@", out)
    return _QUERY_RE.sub(lambda m: f"{m['k']}{MASK}", out)


class RedactingFilter(logging.Filter):
    """Logging filter that rewrites a record's message and traceback with ``redact``.

    Attached to handlers (not loggers) so records propagated from child loggers, such as
    Prefect's ``prefect.flow_runs`` / ``prefect.task_runs``, are redacted too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not drop the record
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def install_log_redaction() -> None:
    """Attach ``RedactingFilter`` to every handler currently configured (idempotent)."""
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for logger in loggers:
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
