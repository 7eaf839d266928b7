"""Delegation wire format (spec/delegation.md): known bytes, round trips, decode rules, fuzz."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d2tls.core.delegation import (
    MAX_MESSAGE_SIZE,
    MAX_REQUEST_ID,
    NO_REQUEST_ID,
    DelegationError,
    DelegationErrorCode,
    DelegationMessage,
    DelegationMode,
    DelegationProtocolError,
    DelegationRequest,
    MessageType,
    OcspStatus,
    SessionContext,
    SignRequest,
    SignResponse,
    Wiped,
    decode_message,
    encode_message,
    error_for,
)
from d2tls.core.errors import D2TLSError

MALFORMED = DelegationErrorCode.MALFORMED
UNSUPPORTED = DelegationErrorCode.UNSUPPORTED
RID = 0x01020304  # a request_id that needs a 4-byte argument
RAW_KEY = (
    ec.generate_private_key(ec.SECP256R1())
    .public_key()
    .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
)


def cbor(value: object) -> bytes:
    """Deterministic encoding of a hand-built map (to craft invalid messages)."""
    data: bytes = cbor2.dumps(value, canonical=True)
    return data


def reject(data: bytes) -> DelegationProtocolError:
    with pytest.raises(DelegationProtocolError) as info:
        decode_message(data)
    return info.value


# --------------------------------------------------------------------------- valid messages

REQUEST = DelegationRequest(
    request_id=1,
    server_host="cloud.example",
    server_port=5684,
    server_name="cloud.example",
    cipher_suites=(0xC0AE,),
    certificate_chain=(bytes.fromhex("3003020101"),),
    mode=DelegationMode.BOUND,
    client_random=bytes(range(32)),
)
SIGN_REQUEST = SignRequest(request_id=2, digest=b"\xaa" * 32, transcript=b"\x01\x02\x03")
SIGN_RESPONSE = SignResponse(request_id=2, signature=bytes.fromhex("3006020101020102"))
CONTEXT = SessionContext(
    request_id=2,
    session_id=b"\x11" * 4,
    master_secret=b"\x22" * 48,
    cipher_suite=0xC0AE,
    extended_master_secret=True,
    server_certificates=(b"\x30\x00",),
    lifetime=86400,
    ocsp_status=OcspStatus.GOOD,
)
ERROR = DelegationError(request_id=2, code=DelegationErrorCode.SIGNING_REFUSED, reason="no")
WIPED = Wiped(request_id=2)

# Hand-computed deterministic CBOR (RFC 8949 §4.2.1); "|" separates key/value pairs.
KNOWN: list[tuple[DelegationMessage, str]] = [
    (
        REQUEST,
        "a9"  # map(9)
        "|0001"  # 0: type 1
        "|0101"  # 1: request_id 1
        "|02 6d 636c6f75642e6578616d706c65"  # 2: tstr(13) "cloud.example"
        "|03 19 1634"  # 3: uint16 5684
        "|04 6d 636c6f75642e6578616d706c65"  # 4: tstr(13) "cloud.example"
        "|05 81 19c0ae"  # 5: [0xC0AE]
        "|06 81 45 3003020101"  # 6: [bstr(5)]
        "|07 00"  # 7: mode bound
        "|08 5820 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",  # 8: bstr(32)
    ),
    (
        SIGN_REQUEST,
        "a4"  # map(4)
        "|0002|0102"  # type 2, request_id 2
        f"|09 5820 {'aa' * 32}"  # 9: digest bstr(32)
        "|0a 43 010203",  # 10: transcript bstr(3)
    ),
    (SIGN_RESPONSE, "a3|0003|0102|0b 48 3006020101020102"),  # 11: signature bstr(8)
    (
        CONTEXT,
        "a9"  # map(9)
        "|0004|0102"  # type 4, request_id 2
        "|0c 44 11111111"  # 12: session_id bstr(4)
        f"|0d 5830 {'22' * 48}"  # 13: master_secret bstr(48)
        "|0e 19c0ae"  # 14: cipher_suite
        "|0f f5"  # 15: true
        "|10 81 42 3000"  # 16: [bstr(2)]
        "|11 1a 00015180"  # 17: lifetime 86400 (uint32)
        "|12 01",  # 18: ocsp good
    ),
    (ERROR, "a4|0005|0102|13 07|14 62 6e6f"),  # 19: code 7; 20: tstr(2) "no"
    (WIPED, "a2|0006|0102"),
]


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace("|", "").replace(" ", ""))


@pytest.mark.parametrize(("message", "expected"), KNOWN, ids=lambda v: type(v).__name__)
def test_known_encoding(message: DelegationMessage, expected: str) -> None:
    assert encode_message(message) == unhex(expected)
    assert decode_message(unhex(expected)) == message
    assert cbor2.dumps(cbor2.loads(unhex(expected)), canonical=True) == unhex(expected)


def test_decoded_fields_have_precise_types() -> None:
    request = decode_message(encode_message(REQUEST))
    assert isinstance(request, DelegationRequest)
    assert request.mode is DelegationMode.BOUND
    assert isinstance(request.cipher_suites, tuple) and isinstance(request.certificate_chain, tuple)
    context = decode_message(encode_message(CONTEXT))
    assert isinstance(context, SessionContext)
    assert context.ocsp_status is OcspStatus.GOOD and context.extended_master_secret is True
    error = decode_message(encode_message(ERROR))
    assert isinstance(error, DelegationError) and error.code is DelegationErrorCode.SIGNING_REFUSED


def test_message_types() -> None:
    types = [
        DelegationRequest.TYPE,
        SignRequest.TYPE,
        SignResponse.TYPE,
        SessionContext.TYPE,
        DelegationError.TYPE,
        Wiped.TYPE,
    ]
    assert types == list(MessageType)
    assert [int(t) for t in MessageType] == [1, 2, 3, 4, 5, 6]


def test_blind_request_and_optional_transcript() -> None:
    blind = dataclasses.replace(REQUEST, mode=DelegationMode.BLIND, client_random=None)
    data = encode_message(blind)
    assert 8 not in cbor2.loads(data)
    assert decode_message(data) == blind
    bare = SignRequest(5, b"\x00" * 32)
    assert cbor2.loads(encode_message(bare)) == {0: 2, 1: 5, 9: b"\x00" * 32}
    assert decode_message(encode_message(bare)) == bare


def test_limits_accepted() -> None:
    accepted: list[DelegationMessage] = [
        dataclasses.replace(WIPED, request_id=MAX_REQUEST_ID),
        DelegationError(NO_REQUEST_ID, DelegationErrorCode.MALFORMED, "x" * 256),
        DelegationError(1, DelegationErrorCode.UNSUPPORTED, ""),
        dataclasses.replace(REQUEST, server_host="h" * 253, server_port=65535, server_name="é"),
        dataclasses.replace(REQUEST, cipher_suites=tuple(range(16)), server_port=1),
        dataclasses.replace(REQUEST, certificate_chain=(b"c" * 3000, b"d" * 3000, b"e", b"f")),
        dataclasses.replace(SIGN_RESPONSE, signature=b"s" * 80),
        dataclasses.replace(
            CONTEXT, session_id=b"i" * 32, server_certificates=(), lifetime=7 * 24 * 3600
        ),
        dataclasses.replace(CONTEXT, lifetime=0, ocsp_status=OcspStatus.NOT_CHECKED),
        dataclasses.replace(SIGN_REQUEST, transcript=b"t" * (MAX_MESSAGE_SIZE - 60)),
    ]
    for message in accepted:
        assert decode_message(encode_message(message)) == message


# --------------------------------------------------------------------------- round trips

request_ids = st.integers(1, MAX_REQUEST_ID)
certificates = st.binary(min_size=1, max_size=600)
hosts = st.text(min_size=1, max_size=253)


@st.composite
def delegation_requests(draw: st.DrawFn) -> DelegationRequest:
    mode = draw(st.sampled_from(DelegationMode))
    if draw(st.booleans()):  # the chain by its hash (spec/delegation.md §5.2, key 22)
        return DelegationRequest(
            request_id=draw(request_ids),
            server_host=draw(hosts),
            server_port=draw(st.integers(1, 65535)),
            server_name=draw(hosts),
            cipher_suites=(0xC0AE,),
            certificate_chain=(),
            mode=mode,
            client_random=b"r" * 32 if mode is DelegationMode.BOUND else None,
            certificate_chain_hash=draw(st.binary(min_size=32, max_size=32)),
            server_certificate_hash=(
                draw(st.none() | st.binary(min_size=32, max_size=32))
                if mode is DelegationMode.BOUND
                else None
            ),
        )
    return DelegationRequest(
        request_id=draw(request_ids),
        server_host=draw(hosts),
        server_port=draw(st.integers(1, 65535)),
        server_name=draw(hosts),
        cipher_suites=tuple(draw(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=16))),
        certificate_chain=tuple(draw(st.lists(certificates, min_size=1, max_size=4))),
        mode=mode,
        client_random=draw(st.binary(min_size=32, max_size=32))
        if mode is DelegationMode.BOUND
        else None,
    )


messages: st.SearchStrategy[DelegationMessage] = st.one_of(
    delegation_requests(),
    st.builds(
        SignRequest,
        request_id=request_ids,
        digest=st.binary(min_size=32, max_size=32),
        transcript=st.none() | st.binary(min_size=1, max_size=4000),
    ),
    st.builds(
        SignRequest,
        request_id=request_ids,
        digest=st.binary(min_size=32, max_size=32),
        compact_transcript=st.binary(min_size=1, max_size=4000),
    ),
    st.builds(SignResponse, request_id=request_ids, signature=st.binary(min_size=8, max_size=80)),
    st.builds(
        SessionContext,
        request_id=request_ids,
        session_id=st.binary(min_size=1, max_size=32),
        master_secret=st.binary(min_size=48, max_size=48),
        cipher_suite=st.integers(0, 0xFFFF),
        extended_master_secret=st.booleans(),
        server_certificates=st.lists(certificates, max_size=4).map(tuple),
        lifetime=st.integers(0, 7 * 24 * 3600),
        ocsp_status=st.sampled_from(OcspStatus),
    ),
    st.builds(
        DelegationError,
        request_id=st.integers(0, MAX_REQUEST_ID),
        code=st.sampled_from(DelegationErrorCode),
        reason=st.text(max_size=256),
    ),
    st.builds(Wiped, request_id=request_ids),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_round_trip(message: DelegationMessage) -> None:
    data = encode_message(message)
    assert len(data) <= MAX_MESSAGE_SIZE
    assert decode_message(data) == message
    assert cbor2.dumps(cbor2.loads(data), canonical=True) == data  # deterministic per cbor2


def test_spec_cddl_accepts_our_encodings() -> None:
    """spec/delegation.md's CDDL parses and matches the codec (pycddl is a test dependency)."""
    import pycddl

    spec = (Path(__file__).parent.parent / "spec" / "delegation.md").read_text()
    schema = pycddl.Schema(spec.split("```cddl\n", 1)[1].split("```", 1)[0])
    for _, expected in KNOWN:
        schema.validate_cbor(unhex(expected))
    blind = dataclasses.replace(REQUEST, mode=DelegationMode.BLIND, client_random=None)
    hashed = dataclasses.replace(REQUEST, certificate_chain=(), certificate_chain_hash=b"h" * 32)
    more: list[DelegationMessage] = [
        blind,
        hashed,
        dataclasses.replace(hashed, mode=DelegationMode.BLIND, client_random=None),
        dataclasses.replace(hashed, server_certificate_hash=b"s" * 32),
        dataclasses.replace(REQUEST, server_certificate_hash=b"s" * 32),
        SignRequest(1, b"d" * 32),
        SignRequest(1, b"d" * 32, compact_transcript=b"t" * 300),
        dataclasses.replace(CONTEXT, server_certificates=()),
        DelegationError(7, DelegationErrorCode.UNKNOWN_CHAIN, "send the chain"),
        Wiped(MAX_REQUEST_ID),
    ]
    for message in more:
        schema.validate_cbor(encode_message(message))


