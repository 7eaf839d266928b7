"""Strict device mode: the device verifies the ServerKeyExchange signature itself (issue 24 item 3).

A bound device checks the names in the transcript but trusts the agent for the server's
ECDHE share; a strict device also verifies the ServerKeyExchange signature (RFC 8422 §5.4)
under the pinned server key or a chain it verifies itself. The transcripts are real
handshakes of our client (as the agent, with an external signer) with our server, using
certificates made by ``d2tls pki`` and by the ``openssl`` command line. The theory's
counterpart is ``server_authentication_full_strict`` (verified with a compromised agent) and
``server_authentication_full_bound`` (falsified).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from conftest import SERVER_NAME, LoadedPKI
from d2tls.core.clock import FixedClock, utc_now, wall_time
from d2tls.core.delegation.messages import DelegationMode, SignResponse
from d2tls.core.dtls.constants import HandshakeType
from d2tls.core.dtls.events import SignatureRequested
from d2tls.core.dtls.fragments import parse_handshake_fragments
from d2tls.core.dtls.messages import ServerKeyExchangeECDHE
from d2tls.core.pki.verify import load_certificate_chain, load_private_key, load_trust_store
from d2tls.core.roles.signer import (
    SigningRefused,
    check_bound_transcript,
    check_server_key_exchange,
)
from openssl_pki import OpenSSLPKI
from test_device_policy import last_error, make_protocol, sign_request
from test_server_binding import pin_of, transcript_with


def now() -> datetime:
    """The wall clock at the call: certificates made by a fixture are valid from their making."""
    return utc_now(wall_time)


@pytest.fixture(scope="module")
def opki(tmp_path_factory: pytest.TempPathFactory) -> OpenSSLPKI:
    return OpenSSLPKI(tmp_path_factory.mktemp("openssl-pki-strict"))


def server_key_exchange(transcript: bytes) -> ServerKeyExchangeECDHE:
    [body] = [
        m.body
        for m in parse_handshake_fragments(transcript)
        if m.msg_type == HandshakeType.SERVER_KEY_EXCHANGE
    ]
    return ServerKeyExchangeECDHE.decode(body)


def with_agents_share(asked: SignatureRequested) -> SignatureRequested:
    """The compromised agent's substitution: the genuine server flight, but an ECDHE share of
    its own in the ServerKeyExchange (same length, the server's signature left as it was)."""
    point = server_key_exchange(asked.transcript).public_point
    own = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    assert len(own) == len(point) and asked.transcript.count(point) == 1
    transcript = asked.transcript.replace(point, own)
    return replace(asked, transcript=transcript, digest=hashlib.sha256(transcript).digest())


def test_genuine_transcript_verifies_with_a_pin_in_one_ecdsa_verify(pki: LoadedPKI) -> None:
    asked = transcript_with(pki, None, pki.server.chain, pki.server.key)
    pin = pin_of(pki.server.chain[0])
    assert check_server_key_exchange(asked.transcript, SERVER_NAME, server_pin=pin) == 1


def test_genuine_transcript_verifies_against_the_chain(pki: LoadedPKI) -> None:
    asked = transcript_with(pki, None, pki.server.chain, pki.server.key)
    verifies = check_server_key_exchange(
        asked.transcript, SERVER_NAME, trust_store=pki.store, now=now()
    )
    assert verifies == len(pki.server.chain) + 1


def test_openssl_made_server_certificate_verifies_against_its_ca(
    opki: OpenSSLPKI, pki: LoadedPKI
) -> None:
    chain = tuple(load_certificate_chain(opki.server.cert))
    trust = load_trust_store(opki.ca.cert)
    asked = transcript_with(pki, None, chain, load_private_key(opki.server.key), trust=trust)
    check_server_key_exchange(asked.transcript, SERVER_NAME, trust_store=trust, now=now())
    with pytest.raises(SigningRefused, match="chain does not verify"):
        check_server_key_exchange(asked.transcript, SERVER_NAME, trust_store=pki.store, now=now())


def test_substituted_share_passes_the_bound_checks_but_not_strict(pki: LoadedPKI) -> None:
    """What strict adds: the bound checks (random, names, pin) all pass on a transcript whose
    ECDHE share the server never signed; the ServerKeyExchange verify refuses it."""
    _, request = make_protocol(pki, DelegationMode.BOUND)
    assert request.client_random is not None
    asked = with_agents_share(
        transcript_with(pki, request.client_random, pki.server.chain, pki.server.key)
    )
    pin = pin_of(pki.server.chain[0])
    check_bound_transcript(
        asked.transcript, asked.digest, request.client_random, pki.device.chain, SERVER_NAME, pin
    )
    for kwargs in ({"server_pin": pin}, {"trust_store": pki.store, "now": now()}):
        with pytest.raises(SigningRefused, match="ServerKeyExchange signature does not verify"):
            check_server_key_exchange(asked.transcript, SERVER_NAME, **kwargs)


def test_forged_certificate_for_the_name_is_refused_without_a_pin(pki: LoadedPKI) -> None:
    """A certificate for the requested name from a CA the device does not trust: the bound
    name check passes, the strict chain verification does not."""
    forged = pki.issue("forged-strict", client=False, names=(SERVER_NAME,), other_ca=True)
    asked = transcript_with(pki, None, forged.chain, forged.key, trust=pki.other_store)
    with pytest.raises(SigningRefused, match="chain does not verify"):
        check_server_key_exchange(asked.transcript, SERVER_NAME, trust_store=pki.store, now=now())
    with pytest.raises(SigningRefused, match="pinned key"):
        check_server_key_exchange(
            asked.transcript, SERVER_NAME, server_pin=pin_of(pki.server.chain[0])
        )


def test_strict_needs_a_pin_or_a_trust_store(pki: LoadedPKI) -> None:
    asked = transcript_with(pki, None, pki.server.chain, pki.server.key)
    with pytest.raises(SigningRefused, match="needs a pinned server key or a trust store"):
        check_server_key_exchange(asked.transcript, SERVER_NAME)


@pytest.mark.parametrize("garbage", [b"", b"\x0c" + bytes(11), bytes(40)])
def test_hostile_transcript_is_a_typed_refusal(garbage: bytes) -> None:
    with pytest.raises(SigningRefused):
        check_server_key_exchange(garbage, SERVER_NAME, server_pin=bytes(32))


def test_strict_device_signs_genuine_and_refuses_substituted(pki: LoadedPKI) -> None:
    for substitute in (False, True):
        protocol, request = make_protocol(pki, DelegationMode.BOUND)
        protocol.config.strict = True
        protocol.config.server_trust_store = pki.store
        protocol.config.wall_clock = FixedClock(now().timestamp())
        asked = transcript_with(pki, request.client_random, pki.server.chain, pki.server.key)
        if substitute:
            asked = with_agents_share(asked)
        protocol.receive(sign_request(request, asked))
        if substitute:
            assert "ServerKeyExchange signature does not verify" in last_error(protocol).reason
            assert protocol.config.signer.signatures == 0
        else:
            assert isinstance(protocol.outbox[-1], SignResponse)
            assert protocol.config.signer.signatures == 1


def test_strict_blind_device_refuses_to_sign(pki: LoadedPKI) -> None:
    protocol, request = make_protocol(pki, DelegationMode.BLIND)
    protocol.config.strict = True
    asked = transcript_with(pki, None, pki.server.chain, pki.server.key)
    protocol.receive(sign_request(request, asked, transcript=None))
    assert "strict mode needs bound mode" in last_error(protocol).reason
