"""Configuration of the DTLS client and server engines, with safe defaults."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.verification import Store

from d2tls.core.clock import Clock, wall_time
from d2tls.core.dtls.constants import ECDHE_SUITES, PSK_KEYED_SUITES, CipherSuite
from d2tls.core.dtls.messages import MAX_PSK_HINT, TwinPeaksHello
from d2tls.core.dtls.rawpk import canonical_spkis, spki_of
from d2tls.core.dtls.session import MemorySessionStore, Session, SessionStore
from d2tls.core.errors import ConfigurationError
from d2tls.core.pki.revocation import ClientRevocations
from d2tls.core.pki.verdict_cache import DEFAULT_MAX_AGE, DEFAULT_MAX_ENTRIES
from d2tls.core.pki.verify import check_psk
from d2tls.core.randomness import SYSTEM, Randomness

#: Called with one NSS key log line (``CLIENT_RANDOM <random> <master>``) when key logging is on.
KeyLogCallback = Callable[[str], None]
#: ``server_name -> SubjectPublicKeyInfo (DER)`` the client expects, or None when it knows no
#: key for that name (RFC 7250 §1: the client obtains the key out of band, e.g. TwinPeaks).
ServerKeyLookup = Callable[[str | None], bytes | None]

DEFAULT_SUITES: tuple[CipherSuite, ...] = (
    CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
    CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
)


class ClientAuth(enum.Enum):
    """Whether the server asks for a client certificate (RFC 5246 §7.4.4)."""

    NONE = "none"
    OPTIONAL = "optional"
    REQUIRED = "required"


@dataclass
class TimerConfig:
    """Retransmission timer (RFC 6347 §4.2.4.1): 1 s initial, doubling, 60 s cap."""

    initial: float = 1.0
    maximum: float = 60.0
    max_retransmissions: int = 6


@dataclass
class ClientConfig:
    """Client settings.

    For certificate suites ``trust_store`` is required (the server chain is always verified).
    ``private_key=None`` with a ``certificate_chain`` means an *external signer*: the engine
    emits ``SignatureRequested`` and waits for ``provide_signature`` (D2TLS delegation).
    """

    cipher_suites: tuple[CipherSuite, ...] = DEFAULT_SUITES
    trust_store: Store | None = None
    server_name: str | None = None
    certificate_chain: Sequence[bytes] = ()
    private_key: ec.EllipticCurvePrivateKey | None = None
    psk_identity: bytes | None = None
    psk: bytes | None = None
    session: Session | None = None
    #: Abort instead of falling back to a full handshake when ``session`` is not resumed.
    resume_only: bool = False
    #: Fixed ClientHello random (D2TLS bound mode lets the device choose it), else random.
    client_random: bytes | None = None
    #: RFC 7627: refuse a server that does not negotiate the extended master secret.
    require_extended_master_secret: bool = True
    mtu: int = 1400
    timers: TimerConfig = field(default_factory=TimerConfig)
    keylog: KeyLogCallback | None = None
    #: Raw public keys (DER SubjectPublicKeyInfo) the server may present (RFC 7250); with
    #: these or ``server_key_lookup`` the client offers server_certificate_type RawPublicKey.
    trusted_server_keys: frozenset[bytes] = frozenset()
    #: The key expected for ``server_name`` (the TwinPeaks hook), checked like a pinned key.
    server_key_lookup: ServerKeyLookup | None = None
    #: Our own raw public key (DER SubjectPublicKeyInfo of ``private_key``, or of the external
    #: signer's key): offered as client_certificate_type RawPublicKey (RFC 7250 §4.1).
    client_raw_public_key: bytes | None = None
    #: The TwinPeaks ClientHello extension to send (spec/twinpeaks.md §9).
    twinpeaks: TwinPeaksHello | None = None
    #: Wall clock (seconds since the epoch): certificate validity, session ``created_at``
    #: and expiry (docs/architecture.md, "Time and randomness"). Timers use the ``now`` given.
    wall_clock: Clock = wall_time
    #: Hello random, ECDHE keys and ECDSA signatures; a seeded one only in tests.
    randomness: Randomness = SYSTEM

    @property
    def accepts_raw_server_key(self) -> bool:
        """True when a raw public key from the server can be validated."""
        return bool(self.trusted_server_keys) or self.server_key_lookup is not None

    def validate(self) -> None:
        """Refuse unusable or unsafe combinations with a clear message."""
        if not self.cipher_suites:
            raise ConfigurationError("no cipher suites configured")
        resuming_only = self.resume_only and self.session is not None
        if (
            any(s in ECDHE_SUITES for s in self.cipher_suites)
            and self.trust_store is None
            and not self.accepts_raw_server_key
            and not resuming_only
        ):
            raise ConfigurationError(
                "certificate suites need a trust store (--ca) or trusted raw public keys"
            )
        if self.trusted_server_keys:
            self.trusted_server_keys = canonical_spkis(self.trusted_server_keys, "trusted")
        if self.client_raw_public_key is not None:
            (self.client_raw_public_key,) = canonical_spkis([self.client_raw_public_key], "our")
            if self.private_key is not None and spki_of(self.private_key) != (
                self.client_raw_public_key
            ):
                raise ConfigurationError("client_raw_public_key is not the key of private_key")
        if any(s in PSK_KEYED_SUITES for s in self.cipher_suites) and (
            self.psk is None or self.psk_identity is None
        ):
            raise ConfigurationError("PSK suite configured without a PSK identity and key")
        if self.psk is not None and self.psk_identity is not None:
            check_psk(self.psk_identity, self.psk)
        if self.client_random is not None and len(self.client_random) != 32:
            raise ConfigurationError("client_random must be 32 bytes")
        if self.mtu < 256:
            raise ConfigurationError("MTU below 256 bytes is not supported")


@dataclass
class ServerConfig:
    """Server settings. Client certificates are verified against ``trust_store``."""

    cipher_suites: tuple[CipherSuite, ...] = DEFAULT_SUITES
    certificate_chain: Sequence[bytes] = ()
    private_key: ec.EllipticCurvePrivateKey | None = None
    trust_store: Store | None = None
    client_auth: ClientAuth = ClientAuth.NONE
    psk_keys: dict[bytes, bytes] = field(default_factory=dict)
    #: psk_identity_hint of the ECDHE_PSK ServerKeyExchange (RFC 5489 §2), at most 128 bytes.
    psk_identity_hint: bytes = b""
    session_store: SessionStore = field(default_factory=MemorySessionStore)
    session_lifetime: float = 3600.0
    #: Send HelloVerifyRequest before committing state (RFC 6347 §4.2.1).
    cookie_exchange: bool = True
    cookie_rotation: float = 300.0
    require_extended_master_secret: bool = True
    mtu: int = 1400
    timers: TimerConfig = field(default_factory=TimerConfig)
    keylog: KeyLogCallback | None = None
    #: Associations a server holds (established ones, plus half-open ones while they fit);
    #: a new handshake never displaces an established association (docs/security.md).
    max_connections: int = 10_000
    #: Half-open associations (cookie verified, handshake unfinished); the oldest is evicted.
    max_half_open: int = 1_000
    #: An established association idle this long may be closed (close_notify) to make room.
    idle_timeout: float = 600.0
    #: Resume a known session without the cookie exchange (RFC 6347 §4.2.1 allows it); off by
    #: default: a spoofed ClientHello naming a known session ID gets an answer
    #: (docs/security.md, "Resumption without a cookie").
    resume_without_cookie: bool = False
    #: Client-chain verdicts cached for resumptions (0: verify the chain every time).
    verdict_cache_size: int = DEFAULT_MAX_ENTRIES
    #: Longest a cached verdict is trusted, seconds (also bounded by the chain's notAfter).
    verdict_cache_max_age: float = DEFAULT_MAX_AGE
    #: Revoked client certificates (CRLs), checked on every full handshake and resumption.
    revocations: ClientRevocations | None = None
    #: Our raw key pair (RFC 7250): offered when the client lists RawPublicKey in its
    #: server_certificate_type extension. May be the key of ``certificate_chain`` or another.
    raw_private_key: ec.EllipticCurvePrivateKey | None = None
    #: Client raw public keys (DER SubjectPublicKeyInfo) accepted for client authentication.
    trusted_client_keys: frozenset[bytes] = frozenset()
    #: Our TwinPeaks identity: a ClientHello TwinPeaks extension is checked against it
    #: (spec/twinpeaks.md §9.3); None ignores the extension like any unknown one.
    twinpeaks: TwinPeaksHello | None = None
    #: Wall clock (seconds since the epoch): certificate validity, session ``created_at``
    #: (docs/architecture.md, "Time and randomness"). Timers use the ``now`` given.
    wall_clock: Clock = wall_time
    #: Server random, session IDs, cookie secrets, ECDHE keys and ECDSA signatures.
    randomness: Randomness = SYSTEM

    @property
    def has_certificate(self) -> bool:
        """True when an X.509 chain and its key are configured."""
        return bool(self.certificate_chain) and self.private_key is not None

    def validate(self) -> None:
        """Refuse unusable or unsafe combinations with a clear message."""
        if not self.cipher_suites:
            raise ConfigurationError("no cipher suites configured")
        has_ecdhe = any(s in ECDHE_SUITES for s in self.cipher_suites)
        if has_ecdhe and not self.has_certificate and self.raw_private_key is None:
            raise ConfigurationError(
                "certificate suites need a certificate chain and key, or a raw key"
            )
        if self.raw_private_key is not None and self.raw_private_key.curve.name != "secp256r1":
            raise ConfigurationError("the raw key must be ECDSA P-256")
        if any(s in PSK_KEYED_SUITES for s in self.cipher_suites) and not self.psk_keys:
            raise ConfigurationError("PSK suite configured without PSK keys")
        for identity, key in self.psk_keys.items():
            check_psk(identity, key)
        if len(self.psk_identity_hint) > MAX_PSK_HINT:
            raise ConfigurationError(f"PSK identity hint exceeds {MAX_PSK_HINT} bytes")
        if self.trusted_client_keys:
            self.trusted_client_keys = canonical_spkis(self.trusted_client_keys, "client")
        if (
            self.client_auth is not ClientAuth.NONE
            and self.trust_store is None
            and not self.trusted_client_keys
        ):
            raise ConfigurationError(
                "client certificates cannot be verified without --ca or trusted raw keys"
            )
        if self.mtu < 256:
            raise ConfigurationError("MTU below 256 bytes is not supported")
        if self.max_connections < 1 or self.max_half_open < 1:
            raise ConfigurationError("max_connections and max_half_open must be at least 1")
        if self.verdict_cache_size < 0 or self.verdict_cache_max_age <= 0:
            raise ConfigurationError(
                "verdict_cache_size must be 0 or more and verdict_cache_max_age positive"
            )
