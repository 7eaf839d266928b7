"""Certificateless public-key cryptography for TwinPeaks (spec/twinpeaks.md §3-§7).

The seven algorithms of section 2.3 of "A New Certificateless Public Key Distribution and
Lightweight Secure Communication" (Eunsang Cho, Seoul National University), instantiated with
the pairing-free certificateless key generation CL-KGA of Z. Cheng and L. Chen,
"Certificateless Public Key Signature Schemes from Standard Algorithms" (ISPEC 2018, LNCS 11125;
expanded version IACR ePrint 2018/386, §3.1) over P-256:

=============================  ======================================================
Setup (KGC)                    s random, P_pub = [s]G, params = (suite, zone, P_pub)
Set-Secret-Value (member)      x random, U = [x]G; U is sent to the KGC with ID
Partial-Private-Key-Extract    w random, X = U + [w]G, λ = H(X, ID), d = w + λ·s mod n
Set-Private-Key (member)       sk = x + d mod n, checked: [sk]G = X + [λ]P_pub
Set-Public-Key (member)        the public key is X (with ID)
public key extraction          Q = X + [λ]P_pub, by anyone holding (params, ID, X)
Sign / Verify, Agree           ECDSA-SHA-256 and ECDH with (sk, Q), ordinary P-256 keys
=============================  ======================================================

The KGC learns U but not x, so it never knows sk = x + d (malicious-KGC, "Type II"
adversary). Whoever replaces X by some X' without the master key gets a Q' whose private key
it does not know unless it can forge the KGC's Schnorr-like binding (X, sk) of ID
(public-key-replacement, "Type I" adversary). ID is ``domain || IP || h(params)``
(:mod:`d2tls.core.twinpeaks.identity`, section 2.4.2 of the dissertation).

Every function is pure apart from the injected :data:`~d2tls.core.twinpeaks.curve.RandomSource`.
Structures that travel are CBOR maps (RFC 8949, deterministic encoding §4.2.1) with small
integer keys; their decoders treat input as hostile and raise only
:class:`~d2tls.core.twinpeaks.errors.TwinPeaksError` subclasses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Final, TypeVar

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from d2tls.core.twinpeaks import curve
from d2tls.core.twinpeaks.curve import ORDER, Point, RandomSource, system_random
from d2tls.core.twinpeaks.errors import (
    EncodingError,
    KeyValidationError,
    SignatureError,
    TwinPeaksError,
)
from d2tls.core.twinpeaks.hashing import hash_to_scalar, sha256
from d2tls.core.twinpeaks.identity import Identity, IPAddress, normalize_zone

SUITE: Final = "TP-CLKGA-P256-SHA256-v1"
"""The one scheme of this version: CL-KGA over P-256, SHA-256, the encodings of the spec."""
LAMBDA_DST: Final = b"D2TLS-TWINPEAKS-V1-CLKGA-LAMBDA_P256_XMD:SHA-256"
"""Domain-separation tag of λ = H(X, ID) (RFC 9380 §3.1)."""
SIGN_CONTEXT: Final = b"D2TLS-TWINPEAKS-V1 CL-ECDSA\x00"
AGREE_CONTEXT: Final = b"D2TLS-TWINPEAKS-V1 CL-ECDH\x00"
SIGNATURE_SIZE: Final = 64
MAX_ENCODED_SIZE: Final = 1024
"""Largest encoded structure accepted (the largest legal one is about 420 bytes)."""
MAX_AGREED_LENGTH: Final = 255 * 32


class Kind(IntEnum):
    """Value of key 0 of every TwinPeaks CL-PKC structure (spec/twinpeaks.md §7)."""

    PARAMS = 1
    PARTIAL_KEY_REQUEST = 2
    PARTIAL_PRIVATE_KEY = 3
    PUBLIC_KEY = 4


# --------------------------------------------------------------------------- CBOR helpers
def _dump(kind: Kind, fields: dict[int, Any]) -> bytes:
    data: bytes = cbor2.dumps({0: int(kind), **fields}, canonical=True)
    return data


def _load(data: bytes, kind: Kind, keys: set[int]) -> dict[int, Any]:
    """The fields of a CBOR map of the given kind; structure only, values unchecked."""
    what = kind.name.lower().replace("_", " ")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EncodingError(f"{what}: must be bytes")
    data = bytes(data)
    if len(data) > MAX_ENCODED_SIZE:
        raise EncodingError(f"{what}: longer than {MAX_ENCODED_SIZE} bytes")
    try:
        items: Any = cbor2.loads(data)
    except Exception as exc:  # cbor2 raises several types on malformed input
        raise EncodingError(f"{what}: undecodable CBOR ({exc})") from None
    if type(items) is not dict:
        raise EncodingError(f"{what}: not a CBOR map")
    found = items.get(0)
    if type(found) is not int or found != kind:
        raise EncodingError(f"{what}: key 0 is not {int(kind)}")
    if set(items) != {0, *keys} or not all(type(k) is int for k in items):
        raise EncodingError(f"{what}: keys must be exactly {sorted({0, *keys})}")
    return items


def _bstr(items: dict[int, Any], key: int, what: str) -> bytes:
    value = items[key]
    if type(value) is not bytes:
        raise EncodingError(f"{what} must be a byte string")
    return value


_T = TypeVar("_T")


def _canonical(data: bytes, decoded: _T, encode: Callable[[_T], bytes]) -> _T:
    if encode(decoded) != bytes(data):
        raise EncodingError("not the deterministic CBOR encoding (RFC 8949 §4.2.1)")
    return decoded


# --------------------------------------------------------------------------- parameters
@dataclass(frozen=True, slots=True)
class Params:
    """The public parameters of a KGC (a key server): the suite, the zone it serves and its
    master public key P_pub = [s]G. ``digest()`` is h(params) of the identity."""

    zone: str
    p_pub: Point
    suite: str = SUITE

    def __post_init__(self) -> None:
        if self.suite != SUITE:
            raise EncodingError(f"unknown suite {self.suite!r}")
        if normalize_zone(self.zone) != self.zone:
            raise EncodingError(f"zone {self.zone!r} is not in normalised form")

    def encode(self) -> bytes:
        """``{0: 1, 1: suite, 2: zone, 3: P_pub}`` (spec/twinpeaks.md §7)."""
        return _dump(Kind.PARAMS, {1: self.suite, 2: self.zone, 3: self.p_pub.encode()})

    def digest(self) -> bytes:
        """h(params) = SHA-256 of the encoding (spec/twinpeaks.md §3, §7.1)."""
        return sha256(self.encode())

    @classmethod
    def decode(cls, data: bytes) -> Params:
        items = _load(data, Kind.PARAMS, {1, 2, 3})
        suite, zone = items[1], items[2]
        if type(suite) is not str or type(zone) is not str:
            raise EncodingError("params: suite and zone must be text strings")
        if suite != SUITE:
            raise EncodingError(f"params: unknown suite {suite!r}")
        try:
            params = cls(zone, curve.decode_point(_bstr(items, 3, "P_pub")), suite)
        except TwinPeaksError as exc:
            raise EncodingError(f"params: {exc}") from None
        return _canonical(data, params, Params.encode)

    def identity(self, name: str, address: str | bytes | IPAddress) -> Identity:
        """The identity of a member of this KGC: ``name || address || h(params)``."""
        return Identity.of(name, address, self.digest())


@dataclass(frozen=True, slots=True)
class MasterKey:
    """The KGC's master secret s and its params. Never leaves the KGC."""

    params: Params
    secret: int = field(repr=False)

    def __post_init__(self) -> None:
        curve.check_scalar(self.secret)
        if curve.base_mul(self.secret) != self.params.p_pub:
            raise KeyValidationError("master secret does not match P_pub")


