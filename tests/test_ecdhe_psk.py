"""ECDHE-PSK (RFC 5489 §2) with ChaCha20-Poly1305 records (RFC 7905) in our engines.

In-process handshakes between our client and server, and hostile variants of the two new
messages rewritten in flight: each ends with a typed error and the alert the RFCs name, never
a traceback. Interop with third-party peers is in tests/test_ecdhe_psk_interop.py.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import (
    CLIENT_ADDRESS,
    PSK_KEY,
    SERVER_ADDRESS,
    Run,
    psk_client_config,
    psk_server_config,
)
from d2tls.core.dtls import keyschedule
from d2tls.core.dtls.constants import (
    SECP256R1,
    AlertDescription,
    CipherSuite,
    ContentType,
    HandshakeType,
)
from d2tls.core.dtls.ecdhe_psk import client_key_exchange, server_pre_master
from d2tls.core.dtls.fragments import HandshakeFragment, encode_fragment, parse_handshake_fragments
from d2tls.core.dtls.messages import (
    MAX_PSK_HINT,
    ClientHello,
    ClientKeyExchangeECDHEPSK,
    ServerHello,
    ServerKeyExchangeECDHEPSK,
    decode_handshake_body,
    encode_handshake,
)
from d2tls.core.dtls.record import AEADProtection, Record, encode_record, parse_datagram
from d2tls.core.errors import (
    ConfigurationError,
    DecodeError,
    IllegalParameter,
    ProtocolError,
    RecordError,
)
from d2tls.core.randomness import SYSTEM
from d2tls.sim import Tap
from test_handshake import (
    assert_established,
    assert_failed_with,
    exchange_application_data,
    rewrite_epoch0_handshake,
)

ECDHE_PSK = CipherSuite.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256
PSK_CCM8 = CipherSuite.TLS_PSK_WITH_AES_128_CCM_8
Address = tuple[str, int]


def ecdhe_run(**server: object) -> Run:
    return Run(
        psk_server_config(cipher_suites=(ECDHE_PSK,), **server),
        psk_client_config(cipher_suites=(ECDHE_PSK,)),
    )


def point_of(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


# --------------------------------------------------------------------------- handshakes
def test_ecdhe_psk_handshake_then_data_then_resumption() -> None:
    """RFC 5489 §2: ServerKeyExchange (hint + point) and ClientKeyExchange (identity + point);
    both sides run one ECDH; records are ChaCha20-Poly1305 (RFC 7905); the session resumes."""
    run = ecdhe_run(psk_identity_hint=b"agent-hint")
    run.handshake()
    client_done, server_done = assert_established(run)
    assert client_done.cipher_suite == ECDHE_PSK and client_done.extended_master_secret
    assert server_done.session.psk_identity == b"device-1"
    assert client_done.session.psk_identity == b"device-1"
    assert run.client.stats["ecdh"] == 1 and run.client.stats["keygen"] == 1
    assert run.client.stats["sign"] == run.client.stats["verify"] == 0
    exchange_application_data(run)
    run.client.close()
    run.settle()

    again = Run(
        run.server.config,
        psk_client_config(cipher_suites=(ECDHE_PSK,), session=client_done.session),
        server=run.server,
    )
    again.handshake()
    resumed, _ = assert_established(again)
    assert resumed.resumed and resumed.cipher_suite == ECDHE_PSK
    exchange_application_data(again)


def test_rfc8442_aes128_gcm_handshake() -> None:
    """TLS_ECDHE_PSK_WITH_AES_128_GCM_SHA256 (RFC 8442 §2): the same key exchange, AES-128-GCM
    records with the nonce of RFC 5288 §3 (interop with wolfSSL in the interop tests)."""
    suite = CipherSuite.TLS_ECDHE_PSK_WITH_AES_128_GCM_SHA256
    run = Run(
        psk_server_config(cipher_suites=(suite, ECDHE_PSK)),
        psk_client_config(cipher_suites=(suite,)),
    )
    run.handshake()
    client_done, _ = assert_established(run)
    assert client_done.cipher_suite == suite
    exchange_application_data(run)


def test_each_handshake_uses_fresh_ephemeral_keys() -> None:
    """Forward secrecy rests on a new ECDH key pair per handshake (RFC 5489 §1)."""
    points: list[bytes] = []

    def watch(source: Address, destination: Address, data: bytes) -> list[bytes]:
        def keep(fragment: HandshakeFragment) -> HandshakeFragment:
            if fragment.msg_type == HandshakeType.SERVER_KEY_EXCHANGE:
                points.append(ServerKeyExchangeECDHEPSK.decode(fragment.body).public_point)
            if fragment.msg_type == HandshakeType.CLIENT_KEY_EXCHANGE:
                points.append(ClientKeyExchangeECDHEPSK.decode(fragment.body).public_point)
            return fragment

        return [rewrite_epoch0_handshake(data, keep)]

    for _ in range(2):
        run = Run(
            psk_server_config(cipher_suites=(ECDHE_PSK,)),
            psk_client_config(cipher_suites=(ECDHE_PSK,)),
            tap=watch,
        )
        run.handshake()
        assert_established(run)
    assert len(points) == 4 and len(set(points)) == 4


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [((ECDHE_PSK,), ECDHE_PSK), ((PSK_CCM8,), PSK_CCM8), ((PSK_CCM8, ECDHE_PSK), ECDHE_PSK)],
)
def test_a_server_with_both_suites_follows_its_preference(
    offered: tuple[CipherSuite, ...], chosen: CipherSuite
) -> None:
    run = Run(
        psk_server_config(cipher_suites=(ECDHE_PSK, PSK_CCM8)),
        psk_client_config(cipher_suites=offered),
    )
    run.handshake()
    client_done, _ = assert_established(run)
    assert client_done.cipher_suite == chosen


def test_a_server_requiring_ecdhe_psk_refuses_a_plain_psk_client() -> None:
    run = Run(
        psk_server_config(cipher_suites=(ECDHE_PSK,)),
        psk_client_config(cipher_suites=(PSK_CCM8,)),
    )
    run.handshake()
    assert_failed_with(run, sender="server", alert=AlertDescription.HANDSHAKE_FAILURE)


def test_wrong_psk_is_decrypt_error() -> None:
    """RFC 4279 §2 / RFC 5489 §2: different keys show at the first protected record, the
    client's Finished: the server answers decrypt_error."""
    run = Run(
        psk_server_config(cipher_suites=(ECDHE_PSK,)),
        psk_client_config(cipher_suites=(ECDHE_PSK,), psk=bytes(range(16))),
    )
    run.handshake()
    local, _ = assert_failed_with(run, sender="server", alert=AlertDescription.DECRYPT_ERROR)
    assert "pre-shared keys differ" in local.reason