# --------------------------------------------------------------------------- decode rules

WIPED_MAP: dict[int, Any] = {0: 6, 1: RID}


def with_(message: DelegationMessage, **changes: Any) -> bytes:
    """The encoding of ``message`` with some wire fields replaced (None deletes)."""
    items: dict[int, Any] = cbor2.loads(encode_message(message))
    for key, value in changes.items():
        number = int(key[1:])
        if value is None:
            items.pop(number, None)
        else:
            items[number] = value
    return cbor(items)


REQ = dataclasses.replace(REQUEST, request_id=RID)
SREQ = dataclasses.replace(SIGN_REQUEST, request_id=RID)
SRESP = dataclasses.replace(SIGN_RESPONSE, request_id=RID)
CTX = dataclasses.replace(CONTEXT, request_id=RID)
ERR = dataclasses.replace(ERROR, request_id=RID)
BLIND = dataclasses.replace(REQ, mode=DelegationMode.BLIND, client_random=None)

# Well-formed maps whose fields break a rule; all MALFORMED, all with a readable request_id.
FIELD_CASES: dict[str, bytes] = {
    # unknown and missing keys
    "unknown key": cbor({**WIPED_MAP, 21: 0}),
    "unknown key of another message": cbor({**WIPED_MAP, 9: b"\x00" * 32}),
    "missing signature": with_(SRESP, k11=None),
    "missing digest": with_(SREQ, k9=None),
    "missing server_name": with_(REQ, k4=None),
    "missing master_secret": with_(CTX, k13=None),
    "missing reason": with_(ERR, k20=None),
    "missing type": cbor({1: RID}),
    # wrong types: bool is not uint, bytes is not text
    "type is a bool": cbor({0: True, 1: RID}),
    "type is text": cbor({0: "6", 1: RID}),
    "port is a bool": with_(REQ, k3=True),
    "mode is a bool": with_(REQ, k7=False),
    "host is bytes": with_(REQ, k2=b"cloud.example"),
    "server_name is bytes": with_(REQ, k4=b"cloud.example"),
    "digest is text": with_(SREQ, k9="a" * 32),
    "signature is an array": with_(SRESP, k11=[b"\x30" * 8]),
    "ems is an integer": with_(CTX, k15=1),
    "cipher suites is a uint": with_(REQ, k5=0xC0AE),
    "cipher suite is a bool": with_(REQ, k5=[True]),
    "cipher suite is bytes": with_(REQ, k5=[b"\xc0\xae"]),
    "chain entry is text": with_(REQ, k6=["cert"]),
    "server certificates is bytes": with_(CTX, k16=b"\x30\x00"),
    "reason is bytes": with_(ERR, k20=b"no"),
    "code is text": with_(ERR, k19="SIGNING_REFUSED"),
    "lifetime is a bool": with_(CTX, k17=True),
    # out-of-range values and lengths
    "port 0": with_(REQ, k3=0),
    "port 65536": with_(REQ, k3=65536),
    "empty host": with_(REQ, k2=""),
    "host 254 chars": with_(REQ, k2="h" * 254),
    "empty server_name": with_(REQ, k4=""),
    "server_name 254 chars": with_(REQ, k4="é" * 254),
    "no cipher suites": with_(REQ, k5=[]),
    "17 cipher suites": with_(REQ, k5=list(range(17))),
    "cipher suite > uint16": with_(REQ, k5=[0x10000]),
    "empty chain": with_(REQ, k6=[]),
    "5 certificates": with_(REQ, k6=[b"c"] * 5),
    "empty certificate": with_(REQ, k6=[b""]),
    "certificate 4097 bytes": with_(REQ, k6=[b"c" * 4097]),
    "mode 2": with_(REQ, k7=2),
    "client_random 31 bytes": with_(REQ, k8=b"r" * 31),
    "client_random 33 bytes": with_(REQ, k8=b"r" * 33),
    "bound without client_random": with_(REQ, k8=None),
    "blind with client_random": with_(BLIND, k8=b"r" * 32),
    "digest 31 bytes": with_(SREQ, k9=b"d" * 31),
    "digest 33 bytes": with_(SREQ, k9=b"d" * 33),
    "empty transcript": with_(SREQ, k10=b""),
    "signature 7 bytes": with_(SRESP, k11=b"s" * 7),
    "signature 81 bytes": with_(SRESP, k11=b"s" * 81),
    "empty session_id": with_(CTX, k12=b""),
    "session_id 33 bytes": with_(CTX, k12=b"i" * 33),
    "master_secret 47 bytes": with_(CTX, k13=b"m" * 47),
    "master_secret 49 bytes": with_(CTX, k13=b"m" * 49),
    "cipher_suite > uint16": with_(CTX, k14=0x10000),
    "5 server certificates": with_(CTX, k16=[b"c"] * 5),
    "empty server certificate": with_(CTX, k16=[b""]),
    "server certificate 4097 bytes": with_(CTX, k16=[b"c" * 4097]),
    "lifetime over 7 days": with_(CTX, k17=7 * 24 * 3600 + 1),
    "ocsp_status 2 (revoked has no context)": with_(CTX, k18=2),
    "error code 0": with_(ERR, k19=0),
    "error code 13": with_(ERR, k19=13),
    # certificate_chain_hash (22) and compact_transcript (23)
    "chain hash 31 bytes": with_(REQ, k6=None, k22=b"h" * 31),
    "chain hash 33 bytes": with_(REQ, k6=None, k22=b"h" * 33),
    "chain hash is text": with_(REQ, k6=None, k22="h" * 32),
    "chain hash is an array": with_(REQ, k6=None, k22=[b"h" * 32]),
    "chain hash and chain": with_(REQ, k22=b"h" * 32),
    "chain hash and raw key": with_(REQ, k6=None, k22=b"h" * 32, k21=RAW_KEY),
    "chain hash in a SignRequest": with_(SREQ, k22=b"h" * 32),
    "compact transcript and transcript": with_(SREQ, k23=b"t"),
    "empty compact transcript": with_(SREQ, k10=None, k23=b""),
    "compact transcript 65537 bytes": with_(SREQ, k10=None, k23=b"t" * 65537),
    "compact transcript is text": with_(SREQ, k10=None, k23="t"),
    "compact transcript in a DelegationRequest": with_(REQ, k23=b"t"),
    # server_certificate_hash (24)
    "server certificate hash 31 bytes": with_(REQ, k24=b"s" * 31),
    "server certificate hash is text": with_(REQ, k24="s" * 32),
    "server certificate hash in blind mode": with_(BLIND, k24=b"s" * 32),
    "server certificate hash in a SignRequest": with_(SREQ, k24=b"s" * 32),
    "reason 257 chars": with_(ERR, k20="r" * 257),
}