def setup(zone: str, rng: RandomSource = system_random) -> MasterKey:
    """Setup: a fresh master secret s and params with P_pub = [s]G for ``zone``."""
    s = curve.random_scalar(rng)
    return MasterKey(Params(normalize_zone(zone), curve.base_mul(s)), s)


def _check_params(params: Params, identity: Identity) -> None:
    if identity.params_hash != params.digest():
        raise KeyValidationError(
            f"identity {identity.name} names other params than those of zone {params.zone!r}"
        )


def _lambda(x_point: Point, identity: Identity) -> int:
    """λ = H(X, ID): hash_to_scalar(X || ID) (spec/twinpeaks.md §4.3)."""
    return hash_to_scalar(x_point.encode() + identity.encode(), LAMBDA_DST)


# --------------------------------------------------------------------------- member side
@dataclass(frozen=True, slots=True)
class PartialKeyRequest:
    """What a member sends its KGC: its identity and U = [x]G."""

    identity: Identity
    u: Point

    def encode(self) -> bytes:
        """``{0: 2, 1: ID, 2: U}`` (spec/twinpeaks.md §7.2)."""
        return _dump(Kind.PARTIAL_KEY_REQUEST, {1: self.identity.encode(), 2: self.u.encode()})

    @classmethod
    def decode(cls, data: bytes) -> PartialKeyRequest:
        items = _load(data, Kind.PARTIAL_KEY_REQUEST, {1, 2})
        try:
            request = cls(
                Identity.decode(_bstr(items, 1, "ID")), curve.decode_point(_bstr(items, 2, "U"))
            )
        except TwinPeaksError as exc:
            raise EncodingError(f"partial key request: {exc}") from None
        return _canonical(data, request, PartialKeyRequest.encode)