def test_unknown_identity_is_unknown_psk_identity() -> None:
    run = Run(
        psk_server_config(cipher_suites=(ECDHE_PSK,)),
        psk_client_config(cipher_suites=(ECDHE_PSK,), psk_identity=b"stranger"),
    )
    run.handshake()
    assert_failed_with(run, sender="server", alert=AlertDescription.UNKNOWN_PSK_IDENTITY)


def test_an_oversized_configured_hint_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="hint exceeds 128 bytes"):
        psk_server_config(cipher_suites=(ECDHE_PSK,), psk_identity_hint=b"h" * 129).validate()


# --------------------------------------------------------------------------- hostile messages
def tap_rewrite(msg_type: int, new_body: bytes) -> Tap:
    """A tap replacing the body of every ``msg_type`` handshake message in flight."""

    def rewrite(fragment: HandshakeFragment) -> HandshakeFragment:
        if fragment.msg_type != msg_type:
            return fragment
        return HandshakeFragment(
            fragment.msg_type, len(new_body), fragment.message_seq, 0, len(new_body), new_body
        )

    def tap(source: Address, destination: Address, data: bytes) -> list[bytes]:
        return [rewrite_epoch0_handshake(data, rewrite)]

    return tap


def hostile_run(msg_type: int, body: bytes) -> Run:
    run = Run(
        psk_server_config(cipher_suites=(ECDHE_PSK,)),
        psk_client_config(cipher_suites=(ECDHE_PSK,)),
        tap=tap_rewrite(msg_type, body),
    )
    run.handshake()
    return run


OFF_CURVE = b"\x04" + bytes(31) + b"\x01" + bytes(31) + b"\x01"
COMPRESSED = b"\x02" + point_of(ec.generate_private_key(ec.SECP256R1()))[1:33]
GOOD_POINT = point_of(ec.generate_private_key(ec.SECP256R1()))


@pytest.mark.parametrize(
    ("point", "alert"),
    [
        (OFF_CURVE, AlertDescription.ILLEGAL_PARAMETER),
        (COMPRESSED, AlertDescription.ILLEGAL_PARAMETER),
        (b"\x04" + bytes(64), AlertDescription.ILLEGAL_PARAMETER),  # not on the curve
        (GOOD_POINT[:-1], AlertDescription.ILLEGAL_PARAMETER),  # truncated point
    ],
    ids=["off-curve", "compressed", "zero", "truncated"],
)
def test_malformed_client_point_is_illegal_parameter(point: bytes, alert: AlertDescription) -> None:
    body = ClientKeyExchangeECDHEPSK(b"device-1", point).encode()
    run = hostile_run(HandshakeType.CLIENT_KEY_EXCHANGE, body)
    local, _ = assert_failed_with(run, sender="server", alert=alert)
    assert "EC point" in local.reason


