"""The roles as built, against spec/delegation.md: message fields and the bound signing guards.

- :func:`check_message_schema`: the fields (CBOR key and name) of each delegation message in
  ``d2tls.core.delegation.messages`` are exactly the rows of the §5.2 table, and only
  :data:`OPTIONAL_FIELDS` are optional (§5.2: "Every listed field of a message is REQUIRED
  except client_random ...").
- :func:`check_signer_policy`: ``d2tls.core.roles.signer.check_bound_transcript`` is *run*: it must
  accept one well-formed bound transcript and refuse, for each numbered rule of §6 "Bound
  mode", a transcript that breaks only that rule (:data:`VIOLATIONS`). A rule of the spec
  with no violation here, or a violation the signer lets through, is a problem.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from d2tls.core.dtls.constants import HandshakeType
from d2tls.core.dtls.fragments import HandshakeFragment, encode_fragment
from d2tls.core.dtls.messages import Certificate, ClientHello
from d2tls.prove.spec_text import SpecField

#: Fields §5.2 makes optional: client_random and server_certificate_hash (bound mode only),
#: transcript and compact_transcript, and the device's credential, which is exactly one of
#: certificate_chain, certificate_chain_hash and raw_public_key.
OPTIONAL_FIELDS = frozenset(
    {
        "client_random",
        "transcript",
        "compact_transcript",
        "certificate_chain",
        "certificate_chain_hash",
        "raw_public_key",
        "server_certificate_hash",
    }
)

SERVER_NAME = "server.example"
OTHER_NAME = "other.example"
#: A fixed moment for the throwaway certificates (their validity is not what is checked).
_NOT_BEFORE = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def check_message_schema(fields: dict[str, tuple[SpecField, ...]]) -> list[str]:
    """Compare the delegation message codec's schema with the §5.2 field table."""
    from d2tls.core.delegation.messages import _SCHEMA  # the codec's own table of fields

    problems: list[str] = []
    coded: dict[str, dict[str, tuple[int, bool]]] = {
        cls.__name__: {f.name: (f.key, f.optional) for f in schema}
        for cls, schema in _SCHEMA.values()
    }
    for message in sorted(set(fields) | set(coded)):
        spec = {f.name: f.key for f in fields.get(message, ())}
        code = coded.get(message)
        if code is None:
            problems.append(f"d2tls.core.delegation.messages has no {message} (spec §5.2 has)")
            continue
        if message not in fields:
            problems.append(f"d2tls.core.delegation.messages has {message}, spec §5.2 does not")
            continue
        for name in sorted(set(spec) | set(code)):
            if name not in code:
                problems.append(f"{message}.{name}: in spec §5.2, not in the codec")
            elif name not in spec:
                problems.append(f"{message}.{name}: in the codec, not in spec §5.2")
            elif spec[name] != code[name][0]:
                problems.append(
                    f"{message}.{name}: key {spec[name]} in spec §5.2, {code[name][0]} in the codec"
                )
            elif code[name][1] != (name in OPTIONAL_FIELDS):
                state = "optional" if code[name][1] else "required"
                problems.append(f"{message}.{name}: {state} in the codec, not as spec §5.2 says")
    return problems


# --------------------------------------------------------------------------- the signer


def _certificate(name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_BEFORE + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True)
class Handshake:
    """A bound transcript as (type, body) messages, and the request it answers."""

    messages: tuple[tuple[int, bytes], ...]
    client_random: bytes
    chain: tuple[bytes, ...]
    server_cert: bytes
    other_cert: bytes
    fragment_first: bool = False  # send the first message as two fragments

    def transcript(self) -> bytes:
        out = b""
        for seq, (kind, body) in enumerate(self.messages):
            if self.fragment_first and seq == 0:
                half = len(body) // 2
                for offset, piece in ((0, body[:half]), (half, body[half:])):
                    out += encode_fragment(
                        HandshakeFragment(kind, len(body), seq, offset, len(piece), piece)
                    )
                continue
            out += encode_fragment(HandshakeFragment(kind, len(body), seq, 0, len(body), body))
        return out


def _hello(random: bytes) -> bytes:
    return ClientHello(0xFEFD, random, b"", b"", (0xC0AE,), (0,)).encode()