@dataclass(frozen=True, slots=True)
class SecretValue:
    """Set-Secret-Value's output: the member's secret x and U = [x]G. Never leaves it."""

    identity: Identity
    secret: int = field(repr=False)
    u: Point

    def request(self) -> PartialKeyRequest:
        """The request for a partial private key."""
        return PartialKeyRequest(self.identity, self.u)


def set_secret_value(
    params: Params, identity: Identity, rng: RandomSource = system_random
) -> SecretValue:
    """Set-Secret-Value: a fresh x and U = [x]G. A fresh value per identity and per KGC: a
    secret value reused across KGCs would relate the private keys."""
    _check_params(params, identity)
    x = curve.random_scalar(rng)
    return SecretValue(identity, x, curve.base_mul(x))


# --------------------------------------------------------------------------- KGC side
@dataclass(frozen=True, slots=True)
class PartialPrivateKey:
    """Partial-Private-Key-Extract's output: X = U + [w]G and d = w + λ·s mod n. It must
    reach the member over a confidential, authenticated channel (d is secret)."""

    identity: Identity
    x_point: Point
    d: int = field(repr=False)

    def __post_init__(self) -> None:
        curve.check_scalar(self.d)

    def encode(self) -> bytes:
        """``{0: 3, 1: ID, 2: X, 3: d}`` (spec/twinpeaks.md §7.2)."""
        return _dump(
            Kind.PARTIAL_PRIVATE_KEY,
            {1: self.identity.encode(), 2: self.x_point.encode(), 3: curve.encode_scalar(self.d)},
        )

    @classmethod
    def decode(cls, data: bytes) -> PartialPrivateKey:
        items = _load(data, Kind.PARTIAL_PRIVATE_KEY, {1, 2, 3})
        try:
            partial = cls(
                Identity.decode(_bstr(items, 1, "ID")),
                curve.decode_point(_bstr(items, 2, "X")),
                curve.decode_scalar(_bstr(items, 3, "d")),
            )
        except TwinPeaksError as exc:
            raise EncodingError(f"partial private key: {exc}") from None
        return _canonical(data, partial, PartialPrivateKey.encode)


