"""Bound mode binds the server (issue 24 item 2, spec/delegation.md §6 rule 4).

Before signing, a bound-mode device checks that the server Certificate in the transcript is for
the server its DelegationRequest named: the leaf's subjectAltName matches server_name by the
rules of RFC 6125 §6 and, when the device was configured with a pin, the leaf carries the
pinned key (RFC 7469 §2.4). The transcripts come from real handshakes of our client (as a
compromised agent, with an external signer) with our server using certificates made by
``d2tls pki`` and by the ``openssl`` command line; the end-to-end tests use real UDP sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from conftest import SERVER_NAME, LoadedPKI, Run, client_config, server_config
from d2tls.core.delegation.messages import (
    DelegationError,
    DelegationErrorCode,
    DelegationMode,
    SignResponse,
)
from d2tls.core.dtls.events import SignatureRequested
from d2tls.core.dtls.messages import Certificate
from d2tls.core.errors import CertificateError
from d2tls.core.pki.names import names_server, spki_sha256, subject_alt_names
from d2tls.core.pki.verify import load_certificate_chain, load_private_key, load_trust_store
from d2tls.core.resources import proofs_dir
from d2tls.core.roles.device import DelegationAttempt, DelegationFailed
from d2tls.core.roles.signer import SigningRefused, check_server_certificate
from d2tls.prove.consistency import check_theories
from openssl_pki import WRONG_NAME_EXT, OpenSSLPKI
from test_d2tls import run, running_stack
from test_device_policy import last_error, make_protocol, sign_request


def pin_of(der: bytes) -> bytes:
    """The RFC 7469 pin, computed independently of d2tls.core.pki.names."""
    key = x509.load_der_x509_certificate(der).public_key()
    return hashlib.sha256(
        key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    ).digest()


def transcript_with(
    pki: LoadedPKI,
    client_random: bytes | None,
    chain: tuple[bytes, ...],
    key: ec.EllipticCurvePrivateKey,
    *,
    trust: x509.verification.Store | None = None,
    name: str = SERVER_NAME,
) -> SignatureRequested:
    """A compromised agent's handshake with a server presenting ``chain`` (verified for
    ``name`` by the agent's engine), up to the CertificateVerify."""
    run_ = Run(
        server_config(pki, certificate_chain=chain, private_key=key),
        client_config(
            pki,
            private_key=None,
            client_random=client_random,
            server_name=name,
            trust_store=trust or pki.store,
        ),
    )
    run_.handshake(max_time=30)
    [asked] = [e for e in run_.client_events if isinstance(e, SignatureRequested)]
    return asked


@pytest.fixture(scope="module")
def opki(tmp_path_factory: pytest.TempPathFactory) -> OpenSSLPKI:
    pki = OpenSSLPKI(tmp_path_factory.mktemp("openssl-pki"))
    pki.wrong_name = pki.issue("wrong-name", "other.example", WRONG_NAME_EXT)  # type: ignore[attr-defined]
    return pki


# ------------------------------------------------------------------- RFC 6125 name matching


def test_names_of_a_d2tls_pki_server_certificate(pki: LoadedPKI) -> None:
    leaf = pki.server.chain[0]
    dns, ips = subject_alt_names(leaf)
    assert SERVER_NAME in dns
    assert names_server(leaf, "localhost")
    assert names_server(leaf, "LOCALHOST.")  # RFC 6125 §6.4.1: case-insensitive, root dot
    assert not names_server(leaf, "other.example")
    assert not names_server(leaf, "sub.localhost")
    for address in ips:
        assert names_server(leaf, str(address))


def test_names_of_openssl_made_certificates(opki: OpenSSLPKI) -> None:
    server = load_certificate_chain(opki.server.cert)[0]  # DNS:localhost,IP:127.0.0.1,IP:::1
    assert names_server(server, "localhost")
    assert names_server(server, "127.0.0.1")
    assert names_server(server, "::1") and names_server(server, "[::1]")
    assert not names_server(server, "127.0.0.2")
    wrong = load_certificate_chain(opki.wrong_name.cert)[0]  # type: ignore[attr-defined]
    assert names_server(wrong, "other.example")
    assert not names_server(wrong, "localhost")
    device = load_certificate_chain(opki.device.cert)[0]  # CN=sensor-42, no SAN
    assert not names_server(device, "sensor-42")  # the subject CN is never used


