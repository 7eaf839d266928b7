"""DTLS 1.2 record layer: framing, AEAD protection, epochs and replay (RFC 6347 §4.1).

AEAD known answers were computed independently of Python with a 30-line C program over
OpenSSL's EVP API (``aead MODE KEY NONCE AAD PT`` printing ciphertext||tag; EVP_aes_128_ccm
with EVP_CTRL_CCM_SET_IVLEN=12 and EVP_CTRL_CCM_SET_TAG=8, or EVP_aes_128_gcm with a 12-byte
IV). The nonce and AAD were assembled by hand from RFC 6347 §4.1.2.1 / RFC 5246 §6.2.3.3:
nonce = salt || epoch(2) || seq(6), AAD = epoch(2) || seq(6) || type || version || length.
The program reproduces the published GCM spec Test Case 4 and RFC 3610 Packet Vector #1
(checked below for the primitive too).
"""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from d2tls.core.dtls.constants import (
    CHACHA20_SUITES,
    DTLS_1_0,
    DTLS_1_2,
    MAX_CIPHERTEXT,
    MAX_PLAINTEXT,
    MAX_SEQUENCE,
    AlertDescription,
    CipherSuite,
    ContentType,
)
from d2tls.core.dtls.record import (
    AEADProtection,
    EpochState,
    Record,
    ReplayWindow,
    encode_record,
    parse_datagram,
    protect,
    unprotect,
)
from d2tls.core.errors import ProtocolError, RecordError

h = bytes.fromhex

CCM8 = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
PSK_CCM8 = CipherSuite.TLS_PSK_WITH_AES_128_CCM_8
GCM = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256

# Client and server write keys/salts of the key-block vector in test_keyschedule.py.
CLIENT_KEY = h("cbe69cc51ead28bdfa026fa7b1aef50c")
CLIENT_SALT = h("5a1bbba2")
SERVER_KEY = h("04aeb17da8df922c5a1d76c32a092a89")
SERVER_SALT = h("948df006")


def sized_protection(suite: CipherSuite, key: bytes, salt: bytes) -> AEADProtection:
    """``AEADProtection`` for any suite: ChaCha20-Poly1305 takes a 32-byte key and a 12-byte
    IV (RFC 7905 §2), made here by repeating the AES-128 test key and salt."""
    if suite in CHACHA20_SUITES:
        return AEADProtection(suite, key * 2, salt * 3)
    return AEADProtection(suite, key, salt)


PLAINTEXT = b"GET /sensor/42 HTTP/1.1"  # 0x17 bytes

# ./aead ccm8 cbe69cc51ead28bdfa026fa7b1aef50c 5a1bbba20001000000000005 \
#     00010000000000051717fefd0017 474554202f73656e736f722f343220485454502f312e31
CCM8_RECORD = h(
    # header: type 23, DTLS 1.2, epoch 1, seq 5, length 39
    "17fefd00010000000000050027"
    "0001000000000005"  # explicit nonce
    "8709bcf00cb5bd5208af8f1e1d57d48f649a0559b4e12b"  # ciphertext
    "28070b3a27d932c7"  # 8-byte tag
)

# ./aead gcm 04aeb17da8df922c5a1d76c32a092a89 948df0060002010203040506 \
#     00020102030405061616fefd0017 474554202f73656e736f722f343220485454502f312e31
GCM_RECORD = h(
    # header: type 22, DTLS 1.2, epoch 2, seq 0x010203040506, length 47
    "16fefd0002010203040506002f"
    "0002010203040506"  # explicit nonce
    "24134316d3fa4776d33e1c928a7e961ebc1fbfb82e0b97"
    "8a71c36daae5e4754db05409a499ec02"  # 16-byte tag
)

# ./aead ccm8 cbe69cc51ead28bdfa026fa7b1aef50c 5a1bbba20001000000000000 \
#     00010000000000001515fefd0000 ""
CCM8_EMPTY_FRAGMENT = h("00010000000000006db17d69105f837d")


def _ccm_state(epoch: int = 1) -> EpochState:
    return EpochState(epoch=epoch, protection=AEADProtection(CCM8, CLIENT_KEY, CLIENT_SALT))