def extract_partial_private_key(
    master: MasterKey, request: PartialKeyRequest, rng: RandomSource = system_random
) -> PartialPrivateKey:
    """Partial-Private-Key-Extract: bind ``request.identity`` and U under the master key.
    Refuses an identity whose h(params) is not this KGC's."""
    _check_params(master.params, request.identity)
    w = curve.random_scalar(rng)
    x_point = curve.add(request.u, curve.base_mul(w))
    d = (w + _lambda(x_point, request.identity) * master.secret) % ORDER
    return PartialPrivateKey(request.identity, x_point, d)


# --------------------------------------------------------------------------- keys
@dataclass(frozen=True, slots=True)
class PublicKey:
    """Set-Public-Key's output as distributed: the identity and X. The effective P-256
    public key Q = X + [λ]P_pub follows from it and the KGC's params (:func:`public_point`)."""

    identity: Identity
    x_point: Point

    def encode(self) -> bytes:
        """``{0: 4, 1: ID, 2: X}`` (spec/twinpeaks.md §7.2)."""
        return _dump(Kind.PUBLIC_KEY, {1: self.identity.encode(), 2: self.x_point.encode()})

    @classmethod
    def decode(cls, data: bytes) -> PublicKey:
        items = _load(data, Kind.PUBLIC_KEY, {1, 2})
        try:
            key = cls(
                Identity.decode(_bstr(items, 1, "ID")), curve.decode_point(_bstr(items, 2, "X"))
            )
        except TwinPeaksError as exc:
            raise EncodingError(f"public key: {exc}") from None
        return _canonical(data, key, PublicKey.encode)


def public_point(params: Params, key: PublicKey) -> Point:
    """Q = X + [λ]P_pub with λ = H(X, ID): the P-256 public key bound to ``key.identity``.
    ``params`` must be those named by the identity's h(params)."""
    _check_params(params, key.identity)
    lam = _lambda(key.x_point, key.identity)
    if lam == 0:
        return key.x_point
    try:
        return curve.add(key.x_point, curve.mul(params.p_pub, lam))
    except TwinPeaksError:
        raise KeyValidationError("X + [λ]P_pub is the point at infinity") from None


def check_binding(params: Params, key: PublicKey, q: Point) -> None:
    """Raise KeyValidationError unless Q is the key bound to (ID, X) under params."""
    if public_point(params, key) != q:
        raise KeyValidationError(f"public key is not bound to identity {key.identity.name}")


@dataclass(frozen=True, slots=True)
class FullPrivateKey:
    """Set-Private-Key's output: sk = x + d mod n, an ordinary P-256 private key, with the
    params, identity, X and Q = [sk]G it belongs to."""

    params: Params
    identity: Identity
    x_point: Point
    scalar: int = field(repr=False)
    q: Point

    def __post_init__(self) -> None:
        if curve.base_mul(self.scalar) != self.q:
            raise KeyValidationError("private scalar does not match Q")

    @property
    def public_key(self) -> PublicKey:
        return PublicKey(self.identity, self.x_point)

    def to_cryptography(self) -> ec.EllipticCurvePrivateKey:
        """The key as a ``cryptography`` P-256 private key (ECDSA, ECDH, DTLS)."""
        return curve.private_key(self.scalar)


def set_private_key(
    params: Params, secret: SecretValue, partial: PartialPrivateKey
) -> FullPrivateKey:
    """Set-Private-Key: sk = x + d mod n, after checking [sk]G = X + [λ]P_pub, which holds
    exactly when the KGC extracted d for this identity, this U and these params."""
    if partial.identity != secret.identity:
        raise KeyValidationError("partial private key is for another identity")
    key = PublicKey(partial.identity, partial.x_point)
    q = public_point(params, key)
    sk = (secret.secret + partial.d) % ORDER
    if sk == 0 or curve.base_mul(sk) != q:
        raise KeyValidationError(
            f"partial private key does not match identity {partial.identity.name}, "
            "the secret value and the params"
        )
    return FullPrivateKey(params, partial.identity, partial.x_point, sk, q)


