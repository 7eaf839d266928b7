"""OCSP responder and client (d2tls.net.ocsp, RFC 6960) over real loopback sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d2tls.core.errors import ConfigurationError, D2TLSError
from d2tls.core.pki.generate import PKIPaths, init_pki, issue_certificate
from d2tls.core.pki.verify import load_private_key
from d2tls.net import ocsp as ocsp_module
from d2tls.net.ocsp import (
    OCSPError,
    OCSPResponder,
    OCSPResult,
    OCSPStatus,
    RevocationList,
    check_ocsp,
    revoke_certificate,
)

DER = serialization.Encoding.DER
Status = ocsp.OCSPResponseStatus


@dataclass(frozen=True)
class Env:
    """A fresh PKI directory with its CA, server certificate and the unrelated CA loaded."""

    paths: PKIPaths
    ca: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    server: x509.Certificate
    other_ca: x509.Certificate
    other_key: ec.EllipticCurvePrivateKey

    @property
    def revocations(self) -> Path:
        return self.paths.directory / "revoked.json"

    def responder(self, **kwargs: Any) -> OCSPResponder:
        return OCSPResponder(self.ca, self.ca_key, self.revocations, **kwargs)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _make_env(directory: Path) -> Env:
    paths = init_pki(directory, devices=1)
    return Env(
        paths=paths,
        ca=_cert(paths.ca_cert),
        ca_key=load_private_key(paths.ca_key),
        server=_cert(paths.server_cert),
        other_ca=_cert(paths.other_ca_cert),
        other_key=load_private_key(paths.other_ca_key),
    )


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return _make_env(tmp_path / "pki")


@pytest.fixture(scope="module")
def shared_env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return _make_env(tmp_path_factory.mktemp("ocsp-pki"))


def _port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


@asynccontextmanager
async def serving(responder: OCSPResponder, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Run ``responder`` on an ephemeral port; yield its URL."""
    server = await responder.serve(host, 0)
    url = f"http://[{host}]:{_port(server)}" if ":" in host else f"http://{host}:{_port(server)}"
    try:
        yield url
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def fake_responder(
    reply: Callable[[bytes], bytes] | bytes,
    *,
    status: str = "200 OK",
    content_type: str = "application/ocsp-response",
) -> AsyncIterator[str]:
    """A hand-made HTTP server answering every POST with ``reply`` (bytes or f(request))."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.decode("latin-1").split("\r\n"):
            if line.lower().startswith("content-length:"):
                length = int(line.split(":")[1])
        body = await reader.readexactly(length)
        payload = reply(body) if callable(reply) else reply
        writer.write(
            f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{_port(server)}/"
    finally:
        server.close()
        await server.wait_closed()


def run(coro: Awaitable[Any]) -> Any:
    async def main() -> Any:
        return await coro

    return asyncio.run(main())


async def raw_http(url: str, data: bytes) -> bytes:
    """Send raw bytes to the server at ``url``; return everything it answers until EOF."""
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    writer.write(data)
    await writer.drain()
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    return answer


def _request(cert: x509.Certificate, issuer: x509.Certificate, **kw: Any) -> bytes:
    algorithm = kw.pop("algorithm", hashes.SHA1())
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm)
    if "nonce" in kw:
        builder = builder.add_extension(x509.OCSPNonce(kw["nonce"]), critical=False)
    return builder.build().public_bytes(DER)


def _issue(env: Env, *, other: bool = False, **kw: Any) -> x509.Certificate:
    ca, key = (env.other_ca, env.other_key) if other else (env.ca, env.ca_key)
    cert, _ = issue_certificate(ca, key, "extra", server_names=["extra.test"], client=True, **kw)
    return cert


def _signed_response(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    signer: x509.Certificate,
    signer_key: ec.EllipticCurvePrivateKey,
    *,
    this_update: datetime | None = None,
    next_update: datetime | str | None = "default",
    certs: list[x509.Certificate] | None = None,
) -> bytes:
    now = datetime.now(UTC).replace(microsecond=0)
    start = this_update if this_update is not None else now
    end = start + timedelta(hours=1) if next_update == "default" else next_update
    assert not isinstance(end, str)
    builder = (
        ocsp.OCSPResponseBuilder()
        .add_response(cert, issuer, hashes.SHA1(), ocsp.OCSPCertStatus.GOOD, start, end, None, None)
        .responder_id(ocsp.OCSPResponderEncoding.HASH, signer)
    )
    if certs:
        builder = builder.certificates(certs)
    return builder.sign(signer_key, hashes.SHA256()).public_bytes(DER)


def _responder_cert(env: Env, *, eku: bool = True, other: bool = False) -> tuple[Any, Any]:
    """A delegated OCSP responder certificate (RFC 6960 §4.2.2.2) and its key."""
    ca, ca_key = (env.other_ca, env.other_key) if other else (env.ca, env.ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    usages = [ExtendedKeyUsageOID.OCSP_SIGNING if eku else ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ocsp responder")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size, "big") + content


def _basic_response(tbs: bytes, signature: bytes) -> bytes:
    """A successful OCSPResponse around ``tbs`` with an arbitrary ECDSA-SHA256 signature."""
    ecdsa_sha256 = _der(0x30, _der(0x06, bytes.fromhex("2a8648ce3d040302")))
    basic = _der(0x30, tbs + ecdsa_sha256 + _der(0x03, b"\x00" + signature))
    id_pkix_ocsp_basic = _der(0x06, bytes.fromhex("2b0601050507300101"))
    response_bytes = _der(0xA0, _der(0x30, id_pkix_ocsp_basic + _der(0x04, basic)))
    return _der(0x30, _der(0x0A, b"\x00") + response_bytes)


def _loaded(der: bytes) -> ocsp.OCSPResponse:
    return ocsp.load_der_ocsp_response(der)


# --------------------------------------------------------------------------- status


def test_good_certificate(env: Env) -> None:
    async def main() -> OCSPResult:
        async with serving(env.responder()) as url:
            return await check_ocsp(env.server, env.ca, url)

    result = run(main())
    now = datetime.now(UTC)
    assert result.status is OCSPStatus.GOOD
    assert result.revocation_reason is None and result.revocation_time is None
    assert result.this_update <= now + timedelta(seconds=1)
    assert result.next_update is not None
    assert timedelta(minutes=59) < result.next_update - result.this_update <= timedelta(hours=1)


def test_revocation_takes_effect_without_restart(env: Env) -> None:
    async def main() -> tuple[OCSPResult, OCSPResult, OCSPResult]:
        device = _cert(env.paths.devices[0].cert)
        async with serving(env.responder()) as url:
            before = await check_ocsp(env.server, env.ca, url)
            serial = revoke_certificate(env.paths.directory, env.paths.server_cert)
            assert serial == env.server.serial_number
            after = await check_ocsp(env.server, env.ca, url)
            other = await check_ocsp(device, env.ca, url)
            return before, after, other

    before, after, other = run(main())
    assert before.status is OCSPStatus.GOOD
    assert after.status is OCSPStatus.REVOKED
    assert after.revocation_reason == "keyCompromise"
    assert after.revocation_time is not None
    assert after.revocation_time <= datetime.now(UTC)
    assert other.status is OCSPStatus.GOOD
    data = json.loads(env.revocations.read_text())
    assert data["revoked"][format(env.server.serial_number, "x")]["reason"] == "keyCompromise"


def test_revocation_reason_superseded_and_unspecified(env: Env) -> None:
    revoke_certificate(env.paths.directory, env.paths.server_cert, "superseded")
    device_path = env.paths.devices[0].cert
    revoke_certificate(env.paths.directory, device_path, "unspecified")
    responder = env.responder()
    server = _loaded(responder.respond(_request(env.server, env.ca)))
    assert server.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert server.revocation_reason is x509.ReasonFlags.superseded
    device = _loaded(responder.respond(_request(_cert(device_path), env.ca)))
    assert device.certificate_status is ocsp.OCSPCertStatus.REVOKED
    assert device.revocation_reason is None  # RFC 5280 §5.3.1: omit "unspecified"


def test_other_ca_certificate_is_unauthorized(env: Env) -> None:
    foreign = _issue(env, other=True)
    direct = _loaded(env.responder().respond(_request(foreign, env.other_ca)))
    assert direct.response_status is Status.UNAUTHORIZED

    async def main() -> None:
        async with serving(env.responder()) as url:
            await check_ocsp(foreign, env.other_ca, url)

    with pytest.raises(OCSPError, match="unauthorized"):
        run(main())


def test_unknown_serial_with_issuance_record(env: Env) -> None:
    issued = {env.server.serial_number}

    async def main() -> tuple[OCSPResult, OCSPResult]:
        async with serving(env.responder(known_serials=issued.__contains__)) as url:
            known = await check_ocsp(env.server, env.ca, url)
            unknown = await check_ocsp(_issue(env), env.ca, url)
            return known, unknown

    known, unknown = run(main())
    assert known.status is OCSPStatus.GOOD
    assert unknown.status is OCSPStatus.UNKNOWN


def test_other_certid_hashes_and_nonce(shared_env: Env) -> None:
    responder = shared_env.responder()
    for algorithm in (hashes.SHA256(), hashes.SHA384(), hashes.SHA512(), hashes.SHA224()):
        response = _loaded(
            responder.respond(_request(shared_env.server, shared_env.ca, algorithm=algorithm))
        )
        assert response.response_status is Status.SUCCESSFUL
        assert response.hash_algorithm.name == algorithm.name
        assert response.serial_number == shared_env.server.serial_number
    nonce = os.urandom(16)
    response = _loaded(responder.respond(_request(shared_env.server, shared_env.ca, nonce=nonce)))
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    plain = _loaded(responder.respond(_request(shared_env.server, shared_env.ca)))
    assert len(plain.extensions) == 0
    assert plain.responder_key_hash is not None and plain.certificates == []


# --------------------------------------------------------------------------- client checks


class TamperingResponder(OCSPResponder):
    """Flips the last byte of every response (the end of the ECDSA signature)."""

    def respond(self, request_der: bytes) -> bytes:
        good = bytearray(super().respond(request_der))
        good[-1] ^= 0x01
        return bytes(good)


def test_tampered_signature_is_rejected(env: Env) -> None:
    async def main() -> None:
        tamper = TamperingResponder(env.ca, env.ca_key, env.revocations)
        async with serving(tamper) as url:
            await check_ocsp(env.server, env.ca, url)

    with pytest.raises(OCSPError, match="signature"):
        run(main())


def test_response_signed_by_another_key_is_rejected(env: Env) -> None:
    # Claims to be the CA (byKey of the CA) but is signed with the unrelated CA's key.
    genuine = _loaded(_signed_response(env.server, env.ca, env.ca, env.ca_key))
    forged = _basic_response(
        genuine.tbs_response_bytes,
        env.other_key.sign(genuine.tbs_response_bytes, ec.ECDSA(hashes.SHA256())),
    )
    assert _loaded(forged).tbs_response_bytes == genuine.tbs_response_bytes
    foreign = _signed_response(env.server, env.ca, env.other_ca, env.other_key)

    async def main(payload: bytes) -> None:
        async with fake_responder(payload) as url:
            await check_ocsp(env.server, env.ca, url)

    with pytest.raises(OCSPError, match="signature does not verify"):
        run(main(forged))
    with pytest.raises(OCSPError, match="neither by the issuer"):
        run(main(foreign))


def test_delegated_responder(env: Env) -> None:
    async def main(payload: bytes) -> OCSPResult:
        async with fake_responder(payload) as url:
            return await check_ocsp(env.server, env.ca, url)

    delegate, key = _responder_cert(env)
    ok = _signed_response(env.server, env.ca, delegate, key, certs=[delegate])
    assert run(main(ok)).status is OCSPStatus.GOOD

    no_eku, key = _responder_cert(env, eku=False)
    bad = _signed_response(env.server, env.ca, no_eku, key, certs=[no_eku])
    with pytest.raises(OCSPError, match="OCSPSigning"):
        run(main(bad))

    foreign, key = _responder_cert(env, other=True)
    bad = _signed_response(env.server, env.ca, foreign, key, certs=[foreign])
    with pytest.raises(OCSPError, match="not issued by"):
        run(main(bad))

    delegate, key = _responder_cert(env)
    missing = _signed_response(env.server, env.ca, delegate, key)  # certificate not attached
    with pytest.raises(OCSPError, match="neither by the issuer"):
        run(main(missing))


def test_certid_mismatch_is_rejected(env: Env) -> None:
    device = _cert(env.paths.devices[0].cert)
    other_serial = _signed_response(device, env.ca, env.ca, env.ca_key)

    async def main() -> None:
        async with fake_responder(other_serial) as url:
            await check_ocsp(env.server, env.ca, url)

    with pytest.raises(OCSPError, match="CertID"):
        run(main())


def test_stale_and_future_responses(env: Env) -> None:
    async def main(**kw: Any) -> OCSPResult:
        async with serving(env.responder()) as url:
            return await check_ocsp(env.server, env.ca, url, **kw)

    now = datetime.now(UTC)
    with pytest.raises(OCSPError, match="stale"):
        run(main(now=now + timedelta(hours=2)))
    with pytest.raises(OCSPError, match="future"):
        run(main(now=now - timedelta(minutes=10)))
    # Within the 5 minutes of tolerated skew.
    assert run(main(now=now - timedelta(minutes=4))).status is OCSPStatus.GOOD
    assert run(main(now=now + timedelta(minutes=59))).status is OCSPStatus.GOOD


def test_response_without_next_update(env: Env) -> None:
    fresh = _signed_response(env.server, env.ca, env.ca, env.ca_key, next_update=None)

    async def main(**kw: Any) -> OCSPResult:
        async with fake_responder(fresh) as url:
            return await check_ocsp(env.server, env.ca, url, **kw)

    result = run(main())
    assert result.status is OCSPStatus.GOOD and result.next_update is None
    with pytest.raises(OCSPError, match="stale"):
        run(main(now=datetime.now(UTC) + timedelta(minutes=30)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reply": b""}, "malformed"),
        ({"reply": b"\x30\x03\x0a\x01\x00"}, "malformed"),
        ({"reply": b"x", "status": "500 Internal Server Error"}, "HTTP 500"),
        ({"reply": b"x", "content_type": "text/html"}, "Content-Type"),
        (
            {
                "reply": ocsp.OCSPResponseBuilder.build_unsuccessful(Status.TRY_LATER).public_bytes(
                    DER
                )
            },
            "try_later",
        ),
        (
            {
                "reply": ocsp.OCSPResponseBuilder.build_unsuccessful(
                    Status.MALFORMED_REQUEST
                ).public_bytes(DER)
            },
            "malformed_request",
        ),
    ],
)
def test_bad_responder_answers(shared_env: Env, kwargs: dict[str, Any], message: str) -> None:
    async def main() -> None:
        reply = kwargs.pop("reply")
        async with fake_responder(reply, **kwargs) as url:
            await check_ocsp(shared_env.server, shared_env.ca, url)

    with pytest.raises(OCSPError, match=message):
        run(main())


def test_responder_not_listening_fails_fast(shared_env: Env) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(OCSPError, match="unreachable"):
        run(check_ocsp(shared_env.server, shared_env.ca, f"http://127.0.0.1:{port}/"))
    assert time.monotonic() - start < 2


def test_silent_responder_times_out(shared_env: Env) -> None:
    async def main() -> None:
        done = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await done.wait()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        try:
            url = f"http://127.0.0.1:{_port(server)}/"
            await check_ocsp(shared_env.server, shared_env.ca, url, timeout=0.3)
        finally:
            done.set()
            server.close()
            await server.wait_closed()

    start = time.monotonic()
    with pytest.raises(OCSPError, match="timed out"):
        run(main())
    assert time.monotonic() - start < 3


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://127.0.0.1:1/", "not http"),
        ("http://192.0.2.1:8080/", "not a loopback"),
        ("http://example.com/", "not a loopback"),
        ("http://user:pw@127.0.0.1:1/", "credentials"),
        ("http://127.0.0.1:99999/", "invalid OCSP URL"),
        ("http:///nohost", "no host"),
    ],
)
def test_url_policy(shared_env: Env, url: str, message: str) -> None:
    with pytest.raises(OCSPError, match=message):
        run(check_ocsp(shared_env.server, shared_env.ca, url))


def test_wrong_issuer_is_refused_before_sending(shared_env: Env) -> None:
    with pytest.raises(OCSPError, match="not issued by"):
        run(check_ocsp(shared_env.server, shared_env.other_ca, "http://127.0.0.1:1/"))


def test_localhost_name_and_ipv6(shared_env: Env) -> None:
    async def main() -> list[OCSPStatus]:
        statuses = []
        async with serving(shared_env.responder()) as url:
            port = urllib.parse.urlsplit(url).port
            result = await check_ocsp(shared_env.server, shared_env.ca, f"http://localhost:{port}")
            statuses.append(result.status)
        if socket.has_ipv6:
            try:
                async with serving(shared_env.responder(), "::1") as url6:
                    result = await check_ocsp(shared_env.server, shared_env.ca, url6 + "/ocsp")
                    statuses.append(result.status)
            except OSError:
                pass  # no IPv6 loopback here
        return statuses

    assert set(run(main())) == {OCSPStatus.GOOD}


# --------------------------------------------------------------------------- HTTP server


JUNK = [
    (b"garbage\r\n\r\n", 400),
    (b"\x00\xff\xfe binary \r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /!!!notbase64 HTTP/1.1\r\n\r\n", 400),
    (b"POST / HTTP/2.0\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nbad header line\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Type: application/ocsp-request\r\n\r\n", 411),
    (
        b"POST / HTTP/1.1\r\nContent-Type: application/ocsp-request\r\nContent-Length: x\r\n\r\n",
        400,
    ),
    (
        b"POST / HTTP/1.1\r\nContent-Type: application/ocsp-request\r\n"
        b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n",
        400,
    ),
    (
        b"POST / HTTP/1.1\r\nContent-Type: application/ocsp-request\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        400,
    ),
    (b"POST / HTTP/1.1\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx", 415),
    (
        b"POST / HTTP/1.1\r\nContent-Type: application/ocsp-request\r\n"
        b"Content-Length: 65537\r\n\r\n",
        413,
    ),
    (b"PUT / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
    (b"GET /" + b"A" * 20000 + b" HTTP/1.1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\n" + b"X-A: b\r\n" * 100 + b"\r\n", 400),
]


def test_junk_http_gets_errors_and_server_keeps_serving(env: Env) -> None:
    async def main() -> tuple[list[bytes], OCSPResult]:
        answers = []
        async with serving(env.responder()) as url:
            for data, _ in JUNK:
                answers.append(await raw_http(url, data))
            # a client that connects and leaves at once, and one that sends half a body
            await raw_http(url, b"")
            await raw_http(
                url,
                b"POST / HTTP/1.0\r\nContent-Type: application/ocsp-request\r\n"
                b"Content-Length: 100\r\n\r\nabc",
            )
            return answers, await check_ocsp(env.server, env.ca, url)

    answers, result = run(main())
    for (_, code), answer in zip(JUNK, answers, strict=True):
        status_line = answer.split(b"\r\n", 1)[0]
        assert status_line.startswith(f"HTTP/1.1 {code} ".encode()), (code, answer[:80])
        assert b"Connection: close" in answer
    assert result.status is OCSPStatus.GOOD


def test_slow_client_gets_408(shared_env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ocsp_module, "HTTP_READ_TIMEOUT", 0.2)

    async def main() -> tuple[bytes, OCSPResult]:
        async with serving(shared_env.responder()) as url:
            parts = urllib.parse.urlsplit(url)
            reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
            writer.write(b"POST / HTTP/1.1\r\nContent-Type: app")  # ...and nothing more
            answer = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return answer, await check_ocsp(shared_env.server, shared_env.ca, url)

    answer, result = run(main())
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert result.status is OCSPStatus.GOOD


def test_ocsp_level_errors_are_http_200(shared_env: Env) -> None:
    async def main() -> bytes:
        async with serving(shared_env.responder()) as url:
            return await raw_http(
                url,
                b"POST / HTTP/1.0\r\nContent-Type: application/ocsp-request\r\n"
                b"Content-Length: 4\r\n\r\njunk",
            )

    head, _, body = run(main()).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Type: application/ocsp-response" in head
    assert _loaded(body).response_status is Status.MALFORMED_REQUEST


def test_get_request(shared_env: Env) -> None:
    request = _request(shared_env.server, shared_env.ca)
    target = urllib.parse.quote(base64.b64encode(request).decode(), safe="")

    async def main() -> bytes:
        async with serving(shared_env.responder()) as url:
            return await raw_http(url, f"GET /{target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())

    head, _, body = run(main()).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    response = _loaded(body)
    assert response.response_status is Status.SUCCESSFUL
    assert response.certificate_status is ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == shared_env.server.serial_number


# --------------------------------------------------------------------------- hostile input


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=600))
def test_random_bytes_give_malformed_request(shared_env: Env, data: bytes) -> None:
    answer = shared_env.responder().respond(data)
    assert _loaded(answer).response_status is Status.MALFORMED_REQUEST


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_mutated_requests_never_raise(shared_env: Env, data: st.DataObject) -> None:
    request = bytearray(_request(shared_env.server, shared_env.ca, nonce=b"n" * 16))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(request) - 1))
        request[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(request)))
    answer = _loaded(shared_env.responder().respond(bytes(request[:cut])))
    assert answer.response_status in {
        Status.SUCCESSFUL,
        Status.MALFORMED_REQUEST,
        Status.UNAUTHORIZED,
    }


# --------------------------------------------------------------------------- revocation file


def test_revocation_list_round_trip(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "revoked.json"
    empty = RevocationList.load(path)
    assert len(empty) == 0 and empty.is_revoked(env.server.serial_number) is None
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    empty.revoke(env.server, x509.ReasonFlags.certificate_hold, when=when)
    empty.revoke(env.server, x509.ReasonFlags.key_compromise)  # keeps the first time
    empty.save(path)
    loaded = RevocationList.load(path)
    entry = loaded.is_revoked(env.server.serial_number)
    assert entry is not None
    assert entry.time == when and entry.reason is x509.ReasonFlags.key_compromise
    with pytest.raises(ConfigurationError, match="removeFromCRL"):
        loaded.revoke(env.server, x509.ReasonFlags.remove_from_crl)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "{}",
        '{"revoked": []}',
        '{"revoked": {"zz": {"time": "2030-01-01T00:00:00+00:00", "reason": "keyCompromise"}}}',
        '{"revoked": {"0": {"time": "2030-01-01T00:00:00+00:00", "reason": "keyCompromise"}}}',
        '{"revoked": {"1a": {"time": "yesterday", "reason": "keyCompromise"}}}',
        '{"revoked": {"1a": {"time": "2030-01-01T00:00:00+00:00", "reason": "bored"}}}',
        '{"revoked": {"1a": {"time": "2030-01-01T00:00:00+00:00"}}}',
    ],
)
def test_corrupt_revocation_list(env: Env, text: str) -> None:
    env.revocations.write_text(text)
    with pytest.raises(ConfigurationError):
        RevocationList.load(env.revocations)
    # The responder fails closed: internalError, never "good".
    answer = _loaded(env.responder().respond(_request(env.server, env.ca)))
    assert answer.response_status is Status.INTERNAL_ERROR


def test_revoke_certificate_checks(env: Env) -> None:
    foreign = env.paths.directory / "foreign.der"
    foreign.write_bytes(_issue(env, other=True).public_bytes(DER))
    with pytest.raises(ConfigurationError, match="not issued by the CA"):
        revoke_certificate(env.paths.directory, foreign)
    with pytest.raises(ConfigurationError, match="unknown revocation reason"):
        revoke_certificate(env.paths.directory, env.paths.server_cert, "bored")
    with pytest.raises(ConfigurationError, match="cannot read"):
        revoke_certificate(env.paths.directory, env.paths.directory / "missing.pem")
    der = env.paths.directory / "server.der"
    der.write_bytes(env.server.public_bytes(DER))
    assert revoke_certificate(env.paths.directory, der, "cessationOfOperation") == (
        env.server.serial_number
    )
    assert not env.revocations.with_name(".revoked.json.tmp").exists()
    assert [p.name for p in env.paths.directory.glob(".revoked.json.*")] == []


def test_responder_refuses_mismatched_key(env: Env) -> None:
    with pytest.raises(ConfigurationError, match="does not match"):
        OCSPResponder(env.ca, env.other_key, env.revocations)
    with pytest.raises(ConfigurationError, match="positive"):
        OCSPResponder(env.ca, env.ca_key, env.revocations, timedelta(0))


def test_error_hierarchy() -> None:
    assert issubclass(OCSPError, D2TLSError)


# --------------------------------------------------------------------------- CLI entry point


def test_run_ocsp_responder_forever_in_a_process(env: Env) -> None:
    code = (
        "import sys; from pathlib import Path; "
        "from d2tls.net.ocsp import run_ocsp_responder_forever as r; "
        "r(Path(sys.argv[1]), '127.0.0.1', 0)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(env.paths.directory)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        prefix = "OCSP responder listening on http://127.0.0.1:"
        assert line.startswith(prefix), line + (proc.stdout.read() if proc.poll() else "")
        url = "http://127.0.0.1:" + line[len(prefix) :]
        assert run(check_ocsp(env.server, env.ca, url)).status is OCSPStatus.GOOD
        revoke_certificate(env.paths.directory, env.paths.server_cert)
        assert run(check_ocsp(env.server, env.ca, url)).status is OCSPStatus.REVOKED
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


# --------------------------------------------------------------------------- openssl interop


@pytest.mark.interop
def test_openssl_ocsp_client(env: Env) -> None:
    assert shutil.which("openssl"), "openssl is missing: scripts/setup.sh installs it"
    d = env.paths.directory

    async def openssl(url: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "openssl",
            "ocsp",
            "-issuer",
            str(d / "ca.pem"),
            "-cert",
            str(d / "server.pem"),
            "-url",
            url,
            "-CAfile",
            str(d / "ca.pem"),
            "-resp_text",
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, out.decode()
        return out.decode()

    async def main() -> tuple[str, str]:
        async with serving(env.responder()) as url:
            good = await openssl(url)
            revoke_certificate(d, env.paths.server_cert, "keyCompromise")
            return good, await openssl(url)

    good, revoked = run(main())
    assert "Response verify OK" in good
    assert f"{d / 'server.pem'}: good" in good
    assert "OCSP Nonce" in good  # openssl sends a nonce; we echo it (RFC 6960 §4.4.1)
    assert "Response verify OK" in revoked
    assert f"{d / 'server.pem'}: revoked" in revoked
    assert "Reason: keyCompromise" in revoked