@pytest.mark.parametrize(
    ("san", "name", "matches"),
    [
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "A.Example.COM", True),
        ("*.example.com", "example.com", False),  # the wildcard needs one label
        ("*.example.com", "a.b.example.com", False),  # ... and exactly one
        ("*.com", "example.com", False),  # no wildcard over a single label
        ("a*.example.com", "ab.example.com", False),  # only a whole left-most label
        ("x.*.example.com", "x.y.example.com", False),
        ("*.example.com", "127.0.0.1", False),
    ],
)
def test_wildcards_follow_rfc_6125(pki: LoadedPKI, san: str, name: str, matches: bool) -> None:
    leaf = pki.issue("wild", client=False, names=(san,)).chain[0]
    assert names_server(leaf, name) is matches


def test_undecodable_server_certificate_is_a_typed_refusal(pki: LoadedPKI) -> None:
    with pytest.raises(CertificateError):
        names_server(b"\x30\x03\x02\x01\x01", SERVER_NAME)
    body = Certificate((b"\x30\x82\xff\xff garbage",)).encode()
    with pytest.raises(SigningRefused, match="unusable server certificate"):
        check_server_certificate(body, SERVER_NAME, None)
    with pytest.raises(SigningRefused, match="empty"):
        check_server_certificate(Certificate(()).encode(), SERVER_NAME, None)


def test_pin_is_the_sha256_of_the_subject_public_key_info(pki: LoadedPKI) -> None:
    leaf = pki.server.chain[0]
    assert spki_sha256(leaf) == pin_of(leaf)


# ------------------------------------------------------------------- the device's refusal


def assert_refused(protocol: DelegationAttempt, fragment: str) -> None:
    error = last_error(protocol)
    assert error.code is DelegationErrorCode.SIGNING_REFUSED
    assert fragment in error.reason
    assert protocol.state == "failed"
    assert protocol.config.signer.signatures == 0
    assert not any(isinstance(m, SignResponse) for m in protocol.outbox)


def test_device_refuses_a_d2tls_pki_certificate_for_another_server(pki: LoadedPKI) -> None:
    """The agent ran the handshake with a server whose valid certificate (same CA) names
    another server: the device asked for localhost and does not sign."""
    protocol, request = make_protocol(pki, DelegationMode.BOUND)
    other = pki.issue("other server", client=False, names=("other.example",))
    asked = transcript_with(
        pki, request.client_random, other.chain, other.key, name="other.example"
    )
    protocol.receive(sign_request(request, asked))
    assert_refused(protocol, "is not for 'localhost', the server this device asked for")


def test_device_refuses_an_openssl_made_certificate_for_another_server(
    pki: LoadedPKI, opki: OpenSSLPKI
) -> None:
    protocol, request = make_protocol(pki, DelegationMode.BOUND)
    wrong = opki.wrong_name  # type: ignore[attr-defined]
    asked = transcript_with(
        pki,
        request.client_random,
        tuple(load_certificate_chain(wrong.cert)),
        load_private_key(wrong.key),
        trust=load_trust_store(opki.ca.cert),
        name="other.example",
    )
    protocol.receive(sign_request(request, asked))
    assert_refused(protocol, "is not for 'localhost'")


def test_device_signs_an_openssl_made_certificate_for_its_server(
    pki: LoadedPKI, opki: OpenSSLPKI
) -> None:
    protocol, request = make_protocol(pki, DelegationMode.BOUND)
    asked = transcript_with(
        pki,
        request.client_random,
        tuple(load_certificate_chain(opki.server.cert)),
        load_private_key(opki.server.key),
        trust=load_trust_store(opki.ca.cert),
    )
    protocol.receive(sign_request(request, asked))
    [response] = protocol.outbox
    assert isinstance(response, SignResponse)