# --------------------------------------------------------------------------- primitive sanity
def test_primitive_rfc3610_packet_vector_1() -> None:
    """AES-CCM with an 8-byte tag as we configure it (RFC 3610 §8, Packet Vector #1)."""
    aead = AESCCM(h("c0c1c2c3c4c5c6c7c8c9cacbcccdcecf"), tag_length=8)
    out = aead.encrypt(
        h("00000003020100a0a1a2a3a4a5"),
        h("08090a0b0c0d0e0f101112131415161718191a1b1c1d1e"),
        h("0001020304050607"),
    )
    assert out == h("588c979a61c663d2f066d0c2c0f989806d5f6b61dac38417e8d12cfdf926e0")


def test_primitive_gcm_test_case_4() -> None:
    """AES-128-GCM, McGrew & Viega "The GCM mode of operation", Test Case 4."""
    out = AESGCM(h("feffe9928665731c6d6a8f9467308308")).encrypt(
        h("cafebabefacedbaddecaf888"),
        h(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
            "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39"
        ),
        h("feedfacedeadbeeffeedfacedeadbeefabaddad2"),
    )
    assert out.hex().endswith("5bc94fbc3221a5db94fae95ae7121a47")
    assert out.hex().startswith("42831ec2217774244b7221b784d0d49c")


# --------------------------------------------------------------------------- known answers
@pytest.mark.parametrize("suite", [CCM8, PSK_CCM8])
def test_ccm8_record_known_answer(suite: CipherSuite) -> None:
    write = EpochState(epoch=1, protection=AEADProtection(suite, CLIENT_KEY, CLIENT_SALT))
    write.write_seq = 5
    assert protect(write, ContentType.APPLICATION_DATA, PLAINTEXT) == CCM8_RECORD
    assert write.write_seq == 6

    read = EpochState(epoch=1, protection=AEADProtection(suite, CLIENT_KEY, CLIENT_SALT))
    records, discarded = parse_datagram(CCM8_RECORD)
    assert not discarded
    assert records == [
        Record(ContentType.APPLICATION_DATA, DTLS_1_2, 1, 5, CCM8_RECORD[13:]),
    ]
    assert unprotect(read, records[0]) == PLAINTEXT


def test_gcm_record_known_answer() -> None:
    write = EpochState(epoch=2, protection=AEADProtection(GCM, SERVER_KEY, SERVER_SALT))
    write.write_seq = 0x010203040506
    assert protect(write, ContentType.HANDSHAKE, PLAINTEXT) == GCM_RECORD

    read = EpochState(epoch=2, protection=AEADProtection(GCM, SERVER_KEY, SERVER_SALT))
    [record], _ = parse_datagram(GCM_RECORD)
    assert unprotect(read, record) == PLAINTEXT


def test_ccm8_empty_plaintext_known_answer() -> None:
    prot = AEADProtection(CCM8, CLIENT_KEY, CLIENT_SALT)
    assert prot.seal(ContentType.ALERT, DTLS_1_2, 1, 0, b"") == CCM8_EMPTY_FRAGMENT
    record = Record(ContentType.ALERT, DTLS_1_2, 1, 0, CCM8_EMPTY_FRAGMENT)
    assert prot.open(record) == b""


