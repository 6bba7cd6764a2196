"""Redaction of URLs, free text, registered secrets, and log records (messages and tracebacks)."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Iterator

import pytest

from recovery.config.loader import parse_config
from recovery.redact import MASK, RedactingFilter, redact, redact_url, register_secret, register_secrets


def unique(prefix: str) -> str:
    # Registered secrets are process-wide; unique values keep tests independent of each other.
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # URLs the config never named (a driver's own message): the whole userinfo goes.
        ("postgresql://u:S3cret@h:5432/db", "postgresql://***@h:5432/db"),
        ("postgresql+psycopg://recovery:pw@audit.unlisted/a", "postgresql+psycopg://***@audit.unlisted/a"),
        ("redis://:hunter22@cache:6379/0", "redis://***@cache:6379/0"),
        ("rediss://default:abc@cache:6380", "rediss://***@cache:6380"),
        (
            "connect to postgresql://u:pw1@h1/db failed, fallback redis://:pw2@h2/0 too",
            "connect to postgresql://***@h1/db failed, fallback redis://***@h2/0 too",
        ),
        ("http://ghp_T0ken@host/path", "http://***@host/path"),  # a lone username can be a token
        ("http://host:8080/path", "http://host:8080/path"),  # port is not a password
        ("", ""),
    ],
)
def test_url_passwords_in_text(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://h/x?token=abc&page=2", "https://h/x?token=***&page=2"),
        ("https://h/x?page=2&api_key=k1", "https://h/x?page=2&api_key=***"),
        ("https://h/x?X-Amz-Signature=ff00&a=1", "https://h/x?X-Amz-Signature=***&a=1"),
        ("https://h/x?PASSWORD=p&sig=s", "https://h/x?PASSWORD=***&sig=***"),
        ("https://h/x?access_token=t#frag", "https://h/x?access_token=***#frag"),
        ("GET /cb?auth=xyz HTTP/1.1", "GET /cb?auth=*** HTTP/1.1"),
        ("https://h/x?page=2&sort=name", "https://h/x?page=2&sort=name"),
    ],
)
def test_sensitive_query_params(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # Only scheme://host:port survives; "***@": credentials given, "/***": path/query/fragment given.
        ("postgresql://u:S3cret@h/db?sslmode=require", "postgresql://***@h/***"),
        ("https://h/x?token=abc&page=2", "https://h/***"),
        ("https://api.example.com:8443/hooks/T0KEN?jwt=a&session=b#frag", "https://api.example.com:8443/***"),
        ("https://h?session=abc", "https://h/***"),
        ("https://h#frag", "https://h/***"),
        ("redis://127.0.0.1:6379/1", "redis://127.0.0.1:6379/***"),
        ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
        ("http://h/", "http://h"),
        ("http://[::1]:8080/x", "http://[::1]:8080/***"),
        # A password holding '@', '#' or '?' (redis-py splits at the last '@') is never shown.
        ("redis://:p@ss@h:6379/0", "redis://***@h:6379/***"),
        ("redis://:pa#ss?w@h:6379/0", "redis://***@h:6379/***"),
        ("unix:///run/redis.sock?db=2", "unix:///***"),
        ("not a url", "***"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("sqlite:///recovery.db", "sqlite:///recovery.db"),
        ("sqlite:////tmp/audit/a.db", "sqlite:///…/a.db"),
        ("sqlite+pysqlite:///var/x.db?mode=ro", "sqlite+pysqlite:///…/x.db?***"),
        ("sqlite://", "sqlite://"),
    ],
)
def test_redact_url_shows_only_the_sqlite_file_name(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_config_urls_are_cut_in_free_text_and_their_parts_masked() -> None:
    token, jwt, session, frag, pw = (unique(p) for p in ("Path", "Jwt", "Sess", "Frag", "Pw"))
    url = f"https://svc:{pw}@api.canary.test:8443/hooks/{token}/x?jwt={jwt}&session={session}#{frag}"
    parse_config({"targets": [{"name": "api", "kind": "http", "url": url}]})  # registers it
    # The whole URL (also on another path of that host:port) -> the redact_url form.
    assert redact(f"GET {url} failed.") == "GET https://***@api.canary.test:8443/*** failed."
    assert redact("redirected to https://api.canary.test:8443/login?next=1") == (
        "redirected to https://api.canary.test:8443/***"
    )
    # Parts on their own (a server echoing the path, a client naming a parameter's value).
    text = f"404 for /hooks/{token}/x; jwt {jwt} expired; session={session}; #{frag}; {pw}"
    out = redact(text)
    assert not any(s in out for s in (token, jwt, session, frag, pw)), out
    # Another server's URL (the Prefect UI) keeps its path: links stay useful.
    assert (
        redact("see http://prefect.test:4200/runs/flow-run/1")
        == "see http://prefect.test:4200/runs/flow-run/1"
    )


def test_url_parts_are_masked_as_whole_tokens_only() -> None:
    value = unique("require")  # a query value must not eat the longer words it prefixes
    parse_config(
        {
            "targets": [
                {
                    "name": "db",
                    "kind": "database",
                    "url": f"postgresql://{unique('h')}.test/db?sslmode={value}",
                }
            ]
        }
    )
    assert redact(f"mode {value}: {value}d") == f"mode ***: {value}d"
    name = unique("orders")  # a path "/<name>": not inside a longer path, not right after "//"
    parse_config(
        {"targets": [{"name": "db", "kind": "database", "url": f"postgresql://{unique('h')}.test/{name}"}]}
    )
    assert redact(f"db /{name}; file /var/lib/{name}/x.db") == f"db ***; file /var/lib/{name}/x.db"
    assert redact(f"dsn postgresql://{name}:pw@elsewhere/x") == "dsn postgresql://***@elsewhere/x"


def test_password_containing_at_sign_is_fully_masked() -> None:
    password = unique("p@ss")
    parse_config({"state_url": f"redis://:{password}@cache.internal:6379/0"})  # registers it
    assert password.split("@", 1)[1] not in redact(f"cannot reach redis://:{password}@cache.internal:6379/0")


def test_registered_secrets_masked_anywhere() -> None:
    short = unique("Tok")
    longer = short + "Extended"
    register_secrets([short, longer, None])
    # Longest first: the longer secret is masked whole, not left with a visible tail.
    assert redact(f"a={longer} b={short}") == f"a={MASK} b={MASK}"
    assert redact(f"'{short}' rejected") == f"'{MASK}' rejected"


def test_very_short_secrets_not_registered() -> None:
    register_secret("abc")
    assert redact("abc abcdef") == "abc abcdef"


@pytest.fixture
def redacting_logger() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(f"test.redact.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_filter_redacts_message_args(redacting_logger: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = redacting_logger
    secret = unique("Known")
    register_secret(secret)
    logger.warning("connecting to %s with key %s (attempt %d)", "postgresql://u:Pw123@h/db", secret, 2)
    out = stream.getvalue()
    assert out == "WARNING connecting to postgresql://***@h/db with key *** (attempt 2)\n"


def test_filter_redacts_traceback(redacting_logger: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = redacting_logger
    canary = unique("TbCanary")
    try:
        raise ConnectionError(f"could not connect to postgresql://svc:{canary}@audit.unlisted.internal/audit")
    except ConnectionError:
        logger.exception("audit write failed for %s", "redis://:AlsoSecret@r/0")
    out = stream.getvalue()
    assert "Traceback (most recent call last)" in out
    assert "ConnectionError: could not connect to postgresql://***@audit.unlisted.internal/audit" in out
    assert canary not in out
    assert "AlsoSecret" not in out
    assert out.startswith("ERROR audit write failed for redis://***@r/0\n")


def test_filter_survives_bad_format_string(redacting_logger: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = redacting_logger
    logger.error("broken %d format with postgresql://u:pw9@h/db", "not-a-number")
    assert stream.getvalue() == "ERROR broken %d format with postgresql://***@h/db\n"