def test_device_does_not_verify_the_chain_unless_pinned(pki: LoadedPKI) -> None:
    """What the check does not give: a certificate for the requested name from a CA the device
    never heard of passes the name check (chain verification is the agent's job); a pin stops it."""
    forged = pki.issue("forged", client=False, names=(SERVER_NAME,), other_ca=True)
    for pin, signed in ((None, True), (pin_of(pki.server.chain[0]), False)):
        protocol, request = make_protocol(pki, DelegationMode.BOUND)
        protocol.config.server_pin = pin
        asked = transcript_with(
            pki, request.client_random, forged.chain, forged.key, trust=pki.other_store
        )
        protocol.receive(sign_request(request, asked))
        if signed:
            assert isinstance(protocol.outbox[-1], SignResponse)
        else:
            assert_refused(protocol, "does not carry the pinned key")


def test_blind_device_cannot_check_the_server(pki: LoadedPKI) -> None:
    """Blind mode gets no transcript: it signs the digest of a handshake with any server."""
    protocol, request = make_protocol(pki, DelegationMode.BLIND)
    other = pki.issue("other server", client=False, names=("other.example",))
    asked = transcript_with(pki, None, other.chain, other.key, name="other.example")
    protocol.receive(sign_request(request, asked, transcript=None))
    assert isinstance(protocol.outbox[-1], SignResponse)


# ------------------------------------------------------------------- end to end, real UDP


def test_pinned_bound_device_delegates_and_resumes(pki: LoadedPKI) -> None:
    async def scenario() -> None:
        async with running_stack(pki) as stack:
            device = stack.device(server_pin=pin_of(pki.server.chain[0]))
            connection = await device.connect()
            connection.send(b"ping")
            assert await connection.receive() == b"ping"
            assert connection.report.key_operations["sign"] == 1
            await connection.close()

    run(scenario)


def test_wrong_pin_refuses_and_tells_the_agent(pki: LoadedPKI) -> None:
    """The device reports the refusal and the agent receives SIGNING_REFUSED with the reason."""

    async def scenario() -> None:
        async with running_stack(pki) as stack:
            other = pki.issue("unrelated", client=False, names=(SERVER_NAME,))
            device = stack.device(server_pin=pin_of(other.chain[0]))
            with pytest.raises(DelegationFailed, match="pinned key"):
                await device.connect()
            for _ in range(100):  # the agent reads the device's last message asynchronously
                if any(isinstance(m, DelegationError) for m in stack.received_by_agent):
                    break
                await asyncio.sleep(0.02)
            errors = [m for m in stack.received_by_agent if isinstance(m, DelegationError)]
            assert [e.code for e in errors] == [DelegationErrorCode.SIGNING_REFUSED]
            assert "pinned key" in errors[0].reason
            assert device.config.signer.signatures == 0

    run(scenario)


# ------------------------------------------------------------------- the theory models it


def test_consistency_check_fails_when_the_theory_unbinds_the_server(tmp_path: Path) -> None:
    """The spec↔theory check compares the guard's content: a Device_Sign_Bound that accepts
    any server Certificate (the theory before issue 24 item 2) is reported."""
    theory = proofs_dir() / "d2tls_dtls12.spthy"
    assert check_theories([theory]).ok
    text = theory.read_text(encoding="utf-8")
    bound = "rule Device_Sign_Bound:\n  let log = <<'ClientHello', cr>, <'ServerHello', sr, sid>,"
    assert text.count(bound) == 1
    unbound = tmp_path / theory.name
    start = text.index(bound) + len(bound)
    assert text[start:].startswith(" <'Certificate', S>")
    unbound.write_text(text[:start] + " <'Certificate', Sx>" + text[start + 19 :])
    report = check_theories([unbound])
    assert not report.ok
    [problem] = report.guard_content
    assert "Device_Sign_Bound" in problem and "'Sx', not the requested server 'S'" in problem