@pytest.mark.parametrize("data", FIELD_CASES.values(), ids=FIELD_CASES.keys())
def test_invalid_fields_are_malformed(data: bytes) -> None:
    error = reject(data)
    assert error.code is MALFORMED
    assert error.request_id == RID
    assert error_for(error) == DelegationError(RID, MALFORMED, error.reason)


@pytest.mark.parametrize("request_id", [0, MAX_REQUEST_ID + 1, 2**64 - 1])
def test_request_id_out_of_range(request_id: int) -> None:
    error = reject(cbor({0: 6, 1: request_id}))
    assert (error.code, error.request_id) == (MALFORMED, None)
    assert error_for(error).request_id == NO_REQUEST_ID


def test_request_id_zero_only_in_errors() -> None:
    refused: list[DelegationMessage] = [
        dataclasses.replace(REQUEST, request_id=0),
        dataclasses.replace(SIGN_REQUEST, request_id=0),
        dataclasses.replace(SIGN_RESPONSE, request_id=0),
        dataclasses.replace(CONTEXT, request_id=0),
        Wiped(0),
    ]
    for message in refused:
        with pytest.raises(ValueError, match="request_id"):
            encode_message(message)
    assert decode_message(cbor({0: 5, 1: 0, 19: 1, 20: ""})) == DelegationError(0, MALFORMED, "")