def set_public_key(secret: SecretValue, partial: PartialPrivateKey) -> PublicKey:
    """Set-Public-Key: the member's public key (ID, X)."""
    if partial.identity != secret.identity:
        raise KeyValidationError("partial private key is for another identity")
    return PublicKey(partial.identity, partial.x_point)


# --------------------------------------------------------------------------- signatures
def signing_input(q: Point, identity: Identity, message: bytes) -> bytes:
    """Key prefixing (Cheng-Chen): the signed bytes are context || Q || ID || message."""
    return SIGN_CONTEXT + q.encode() + identity.encode() + bytes(message)


def sign(key: FullPrivateKey, message: bytes) -> bytes:
    """A certificateless signature: deterministic ECDSA-SHA-256 (RFC 6979) over
    :func:`signing_input`, encoded r || s (32 bytes each)."""
    der = key.to_cryptography().sign(
        signing_input(key.q, key.identity, message),
        ec.ECDSA(hashes.SHA256(), deterministic_signing=True),
    )
    r, s = decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(params: Params, key: PublicKey, message: bytes, signature: bytes) -> None:
    """Raise SignatureError unless ``signature`` is the signature of (ID, X) on ``message``;
    a malformed signature raises InvalidScalar or EncodingError."""
    if not isinstance(signature, bytes | bytearray | memoryview):
        raise EncodingError("a signature must be bytes")
    if len(signature) != SIGNATURE_SIZE:
        raise EncodingError(f"a signature is {SIGNATURE_SIZE} bytes (got {len(signature)})")
    r = curve.decode_scalar(bytes(signature[:32]))
    s = curve.decode_scalar(bytes(signature[32:]))
    q = public_point(params, key)
    try:
        q.to_public_key().verify(
            encode_dss_signature(r, s),
            signing_input(q, key.identity, message),
            ec.ECDSA(hashes.SHA256()),
        )
    except InvalidSignature:
        raise SignatureError(f"signature of {key.identity.name} does not verify") from None


# --------------------------------------------------------------------------- key agreement
def agree(
    key: FullPrivateKey,
    peer_params: Params,
    peer: PublicKey,
    *,
    info: bytes = b"",
    length: int = 32,
) -> bytes:
    """ECDH (SEC 1 v2 §3.3.1) between ``key`` and the peer's Q, then HKDF-SHA-256 (RFC 5869)
    with the two parties' Q || ID, in byte order, in the info: both members get the same
    bytes, and only the holders of the two private keys can."""
    if not 1 <= length <= MAX_AGREED_LENGTH:
        raise TwinPeaksError(f"length must be 1..{MAX_AGREED_LENGTH}")
    peer_q = public_point(peer_params, peer)
    shared = key.to_cryptography().exchange(ec.ECDH(), peer_q.to_public_key())
    parties = sorted(
        [key.q.encode() + key.identity.encode(), peer_q.encode() + peer.identity.encode()]
    )
    context = AGREE_CONTEXT + b"".join(len(p).to_bytes(2, "big") + p for p in parties) + info
    return HKDF(hashes.SHA256(), length, None, context).derive(shared)


__all__ = [
    "SUITE",
    "FullPrivateKey",
    "Kind",
    "MasterKey",
    "Params",
    "PartialKeyRequest",
    "PartialPrivateKey",
    "PublicKey",
    "SecretValue",
    "agree",
    "check_binding",
    "extract_partial_private_key",
    "public_point",
    "set_private_key",
    "set_public_key",
    "set_secret_value",
    "setup",
    "sign",
    "signing_input",
    "verify",
]