@pytest.mark.parametrize(
    ("point", "alert"),
    [
        (OFF_CURVE, AlertDescription.ILLEGAL_PARAMETER),
        (COMPRESSED, AlertDescription.ILLEGAL_PARAMETER),
    ],
    ids=["off-curve", "compressed"],
)
def test_malformed_server_point_is_illegal_parameter(point: bytes, alert: AlertDescription) -> None:
    body = ServerKeyExchangeECDHEPSK(b"", SECP256R1, point).encode()
    run = hostile_run(HandshakeType.SERVER_KEY_EXCHANGE, body)
    local, _ = assert_failed_with(run, sender="client", alert=alert)
    assert "EC point" in local.reason


def test_empty_client_identity_is_unknown_psk_identity() -> None:
    """An empty psk_identity is well-formed (RFC 4279 §2: <0..2^16-1>) but names no key."""
    body = ClientKeyExchangeECDHEPSK(b"", GOOD_POINT).encode()
    run = hostile_run(HandshakeType.CLIENT_KEY_EXCHANGE, body)
    assert_failed_with(run, sender="server", alert=AlertDescription.UNKNOWN_PSK_IDENTITY)


def test_empty_client_point_is_decode_error() -> None:
    """``opaque point<1..2^8-1>`` (RFC 8422 §5.7): an empty point does not parse."""
    body = b"\x00\x08device-1\x00"
    run = hostile_run(HandshakeType.CLIENT_KEY_EXCHANGE, body)
    assert_failed_with(run, sender="server", alert=AlertDescription.DECODE_ERROR)


def test_oversized_hint_is_illegal_parameter() -> None:
    body = ServerKeyExchangeECDHEPSK(b"h" * (MAX_PSK_HINT + 1), SECP256R1, GOOD_POINT).encode()
    run = hostile_run(HandshakeType.SERVER_KEY_EXCHANGE, body)
    local, _ = assert_failed_with(run, sender="client", alert=AlertDescription.ILLEGAL_PARAMETER)
    assert "hint of 129 bytes" in local.reason


def test_a_128_byte_hint_is_accepted() -> None:
    run = ecdhe_run(psk_identity_hint=b"h" * MAX_PSK_HINT)
    run.handshake()
    assert_established(run)


def test_another_curve_is_illegal_parameter() -> None:
    body = ServerKeyExchangeECDHEPSK(b"", 24, GOOD_POINT).encode()  # secp384r1, not offered
    run = hostile_run(HandshakeType.SERVER_KEY_EXCHANGE, body)
    local, _ = assert_failed_with(run, sender="client", alert=AlertDescription.ILLEGAL_PARAMETER)
    assert "curve" in local.reason


def test_trailing_bytes_in_the_server_key_exchange_are_decode_error() -> None:
    body = ServerKeyExchangeECDHEPSK(b"", SECP256R1, GOOD_POINT).encode() + b"\x00"
    run = hostile_run(HandshakeType.SERVER_KEY_EXCHANGE, body)
    assert_failed_with(run, sender="client", alert=AlertDescription.DECODE_ERROR)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200), server=st.booleans())
def test_decoders_raise_only_typed_errors(body: bytes, server: bool) -> None:
    msg_type = HandshakeType.SERVER_KEY_EXCHANGE if server else HandshakeType.CLIENT_KEY_EXCHANGE
    try:
        message = decode_handshake_body(msg_type, body, psk=False, ecdhe_psk=True)
    except (DecodeError, IllegalParameter):
        return
    assert message.encode() == body  # whatever parses re-encodes to the same bytes


# --------------------------------------------------------------------------- key schedule
def test_pre_master_layout_and_agreement() -> None:
    """RFC 5489 §2: uint16 len, ECDH Z (32 bytes on P-256), uint16 len, psk; both sides agree
    and Z is the one cryptography computes independently."""
    psk = bytes(range(16))
    server_key = ec.generate_private_key(ec.SECP256R1())
    exchange, client_pms = client_key_exchange(SYSTEM, b"id", psk, point_of(server_key))
    identity, server_pms = server_pre_master(server_key, exchange, {b"id": psk})
    assert identity == b"id" and client_pms == server_pms
    peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), exchange.public_point)
    z = server_key.exchange(ec.ECDH(), peer)
    assert client_pms == b"\x00\x20" + z + b"\x00\x10" + psk
    with pytest.raises(ProtocolError) as info:
        server_pre_master(server_key, exchange, {b"other": psk})
    assert info.value.alert == AlertDescription.UNKNOWN_PSK_IDENTITY
    with pytest.raises(ValueError):
        keyschedule.ecdhe_psk_pre_master_secret(z, b"")