# Structural rules: raw bytes that are not in our CBOR profile.
STRUCTURE_CASES: dict[str, tuple[str, int | None]] = {
    "empty input": ("", None),
    "top level is an array": ("82 00 06", None),
    "top level is a uint": ("06", None),
    "top level is text": ("61 61", None),
    "top-level datetime tag": ("c0 74 323031332d30332d32315432303a30343a30305a", None),
    "tag around the message": ("d818 45 a200060102", None),
    "break byte": ("ff", None),
    "indefinite map": ("bf 0006 011a01020304 ff", None),
    "indefinite array": ("a3 0001 011a01020304 05 9f 19c0ae ff", RID),
    "indefinite byte string": ("a3 0003 011a01020304 0b 5f 48 3006020101020102 ff", RID),
    "indefinite text string": ("a3 0005 011a01020304 14 7f 61 61 ff", RID),
    "text key": ("a2 0006 61 61 01", None),
    "negative key": ("a2 0006 20 01", None),
    "bytes key": ("a2 0006 41 01 01", None),
    "negative request_id": ("a2 0006 01 20", None),
    "bignum tag as request_id": ("a2 0006 01 c2 41 05", None),
    "bignum tag as port": ("a3 0006 011a01020304 03 c2 42 1634", RID),
    "epoch datetime tag as lifetime": ("a3 0006 011a01020304 11 c1 1a 5f5e1000", RID),
    "self-described cbor tag": ("a3 0006 011a01020304 02 d9d9f7 00", RID),
    "half float": ("a2 0006 01 f9 3c00", None),
    "single float": ("a3 0006 011a01020304 11 fa 47c35000", RID),
    "double float": ("a3 0006 011a01020304 11 fb 40f5180000000000", RID),
    "null (not the same as absent)": ("a4 0002 011a01020304 09 5820" + "dd" * 32 + "0a f6", RID),
    "undefined": ("a3 0006 011a01020304 0f f7", RID),
    "simple value 16": ("a3 0006 011a01020304 0f f0", RID),
    "two-byte simple value": ("a3 0006 011a01020304 0f f8 20", RID),
    "reserved additional info": ("a3 0006 011a01020304 0f 1c", RID),
    "duplicate key, same value": ("a3 0006 011a01020304 011a01020304", RID),
    "duplicate key, other value": ("a3 0006 011a01020304 0107", RID),
    "duplicate type": ("a3 0006 0006 011a01020304", None),
    "trailing byte": ("a2 0006 011a01020304 00", RID),
    "two messages": ("a2 0006 011a01020304 a2 0006 011a01020304", RID),
    "truncated map": ("a3 0006 011a01020304", RID),
    "truncated uint": ("a2 0006 011a010203", None),
    "truncated byte string": ("a3 0003 011a01020304 0b 48 30060201", RID),
    "huge byte string length": ("a3 0003 011a01020304 0b 5b ffffffffffffffff", RID),
    "huge array count": ("a3 0001 011a01020304 05 9b ffffffffffffffff 00", RID),
    "huge map count": ("bb ffffffffffffffff 0006", None),
    "array in array": ("a3 0001 011a01020304 05 81 81 19c0ae", RID),
    "map as value": ("a3 0006 011a01020304 15 a1 0000", RID),
    "map in array": ("a3 0001 011a01020304 06 81 a1 0000", RID),
    "deep nesting": ("a3 0006 011a01020304 15" + "81" * 5000 + "00", RID),
    "invalid UTF-8": ("a3 0005 011a01020304 14 62 c328", RID),
    "UTF-8 surrogate": ("a3 0005 011a01020304 14 63 eda080", RID),
    # not the deterministic encoding (RFC 8949 §4.2.1)
    "non-minimal uint": ("a2 0006 011b0000000001020304", RID),
    "non-minimal type": ("a2 00 1806 011a01020304", RID),
    "non-minimal key": ("a2 0006 18 01 1a01020304", RID),
    "non-minimal length": ("a3 0003 011a01020304 0b 58 08 3006020101020102", RID),
    "non-minimal map count": ("b8 02 0006 011a01020304", RID),
    "keys out of order": ("a2 011a01020304 0006", RID),
}