@pytest.mark.parametrize(("suite", "tag"), [(CCM8, 8), (PSK_CCM8, 8), (GCM, 16)])
def test_aad_and_nonce_layout(suite: CipherSuite, tag: int) -> None:
    """Decrypt our output with a separately built AEAD, nonce and AAD (RFC 6347 §4.1.2.1)."""
    key, salt = bytes(range(16)), b"\xa0\xb1\xc2\xd3"
    state = EpochState(epoch=0x1234, protection=AEADProtection(suite, key, salt))
    state.write_seq = 0xAABBCCDDEEFF
    payload = b"\x00\x01payload\xff" * 7
    wire = protect(state, ContentType.APPLICATION_DATA, payload, version=DTLS_1_2)

    header, fragment = wire[:13], wire[13:]
    assert header == h("17fefd1234aabbccddeeff") + len(fragment).to_bytes(2, "big")
    assert fragment[:8] == h("1234aabbccddeeff")
    assert len(fragment) == 8 + len(payload) + tag
    assert state.protection is not None and state.protection.overhead == 8 + tag

    nonce = salt + h("1234aabbccddeeff")
    aad = h("1234aabbccddeeff17fefd") + len(payload).to_bytes(2, "big")
    aead = AESCCM(key, tag_length=8) if tag == 8 else AESGCM(key)
    assert aead.decrypt(nonce, fragment[8:], aad) == payload
    # The length in the AAD is the plaintext length, not the fragment length.
    wrong_aad = aad[:-2] + len(fragment).to_bytes(2, "big")
    with pytest.raises(InvalidTag):
        aead.decrypt(nonce, fragment[8:], wrong_aad)


def test_client_and_server_keys_are_not_interchangeable() -> None:
    write = EpochState(epoch=1, protection=AEADProtection(CCM8, CLIENT_KEY, CLIENT_SALT))
    read = EpochState(epoch=1, protection=AEADProtection(CCM8, SERVER_KEY, SERVER_SALT))
    [record], _ = parse_datagram(protect(write, ContentType.APPLICATION_DATA, b"x"))
    with pytest.raises(RecordError):
        unprotect(read, record)
    other_salt = EpochState(epoch=1, protection=AEADProtection(CCM8, CLIENT_KEY, SERVER_SALT))
    with pytest.raises(RecordError):
        unprotect(other_salt, record)


# --------------------------------------------------------------------------- tampering
@pytest.mark.parametrize(
    ("record_bytes", "suite", "key", "salt"),
    [
        (CCM8_RECORD, CCM8, CLIENT_KEY, CLIENT_SALT),
        (GCM_RECORD, GCM, SERVER_KEY, SERVER_SALT),
    ],
)
def test_tampering_any_byte_is_rejected(
    record_bytes: bytes, suite: CipherSuite, key: bytes, salt: bytes
) -> None:
    """Every header and fragment bit feeds the tag: AAD, nonce or ciphertext (RFC 5246 §6.2.3.3)."""
    epoch = record_bytes[3] << 8 | record_bytes[4]
    checked = 0
    for i in range(len(record_bytes)):
        if i in (11, 12):
            continue  # the length field: changing it makes the datagram malformed (below)
        for flip in (0x01, 0x80):
            tampered = bytearray(record_bytes)
            tampered[i] ^= flip
            records, _ = parse_datagram(bytes(tampered))
            if not records:
                continue  # e.g. content type became unknown: dropped by the parser
            # A flipped epoch byte: present the record to a state of its (new) epoch.
            state_epoch = records[0].epoch or epoch
            state = EpochState(epoch=state_epoch, protection=AEADProtection(suite, key, salt))
            with pytest.raises(RecordError):
                unprotect(state, records[0])
            checked += 1
    # Only one variant (content type ^ 0x80, unknown) is dropped by the parser instead.
    assert checked == 2 * (len(record_bytes) - 2) - 1


@pytest.mark.parametrize("delta", [-1, 1])
def test_tampered_length_field_is_dropped_or_rejected(delta: int) -> None:
    tampered = bytearray(CCM8_RECORD)
    tampered[12] += delta
    records, discarded = parse_datagram(bytes(tampered))
    if delta > 0:
        assert (records, discarded) == ([], True)
    else:
        assert discarded  # one trailing byte left over
        with pytest.raises(RecordError):
            unprotect(_ccm_state(), records[0])


@pytest.mark.parametrize("cut", [0, 1, 8, 15, 16, 17])
def test_short_fragment_is_record_error(cut: int) -> None:
    record = Record(ContentType.APPLICATION_DATA, DTLS_1_2, 1, 5, CCM8_RECORD[13 : 13 + cut])
    with pytest.raises(RecordError):
        _ccm_state().protection.open(record)  # type: ignore[union-attr]
    with pytest.raises(RecordError):
        unprotect(_ccm_state(), record)


