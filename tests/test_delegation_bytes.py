"""Fewer bytes on the device's links (issue 23 item 2, spec/delegation.md §5.2 and §6).

- The agent's chain cache: a device sends its chain once, then its certificate_chain_hash; a
  hash the agent does not hold is answered UNKNOWN_CHAIN and the device sends the full chain
  again, once, in the same delegation; the policy judges the chain a hash stands for exactly as
  a sent chain; the cache is bounded.
- The compact bound-mode transcript: the device rebuilds the exact transcript and every §6
  rule still refuses its violations (the made-up violations of d2tls.prove.roles_check, and a
  real agent handshake).
- The SessionContext carries no server chain.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import SERVER_NAME, LoadedPKI
from d2tls.core.delegation.chain_cache import AgentChainCache, DeviceChainMemo
from d2tls.core.delegation.compact import (
    client_certificate_body,
    compact_transcript,
    rebuild_transcript,
)
from d2tls.core.delegation.messages import (
    DelegationError,
    DelegationErrorCode,
    DelegationMessage,
    DelegationMode,
    DelegationRequest,
    SignRequest,
    SignResponse,
    chain_hash,
)
from d2tls.core.delegation.policy import AgentPolicy, DeviceEntry
from d2tls.core.dtls.constants import HandshakeType
from d2tls.core.dtls.messages import Certificate
from d2tls.core.errors import D2TLSError
from d2tls.core.pki.verify import load_certificate_chain
from d2tls.core.roles.agent import AgentConfig, AgentSession
from d2tls.core.roles.device import DelegationAttempt, DeviceConfig
from d2tls.core.roles.signer import (
    DeviceSigner,
    SigningRefused,
    bound_transcript,
    check_bound_transcript,
)
from d2tls.prove.roles_check import SERVER_NAME as RULES_SERVER
from d2tls.prove.roles_check import VIOLATIONS, Handshake, good_handshake
from test_agent_policy import (  # the agent/server stack on loopback
    NoHandshake,
    request,
    run,
    start,
    stop,
    two_devices,
)
from test_device_policy import agent_transcript, last_error, make_protocol

__all__ = ["two_devices"]  # a fixture, imported so that pytest finds it here

UNKNOWN_CHAIN = DelegationErrorCode.UNKNOWN_CHAIN


# --------------------------------------------------------------------------- compact transcript
def _bound_request(chain: tuple[bytes, ...], random: bytes) -> DelegationRequest:
    return DelegationRequest(
        request_id=5,
        server_host="127.0.0.1",
        server_port=4433,
        server_name=SERVER_NAME,
        cipher_suites=(0xC0AE,),
        certificate_chain=chain,
        mode=DelegationMode.BOUND,
        client_random=random,
    )


def _device_checks(
    good: Handshake,
    compact: bytes,
    digest: bytes | None = None,
    held: bytes | None = None,
    pin: bytes | None = None,
) -> bytes:
    """What the device of ``good`` does with a compact SignRequest: rebuild (with the server
    Certificate body ``held`` if it sent its hash), then every §6 rule. ``digest`` None: the
    SHA-256 of the rebuilt transcript (rule 1 holds)."""
    req = _bound_request(good.chain, good.client_random)
    if held is not None:
        req = dataclasses.replace(req, server_certificate_hash=hashlib.sha256(held).digest())
    message = SignRequest(5, b"\x00" * 32, compact_transcript=compact)
    transcript = bound_transcript(message, good.chain, req, held)
    check_bound_transcript(
        transcript,
        hashlib.sha256(transcript).digest() if digest is None else digest,
        good.client_random,
        good.chain,
        RULES_SERVER,
        pin,
    )
    return transcript


def _as_an_agent_would_compact(
    good: Handshake, transcript: bytes, held: bytes | None = None
) -> bytes:
    """The compact form of ``transcript``; where the agent's own function gives none (no
    device Certificate right before a final ClientKeyExchange), a hostile agent sends the
    transcript as it is in the compact field."""
    body = client_certificate_body(good.chain, None)
    wanted = hashlib.sha256(held).digest() if held is not None else None
    return compact_transcript(transcript, body, wanted) or transcript


def _server_body(good: Handshake) -> bytes:
    return Certificate((good.server_cert,)).encode()


def test_a_held_server_certificate_is_left_out_and_put_back() -> None:
    good = good_handshake()
    held = _server_body(good)
    full = good.transcript()
    plain = compact_transcript(full, client_certificate_body(good.chain, None))
    shorter = compact_transcript(
        full, client_certificate_body(good.chain, None), hashlib.sha256(held).digest()
    )
    assert plain is not None and shorter is not None
    assert len(plain) - len(shorter) == 12 + len(held)
    assert _device_checks(good, shorter, held=held) == full
    assert _device_checks(good, plain, held=held) == full  # sent anyway: nothing put back
    # Another certificate held: the agent's hash does not match, so it sends its own.
    other = Certificate((good.other_cert,)).encode()
    assert (
        compact_transcript(
            full, client_certificate_body(good.chain, None), hashlib.sha256(other).digest()
        )
        == plain
    )


def test_a_put_back_server_certificate_is_checked_like_a_sent_one() -> None:
    good = good_handshake()
    held = _server_body(good)
    shorter = compact_transcript(
        good.transcript(), client_certificate_body(good.chain, None), hashlib.sha256(held).digest()
    )
    assert shorter is not None
    # The agent's real handshake had another certificate: the digest it got is not over the
    # transcript the device rebuilds (rule 1).
    forged = Certificate((good.other_cert,)).encode()
    with pytest.raises(SigningRefused, match="does not hash"):
        _device_checks(good, shorter, hashlib.sha256(b"other handshake").digest(), held)
    # A device that holds a certificate for another name gets it refused by rule 6.
    with pytest.raises(SigningRefused, match="not for"):
        _device_checks(good, shorter, held=forged)
    # A pin configured since: rule 6 applies it to the certificate put back.
    with pytest.raises(SigningRefused, match="pinned"):
        _device_checks(good, shorter, held=held, pin=b"\x00" * 32)


def test_the_good_transcript_compacts_and_rebuilds_exactly() -> None:
    good = good_handshake()
    full = good.transcript()
    compact = compact_transcript(full, Certificate(good.chain).encode())
    assert compact is not None
    assert len(full) - len(compact) == 12 + len(Certificate(good.chain).encode())
    assert rebuild_transcript(compact, good.chain, None) == full
    assert _device_checks(good, compact) == full


VIOLATION_CASES = [
    pytest.param(number, what, make, id=f"rule {number}: {what}")
    for number, cases in sorted(VIOLATIONS.items())
    for what, make in cases
]


@pytest.mark.parametrize("holds_server_certificate", [False, True])
@pytest.mark.parametrize(("number", "what", "make"), VIOLATION_CASES)
def test_every_rule_still_refuses_its_violations_in_compact_form(
    number: int, what: str, make: Any, holds_server_certificate: bool
) -> None:
    """The agent hashes what it claims (digest None: the device's rebuilt bytes, so only the
    rule under test can fail); with or without the device holding the good server
    Certificate (the agent then leaves out a server Certificate with that hash)."""
    good = good_handshake()
    held = _server_body(good) if holds_server_certificate else None
    transcript, digest = make(good)
    compact = _as_an_agent_would_compact(good, transcript, held)
    if what == "no client Certificate":
        # Cannot be said in compact form: the device puts its own Certificate back, so what
        # it signs holds exactly its chain (rule 4 holds by construction).
        signed = _messages_of(_device_checks(good, compact, held=held))
        certificates = [body for kind, _, body in signed if kind == HandshakeType.CERTIFICATE]
        assert Certificate.decode(certificates[1]).certificates == good.chain
        assert signed[-2][0] == HandshakeType.CERTIFICATE
        return
    with pytest.raises(SigningRefused):
        _device_checks(good, compact, digest, held)


def _messages_of(transcript: bytes) -> list[tuple[int, int, bytes]]:
    from d2tls.core.dtls.fragments import parse_handshake_fragments

    return [(m.msg_type, m.message_seq, m.body) for m in parse_handshake_fragments(transcript)]


def _encode(messages: list[tuple[int, int, bytes]]) -> bytes:
    from d2tls.core.dtls.messages import encode_handshake

    return b"".join(encode_handshake(kind, seq, body) for kind, seq, body in messages)


@pytest.mark.parametrize(
    ("what", "edit"),
    [
        # The device's Certificate left in: the rebuilt transcript has three Certificates.
        ("the device's Certificate not left out", lambda m: m),
        ("a ClientKeyExchange with message_seq 0", lambda m: [*m[:-2], (m[-1][0], 0, m[-1][2])]),
        ("no ClientKeyExchange last", lambda m: m[:-2]),
        ("a second device Certificate put elsewhere", lambda m: [m[0], m[-2], *m[1:-2], m[-1]]),
    ],
)
def test_hostile_compact_forms_are_refused(what: str, edit: Any) -> None:
    good = good_handshake()
    messages = _messages_of(good.transcript())
    with pytest.raises(SigningRefused):
        _device_checks(good, _encode(edit(messages)))


@pytest.mark.parametrize("garbage", [b"\x00", b"\x10" + b"\xff" * 11, b"\x10\x00\x00\x05"])
def test_undecodable_compact_transcripts_are_a_typed_refusal(garbage: bytes) -> None:
    good = good_handshake()
    with pytest.raises(SigningRefused, match="cannot be rebuilt"):
        _device_checks(good, garbage)
    with pytest.raises(D2TLSError):  # CompactTranscriptError or DecodeError, never IndexError
        rebuild_transcript(garbage, good.chain, None)


def test_the_agent_sends_the_full_transcript_when_it_cannot_compact() -> None:
    good = good_handshake()
    other = Certificate((good.other_cert,)).encode()
    assert compact_transcript(good.transcript(), other) is None
    assert compact_transcript(b"\x00", other) is None


def test_a_real_agent_handshake_signed_from_its_compact_form(pki: LoadedPKI) -> None:
    protocol, req = make_protocol(pki, DelegationMode.BOUND)
    asked = agent_transcript(pki, req.client_random)
    compact = compact_transcript(asked.transcript, Certificate(pki.device.chain).encode())
    assert compact is not None and len(compact) < len(asked.transcript)
    protocol.receive(SignRequest(req.request_id, asked.digest, compact_transcript=compact))
    [response] = protocol.outbox
    assert isinstance(response, SignResponse)
    # The signature is over the full transcript the server hashes (RFC 5246 §7.4.8).
    pki.device.key.public_key().verify(
        response.signature, asked.transcript, ec.ECDSA(hashes.SHA256())
    )


def test_a_compact_transcript_with_another_digest_is_refused(pki: LoadedPKI) -> None:
    protocol, req = make_protocol(pki, DelegationMode.BOUND)
    asked = agent_transcript(pki, req.client_random)
    compact = compact_transcript(asked.transcript, Certificate(pki.device.chain).encode())
    protocol.receive(SignRequest(req.request_id, b"\x01" * 32, compact_transcript=compact))
    error = last_error(protocol)
    assert error.code is DelegationErrorCode.SIGNING_REFUSED
    assert protocol.config.signer.signatures == 0


# --------------------------------------------------------------------------- chain cache
def test_cache_is_bounded_per_identity_and_in_identities() -> None:
    cache = AgentChainCache(per_identity=2, identities=2)
    chains = [(bytes([i]) * 10,) for i in range(3)]
    digests = [cache.put(b"a", chain) for chain in chains]
    assert cache.get(b"a", digests[0]) is None  # least recently used went first
    assert cache.get(b"a", digests[2]) == chains[2]
    assert cache.get(b"b", digests[2]) is None  # per identity: another PSK cannot use it
    cache.put(b"b", chains[0])
    cache.put(b"c", chains[0])
    assert cache.get(b"a", digests[2]) is None  # identity "a" was the oldest
    assert len(cache) == 2
    with pytest.raises(ValueError):
        AgentChainCache(per_identity=0)


def test_chain_hash_is_the_certificate_list_digest(pki: LoadedPKI) -> None:
    body = Certificate(pki.device.chain).encode()
    assert chain_hash(pki.device.chain) == hashlib.sha256(body[3:]).digest()


def test_device_retries_unknown_chain_once_with_the_full_chain(pki: LoadedPKI) -> None:
    memo = DeviceChainMemo(held=True)
    protocol, req = _attempt_with(pki, memo)
    assert req.certificate_chain == () and req.certificate_chain_hash == chain_hash(
        pki.device.chain
    )
    protocol.receive(DelegationError(req.request_id, UNKNOWN_CHAIN, "send it"))
    [again] = protocol.outbox
    assert isinstance(again, DelegationRequest)
    assert again.certificate_chain == pki.device.chain and again.certificate_chain_hash is None
    assert again.request_id == req.request_id + 1  # a request_id is never reused (§6)
    assert dataclasses.replace(again, request_id=req.request_id, certificate_chain=()) == (
        dataclasses.replace(req, certificate_chain_hash=None)
    )
    assert not memo.held and not protocol.is_final
    protocol.outbox.clear()
    # The agent answers UNKNOWN_CHAIN to a full chain: not retried again, the delegation ends.
    protocol.receive(DelegationError(again.request_id, UNKNOWN_CHAIN, "confused agent"))
    assert protocol.is_final and protocol.outbox == []
    assert protocol.error is not None and "unknown_chain" in protocol.error


def test_no_retry_after_a_sign_request(pki: LoadedPKI) -> None:
    protocol, req = _attempt_with(pki, DeviceChainMemo(held=True), DelegationMode.BLIND)
    protocol.receive(SignRequest(req.request_id, b"d" * 32))
    protocol.outbox.clear()
    protocol.receive(DelegationError(req.request_id, UNKNOWN_CHAIN, "too late"))
    assert protocol.is_final
    assert not any(isinstance(m, DelegationRequest) for m in protocol.outbox)


def test_a_sign_request_for_a_full_chain_teaches_the_device(pki: LoadedPKI) -> None:
    memo = DeviceChainMemo()
    protocol, req = _attempt_with(pki, memo, DelegationMode.BLIND)
    assert req.certificate_chain == pki.device.chain and not memo.held
    protocol.receive(SignRequest(req.request_id, b"d" * 32))
    assert memo.held
    assert not DeviceChainMemo(held=True, enabled=False).use_hash()


def _attempt_with(
    pki: LoadedPKI, memo: DeviceChainMemo, mode: DelegationMode = DelegationMode.BOUND
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
        chain_memo=memo,
    )
    protocol = DelegationAttempt(config, context=None, first_request_id=41)
    protocol.start()
    protocol.channel_up()
    [req] = protocol.outbox
    protocol.outbox.clear()
    assert isinstance(req, DelegationRequest)
    return protocol, req


def _agent_session(
    pki: LoadedPKI, cache: AgentChainCache, sent: list[DelegationMessage], bound: bytes
) -> AgentSession:
    entry = DeviceEntry(b"device-1", bytes(32), frozenset({bound}))
    policy = AgentPolicy({b"device-1": entry})  # no server allowed: every hit is refused
    session = NoHandshake(
        AgentConfig(
            psk_keys=policy.psk_keys, trust_store=pki.store, policy=policy, chain_cache=cache
        ),
        identity=b"device-1",
        used_request_ids=set(),
    )
    session.outbox = sent
    return session


def _hashed(request_id: int, chain: tuple[bytes, ...]) -> DelegationRequest:
    return dataclasses.replace(request(request_id, ()), certificate_chain_hash=chain_hash(chain))


def test_agent_answers_unknown_chain_and_judges_a_cached_chain_by_policy(pki: LoadedPKI) -> None:
    cache, sent = AgentChainCache(), []
    leaf_sha = hashlib.sha256(pki.device.chain[0]).digest()
    _agent_session(pki, cache, sent, leaf_sha).receive(_hashed(9, pki.device.chain))
    [error] = sent
    assert isinstance(error, DelegationError)
    assert (error.request_id, error.code) == (9, UNKNOWN_CHAIN)
    # A chain held for the identity is checked against the cert-sha256= binding as if sent:
    # here the binding changed since it was cached.
    cache.put(b"device-1", pki.device.chain)
    sent.clear()
    _agent_session(pki, cache, sent, b"\x00" * 32).receive(_hashed(10, pki.device.chain))
    [error] = sent
    assert isinstance(error, DelegationError) and error.code is DelegationErrorCode.UNSUPPORTED
    assert "bound to another certificate" in error.reason
    # And with the right binding it gets as far as the server rule (no server is allowed).
    sent.clear()
    _agent_session(pki, cache, sent, leaf_sha).receive(_hashed(11, pki.device.chain))
    [error] = sent
    assert isinstance(error, DelegationError) and "is not allowed" in error.reason


# --------------------------------------------------------------------------- real UDP
def test_a_bound_device_names_the_server_certificate_it_holds(pki: LoadedPKI) -> None:
    memo = DeviceChainMemo()
    protocol, req = _attempt_with(pki, memo)
    assert req.server_certificate_hash is None
    asked = agent_transcript(pki, req.client_random)
    protocol.receive(SignRequest(req.request_id, asked.digest, asked.transcript))
    assert isinstance(protocol.outbox[-1], SignResponse)
    assert memo.server_certificate is not None
    name, body = memo.server_certificate
    assert name == SERVER_NAME and Certificate.decode(body).certificates
    again, req2 = _attempt_with(pki, memo)
    assert req2.server_certificate_hash == hashlib.sha256(body).digest()
    _, req3 = _attempt_with(pki, memo, DelegationMode.BLIND)
    assert req3.server_certificate_hash is None  # bound mode only
    # A real agent handshake, compacted with the held certificate left out: signed.
    asked = agent_transcript(pki, req2.client_random)
    mine = Certificate(pki.device.chain).encode()
    compact = compact_transcript(asked.transcript, mine, req2.server_certificate_hash)
    assert compact is not None and len(compact) < len(asked.transcript) - len(mine) - len(body)
    again.receive(SignRequest(req2.request_id, asked.digest, compact_transcript=compact))
    [response] = again.outbox
    assert isinstance(response, SignResponse)
    pki.device.key.public_key().verify(
        response.signature, asked.transcript, ec.ECDSA(hashes.SHA256())
    )


def test_chain_sent_once_then_by_hash_and_after_an_agent_restart(
    pki: LoadedPKI, two_devices: Any
) -> None:
    """One device, three delegations: full chain, hash, and (new agent) hash -> UNKNOWN_CHAIN
    -> full chain in one more round trip; every delegation ends in a working session."""

    async def connect(stack: Any, memo: DeviceChainMemo, mode: DelegationMode) -> Any:
        device = stack.device(1, chain_memo=memo, mode=mode)
        connection = await device.connect()
        connection.send(b"ok")
        assert await connection.receive() == b"ok"
        await connection.close()
        assert device.config.signer.signatures == 1
        return connection

    async def scenario() -> None:
        memo = DeviceChainMemo()
        stack = await start(pki, two_devices)
        try:
            first = await connect(stack, memo, DelegationMode.BOUND)
            assert memo.held and len(stack.agent.config.chain_cache) == 1
            second = await connect(stack, memo, DelegationMode.BLIND)
            assert stack.agent.completed == 2 and stack.agent.failed == 0
            assert second.report.agent_link.round_trips == first.report.agent_link.round_trips
        finally:
            stop(stack)
        stack = await start(pki, two_devices)  # a new agent: an empty cache
        try:
            assert memo.held
            third = await connect(stack, memo, DelegationMode.BOUND)
            assert stack.agent.completed == 1 and stack.agent.failed == 0
            assert stack.agent.chain_misses == 1  # the UNKNOWN_CHAIN: a cache miss
            assert third.report.agent_link.round_trips == first.report.agent_link.round_trips + 1
            assert memo.held
        finally:
            stop(stack)

    run(scenario)


def test_session_context_carries_no_server_chain(pki: LoadedPKI, two_devices: Any) -> None:
    """The bound device keeps the server chain it checked in the transcript; the context
    itself carries none (spec/delegation.md §5.2)."""

    async def scenario() -> None:
        stack = await start(pki, two_devices)
        try:
            for mode in DelegationMode:
                device = stack.device(1, mode=mode)
                connection = await device.connect()
                await connection.close()
                session = connection.session
                if mode is DelegationMode.BOUND:
                    server_chain = tuple(load_certificate_chain(two_devices.server_cert))
                    assert session.peer_certificates == server_chain
                else:
                    assert session.peer_certificates == ()
        finally:
            stop(stack)

    run(scenario)


def test_handshake_type_constants_are_what_compact_assumes() -> None:
    assert int(HandshakeType.CERTIFICATE) == 11 and int(HandshakeType.CLIENT_KEY_EXCHANGE) == 16