@pytest.mark.parametrize(
    ("data", "request_id"), STRUCTURE_CASES.values(), ids=STRUCTURE_CASES.keys()
)
def test_structure_rules(data: str, request_id: int | None) -> None:
    error = reject(unhex(data))
    assert error.code is MALFORMED, error.reason
    assert error.request_id == request_id
    reply = error_for(error)
    assert reply.request_id == (NO_REQUEST_ID if request_id is None else request_id)
    assert decode_message(encode_message(reply)) == reply


def test_cbor2_alone_is_too_lenient() -> None:
    """Why the scanner and the canonical check exist (cbor2 accepts all of these)."""
    lenient = {
        "a3 0006 0102 0103": {0: 6, 1: 3},  # duplicate key: the last one wins
        "a2 0006 01 c2 41 05": {0: 6, 1: 5},  # bignum tag: becomes an int
        "a2 0006 0102 00": {0: 6, 1: 2},  # trailing bytes: ignored
        "a2 0006 01 1a00000002": {0: 6, 1: 2},  # non-minimal argument: accepted
    }
    for data, value in lenient.items():
        assert cbor2.loads(unhex(data)) == value
        assert reject(unhex(data)).code is MALFORMED


@pytest.mark.parametrize("kind", [0, 7, 23, 255, 2**32, 2**64 - 1])
def test_unknown_message_type_is_unsupported(kind: int) -> None:
    error = reject(cbor({0: kind, 1: RID, 99: "future field"}))
    assert (error.code, error.request_id) == (UNSUPPORTED, RID)
    assert error_for(error).code is UNSUPPORTED