@settings(max_examples=300, deadline=None)
@given(
    content_type=st.integers(-5, 300),
    version=st.integers(-5, 0x1FFFF),
    epoch=st.integers(-5, 0x1FFFF),
    seq=st.integers(-5, MAX_SEQUENCE + 5),
    fragment=st.binary(max_size=80),
    suite=st.sampled_from(list(CipherSuite)),
)
def test_open_only_ever_raises_record_error(
    content_type: int, version: int, epoch: int, seq: int, fragment: bytes, suite: CipherSuite
) -> None:
    prot = sized_protection(suite, CLIENT_KEY, CLIENT_SALT)
    with pytest.raises(RecordError):
        prot.open(Record(content_type, version, epoch, seq, fragment))


# --------------------------------------------------------------------------- epochs and replay
def test_replay_is_record_error_and_window_marks_only_after_authentication() -> None:
    write, read = _ccm_state(), _ccm_state()
    wires = [protect(write, ContentType.APPLICATION_DATA, bytes([i])) for i in range(3)]
    records = [parse_datagram(w)[0][0] for w in wires]
    assert [r.sequence_number for r in records] == [0, 1, 2]

    # A forged record with seq 1 fails authentication and must not poison the window.
    bad = records[1].fragment[:-1] + bytes([records[1].fragment[-1] ^ 1])
    forged = Record(records[1].content_type, DTLS_1_2, 1, 1, bad)
    with pytest.raises(RecordError):
        unprotect(read, forged)
    assert read.replay.is_acceptable(1)

    assert unprotect(read, records[2]) == b"\x02"
    # The replay check runs before decryption (RFC 6347 §4.1.2.6).
    bad = records[2].fragment[:-1] + bytes([records[2].fragment[-1] ^ 1])
    with pytest.raises(RecordError, match="replay"):
        unprotect(read, Record(records[2].content_type, DTLS_1_2, 1, 2, bad))
    assert unprotect(read, records[0]) == b"\x00"  # reordered but inside the window
    for record in (records[0], records[2]):
        with pytest.raises(RecordError, match="replay"):
            unprotect(read, record)
    assert unprotect(read, records[1]) == b"\x01"
    with pytest.raises(RecordError):
        unprotect(read, records[1])


def test_record_left_of_window_is_rejected() -> None:
    write, read = _ccm_state(), _ccm_state()
    first = parse_datagram(protect(write, ContentType.APPLICATION_DATA, b"old"))[0][0]
    write.write_seq = 64
    newer = parse_datagram(protect(write, ContentType.APPLICATION_DATA, b"new"))[0][0]
    assert unprotect(read, newer) == b"new"
    with pytest.raises(RecordError):
        unprotect(read, first)  # 64 behind the right edge: outside a 64-entry window


def test_wrong_epoch_is_record_error() -> None:
    write = _ccm_state(epoch=1)
    [record], _ = parse_datagram(protect(write, ContentType.APPLICATION_DATA, b"hi"))
    with pytest.raises(RecordError, match="epoch"):
        unprotect(_ccm_state(epoch=2), record)
    with pytest.raises(RecordError, match="epoch"):
        unprotect(EpochState(epoch=0), record)


def test_epoch_zero_is_plaintext() -> None:
    write, read = EpochState(epoch=0), EpochState(epoch=0)
    wire = protect(write, ContentType.HANDSHAKE, b"hello", version=DTLS_1_0)
    assert wire == h("16feff00000000000000000005") + b"hello"
    [record], discarded = parse_datagram(wire)
    assert not discarded
    assert unprotect(read, record) == b"hello"
    with pytest.raises(RecordError):
        unprotect(read, record)