# --------------------------------------------------------------------------- forward secrecy
def record_channel(suite: CipherSuite) -> tuple[list[tuple[Address, bytes]], Run]:
    """A channel handshake and one client record, as a passive observer records them."""
    seen: list[tuple[Address, bytes]] = []

    def recorder(source: Address, destination: Address, data: bytes) -> list[bytes]:
        seen.append((source, data))
        return [data]

    run = Run(
        psk_server_config(cipher_suites=(suite,)),
        psk_client_config(cipher_suites=(suite,)),
        tap=recorder,
    )
    run.handshake()
    assert_established(run)
    run.send_to_server(b"the SessionContext")
    run.settle()
    return seen, run


def decrypt_with_the_psk_only(
    seen: list[tuple[Address, bytes]], suite: CipherSuite, other_secret: bytes
) -> bytes:
    """What an agent compromised later can do with a recording: it knows the PSK (and
    guesses ``other_secret``), rebuilds the EMS session hash from the cleartext handshake
    (RFC 7627 §4) and opens the client's first application-data record."""
    transcript = bytearray()
    hashed: set[tuple[int, int]] = set()
    client_random = server_random = b""
    app_record = None
    for source, data in seen:
        records, _ = parse_datagram(data)
        for record in records:
            if record.content_type == ContentType.APPLICATION_DATA and source == CLIENT_ADDRESS:
                app_record = app_record or record
            if record.content_type != ContentType.HANDSHAKE or record.epoch != 0:
                continue
            for f in parse_handshake_fragments(record.fragment):
                if f.msg_type == HandshakeType.HELLO_VERIFY_REQUEST or f.message_seq == 0:
                    continue  # RFC 6347 §4.2.6: the cookie exchange is not hashed
                if (f.msg_type, f.message_seq) in hashed:
                    continue
                hashed.add((f.msg_type, f.message_seq))
                transcript += encode_handshake(f.msg_type, f.message_seq, f.body)
                if f.msg_type == HandshakeType.CLIENT_HELLO:
                    client_random = ClientHello.decode(f.body).random
                if f.msg_type == HandshakeType.SERVER_HELLO:
                    server_random = ServerHello.decode(f.body).random
    assert app_record is not None
    if suite == PSK_CCM8:
        pre_master = keyschedule.psk_pre_master_secret(PSK_KEY)
    else:
        pre_master = keyschedule.ecdhe_psk_pre_master_secret(other_secret, PSK_KEY)
    master = keyschedule.extended_master_secret(
        pre_master, keyschedule.transcript_hash(bytes(transcript))
    )
    keys = keyschedule.key_block(bytes(master), client_random, server_random, suite)
    protection = AEADProtection(suite, keys.client_write_key, keys.client_write_iv)
    return protection.open(app_record)


def test_a_recorded_psk_channel_opens_with_the_psk_an_ecdhe_psk_one_does_not() -> None:
    """Issue 16's trade-off, shown on the wire: with the PSK alone a recorded plain-PSK channel
    yields the context; a recorded ECDHE-PSK channel does not (RFC 5489 §1)."""
    seen, _ = record_channel(PSK_CCM8)
    assert decrypt_with_the_psk_only(seen, PSK_CCM8, b"") == b"the SessionContext"
    seen, _ = record_channel(ECDHE_PSK)
    with pytest.raises(RecordError):
        decrypt_with_the_psk_only(seen, ECDHE_PSK, bytes(32))


def test_server_hello_done_without_the_server_key_exchange_is_unexpected_message() -> None:
    """RFC 5489 §2 makes the ECDHE_PSK ServerKeyExchange mandatory: a flight without it (the
    ServerHelloDone renumbered into its place) is unexpected_message at the client."""

    def drop_ske(source: Address, destination: Address, data: bytes) -> list[bytes]:
        if source != SERVER_ADDRESS:
            return [data]
        records, _ = parse_datagram(data)
        out = bytearray()
        for record in records:
            if record.content_type == ContentType.HANDSHAKE and record.epoch == 0:
                kept = []
                for f in parse_handshake_fragments(record.fragment):
                    if f.msg_type == HandshakeType.SERVER_KEY_EXCHANGE:
                        continue
                    if f.msg_type == HandshakeType.SERVER_HELLO_DONE:
                        f = HandshakeFragment(f.msg_type, 0, f.message_seq - 1, 0, 0, b"")
                    kept.append(encode_fragment(f))
                if not kept:
                    continue
                record = Record(record.content_type, record.version, 0, record.sequence_number,
                                b"".join(kept))  # fmt: skip
            out += encode_record(record)
        return [bytes(out)] if out else []

    run = Run(
        psk_server_config(cipher_suites=(ECDHE_PSK,)),
        psk_client_config(cipher_suites=(ECDHE_PSK,)),
        tap=drop_ske,
    )
    run.handshake()
    local, _ = assert_failed_with(run, sender="client", alert=AlertDescription.UNEXPECTED_MESSAGE)
    assert "ServerHelloDone" in local.reason