def test_oversized_message() -> None:
    data = cbor({0: 2, 1: RID, 9: b"d" * 32, 10: b"t" * MAX_MESSAGE_SIZE})
    assert len(data) > MAX_MESSAGE_SIZE
    error = reject(data)
    assert (error.code, error.request_id) == (MALFORMED, RID)
    assert "exceeds" in error.reason
    huge = reject(b"\xa2\x00\x06\x01\x1a\x01\x02\x03\x04" + b"\x00" * 10_000_000)
    assert (huge.code, huge.request_id) == (MALFORMED, RID)


def test_request_id_recovered_only_when_readable() -> None:
    # readable before the problem, wherever the problem is
    assert reject(with_(SRESP, k11=b"")).request_id == RID
    assert reject(unhex("a3 0003 011a01020304 0b c2")).request_id == RID
    # unreadable: missing, wrong type, or behind the problem
    assert reject(cbor({0: 6})).request_id is None
    assert reject(cbor({0: 6, 1: True})).request_id is None
    assert reject(cbor({0: 6, 1: b"\x01"})).request_id is None
    assert reject(unhex("a3 0006 15 f6 011a01020304")).request_id is None
    assert reject(b"\x00garbage").request_id is None


def test_error_for_truncates_long_reasons() -> None:
    reply = error_for(DelegationProtocolError(MALFORMED, "x" * 1000, 9))
    assert reply == DelegationError(9, MALFORMED, "x" * 256)
    assert decode_message(encode_message(reply)) == reply