def test_oversize_plaintext_is_record_error() -> None:
    """RFC 5246 §6.2.1: no record carries more than 2^14 plaintext bytes."""
    big = b"\x00" * (MAX_PLAINTEXT + 1)
    with pytest.raises(RecordError):
        unprotect(EpochState(epoch=0), Record(ContentType.HANDSHAKE, DTLS_1_2, 0, 0, big))
    # A correctly authenticated but oversize record, sealed outside our API.
    explicit = h("0001000000000007")
    aad = explicit + h("17fefd") + len(big).to_bytes(2, "big")
    sealed = AESCCM(CLIENT_KEY, tag_length=8).encrypt(CLIENT_SALT + explicit, big, aad)
    record = Record(ContentType.APPLICATION_DATA, DTLS_1_2, 1, 7, explicit + sealed)
    read = _ccm_state()
    with pytest.raises(RecordError):
        unprotect(read, record)
    assert read.replay.is_acceptable(7)
    # Exactly 2^14 is fine.
    ok = b"\x00" * MAX_PLAINTEXT
    write = _ccm_state()
    [record], _ = parse_datagram(protect(write, ContentType.APPLICATION_DATA, ok))
    assert unprotect(read, record) == ok


def test_protect_refuses_oversize_payload() -> None:
    state = _ccm_state()
    with pytest.raises(ValueError):
        protect(state, ContentType.APPLICATION_DATA, b"\x00" * (MAX_PLAINTEXT + 1))
    assert state.write_seq == 0  # no sequence number consumed


def test_sequence_numbers_never_wrap() -> None:
    """RFC 6347 §4.1: the 48-bit sequence number must not wrap."""
    state = _ccm_state()
    state.write_seq = MAX_SEQUENCE
    wire = protect(state, ContentType.APPLICATION_DATA, b"last")
    assert wire[5:11] == b"\xff" * 6
    with pytest.raises(ProtocolError) as info:
        state.next_sequence()
    assert info.value.alert == AlertDescription.INTERNAL_ERROR
    with pytest.raises(ProtocolError):
        protect(state, ContentType.APPLICATION_DATA, b"more")


def test_next_sequence_counts_up() -> None:
    state = EpochState(epoch=0)
    assert [state.next_sequence() for _ in range(4)] == [0, 1, 2, 3]


def test_epoch_state_invariants() -> None:
    prot = AEADProtection(CCM8, CLIENT_KEY, CLIENT_SALT)
    with pytest.raises(ValueError):
        EpochState(epoch=0, protection=prot)
    with pytest.raises(ValueError):
        EpochState(epoch=1)
    with pytest.raises(ValueError):
        EpochState(epoch=0x10000, protection=prot)
    a, b = EpochState(epoch=1, protection=prot), EpochState(epoch=1, protection=prot)
    assert a.replay is not b.replay  # independent windows
    assert isinstance(a.replay, ReplayWindow) and a.replay.size == 64


def test_aead_protection_rejects_bad_keys() -> None:
    with pytest.raises(ValueError):
        AEADProtection(CCM8, CLIENT_KEY[:15], CLIENT_SALT)
    with pytest.raises(ValueError):
        AEADProtection(CCM8, CLIENT_KEY, CLIENT_SALT + b"\x00")
    with pytest.raises(ValueError):
        AEADProtection(0x002F, CLIENT_KEY, CLIENT_SALT)  # type: ignore[arg-type]
    assert CLIENT_KEY.hex() not in repr(AEADProtection(CCM8, CLIENT_KEY, CLIENT_SALT))


# --------------------------------------------------------------------------- parse_datagram
def test_parse_several_records_in_one_datagram() -> None:
    a = Record(ContentType.HANDSHAKE, DTLS_1_2, 0, 1, b"abc")
    b = Record(ContentType.CHANGE_CIPHER_SPEC, DTLS_1_2, 0, 2, b"\x01")
    c = Record(ContentType.HANDSHAKE, DTLS_1_2, 1, 0, b"")
    assert parse_datagram(encode_record(a) + encode_record(b) + encode_record(c)) == (
        [a, b, c],
        False,
    )


def test_parse_empty_datagram() -> None:
    assert parse_datagram(b"") == ([], False)


def test_parse_truncated_and_malformed() -> None:
    good = encode_record(Record(ContentType.HANDSHAKE, DTLS_1_2, 0, 0, b"abcd"))
    assert parse_datagram(good + good[:12]) == ([parse_datagram(good)[0][0]], True)
    assert parse_datagram(good[:-1]) == ([], True)
    assert parse_datagram(good + good[:-1])[1] is True
    assert len(parse_datagram(good + good[:-1])[0]) == 1
    unknown = bytes([99]) + good[1:]
    assert parse_datagram(good + unknown + good) == ([parse_datagram(good)[0][0]], True)


