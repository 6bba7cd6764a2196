"""The probe batch's HTTP transport (aiohttp directly): connection reuse and limits, the cycle
deadline for probes never started, redirects, TLS verification. Real servers on loopback."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ssl
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from faultserver import FaultApp, FaultServer, Receive, Scope, Send

from recovery.config.loader import HttpTarget
from recovery.engine.probing import PROBE_TIMED_OUT, probe_targets


def http(name: str, url: str, **overrides: Any) -> HttpTarget:
    return HttpTarget.model_validate({"kind": "http", "name": name, "url": url, **overrides})


class ConnectionCountingApp(FaultApp):
    """FaultApp that remembers the client port of every request: one port, one connection."""

    def __init__(self) -> None:
        super().__init__()
        self.client_ports: set[int] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("client"):
            self.client_ports.add(scope["client"][1])
        await super().__call__(scope, receive, send)


async def test_connections_are_kept_alive_and_bounded_by_concurrency() -> None:
    with FaultServer(app=ConnectionCountingApp()) as server:
        app = server.app
        assert isinstance(app, ConnectionCountingApp)
        targets = [http(f"t{i}", f"{server.url}/health") for i in range(60)]
        results = await probe_targets(targets, concurrency=5)
        assert [r.reason for r in results] == ["ok"] * 60
        assert app.requests["/health"] == 60
        # 60 requests over at most 5 connections: keep-alive reuses them, the limit bounds them.
        assert 1 <= len(app.client_ports) <= 5, app.client_ports


async def test_probes_not_started_by_the_deadline_are_timed_out(fault_server: FaultServer) -> None:
    # One worker: the first probe hangs past the batch deadline, the other two never start.
    targets = [http(f"h{i}", f"{fault_server.url}/hang", timeout_seconds=5) for i in range(3)]
    started = time.perf_counter()
    results = await probe_targets(targets, concurrency=1, timeout=0.3)
    assert time.perf_counter() - started < 2.0
    assert [(r.target, r.healthy, r.reason) for r in results] == [
        (f"h{i}", False, PROBE_TIMED_OUT) for i in range(3)
    ]
    assert fault_server.app.requests["/hang"] == 1


async def test_redirects_are_not_followed(fault_server: FaultServer) -> None:
    [result] = await probe_targets([http("api", f"{fault_server.url}/status/302")])
    assert (result.healthy, result.reason, result.status) == (False, "status 302", 302)


async def test_url_credentials_replace_a_configured_authorization_header(fault_server: FaultServer) -> None:
    # httpx's auth= replaced the header; aiohttp would send both or refuse: one Basic header only.
    fault_server.app.basic_auth = "svc:pw"
    url = f"http://svc:pw@127.0.0.1:{fault_server.port}/private/x"
    target = http("api", url, headers={"authorization": "Bearer stale", "X-Probe": "1"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # aiohttp's auth= is deprecated: a warning per probe
        [result] = await probe_targets([target])
    assert (result.healthy, result.reason) == (True, "ok")
    assert fault_server.app.authorizations == ["Basic " + base64.b64encode(b"svc:pw").decode()]


def _self_signed(directory: Path) -> ssl.SSLContext:
    """A server context with a throwaway self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


@pytest.fixture
async def tls_port(tmp_path: Path) -> AsyncIterator[int]:
    """A TLS server on loopback whose certificate no CA vouches for; it answers 200 if reached."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client refused the handshake: what the test expects
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=_self_signed(tmp_path))
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_tls_certificates_are_verified_and_the_reason_shows_no_url(tls_port: int) -> None:
    url = f"https://svc:s3cret-pw@127.0.0.1:{tls_port}/v1/T0KEN-path?jwt=abc"
    [result] = await probe_targets([http("tls", url, timeout_seconds=5)])
    assert (result.healthy, result.status) == (False, None)
    assert result.reason == "connection error: ClientConnectorCertificateError"
    for secret in ("s3cret-pw", "T0KEN-path", "jwt=abc", str(tls_port)):
        assert secret not in result.reason