def test_protocol_error_is_a_d2tls_error() -> None:
    error = DelegationProtocolError(DelegationErrorCode.BUSY, "try later")
    assert isinstance(error, D2TLSError)
    assert (error.code, error.reason, error.request_id) == (error.code.BUSY, "try later", None)


def test_decode_accepts_bytes_like() -> None:
    data = encode_message(WIPED)
    assert decode_message(bytearray(data)) == WIPED  # type: ignore[arg-type]
    assert decode_message(memoryview(data)) == WIPED  # type: ignore[arg-type]


# --------------------------------------------------------------------------- encoding checks

INVALID_OBJECTS: dict[str, Any] = {
    "request_id 2^32": Wiped(MAX_REQUEST_ID + 1),
    "request_id is a bool": Wiped(True),
    "host is bytes": dataclasses.replace(REQUEST, server_host=b"h"),  # type: ignore[arg-type]
    "bound without random": dataclasses.replace(REQUEST, client_random=None),
    "blind with random": dataclasses.replace(REQUEST, mode=DelegationMode.BLIND),
    "mode is an int": dataclasses.replace(REQUEST, mode=7),  # type: ignore[arg-type]
    "digest 31 bytes": SignRequest(1, b"d" * 31),
    "master secret 47 bytes": dataclasses.replace(CONTEXT, master_secret=b"m" * 47),
    "ems is an int": dataclasses.replace(CONTEXT, extended_master_secret=1),  # type: ignore[arg-type]
    "ocsp revoked": dataclasses.replace(CONTEXT, ocsp_status=2),
    "reason too long": DelegationError(1, MALFORMED, "r" * 257),
    "code unknown": DelegationError(1, 42, "r"),  # type: ignore[arg-type]
    "over 16 KiB": dataclasses.replace(REQUEST, certificate_chain=(b"c" * 4096,) * 4),
    "transcript over 16 KiB": SignRequest(1, b"d" * 32, b"t" * 20000),
}


