"""Tests of d2tls.core.dtls.fragments: parsing, splitting and reassembly (RFC 6347 §4.2.2-4.2.3)."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d2tls.core.dtls.constants import MAX_HANDSHAKE_MESSAGE, HandshakeType
from d2tls.core.dtls.fragments import (
    MAX_REASSEMBLY_BYTES,
    PIECE_OVERHEAD,
    HandshakeFragment,
    ReassembledMessage,
    Reassembler,
    encode_fragment,
    fragment_message,
    parse_handshake_fragments,
)
from d2tls.core.dtls.messages import Certificate, ServerKeyExchangeECDHE, encode_handshake
from d2tls.core.errors import DecodeError, IllegalParameter

# Record payloads (13-byte record headers stripped) sent by `openssl s_server -dtls1_2`
# (OpenSSL 3.0.19) over loopback to `openssl s_client -dtls1_2`, captured with a logging UDP
# proxy on 127.0.0.1. OpenSSL fragmented its Certificate (message_seq 2, 394 bytes) into three
# records and its ServerKeyExchange (message_seq 3, 144 bytes) into two.

CERTIFICATE_FRAG0 = bytes.fromhex(
    "0b00018a00020000000000750001870001843082018030820127a0030201020214725bba67589860f464a14c"
    "6f31a64fbb20653823300a06082a8648ce3d04030230163114301206035504030c0b7365727665722e746573"
    "74301e170d3236313132333132333332395a170d3336313132303132333332395a3016311430120603"
)

CERTIFICATE_FRAG1 = bytes.fromhex(
    "0b00018a00020000750000cb5504030c0b7365727665722e746573743059301306072a8648ce3d020106082a"
    "8648ce3d03010703420004d7bb57fcd83988c088b308e9619a36bedd2736bb929a1bc5bf85bd84398e466781"
    "74aa8f9ac7268f156ee637e4720a5157e2ebedca1bffc0790ca70e1ae04242a3533051301d0603551d0e0416"
    "041478d89ab620b10b0261b218fd5362318cd42ca630301f0603551d2304183016801478d89ab620b10b0261"
    "b218fd5362318cd42ca630300f0603551d130101ff040530030101ff300a06082a8648ce3d0403"
)

CERTIFICATE_FRAG2 = bytes.fromhex(
    "0b00018a000200014000004a02034700304402204edea5f8016503f9c42787d5196f5e7547ec319e863820b5"
    "0a25719fd43bc6b002204ddccb7225b09ac51c14d8d6e1e1b2758af3b4fe42558b35802f9c78648204ea"
)

SERVER_KEY_EXCHANGE_FRAG0 = bytes.fromhex(
    "0c00009000030000000000680300174104f5f1c894001ae4fcde01351b8bced1a5196eb0f84cbc8a724dd343"
    "4bf1937e24d4d7d7da07f7298f4853a893205e9c08924f02e4482f89f552fd6b0f52ca2bfd04030047304502"
    "202409bcda40a0d6c261c93b77b85547056f57d05b521d1b4e07b59d"
)

SERVER_KEY_EXCHANGE_FRAG1 = bytes.fromhex(
    "0c000090000300006800002830f0e4f347022100cc2dc0f65ec6023799ddd843f98033aab8c8f76c2412d782"
    "c9013052c960393b"
)

CERTIFICATE_SHA256 = "95b10e95058a7d87f9a33d993adb13161805663e26ccf37c8a92bd0d67437927"
SERVER_KEY_EXCHANGE_SHA256 = "db7e3ad4ec617dbe1ab867dad3281aa0614df204de87c858fcfea443f626a6ea"
CERTIFICATE_FRAGS = [CERTIFICATE_FRAG0, CERTIFICATE_FRAG1, CERTIFICATE_FRAG2]
SERVER_KEY_EXCHANGE_FRAGS = [SERVER_KEY_EXCHANGE_FRAG0, SERVER_KEY_EXCHANGE_FRAG1]
#: An unfragmented ServerHelloDone, message_seq 5.
SERVER_HELLO_DONE = bytes.fromhex("0e 000000 0005 000000 000000")

DECODER_ERRORS = (DecodeError, IllegalParameter)


# ============================================================================ captured fragments


def test_captured_fragment_headers_and_byte_exact_reencoding() -> None:
    parsed = [parse_handshake_fragments(p) for p in CERTIFICATE_FRAGS]
    assert [len(p) for p in parsed] == [1, 1, 1]
    frags = [p[0] for p in parsed]
    assert [(f.fragment_offset, f.fragment_length) for f in frags] == [
        (0, 117),
        (117, 203),
        (320, 74),
    ]
    for f, payload in zip(frags, CERTIFICATE_FRAGS, strict=True):
        assert f.msg_type == HandshakeType.CERTIFICATE
        assert f.length == 394
        assert f.message_seq == 2
        assert len(f.body) == f.fragment_length
        assert encode_fragment(f) == payload


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_captured_certificate_reassembles_in_any_order(order: tuple[int, ...]) -> None:
    r = Reassembler(next_seq=2)
    for i in order:
        assert r.pop() is None
        (fragment,) = parse_handshake_fragments(CERTIFICATE_FRAGS[i])
        assert r.add(fragment) == "buffered"
    message = r.pop()
    assert message is not None
    assert (message.msg_type, message.message_seq) == (HandshakeType.CERTIFICATE, 2)
    assert hashlib.sha256(message.body).hexdigest() == CERTIFICATE_SHA256
    assert Certificate.decode(message.body).encode() == message.body
    assert r.next_seq == 3 and r.pop() is None
    # A retransmitted fragment of the delivered message is now "old".
    assert r.add(parse_handshake_fragments(CERTIFICATE_FRAGS[0])[0]) == "old"


def test_captured_flight_with_several_fragments_per_record() -> None:
    # Pack the tail of the ServerKeyExchange and the ServerHelloDone into one record payload,
    # and deliver everything before the Certificate's first fragment.
    payloads = [
        SERVER_KEY_EXCHANGE_FRAG1 + SERVER_HELLO_DONE,
        CERTIFICATE_FRAG2,
        SERVER_KEY_EXCHANGE_FRAG0,
        CERTIFICATE_FRAG1,
        CERTIFICATE_FRAG0,
    ]
    assert len(parse_handshake_fragments(payloads[0])) == 2
    r = Reassembler(next_seq=2)
    popped: list[ReassembledMessage] = []
    for payload in payloads:
        for fragment in parse_handshake_fragments(payload):
            assert r.add(fragment) == "buffered"
        while (m := r.pop()) is not None:
            popped.append(m)
        if payload is not CERTIFICATE_FRAG0:
            assert popped == []  # nothing is released before message 2 is complete
    assert [(m.msg_type, m.message_seq) for m in popped] == [(11, 2), (12, 3)]
    assert hashlib.sha256(popped[0].body).hexdigest() == CERTIFICATE_SHA256
    assert hashlib.sha256(popped[1].body).hexdigest() == SERVER_KEY_EXCHANGE_SHA256
    assert ServerKeyExchangeECDHE.decode(popped[1].body).encode() == popped[1].body
    # message_seq 4 (CertificateRequest) was never delivered: the ServerHelloDone waits.
    assert r.pop() is None and r.next_seq == 4 and r.pending == 1
    r.add(HandshakeFragment(13, 3, 4, 0, 3, b"abc"))
    assert r.pop() == ReassembledMessage(13, 4, b"abc")
    assert r.pop() == ReassembledMessage(14, 5, b"")
    assert r.pending == 0 and r.next_seq == 6


# ============================================================================ parsing


def _header(msg_type: int, length: int, seq: int, offset: int, frag_len: int) -> bytes:
    return (
        bytes([msg_type])
        + length.to_bytes(3, "big")
        + seq.to_bytes(2, "big")
        + offset.to_bytes(3, "big")
        + frag_len.to_bytes(3, "big")
    )


def test_parse_known_encoding() -> None:
    payload = _header(20, 12, 9, 0, 12) + bytes(range(12))
    assert parse_handshake_fragments(payload) == [
        HandshakeFragment(20, 12, 9, 0, 12, bytes(range(12)))
    ]
    assert payload == encode_handshake(20, 9, bytes(range(12)))


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # RFC 5246 §6.2.1: no zero-length handshake records
        b"\x01",
        _header(1, 10, 0, 0, 10)[:11],
        _header(1, 10, 0, 0, 10) + bytes(9),  # body shorter than fragment_length
        _header(1, 10, 0, 5, 6) + bytes(6),  # offset + length past the message end
        _header(1, 10, 0, 11, 0),
        _header(1, MAX_HANDSHAKE_MESSAGE + 1, 0, 0, 0),  # over our reassembly limit
        _header(1, 0xFFFFFF, 0, 0, 1) + b"x",
        _header(14, 0, 0, 0, 0) + b"\x0e\x00",  # trailing partial header
        _header(14, 0, 0, 0, 0) + _header(1, 4, 1, 0, 4) + b"abc",
    ],
)
def test_parse_rejects_malformed(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_handshake_fragments(payload)


def test_largest_message_accepted() -> None:
    payload = _header(11, MAX_HANDSHAKE_MESSAGE, 0, MAX_HANDSHAKE_MESSAGE - 3, 3) + b"xyz"
    (f,) = parse_handshake_fragments(payload)
    assert f.length == MAX_HANDSHAKE_MESSAGE and f.body == b"xyz"


@given(st.binary(max_size=300))
@settings(max_examples=1500)
def test_parse_arbitrary_bytes(data: bytes) -> None:
    try:
        fragments = parse_handshake_fragments(data)
    except DecodeError:
        return
    # Accepted input is exactly the concatenation of what was parsed.
    assert b"".join(encode_fragment(f) for f in fragments) == data


fragment_payloads = st.lists(
    st.builds(
        lambda t, body, seq, pre, post: HandshakeFragment(
            t, pre + len(body) + post, seq, pre, len(body), body
        ),
        st.integers(0, 255),
        st.binary(max_size=60),
        st.integers(0, 0xFFFF),
        st.integers(0, 100),
        st.integers(0, 100),
    ),
    min_size=1,
    max_size=4,
)


@given(fragment_payloads, st.data())
@settings(max_examples=1000)
def test_parse_mutated_payloads(fragments: list[HandshakeFragment], data: st.DataObject) -> None:
    payload = b"".join(encode_fragment(f) for f in fragments)
    assert parse_handshake_fragments(payload) == fragments
    pos = data.draw(st.integers(0, len(payload) - 1))
    kind = data.draw(st.sampled_from(["truncate", "flip", "insert"]))
    if kind == "truncate":
        mutant = payload[:pos]
    elif kind == "flip":
        mutant = payload[:pos] + bytes([payload[pos] ^ data.draw(st.integers(1, 255))])
        mutant += payload[pos + 1 :]
    else:
        mutant = payload[:pos] + data.draw(st.binary(min_size=1, max_size=5)) + payload[pos:]
    try:
        parsed = parse_handshake_fragments(mutant)
    except DecodeError:
        return
    assert b"".join(encode_fragment(f) for f in parsed) == mutant


def test_encode_fragment_refuses_inconsistent_fragments() -> None:
    for bad in (
        HandshakeFragment(1, 4, 0, 0, 4, b"abc"),
        HandshakeFragment(1, 4, 0, 2, 3, b"abc"),
        HandshakeFragment(256, 4, 0, 0, 4, b"abcd"),
        HandshakeFragment(1, 4, 0x10000, 0, 4, b"abcd"),
        HandshakeFragment(1, MAX_HANDSHAKE_MESSAGE + 1, 0, 0, 0, b""),
        HandshakeFragment(1, 4, 0, -1, 1, b"a"),
    ):
        with pytest.raises(ValueError):
            encode_fragment(bad)
        with pytest.raises(DecodeError):
            Reassembler().add(bad)


# ============================================================================ fragment_message


@given(st.integers(0, 255), st.integers(0, 0xFFFF), st.binary(max_size=3000), st.integers(1, 1500))
def test_fragment_message(msg_type: int, seq: int, body: bytes, max_body: int) -> None:
    frags = fragment_message(msg_type, seq, body, max_body)
    assert len(frags) == max(1, -(-len(body) // max_body))
    offset = 0
    for f in frags:
        assert (f.msg_type, f.message_seq, f.length) == (msg_type, seq, len(body))
        assert f.fragment_offset == offset and f.fragment_length == len(f.body) <= max_body
        assert parse_handshake_fragments(encode_fragment(f)) == [f]
        offset += f.fragment_length
    assert b"".join(f.body for f in frags) == body
    if len(frags) == 1:
        assert encode_fragment(frags[0]) == encode_handshake(msg_type, seq, body)
    r = Reassembler(next_seq=seq)
    for f in reversed(frags):
        assert r.add(f) == "buffered"
    assert r.pop() == ReassembledMessage(msg_type, seq, body)


def test_fragment_message_edge_cases() -> None:
    assert fragment_message(14, 5, b"", 100) == [HandshakeFragment(14, 0, 5, 0, 0, b"")]
    assert fragment_message(20, 1, b"abcde", 2) == [
        HandshakeFragment(20, 5, 1, 0, 2, b"ab"),
        HandshakeFragment(20, 5, 1, 2, 2, b"cd"),
        HandshakeFragment(20, 5, 1, 4, 1, b"e"),
    ]
    with pytest.raises(ValueError):
        fragment_message(1, 0, b"abc", 0)
    with pytest.raises(ValueError):
        fragment_message(1, 0x10000, b"abc", 10)
    with pytest.raises(ValueError):
        fragment_message(1, 0, bytes(MAX_HANDSHAKE_MESSAGE + 1), 10000)


# ============================================================================ reassembly


@st.composite
def fragment_cover(draw: st.DrawFn, body: bytes) -> list[tuple[int, int]]:
    """Ranges covering all of ``body``: a random partition plus overlapping extras and dups."""
    n = len(body)
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=12)))) if n > 1 else []
    bounds = [0, *[c for c in cuts if 0 < c < n], n]
    ranges = list(itertools.pairwise(bounds))
    extra = draw(st.lists(st.tuples(st.integers(0, n), st.integers(0, n)), max_size=6))
    ranges += [(min(a, b), max(a, b)) for a, b in extra]
    if ranges:
        ranges += draw(st.lists(st.sampled_from(ranges), max_size=4))  # exact duplicates
    return draw(st.permutations(ranges))


def _covered(ranges: list[tuple[int, int]], n: int) -> bool:
    seen = bytearray(n)
    for a, b in ranges:
        seen[a:b] = b"\x01" * (b - a)
    return all(seen)


@given(st.binary(max_size=600), st.integers(0, 255), st.integers(0, 100), st.data())
@settings(max_examples=500)
def test_any_split_any_order_reassembles(
    body: bytes, msg_type: int, seq: int, data: st.DataObject
) -> None:
    ranges = data.draw(fragment_cover(body))
    r = Reassembler(next_seq=seq)
    delivered: list[tuple[int, int]] = []
    message = None
    for a, b in ranges:
        fragment = HandshakeFragment(msg_type, len(body), seq, a, b - a, body[a:b])
        if message is not None:
            assert r.add(fragment) == "old"
            continue
        assert r.add(fragment) == "buffered"
        delivered.append((a, b))
        message = r.pop()
        # A message is released exactly when its last missing byte arrives.
        assert (message is not None) == _covered(delivered, len(body))
    assert message == ReassembledMessage(msg_type, seq, body)
    assert r.next_seq == seq + 1 and r.pending == 0


@given(st.lists(st.binary(max_size=200), min_size=1, max_size=6), st.data())
@settings(max_examples=300)
def test_messages_pop_in_sequence_order(bodies: list[bytes], data: st.DataObject) -> None:
    fragments: list[HandshakeFragment] = []
    for seq, body in enumerate(bodies):
        size = data.draw(st.integers(1, 64))
        fragments += fragment_message(seq % 256, seq, body, size)
    fragments = data.draw(st.permutations(fragments))
    r = Reassembler(next_seq=0, max_ahead=len(bodies))
    popped: list[ReassembledMessage] = []
    for f in fragments:
        assert r.add(f) == "buffered"
        while (m := r.pop()) is not None:
            popped.append(m)
        assert r.pending <= len(bodies)
    assert popped == [ReassembledMessage(i % 256, i, b) for i, b in enumerate(bodies)]
    assert r.next_seq == len(bodies) and r.pop() is None


def test_window_old_and_dropped() -> None:
    r = Reassembler(next_seq=3, max_ahead=4)
    assert r.add(HandshakeFragment(1, 0, 2, 0, 0, b"")) == "old"
    assert r.add(HandshakeFragment(1, 0, 0, 0, 0, b"")) == "old"
    assert r.add(HandshakeFragment(1, 0, 7, 0, 0, b"")) == "dropped"  # 3 + 4
    assert r.add(HandshakeFragment(1, 0, 0xFFFF, 0, 0, b"")) == "dropped"
    assert r.pending == 0
    assert r.add(HandshakeFragment(1, 0, 6, 0, 0, b"")) == "buffered"  # 3 + 3
    assert r.pop() is None  # 3 is missing
    assert r.add(HandshakeFragment(2, 1, 3, 0, 1, b"a")) == "buffered"
    assert r.add(HandshakeFragment(2, 2, 4, 0, 1, b"b")) == "buffered"  # half of message 4
    assert r.pop() == ReassembledMessage(2, 3, b"a")
    assert r.pop() is None  # 4 incomplete
    # The window moved: 7 is now acceptable, 8 is not.
    assert r.add(HandshakeFragment(1, 0, 7, 0, 0, b"")) == "buffered"
    assert r.add(HandshakeFragment(1, 0, 8, 0, 0, b"")) == "dropped"
    assert r.add(HandshakeFragment(2, 1, 3, 0, 1, b"a")) == "old"
    r.reset(0)
    assert r.next_seq == 0 and r.pending == 0 and r.pop() is None
    assert r.add(HandshakeFragment(1, 0, 0, 0, 0, b"")) == "buffered"
    assert r.pop() == ReassembledMessage(1, 0, b"")
    with pytest.raises(ValueError):
        Reassembler(max_ahead=0)
    with pytest.raises(ValueError):
        r.reset(-1)


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 30)), max_size=60))
def test_memory_bounded_by_window(items: list[tuple[int, int]]) -> None:
    r = Reassembler(next_seq=0, max_ahead=5)
    for seq, size in items:
        body = bytes([seq]) * size  # consistent content per message
        result = r.add(HandshakeFragment(1, 31, seq, 1, size, body))
        assert result == ("buffered" if seq < 5 else "dropped")
        assert r.pending <= 5
        assert r.pop() is None  # byte 0 of every message is missing


def test_conflicting_fragments_rejected() -> None:
    r = Reassembler()
    r.add(HandshakeFragment(1, 10, 0, 0, 4, b"abcd"))
    r.add(HandshakeFragment(1, 10, 0, 6, 4, b"ghij"))
    with pytest.raises(IllegalParameter):
        r.add(HandshakeFragment(2, 10, 0, 4, 2, b"ef"))  # other msg_type
    with pytest.raises(IllegalParameter):
        r.add(HandshakeFragment(1, 11, 0, 4, 2, b"ef"))  # other length
    with pytest.raises(IllegalParameter):
        r.add(HandshakeFragment(1, 10, 0, 3, 2, b"Xe"))  # overlap disagrees
    with pytest.raises(IllegalParameter):  # agrees with the first range, not the second
        r.add(HandshakeFragment(1, 10, 0, 0, 10, b"abcdefghiX"))
    # Agreeing overlaps and exact duplicates are fine, and rejected fragments left no trace.
    assert r.add(HandshakeFragment(1, 10, 0, 2, 3, b"cde")) == "buffered"
    assert r.add(HandshakeFragment(1, 10, 0, 0, 4, b"abcd")) == "buffered"
    assert r.pop() is None  # byte 5 is still missing
    assert r.add(HandshakeFragment(1, 10, 0, 5, 1, b"f")) == "buffered"
    # A complete but not yet popped message still refuses contradictions.
    with pytest.raises(IllegalParameter):
        r.add(HandshakeFragment(1, 10, 0, 9, 1, b"Z"))
    assert r.pop() == ReassembledMessage(1, 0, b"abcdefghij")


@given(st.binary(min_size=2, max_size=300), st.data())
def test_disagreeing_overlap_always_detected(body: bytes, data: st.DataObject) -> None:
    n = len(body)
    a1 = data.draw(st.integers(0, n - 1))
    b1 = data.draw(st.integers(a1 + 1, n))
    a2 = data.draw(st.integers(0, b1 - 1))
    b2 = data.draw(st.integers(max(a2, a1) + 1, n))
    flip = data.draw(st.integers(max(a1, a2), min(b1, b2) - 1))  # inside the overlap
    tampered = bytearray(body)
    tampered[flip] ^= data.draw(st.integers(1, 255))
    r = Reassembler()
    first_is_genuine = data.draw(st.booleans())
    first, second = (body, bytes(tampered)) if first_is_genuine else (bytes(tampered), body)
    r.add(HandshakeFragment(1, n, 0, a1, b1 - a1, first[a1:b1]))
    with pytest.raises(IllegalParameter):
        r.add(HandshakeFragment(1, n, 0, a2, b2 - a2, second[a2:b2]))


def test_memory_follows_the_bytes_received_not_the_declared_length() -> None:
    """A fragment declaring a 64 KiB message used to allocate 64 KiB at once; now only what
    arrived is held (plus PIECE_OVERHEAD per piece), and the accounting returns to zero."""
    r = Reassembler()
    assert r.add(HandshakeFragment(11, MAX_HANDSHAKE_MESSAGE, 0, 30_000, 10, bytes(10))) == (
        "buffered"
    )
    assert r.buffered_bytes == 10 + PIECE_OVERHEAD
    assert r.add(HandshakeFragment(11, MAX_HANDSHAKE_MESSAGE, 0, 30_005, 10, bytes(10))) == (
        "buffered"
    )
    assert r.buffered_bytes == 15 + 2 * PIECE_OVERHEAD  # only the 5 new bytes are stored
    r.reset(0)
    assert r.buffered_bytes == 0
    body = bytes(range(256)) * 8
    for fragment in reversed(fragment_message(11, 0, body, 100)):
        assert r.add(fragment) == "buffered"
    assert r.pop() == ReassembledMessage(11, 0, body)
    assert r.buffered_bytes == 0


def test_per_association_bounds_drop_what_exceeds_them() -> None:
    """Per association: at most max_bytes accounted bytes and messages of max_length; what
    exceeds a bound is dropped (RFC 6347 §4.1.2.7) and counted, never an error."""
    assert MAX_REASSEMBLY_BYTES >= MAX_HANDSHAKE_MESSAGE + PIECE_OVERHEAD
    r = Reassembler(max_bytes=1000, max_length=600)
    assert r.add(HandshakeFragment(11, 601, 0, 0, 10, bytes(10))) == "dropped"
    assert r.add(HandshakeFragment(11, 600, 0, 0, 500, bytes(500))) == "buffered"
    assert r.add(HandshakeFragment(11, 600, 1, 0, 500, bytes(500))) == "dropped"  # 1128 > 1000
    assert r.add(HandshakeFragment(11, 600, 1, 0, 300, bytes(300))) == "buffered"
    assert r.buffered_bytes == 800 + 2 * PIECE_OVERHEAD and r.dropped == 2
    assert r.add(HandshakeFragment(11, 600, 0, 500, 100, bytes(100))) == "dropped"
    assert r.add(HandshakeFragment(11, 600, 0, 500, 8, bytes(8))) == "buffered"  # 1000: fits


@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5000), st.integers(0, 200)), max_size=80)
)
def test_accounting_never_exceeds_max_bytes(items: list[tuple[int, int, int]]) -> None:
    r = Reassembler(max_ahead=4, max_bytes=4000)
    for seq, offset, size in items:
        body = bytes((offset + i) % 251 for i in range(size))  # consistent bytes per position
        r.add(HandshakeFragment(1, 5200, seq, offset, size, body))
        assert r.buffered_bytes <= 4000
