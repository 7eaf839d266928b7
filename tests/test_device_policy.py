"""The device's signing policy (DESIGN.md §2, spec/delegation.md).

A device signs only while its delegation request is open, at most once per request. In bound
mode it signs only a transcript that starts with a ClientHello carrying its own random, carries
its own certificate, ends with the ClientKeyExchange and hashes to the digest it is given.
The transcripts here come from real handshakes between our client (as the agent, with an
external signer) and our server in the simulated network.
"""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from conftest import SERVER_NAME, LoadedPKI, Run, client_config, server_config
from d2tls.core.delegation.messages import (
    DelegationError,
    DelegationErrorCode,
    DelegationMode,
    DelegationRequest,
    SessionContext,
    SignRequest,
    SignResponse,
    Wiped,
)
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.dtls.events import SignatureRequested
from d2tls.core.roles.device import Command, DelegationAttempt, DeviceConfig
from d2tls.core.roles.signer import DeviceSigner


def make_protocol(
    pki: LoadedPKI, mode: DelegationMode
) -> tuple[DelegationAttempt, DelegationRequest]:
    config = DeviceConfig(
        agent=("127.0.0.1", 1),
        psk_identity=b"device-1",
        psk=bytes(32),
        server=("127.0.0.1", 2),
        server_name=SERVER_NAME,
        certificate_chain=pki.device.chain,
        signer=DeviceSigner(pki.device.key),
        mode=mode,
    )
    protocol = DelegationAttempt(config, context=None, first_request_id=41)
    protocol.start()
    assert list(protocol.commands) == [Command.OPEN_CHANNEL]
    protocol.channel_up()
    [request] = protocol.outbox
    protocol.outbox.clear()
    assert isinstance(request, DelegationRequest)
    return protocol, request


def agent_transcript(pki: LoadedPKI, client_random: bytes | None) -> SignatureRequested:
    """Run the agent's side of a real handshake up to CertificateVerify."""
    run = Run(
        server_config(pki),
        client_config(pki, private_key=None, client_random=client_random),
    )
    run.handshake(max_time=30)
    [request] = [e for e in run.client_events if isinstance(e, SignatureRequested)]
    return request


def sign_request(
    request: DelegationRequest, asked: SignatureRequested, **overrides: object
) -> SignRequest:
    fields: dict[str, object] = {
        "request_id": request.request_id,
        "digest": asked.digest,
        "transcript": asked.transcript,
    }
    fields.update(overrides)
    return SignRequest(**fields)  # type: ignore[arg-type]


def last_error(protocol: DelegationAttempt) -> DelegationError:
    errors = [m for m in protocol.outbox if isinstance(m, DelegationError)]
    assert errors, protocol.outbox
    return errors[-1]


def test_bound_mode_signs_its_own_handshake(pki: LoadedPKI) -> None:
    protocol, request = make_protocol(pki, DelegationMode.BOUND)
    asked = agent_transcript(pki, request.client_random)
    protocol.receive(sign_request(request, asked))
    [response] = protocol.outbox
    assert isinstance(response, SignResponse)
    pki.device.key.public_key().verify(
        response.signature, asked.transcript, ec.ECDSA(hashes.SHA256())
    )
    assert protocol.state == "awaiting_context"
    assert protocol.config.signer.signatures == 1


def test_bound_mode_refuses_a_transcript_without_its_random(pki: LoadedPKI) -> None:
    """A compromised agent cannot use the device as an oracle for another handshake."""
    protocol, request = make_protocol(pki, DelegationMode.BOUND)
    foreign = agent_transcript(pki, client_random=None)  # the agent chose the random
    protocol.receive(sign_request(request, foreign))
    error = last_error(protocol)
    assert error.code is DelegationErrorCode.SIGNING_REFUSED
    assert "random" in error.reason
    assert protocol.state == "failed"
    assert protocol.config.signer.signatures == 0


def test_bound_mode_refuses_messages_that_do_not_match_the_hash(pki: LoadedPKI) -> None:
    protocol, request = make_protocol(pki, DelegationMode.BOUND)
    asked = agent_transcript(pki, request.client_random)
    other_digest = hashlib.sha256(b"another handshake").digest()
    protocol.receive(sign_request(request, asked, digest=other_digest))
    error = last_error(protocol)
    assert error.code is DelegationErrorCode.SIGNING_REFUSED
    assert "hash" in error.reason
    assert protocol.config.signer.signatures == 0