@pytest.mark.parametrize("message", INVALID_OBJECTS.values(), ids=INVALID_OBJECTS.keys())
def test_encode_refuses_invalid_messages(message: DelegationMessage) -> None:
    with pytest.raises(ValueError):
        encode_message(message)


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(TypeError):
        encode_message({0: 6, 1: 1})  # type: ignore[arg-type]


def test_repr_hides_master_secret() -> None:
    secret = bytes(range(100, 148))
    context = dataclasses.replace(CONTEXT, master_secret=secret)
    text = repr(context) + str(context)
    assert secret.hex() not in text
    assert repr(secret) not in text
    assert " master_secret=" not in text
    assert "session_id" in text


# --------------------------------------------------------------------------- fuzz


def decode_or_reject(data: bytes) -> None:
    """The only allowed outcomes: a message that re-encodes to ``data``, or the typed error."""
    try:
        message = decode_message(data)
    except DelegationProtocolError as error:
        assert isinstance(error.code, DelegationErrorCode)
        assert error.code in (MALFORMED, UNSUPPORTED)
        assert error.request_id is None or 1 <= error.request_id <= MAX_REQUEST_ID
        encode_message(error_for(error))
    else:
        assert encode_message(message) == data


@settings(max_examples=1000)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    decode_or_reject(data)


@settings(max_examples=300)
@given(st.binary(max_size=64).map(lambda tail: b"\xa3\x00\x06\x01\x02" + tail))
def test_fuzz_map_prefix(data: bytes) -> None:
    decode_or_reject(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(encode_message(draw(messages)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if action == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and data:
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=9))
        elif action == "delete" and data:
            del data[position : position + draw(st.integers(1, 9))]
        elif action == "truncate":
            del data[position:]
    return bytes(data)


@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_encodings(data: bytes) -> None:
    decode_or_reject(data)


@settings(max_examples=300)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**70), 2**70)
        | st.floats()
        | st.binary(max_size=40)
        | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.integers(-2, 25), children, max_size=6)
        ),
        max_leaves=20,
    )
)
def test_fuzz_arbitrary_cbor(value: object) -> None:
    decode_or_reject(cbor2.dumps(value))
