"""The device's private key and its signing policy checks (DESIGN.md §2, spec/delegation.md).

Only the device holds a ``DeviceSigner``. In *bound* mode the device checks, before signing, that
the transcript it is asked to sign is the handshake it asked for: it starts with a ClientHello
carrying the device's own random, carries the server certificate of the server the device
asked for (its leaf names ``server_name``, RFC 6125 §6, and has the pinned key if one is
configured), carries the device's own certificate chain, ends with the ClientKeyExchange (the
CertificateVerify position, RFC 5246 §7.4.8), and hashes to the digest. The device does not
verify the server's chain (the agent does). In *strict* mode (issue 24 item 3) the device also
verifies the ServerKeyExchange signature in that transcript itself, under the pinned server key
or the key of a server chain it verifies (:func:`check_server_key_exchange`), so a compromised
agent cannot have it sign a handshake the requested server did not take part in. In *blind*
mode (the D2TLS paper) it signs the digest it is given.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.x509.verification import Store

from d2tls.core.delegation.compact import client_certificate_body, rebuild_transcript
from d2tls.core.delegation.messages import DelegationRequest, SignRequest
from d2tls.core.dtls.constants import (
    ECDSA_SECP256R1_SHA256,
    SECP256R1,
    CertificateType,
    HandshakeType,
)
from d2tls.core.dtls.fragments import parse_handshake_fragments
from d2tls.core.dtls.messages import (
    Certificate,
    ClientHello,
    RawPublicKeyCertificate,
    ServerHello,
    ServerKeyExchangeECDHE,
)
from d2tls.core.errors import CertificateError, ConfigurationError, D2TLSError
from d2tls.core.pki.names import names_server, spki_sha256
from d2tls.core.pki.verify import verify_server_path
from d2tls.core.randomness import SYSTEM, Randomness


class SigningRefused(D2TLSError):
    """The device refuses to sign; the message says which policy rule failed."""


class DeviceSigner:
    """Holds the device key and counts private-key operations."""

    def __init__(
        self, private_key: ec.EllipticCurvePrivateKey, randomness: Randomness = SYSTEM
    ) -> None:
        """``randomness`` chooses the ECDSA scheme: randomized by default, RFC 6979
        deterministic with a :class:`~d2tls.core.randomness.SeededRandomness` (simulations)."""
        if private_key.curve.name != "secp256r1":
            raise D2TLSError("device key must be ECDSA P-256")
        self._key = private_key
        self._randomness = randomness
        self.signatures = 0
        #: ECDSA verifies of strict mode (:func:`check_server_key_exchange`), for the report.
        self.verifies = 0

    def sign_transcript(self, transcript: bytes) -> bytes:
        """ecdsa_secp256r1_sha256 over the handshake messages (RFC 5246 §7.4.8)."""
        self.signatures += 1
        return self._key.sign(transcript, self._randomness.ecdsa())

    def sign_digest(self, digest: bytes) -> bytes:
        """Sign a SHA-256 digest computed by someone else (blind mode)."""
        if len(digest) != 32:
            raise SigningRefused("digest must be 32 bytes (SHA-256)")
        self.signatures += 1
        scheme = ec.ECDSA(
            utils.Prehashed(hashes.SHA256()),
            deterministic_signing=self._randomness.ecdsa().deterministic_signing,
        )
        return self._key.sign(digest, scheme)

    def __repr__(self) -> str:
        return "DeviceSigner(<private key hidden>)"


class BoundCheck(NamedTuple):
    """What :func:`check_transcript` found in a transcript it accepted."""

    #: The entries of the server's Certificate (its chain, or its one raw public key).
    server_certificates: tuple[bytes, ...]
    #: The body of the server's Certificate message (for the device's chain memo, §6).
    server_certificate_body: bytes


def check_bound_transcript(
    transcript: bytes,
    digest: bytes,
    client_random: bytes,
    certificate_chain: Sequence[bytes],
    server_name: str,
    server_pin: bytes | None = None,
    raw_public_key: bytes | None = None,
) -> tuple[bytes, ...]:
    """Raise SigningRefused unless ``transcript`` is the handshake the device asked for.

    Returns the entries of the server's Certificate (its chain, or its one raw public key).

    ``server_name`` is the DelegationRequest's server_name; ``server_pin``, when given, the
    SHA-256 of the server's SubjectPublicKeyInfo (RFC 7469 §2.4) the device was configured with.
    With ``raw_public_key`` (the request's, RFC 7250) the client Certificate must carry exactly
    that SubjectPublicKeyInfo instead of ``certificate_chain``.
    """
    return check_transcript(
        transcript, digest, client_random, certificate_chain, server_name, server_pin,
        raw_public_key,
    ).server_certificates  # fmt: skip


def check_transcript(
    transcript: bytes,
    digest: bytes,
    client_random: bytes,
    certificate_chain: Sequence[bytes],
    server_name: str,
    server_pin: bytes | None = None,
    raw_public_key: bytes | None = None,
) -> BoundCheck:
    """:func:`check_bound_transcript` in one parse of the transcript, also returning the
    server Certificate's body (spec/delegation.md §6: every rule applies unchanged)."""
    if not hmac.compare_digest(hashlib.sha256(transcript).digest(), digest):
        raise SigningRefused("the transcript does not hash to the digest to sign")
    try:
        messages = parse_handshake_fragments(transcript)
    except D2TLSError as exc:
        raise SigningRefused(
            f"the transcript is not a sequence of handshake messages: {exc}"
        ) from exc
    if not messages or any(
        m.fragment_offset != 0 or m.fragment_length != m.length for m in messages
    ):
        raise SigningRefused("the transcript must hold whole handshake messages")
    first = messages[0]
    if first.msg_type != HandshakeType.CLIENT_HELLO:
        raise SigningRefused("the transcript does not start with a ClientHello")
    try:
        hello = ClientHello.decode(first.body)
    except D2TLSError as exc:
        raise SigningRefused(f"undecodable ClientHello: {exc}") from exc
    if not hmac.compare_digest(hello.random, client_random):
        raise SigningRefused("the ClientHello random is not the one this device chose")
    if messages[-1].msg_type != HandshakeType.CLIENT_KEY_EXCHANGE:
        raise SigningRefused("the transcript does not end with the ClientKeyExchange")
    certificates = [m for m in messages if m.msg_type == HandshakeType.CERTIFICATE]
    if len(certificates) != 2:
        raise SigningRefused("the transcript must hold the server's and the device's Certificate")
    _check_client_certificate(certificates[-1].body, certificate_chain, raw_public_key)
    types = [m.msg_type for m in messages]
    if types.count(HandshakeType.CLIENT_HELLO) != 1 or types.count(HandshakeType.SERVER_HELLO) != 1:
        raise SigningRefused("the transcript must hold exactly one ClientHello and ServerHello")
    [server_hello] = [m for m in messages if m.msg_type == HandshakeType.SERVER_HELLO]
    try:
        server_type = ServerHello.decode(server_hello.body).server_certificate_type
    except D2TLSError as exc:
        raise SigningRefused(f"undecodable ServerHello: {exc}") from exc
    body = certificates[0].body
    if server_type == CertificateType.RAW_PUBLIC_KEY:
        return BoundCheck((check_server_raw_key(body, hello, server_name, server_pin),), body)
    return BoundCheck(check_server_certificate(body, server_name, server_pin), body)


def bound_transcript(
    message: SignRequest,
    certificate_chain: Sequence[bytes],
    request: DelegationRequest,
    server_certificate: bytes | None = None,
) -> bytes:
    """The transcript of a bound-mode SignRequest: as sent, or rebuilt from the compact
    form with the device's own Certificate message, and ``server_certificate`` (the body
    whose hash the request carried) if the agent left it out (spec/delegation.md §6). The §6
    checks are then applied to the result by :func:`check_bound_transcript`."""
    if message.transcript is not None:
        return message.transcript
    if message.compact_transcript is None:
        raise SigningRefused("bound mode needs the transcript")
    chain = () if request.raw_public_key is not None else certificate_chain
    try:
        return rebuild_transcript(
            message.compact_transcript,
            chain,
            request.raw_public_key,
            server_certificate if request.server_certificate_hash is not None else None,
        )
    except D2TLSError as exc:
        raise SigningRefused(f"the compact transcript cannot be rebuilt: {exc}") from exc


def _check_client_certificate(
    body: bytes, certificate_chain: Sequence[bytes], raw_public_key: bytes | None
) -> None:
    """The client Certificate carries this device's chain, or its raw key (RFC 7250 §3)."""
    if raw_public_key is not None:
        try:
            raw = RawPublicKeyCertificate.decode(body)
        except D2TLSError as exc:
            raise SigningRefused(f"undecodable client raw public key Certificate: {exc}") from exc
        if not hmac.compare_digest(raw.subject_public_key_info, raw_public_key):
            raise SigningRefused(
                "the client Certificate in the transcript is not this device's raw public key"
            )
        return
    if body == client_certificate_body(certificate_chain, None):
        return  # the one encoding of this chain (RFC 5246 §7.4.2: canonical lengths)
    try:
        ours = Certificate.decode(body)
    except D2TLSError as exc:
        raise SigningRefused(f"undecodable client Certificate: {exc}") from exc
    if tuple(ours.certificates) != tuple(certificate_chain):
        raise SigningRefused("the client Certificate in the transcript is not this device's chain")


def check_server_raw_key(
    body: bytes, hello: ClientHello, server_name: str, server_pin: bytes | None
) -> bytes:
    """A TwinPeaks server's raw key (spec/twinpeaks.md §9.5): the ClientHello carries the
    TwinPeaks extension naming ``server_name`` (an honest server refuses another name, §9.3),
    and, with a pin, the server Certificate carries the pinned key."""
    try:
        raw = RawPublicKeyCertificate.decode(body)
        extension = hello.twinpeaks
    except D2TLSError as exc:
        raise SigningRefused(f"undecodable server raw key or TwinPeaks extension: {exc}") from exc
    if extension is None:
        raise SigningRefused(
            "the server authenticated with a raw public key, but the ClientHello carries no "
            "TwinPeaks extension naming the server"
        )
    if extension.host_name != server_name.lower().rstrip("."):
        raise SigningRefused(
            f"the ClientHello's TwinPeaks extension names {extension.host_name!r}, not "
            f"{server_name!r}, the server this device asked for"
        )
    pinned = hashlib.sha256(raw.subject_public_key_info).digest()
    if server_pin is not None and not hmac.compare_digest(pinned, server_pin):
        raise SigningRefused("the server raw public key in the transcript is not the pinned key")
    return raw.subject_public_key_info


def check_server_certificate(
    body: bytes, server_name: str, server_pin: bytes | None
) -> tuple[bytes, ...]:
    """The server Certificate message ``body`` is for the server the device asked for.

    Its leaf must name ``server_name`` (:func:`d2tls.core.pki.names.names_server`) and, with a pin,
    carry the pinned public key. One certificate parse; no chain or signature verification.
    The verdict depends on these three values alone, so an accepted one is remembered
    (``_server_certificate_verdict``): a device that delegates to the same server again
    does not parse the same certificate again.
    """
    return _server_certificate_verdict(bytes(body), server_name, server_pin)


@lru_cache(maxsize=16)
def _server_certificate_verdict(
    body: bytes, server_name: str, server_pin: bytes | None
) -> tuple[bytes, ...]:
    """:func:`check_server_certificate`, memoised on its exact inputs (a refusal raises and
    so is never cached)."""
    try:
        theirs = Certificate.decode(body)
    except D2TLSError as exc:
        raise SigningRefused(f"undecodable server Certificate: {exc}") from exc
    if not theirs.certificates:
        raise SigningRefused("the server Certificate in the transcript is empty")
    leaf = theirs.certificates[0]
    try:
        if not names_server(leaf, server_name):
            raise SigningRefused(
                f"the server certificate in the transcript is not for {server_name!r}, "
                "the server this device asked for"
            )
        if server_pin is not None and not hmac.compare_digest(spki_sha256(leaf), server_pin):
            raise SigningRefused(
                "the server certificate in the transcript does not carry the pinned key"
            )
    except CertificateError as exc:
        raise SigningRefused(f"unusable server certificate in the transcript: {exc}") from exc
    return tuple(theirs.certificates)


def check_server_key_exchange(
    transcript: bytes,
    server_name: str,
    *,
    server_pin: bytes | None = None,
    trust_store: Store | None = None,
    now: datetime | None = None,
) -> int:
    """Strict mode: the ServerKeyExchange in ``transcript`` was signed by the requested server.

    The signature covers client_random + server_random + ServerECDHParams (RFC 8422 §5.4,
    RFC 5246 §7.4.3) and must verify under the server leaf's key, which must be the pinned one
    (``server_pin``, RFC 7469 §2.4: one ECDSA verify) or, without a pin, come from a chain that
    verifies for ``server_name`` against ``trust_store`` at ``now`` (RFC 5280 §6: one verify per
    certificate of the path below the trust anchor, then the one of the ServerKeyExchange).
    Run it after :func:`check_bound_transcript`, which checks the transcript's shape, randoms
    and names.
    Returns the number of ECDSA verifies done (for the device's key-operation count); raises
    SigningRefused naming the failed check.
    """
    if server_pin is None and (trust_store is None or now is None):
        raise SigningRefused("strict mode needs a pinned server key or a trust store and a time")
    try:
        messages = parse_handshake_fragments(transcript)
    except D2TLSError as exc:
        raise SigningRefused(
            f"the transcript is not a sequence of handshake messages: {exc}"
        ) from exc
    by_type: dict[int, list[bytes]] = {}
    for m in messages:
        by_type.setdefault(m.msg_type, []).append(m.body)
    hellos = by_type.get(HandshakeType.CLIENT_HELLO, [])
    server_hellos = by_type.get(HandshakeType.SERVER_HELLO, [])
    exchanges = by_type.get(HandshakeType.SERVER_KEY_EXCHANGE, [])
    certificates = by_type.get(HandshakeType.CERTIFICATE, [])
    if len(hellos) != 1 or len(server_hellos) != 1 or len(exchanges) != 1 or not certificates:
        raise SigningRefused(
            "strict mode needs one ClientHello, ServerHello, server Certificate and "
            "ServerKeyExchange in the transcript"
        )
    try:
        client_random = ClientHello.decode(hellos[0]).random
        server_random = ServerHello.decode(server_hellos[0]).random
        exchange = ServerKeyExchangeECDHE.decode(exchanges[0])
        chain = Certificate.decode(certificates[0]).certificates
    except D2TLSError as exc:
        raise SigningRefused(f"undecodable server flight in the transcript: {exc}") from exc
    if not chain:
        raise SigningRefused("the server Certificate in the transcript is empty")
    if exchange.named_curve != SECP256R1 or exchange.signature_algorithm != ECDSA_SECP256R1_SHA256:
        raise SigningRefused("the ServerKeyExchange is not ECDHE P-256 with ECDSA-SHA256")
    verifies = 0
    try:
        if server_pin is not None:
            if not hmac.compare_digest(spki_sha256(chain[0]), server_pin):
                raise SigningRefused(
                    "the server certificate in the transcript does not carry the pinned key"
                )
            leaf = x509.load_der_x509_certificate(chain[0])
        else:
            assert trust_store is not None and now is not None
            path = verify_server_path(chain, trust_store, server_name, now)
            leaf = path[0]
            verifies += len(path) - 1  # the trust anchor's own signature is not verified
    except (CertificateError, ConfigurationError, ValueError) as exc:
        raise SigningRefused(f"the server certificate chain does not verify: {exc}") from exc
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise SigningRefused("the server certificate's key is not ECDSA P-256")
    signed = client_random + server_random + exchange.params_bytes()
    verifies += 1
    try:
        key.verify(exchange.signature, signed, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SigningRefused(
            "the ServerKeyExchange signature does not verify under the server's key"
        ) from None
    return verifies