def test_parse_length_limit() -> None:
    """RFC 5246 §6.2.3: a fragment over 2^14 + 2048 bytes is never valid."""
    header = h("17fefd0001000000000001")
    at_limit = header + MAX_CIPHERTEXT.to_bytes(2, "big") + bytes(MAX_CIPHERTEXT)
    records, discarded = parse_datagram(at_limit)
    assert len(records) == 1 and not discarded
    over = header + (MAX_CIPHERTEXT + 1).to_bytes(2, "big") + bytes(MAX_CIPHERTEXT + 1)
    assert parse_datagram(over) == ([], True)


def test_encode_record_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        encode_record(Record(23, DTLS_1_2, 0x10000, 0, b""))
    with pytest.raises(ValueError):
        encode_record(Record(23, DTLS_1_2, 0, MAX_SEQUENCE + 1, b""))
    with pytest.raises(ValueError):
        encode_record(Record(23, DTLS_1_2, 0, 0, bytes(MAX_CIPHERTEXT + 1)))


records_strategy = st.builds(
    Record,
    content_type=st.sampled_from([int(t) for t in ContentType]),
    version=st.integers(0, 0xFFFF),
    epoch=st.integers(0, 0xFFFF),
    sequence_number=st.integers(0, MAX_SEQUENCE),
    fragment=st.binary(max_size=300),
)


@settings(max_examples=300)
@given(st.lists(records_strategy, max_size=8))
def test_parse_encode_round_trip(records: list[Record]) -> None:
    datagram = b"".join(encode_record(r) for r in records)
    assert parse_datagram(datagram) == (records, False)


@settings(max_examples=300)
@given(st.lists(records_strategy, min_size=1, max_size=5), st.data())
def test_parse_truncated_round_trip(records: list[Record], data: st.DataObject) -> None:
    datagram = b"".join(encode_record(r) for r in records)
    cut = data.draw(st.integers(0, len(datagram) - 1))
    parsed, discarded = parse_datagram(datagram[:cut])
    assert parsed == records[: len(parsed)]
    boundaries = {0}
    total = 0
    for r in records:
        total += 13 + len(r.fragment)
        boundaries.add(total)
    assert discarded == (cut not in boundaries)


@settings(max_examples=1000)
@given(st.binary(max_size=400))
def test_parse_never_raises(data: bytes) -> None:
    records, discarded = parse_datagram(data)
    consumed = sum(13 + len(r.fragment) for r in records)
    assert consumed <= len(data)
    assert discarded == (consumed != len(data))
    assert b"".join(encode_record(r) for r in records) == data[:consumed]


@settings(max_examples=200)
@given(st.lists(records_strategy, max_size=3), st.binary(min_size=1, max_size=40))
def test_parse_keeps_prefix_before_garbage(records: list[Record], garbage: bytes) -> None:
    datagram = b"".join(encode_record(r) for r in records)
    parsed, _ = parse_datagram(datagram + garbage)
    assert parsed[: len(records)] == records


@settings(max_examples=100, deadline=None)
@given(
    suite=st.sampled_from(list(CipherSuite)),
    payloads=st.lists(st.binary(max_size=200), min_size=1, max_size=6),
    content_type=st.sampled_from([int(t) for t in ContentType]),
)
def test_protect_unprotect_round_trip(
    suite: CipherSuite, payloads: list[bytes], content_type: int
) -> None:
    write = EpochState(epoch=3, protection=sized_protection(suite, SERVER_KEY, SERVER_SALT))
    read = EpochState(epoch=3, protection=sized_protection(suite, SERVER_KEY, SERVER_SALT))
    datagram = b"".join(protect(write, content_type, p) for p in payloads)
    records, discarded = parse_datagram(datagram)
    assert not discarded
    assert [unprotect(read, r) for r in records] == payloads
    for r in records:
        with pytest.raises(RecordError):
            unprotect(read, r)