def test_bound_mode_refuses_a_truncated_transcript(pki: LoadedPKI) -> None:
    protocol, request = make_protocol(pki, DelegationMode.BOUND)
    asked = agent_transcript(pki, request.client_random)
    cut = asked.transcript[:-20]
    protocol.receive(
        sign_request(request, asked, transcript=cut, digest=hashlib.sha256(cut).digest())
    )
    assert last_error(protocol).code is DelegationErrorCode.SIGNING_REFUSED
    assert protocol.config.signer.signatures == 0


def test_bound_mode_refuses_a_sign_request_without_the_transcript(pki: LoadedPKI) -> None:
    protocol, request = make_protocol(pki, DelegationMode.BOUND)
    asked = agent_transcript(pki, request.client_random)
    protocol.receive(sign_request(request, asked, transcript=None))
    assert last_error(protocol).code is DelegationErrorCode.SIGNING_REFUSED


def test_a_second_sign_request_for_the_same_request_is_refused(pki: LoadedPKI) -> None:
    protocol, request = make_protocol(pki, DelegationMode.BOUND)
    asked = agent_transcript(pki, request.client_random)
    protocol.receive(sign_request(request, asked))
    protocol.receive(sign_request(request, asked))
    assert last_error(protocol).code is DelegationErrorCode.SIGNING_REFUSED
    assert "already signed" in last_error(protocol).reason
    assert protocol.config.signer.signatures == 1
    assert protocol.state == "failed"


def test_blind_mode_signs_the_digest_it_is_given(pki: LoadedPKI) -> None:
    """The paper's behaviour: the device cannot tell which handshake it signs."""
    protocol, request = make_protocol(pki, DelegationMode.BLIND)
    assert request.client_random is None
    digest = hashlib.sha256(b"any handshake at all").digest()
    protocol.receive(SignRequest(request.request_id, digest, None))
    [response] = protocol.outbox
    assert isinstance(response, SignResponse)
    pki.device.key.public_key().verify(
        response.signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))
    )


def test_no_signature_without_an_open_request(pki: LoadedPKI) -> None:
    """Before the DelegationRequest, or for another request ID, the device signs nothing."""
    protocol, request = make_protocol(pki, DelegationMode.BLIND)
    protocol.receive(SignRequest(request.request_id + 1, bytes(32), None))
    assert last_error(protocol).code is DelegationErrorCode.UNEXPECTED_MESSAGE
    assert protocol.config.signer.signatures == 0


@pytest.mark.parametrize(
    "message",
    [
        lambda r: SessionContext(
            r.request_id,
            b"\x01" * 32,
            bytes(48),
            int(CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8),
            True,
            (),
            3600,
            0,
        ),
        lambda r: Wiped(r.request_id),
        lambda r: SignResponse(r.request_id, b"\x30" * 70),
    ],
    ids=["context-before-signing", "wiped-before-context", "sign-response-to-device"],
)
def test_messages_out_of_order_end_the_delegation(pki: LoadedPKI, message: object) -> None:
    """spec/d2tls.yaml: a message with no transition is answered with UNEXPECTED_MESSAGE."""
    protocol, request = make_protocol(pki, DelegationMode.BOUND)
    protocol.receive(message(request))  # type: ignore[operator]
    assert last_error(protocol).code is DelegationErrorCode.UNEXPECTED_MESSAGE
    assert protocol.state == "failed"


def test_garbage_from_the_agent_is_malformed(pki: LoadedPKI) -> None:
    protocol, _ = make_protocol(pki, DelegationMode.BOUND)
    protocol.receive_bytes(b"\xa1\x00\x63abc")
    assert last_error(protocol).code in (
        DelegationErrorCode.MALFORMED,
        DelegationErrorCode.UNSUPPORTED,
    )
    assert protocol.state == "failed"


def test_context_without_ems_is_refused(pki: LoadedPKI) -> None:
    protocol, request = make_protocol(pki, DelegationMode.BLIND)
    protocol.receive(SignRequest(request.request_id, bytes(32), None))
    protocol.outbox.clear()
    protocol.receive(
        SessionContext(
            request.request_id,
            b"\x01" * 32,
            bytes(48),
            int(CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8),
            False,
            (),
            3600,
            0,
        )
    )
    assert last_error(protocol).code is DelegationErrorCode.UNSUPPORTED
    assert protocol.context is None