def good_handshake() -> Handshake:
    """ClientHello .. ClientKeyExchange of a bound delegation to SERVER_NAME."""
    random = bytes(range(32))
    server_cert = _certificate(SERVER_NAME)
    device_chain = (_certificate("device.example"),)
    messages = (
        (HandshakeType.CLIENT_HELLO, _hello(random)),
        (HandshakeType.SERVER_HELLO, b"\xfe\xfd" + bytes(32) + b"\x00\xc0\xae\x00"),
        (HandshakeType.CERTIFICATE, Certificate((server_cert,)).encode()),
        (HandshakeType.SERVER_KEY_EXCHANGE, b"\x03\x00\x17\x01\x04"),
        (HandshakeType.CERTIFICATE_REQUEST, b"\x01\x40\x00\x02\x04\x03\x00\x00"),
        (HandshakeType.SERVER_HELLO_DONE, b""),
        (HandshakeType.CERTIFICATE, Certificate(device_chain).encode()),
        (HandshakeType.CLIENT_KEY_EXCHANGE, b"\x01\x04"),
    )
    return Handshake(
        tuple((int(k), b) for k, b in messages), random, device_chain, server_cert,
        _certificate(OTHER_NAME),
    )  # fmt: skip


def _without(h: Handshake, kind: int, index: int = 0) -> Handshake:
    found = [i for i, (k, _) in enumerate(h.messages) if k == kind]
    drop = found[index]
    return replace(h, messages=h.messages[:drop] + h.messages[drop + 1 :])


def _replace(h: Handshake, position: int, body: bytes) -> Handshake:
    messages = list(h.messages)
    messages[position] = (messages[position][0], body)
    return replace(h, messages=tuple(messages))


def _certificate_positions(h: Handshake) -> list[int]:
    return [i for i, (k, _) in enumerate(h.messages) if k == HandshakeType.CERTIFICATE]


#: §6 bound-mode rule -> ways to break only that rule: (what, transcript to sign, digest).
#: A digest of None is the SHA-256 of the transcript (rule 1 holds).
VIOLATIONS: dict[int, list[tuple[str, Callable[[Handshake], tuple[bytes, bytes | None]]]]] = {
    1: [
        ("a digest of other bytes", lambda h: (h.transcript(), hashlib.sha256(b"x").digest())),
    ],
    2: [
        ("a fragmented ClientHello", lambda h: (replace(h, fragment_first=True).transcript(),
                                                None)),
        ("a second ServerHello", lambda h: (replace(h, messages=h.messages[:2]
                                                    + h.messages[1:]).transcript(), None)),
    ],
    3: [
        ("another ClientHello random", lambda h: (_replace(h, 0, _hello(bytes(32))).transcript(),
                                                  None)),
        ("a ServerHello first", lambda h: (replace(h, messages=(h.messages[1], h.messages[0],
                                                                *h.messages[2:])).transcript(),
                                           None)),
    ],
    4: [
        ("no client Certificate", lambda h: (_without(h, HandshakeType.CERTIFICATE, 1)
                                             .transcript(), None)),
        ("another client chain", lambda h: (_replace(h, _certificate_positions(h)[1],
                                                     Certificate((h.other_cert,)).encode())
                                            .transcript(), None)),
    ],
    5: [
        ("no ClientKeyExchange last", lambda h: (replace(h, messages=h.messages[:-1])
                                                 .transcript(), None)),
    ],
    6: [
        ("a server Certificate for another name", lambda h: (_replace(
            h, _certificate_positions(h)[0], Certificate((h.other_cert,)).encode()
        ).transcript(), None)),
    ],
}  # fmt: skip


def check_signer_policy(spec_rules: dict[int, str]) -> list[str]:
    """Run the device's bound signing check on a good transcript and on one per violation."""
    from d2tls.core.roles.signer import SigningRefused, check_bound_transcript

    problems: list[str] = []
    for number in sorted(set(spec_rules) - set(VIOLATIONS)):
        problems.append(
            f"spec/delegation.md §6 bound-mode rule {number} has no violation in "
            "d2tls.prove.roles_check.VIOLATIONS: the signer is not checked against it"
        )
    good = good_handshake()

    def signs(transcript: bytes, digest: bytes | None) -> str | None:
        """None if the signer accepts; else its reason."""
        try:
            check_bound_transcript(
                transcript,
                hashlib.sha256(transcript).digest() if digest is None else digest,
                good.client_random,
                good.chain,
                SERVER_NAME,
            )
        except SigningRefused as exc:
            return str(exc)
        return None

    refused = signs(good.transcript(), None)
    if refused is not None:
        problems.append(f"roles/signer.py refuses a transcript §6 allows: {refused}")
    for number, cases in sorted(VIOLATIONS.items()):
        if number not in spec_rules:
            problems.append(f"VIOLATIONS has rule {number}, which §6 no longer has")
            continue
        for what, make in cases:
            if signs(*make(good)) is None:
                problems.append(
                    f"roles/signer.py check_bound_transcript signs a transcript with {what}, "
                    f"which spec/delegation.md §6 bound-mode rule {number} forbids"
                )
    return problems
