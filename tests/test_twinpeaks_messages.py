"""TwinPeaks hierarchy messages (spec/twinpeaks.md §8): every kind round-trips and matches the
spec's CDDL, a lookup walks a real three-level hierarchy of keys made with the CL-PKC module
checking every signature, and hostile input yields typed errors, never a traceback."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d2tls.core.twinpeaks import clpkc, curve
from d2tls.core.twinpeaks import messages as m
from d2tls.core.twinpeaks.errors import (
    CrossCheckError,
    EncodingError,
    KeyValidationError,
    ResponseMismatch,
    SignatureError,
    StaleRecord,
    TwinPeaksError,
)

ROOT = Path(__file__).resolve().parents[1]
NOW = 1_700_000_000
FAR = NOW + 365 * 86400
LOOPBACK = ipaddress.ip_address("127.0.0.1")
RID = bytes(range(8))


# --------------------------------------------------------------------------- a hierarchy
class Server:
    """A key server in the test: its master key as KGC and its own key as a member."""

    def __init__(self, master: clpkc.MasterKey, key: clpkc.FullPrivateKey, port: int) -> None:
        self.master, self.key, self.port = master, key, port

    def record(
        self, kind: m.RecordType, name: str, subject: m.Subject | None, **kw: Any
    ) -> m.KeyRecord:
        fields: dict[str, Any] = {"issued_at": NOW, "ttl": 3600, "denial": None} | kw
        return m.KeyRecord(
            kind,
            name,
            LOOPBACK,
            self.key.identity,
            self.master.params,
            fields["issued_at"],
            fields["ttl"],
            subject,
            fields["denial"],
        )


def enrol(
    parent: clpkc.MasterKey, name: str, zone: clpkc.Params | None = None, port: int | None = None
) -> tuple[clpkc.FullPrivateKey, m.RegistrationRequest, m.RegistrationResponse]:
    """Registration as §8.2 has it, through the encoded messages."""
    secret = clpkc.set_secret_value(parent.params, parent.params.identity(name, LOOPBACK))
    request = m.RegistrationRequest.for_secret(m.new_request_id(), secret, zone, port)
    received = m.RegistrationRequest.decode(request.encode())
    partial = clpkc.extract_partial_private_key(parent, received.partial_key_request())
    response = m.RegistrationResponse.for_partial(received.request_id, partial, 1, NOW, FAR)
    got = m.RegistrationResponse.decode(response.encode())
    return clpkc.set_private_key(parent.params, secret, got.partial_private_key()), request, got


@cache
def hierarchy() -> dict[str, Any]:
    root_master = clpkc.setup(".")
    root_key, _, _ = enrol(root_master, "root-ks.test")
    root = Server(root_master, root_key, 5300)
    tlk_master = clpkc.setup("test")
    tlk = Server(tlk_master, enrol(root_master, "test", tlk_master.params, 5301)[0], 5301)
    slk_master = clpkc.setup("example.test")
    slk_key, request, response = enrol(tlk_master, "example.test", slk_master.params, 5302)
    slk = Server(slk_master, slk_key, 5302)
    alice = enrol(slk_master, "alice.example.test")[0]
    anchor = m.TrustAnchor(root_master.params, root_key.identity, root_key.x_point, root.port)
    return {
        "root": root,
        "tlk": tlk,
        "slk": slk,
        "alice": alice,
        "anchor": anchor,
        "request": request,
        "response": response,
    }


def subject_of(server: Server | None, key: clpkc.FullPrivateKey, serial: int = 1) -> m.Subject:
    zone, port = (server.master.params, server.port) if server else (None, None)
    return m.Subject(key.identity, key.x_point, key.q, serial, NOW, FAR, zone, port)


def responses() -> list[m.KeyResponse]:
    """The three responses of a cold lookup of alice.example.test (§8.3)."""
    h = hierarchy()
    root, tlk, slk = h["root"], h["tlk"], h["slk"]
    name = "alice.example.test"
    return [
        m.KeyResponse.signed(
            RID, root.record(m.RecordType.REFERRAL, name, subject_of(tlk, tlk.key)), root.key
        ),
        m.KeyResponse.signed(
            RID, tlk.record(m.RecordType.REFERRAL, name, subject_of(slk, slk.key)), tlk.key
        ),
        m.KeyResponse.signed(
            RID, slk.record(m.RecordType.ANSWER, name, subject_of(None, h["alice"])), slk.key
        ),
    ]


def samples() -> dict[str, m.Message]:
    h = hierarchy()
    alice: clpkc.FullPrivateKey = h["alice"]
    slk: Server = h["slk"]
    denial = slk.record(
        m.RecordType.DENIAL, "carol.example.test", None, denial=m.DenialReason.UNKNOWN_NAME
    )
    return {
        "tp-registration-request": h["request"],
        "tp-registration-response": h["response"],
        "tp-key-request": m.KeyRequest.of(RID, "alice.example.test", "127.0.0.1"),
        "tp-key-response": responses()[0],
        "tp-key-record": denial,
        "tp-key-update": m.KeyUpdate(
            RID, alice.identity, alice.x_point, 1, m.UpdateReason.ADDRESS_CHANGED
        ),
        "tp-status": m.Status(RID, m.StatusCode.UNAUTHORISED, "no association for this name"),
        "tp-outdated-key": m.OutdatedKey(RID, alice.identity, m.OutdatedReason.KEY_UPDATED, 2),
        "tp-invalidate": m.Invalidate(RID, "alice.example.test", ipaddress.ip_address("::1")),
        "tp-trust-anchor": h["anchor"],
    }


# --------------------------------------------------------------------------- round trips, CDDL
def test_every_kind_round_trips_and_is_dispatched() -> None:
    found = samples()
    assert {type(msg).KIND for msg in found.values()} == set(m.MessageKind)
    for msg in found.values():
        data = msg.encode()
        assert len(data) <= m.MAX_MESSAGE_SIZE
        assert type(msg).decode(data) == msg
        assert m.decode_message(data) == msg


def spec_cddl() -> str:
    spec = (ROOT / "spec" / "twinpeaks.md").read_text(encoding="utf-8")
    return "\n".join(part.split("```", 1)[0] for part in spec.split("```cddl\n")[1:])


def test_spec_cddl_accepts_every_message_and_tells_kinds_apart() -> None:
    import pycddl

    cddl = spec_cddl()
    found = samples()
    schemas = {rule: pycddl.Schema(f"root = {rule}\n{cddl}") for rule in found}
    for rule, msg in found.items():
        for other, schema in schemas.items():
            if other == rule:
                schema.validate_cbor(msg.encode())
            else:
                with pytest.raises(pycddl.ValidationError):
                    schema.validate_cbor(msg.encode())
    anchors = pycddl.Schema(f"root = tp-trust-anchors\n{cddl}")
    anchors.validate_cbor(cbor2.dumps([found["tp-trust-anchor"].encode()]))
    # The nested record of a response is itself checked against tp-key-record.
    bad = cbor2.loads(found["tp-key-response"].encode())
    bad[2] = cbor2.dumps({0: 9})
    with pytest.raises(pycddl.ValidationError):
        schemas["tp-key-response"].validate_cbor(cbor2.dumps(bad, canonical=True))


def test_registration_gives_the_child_a_working_key() -> None:
    h = hierarchy()
    tlk: Server = h["tlk"]
    slk: Server = h["slk"]
    assert h["request"].zone_params == slk.master.params and h["request"].port == 5302
    assert ", d=" not in repr(h["response"])  # the partial private key stays out of logs
    signature = clpkc.sign(slk.key, b"hello")
    clpkc.verify(tlk.master.params, slk.key.public_key, b"hello", signature)


# --------------------------------------------------------------------------- verification
def test_a_cold_lookup_verifies_from_the_anchor_down() -> None:
    """§8.5 step by step: each referral gives the key and params that check the next hop."""
    anchor: m.TrustAnchor = hierarchy()["anchor"]
    request = m.KeyRequest(RID, "alice.example.test", LOOPBACK)
    signer_params, signer, issuer = anchor.signer_params, anchor.public_key, anchor.params
    types = []
    for response in responses():
        received = m.KeyResponse.decode(response.encode())
        record = received.verify(request, signer_params, signer, NOW + 10, issuer_params=issuer)
        types.append(record.record_type)
        assert record.subject is not None
        if record.subject.zone_params is not None:
            signer_params, signer = record.issuer_params, record.subject.public_key
            issuer = record.subject.zone_params
    assert types == [m.RecordType.REFERRAL, m.RecordType.REFERRAL, m.RecordType.ANSWER]
    assert record.subject.q == hierarchy()["alice"].q


def test_verification_refuses_each_wrong_response() -> None:
    h = hierarchy()
    anchor: m.TrustAnchor = h["anchor"]
    root: Server = h["root"]
    tlk: Server = h["tlk"]
    request = m.KeyRequest(RID, "alice.example.test", LOOPBACK)
    good = responses()[0]
    args = (anchor.signer_params, anchor.public_key)
    good.verify(request, *args, NOW)
    with pytest.raises(ResponseMismatch, match="request ID"):
        good.verify(replace(request, request_id=bytes(8)), *args, NOW)
    with pytest.raises(ResponseMismatch, match="another name"):
        good.verify(replace(request, name="bob.example.test"), *args, NOW)
    with pytest.raises(StaleRecord, match="TTL"):
        good.verify(request, *args, NOW + 3600)
    with pytest.raises(StaleRecord, match="future"):
        good.verify(request, *args, NOW - 301)
    with pytest.raises(ResponseMismatch, match="issuer params"):
        good.verify(request, *args, NOW, issuer_params=tlk.master.params)
    # A response signed by a key server that is not the one asked (a non-parent).
    forged = m.KeyResponse.signed(RID, replace(good.record, signer=tlk.key.identity), tlk.key)
    with pytest.raises(ResponseMismatch, match="signed by test"):
        forged.verify(request, *args, NOW)
    # The signer field rewritten, the signature kept.
    with pytest.raises(SignatureError):
        replace(good, signature=responses()[1].signature).verify(request, *args, NOW)
    tampered = replace(good, record=replace(good.record, ttl=7200))
    with pytest.raises(SignatureError):
        tampered.verify(request, *args, NOW)
    # A correctly signed record whose Q is not bound to the subject's ID and X.
    subject = subject_of(tlk, tlk.key)
    wrong_q = replace(subject, q=curve.base_mul(7))
    record = root.record(m.RecordType.REFERRAL, "alice.example.test", wrong_q)
    with pytest.raises(KeyValidationError):
        m.KeyResponse.signed(RID, record, root.key).verify(request, *args, NOW)
    expired = replace(subject, not_after=NOW - 1, not_before=NOW - 10)
    record = root.record(m.RecordType.REFERRAL, "alice.example.test", expired)
    with pytest.raises(StaleRecord, match="validity"):
        m.KeyResponse.signed(RID, record, root.key).verify(request, *args, NOW)
    with pytest.raises(ResponseMismatch):
        m.KeyResponse.signed(RID, record, tlk.key)


def test_records_refuse_inconsistent_content() -> None:
    h = hierarchy()
    root: Server = h["root"]
    slk: Server = h["slk"]
    tlk: Server = h["tlk"]
    alice = subject_of(None, h["alice"])
    with pytest.raises(EncodingError, match="name and address asked"):
        slk.record(m.RecordType.ANSWER, "bob.example.test", alice)
    with pytest.raises(EncodingError, match="does not name the issuer params"):
        root.record(m.RecordType.ANSWER, "alice.example.test", alice)
    with pytest.raises(EncodingError, match="referral"):
        root.record(m.RecordType.REFERRAL, "alice.example.org", subject_of(tlk, tlk.key))
    with pytest.raises(EncodingError, match="referral"):
        slk.record(m.RecordType.REFERRAL, "x.alice.example.test", alice)
    with pytest.raises(EncodingError, match="denial"):
        slk.record(m.RecordType.DENIAL, "bob.example.test", None)
    with pytest.raises(EncodingError, match="not in zone"):
        slk.record(m.RecordType.DENIAL, "bob.test", None, denial=m.DenialReason.UNKNOWN_NAME)
    with pytest.raises(EncodingError, match="TTL"):
        slk.record(m.RecordType.ANSWER, "alice.example.test", alice, ttl=m.MAX_TTL + 1)
    with pytest.raises(EncodingError, match="zone"):
        subject_of(tlk, slk.key)  # a key server whose params name another zone
    with pytest.raises(EncodingError, match="request ID"):
        m.Status(b"short", m.StatusCode.OK)
    with pytest.raises(EncodingError, match="UpdateReason"):
        m.KeyUpdate(RID, alice.identity, alice.x_point, 1, 9)  # type: ignore[arg-type]


def test_cross_check_detects_a_compromised_root() -> None:
    """Section 2.5.1: a root that forges the chain ends at another key for the name."""
    h = hierarchy()
    slk: Server = h["slk"]
    honest = slk.record(m.RecordType.ANSWER, "alice.example.test", subject_of(None, h["alice"]))
    assert m.cross_check([honest, honest]) == honest
    forged_master = clpkc.setup("example.test")  # the compromised root's fake SLK server
    forged_key = enrol(forged_master, "alice.example.test")[0]
    forged = m.KeyRecord(
        m.RecordType.ANSWER,
        "alice.example.test",
        LOOPBACK,
        slk.key.identity,
        forged_master.params,
        NOW,
        3600,
        subject_of(None, forged_key),
    )
    with pytest.raises(CrossCheckError, match="root 1"):
        m.cross_check([honest, forged])
    denial = slk.record(
        m.RecordType.DENIAL, "alice.example.test", None, denial=m.DenialReason.UNKNOWN_ADDRESS
    )
    with pytest.raises(CrossCheckError, match="record type"):
        m.cross_check([honest, denial])
    with pytest.raises(CrossCheckError):
        m.cross_check([])


def test_request_ids_are_fresh_and_from_the_given_source() -> None:
    assert m.new_request_id(lambda n: b"\x01" * n) == b"\x01" * 8
    assert len({m.new_request_id() for _ in range(64)}) == 64
    with pytest.raises(TwinPeaksError):
        m.new_request_id(lambda n: b"")


# --------------------------------------------------------------------------- properties
@st.composite
def messages(draw: st.DrawFn) -> m.Message:
    found = list(samples().values())
    base = draw(st.sampled_from(found))
    rid = draw(st.binary(min_size=8, max_size=8))
    if isinstance(base, m.KeyRecord):
        return replace(
            base,
            issued_at=draw(st.integers(0, m.MAX_UINT64)),
            ttl=draw(st.integers(0, m.MAX_TTL)),
            denial=draw(st.sampled_from(list(m.DenialReason))),
        )
    if isinstance(base, m.TrustAnchor):
        return replace(base, port=draw(st.integers(1, 65535)))
    base = replace(base, request_id=rid)
    if isinstance(base, m.Status):
        return replace(
            base,
            code=draw(st.sampled_from(list(m.StatusCode))),
            detail=draw(st.text(max_size=60).filter(lambda t: len(t.encode()) <= 256)),
        )
    if isinstance(base, m.KeyUpdate):
        return replace(
            base,
            replaces=draw(st.integers(0, m.MAX_UINT32)),
            reason=draw(st.sampled_from(list(m.UpdateReason))),
        )
    if isinstance(base, m.OutdatedKey):
        return replace(base, serial=draw(st.none() | st.integers(0, m.MAX_UINT32)))
    if isinstance(base, m.RegistrationResponse):
        start = draw(st.integers(0, m.MAX_UINT64))
        return replace(
            base,
            serial=draw(st.integers(0, m.MAX_UINT32)),
            not_before=start,
            not_after=draw(st.integers(start, m.MAX_UINT64)),
        )
    if isinstance(base, m.KeyRequest | m.Invalidate):
        address = draw(st.ip_addresses())
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = LOOPBACK
        return replace(base, address=address)
    return base


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(messages())
def test_round_trip_property(message: m.Message) -> None:
    data = message.encode()
    assert m.decode_message(data) == message
    assert m.decode_message(data).encode() == data


def decode_or_typed_error(data: bytes) -> None:
    """The contract for hostile input: a message whose encoding is the input, or a typed
    error; anything else (a traceback of another type) fails the test."""
    try:
        message = m.decode_message(data)
    except TwinPeaksError:
        return
    assert message.encode() == data


@SETTINGS
@given(messages(), st.data())
def test_mutated_messages_decode_or_fail_typed(message: m.Message, data: st.DataObject) -> None:
    encoded = bytearray(message.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        index = data.draw(st.integers(0, max(len(encoded) - 1, 0)))
        if action == "flip" and encoded:
            encoded[index] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "cut":
            del encoded[index:]
        else:
            encoded[index:index] = data.draw(st.binary(min_size=1, max_size=8))
    decode_or_typed_error(bytes(encoded))


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_fail_typed(data: bytes) -> None:
    decode_or_typed_error(data)


@SETTINGS
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.binary(max_size=70) | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.integers(-2, 12), inner, max_size=10)
        ),
        max_leaves=20,
    ),
    st.sampled_from(list(m.MessageKind)),
)
def test_well_formed_cbor_of_the_wrong_shape_fails_typed(value: Any, kind: m.MessageKind) -> None:
    if isinstance(value, dict):
        value[0] = int(kind)
    decode_or_typed_error(cbor2.dumps(value, canonical=True))


def test_structural_refusals_are_typed() -> None:
    found = samples()
    request = found["tp-key-request"]
    fields = cbor2.loads(request.encode())
    cases = {
        "unknown key": fields | {4: 1},
        "missing key": {k: v for k, v in fields.items() if k != 3},
        "wrong type": fields | {2: b"alice.example.test"},
        "not normalised": fields | {2: "Alice.example.test"},
        "short request ID": fields | {1: bytes(7)},
        "bad address": fields | {3: bytes(5)},
        "text key": {str(k): v for k, v in fields.items()},
    }
    for what, value in cases.items():
        with pytest.raises(EncodingError):
            m.KeyRequest.decode(cbor2.dumps(value, canonical=True))
        with pytest.raises(EncodingError):
            m.decode_message(cbor2.dumps(value, canonical=True))
        assert what
    # Not the deterministic encoding: unsorted keys, an indefinite-length map, a long integer.
    unsorted = b"\xa4" + b"".join(cbor2.dumps(k) + cbor2.dumps(fields[k]) for k in (3, 2, 1, 0))
    indefinite = b"\xbf" + request.encode()[1:] + b"\xff"
    with pytest.raises(EncodingError, match="deterministic"):
        m.KeyRequest.decode(unsorted)
    with pytest.raises(EncodingError, match="deterministic"):
        m.KeyRequest.decode(indefinite)
    duplicate = b"\xa5" + request.encode()[1:] + b"\x01" + cbor2.dumps(RID)
    with pytest.raises(EncodingError):
        m.KeyRequest.decode(duplicate)
    with pytest.raises(EncodingError, match="longer than 2048"):
        m.decode_message(bytes(m.MAX_MESSAGE_SIZE + 1))
    with pytest.raises(EncodingError, match="key 0"):
        m.decode_message(cbor2.dumps({0: 4}))
    with pytest.raises(EncodingError, match="key 0"):
        m.KeyResponse.decode(request.encode())
    with pytest.raises(EncodingError):
        m.decode_message("text")  # type: ignore[arg-type]
    # Tags (here 1, a date) are refused, not interpreted.
    with pytest.raises(EncodingError):
        m.KeyRequest.decode(cbor2.dumps(fields | {1: cbor2.CBORTag(1, 0)}, canonical=True))
    # Deeply nested input is an error, not a RecursionError.
    decode_or_typed_error(b"\x81" * 1500 + b"\x00")
    decode_or_typed_error(b"\xa1\x00" + b"\x81" * 1500 + b"\x00")
