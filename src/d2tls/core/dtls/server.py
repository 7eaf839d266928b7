"""Sans-IO DTLS 1.2 server: one ``dtls_server`` machine per client address.

``DTLSServer`` is the listener: it answers ClientHellos without a valid cookie statelessly
(RFC 6347 §4.2.1), creates a ``ServerConnection`` once the cookie proves the address, and
routes datagrams, events and timers.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from d2tls.core.clock import utc
from d2tls.core.dtls import ecdhe_psk, keyschedule
from d2tls.core.dtls.config import ClientAuth, ServerConfig
from d2tls.core.dtls.connection import (
    CONTENT_NAMES,
    Address,
    Connection,
    InvalidStateError,
    Payload,
    Tracer,
    log,
)
from d2tls.core.dtls.constants import (
    CERT_TYPE_ECDSA_SIGN,
    COMPRESSION_NULL,
    DTLS_1_0,
    DTLS_1_2,
    ECDHE_PSK_SUITES,
    ECDSA_SECP256R1_SHA256,
    EMPTY_RENEGOTIATION_INFO_SCSV,
    MAX_PLAINTEXT,
    MAX_SEQUENCE,
    POINT_FORMAT_UNCOMPRESSED,
    PSK_KEYED_SUITES,
    PSK_SUITES,
    SECP256R1,
    AlertDescription,
    AlertLevel,
    CertificateType,
    CipherSuite,
    ContentType,
    ExtensionType,
    HandshakeType,
)
from d2tls.core.dtls.events import ConnectionTerminated, Event, HandshakeCompleted, InternalError
from d2tls.core.dtls.fragments import HandshakeFragment, encode_fragment, parse_handshake_fragments
from d2tls.core.dtls.messages import (
    Certificate,
    CertificateRequest,
    CertificateVerify,
    ClientHello,
    ClientKeyExchangeECDHE,
    ClientKeyExchangePSK,
    Extension,
    HelloVerifyRequest,
    RawPublicKeyCertificate,
    ServerHello,
    ServerHelloDone,
    ServerKeyExchangeECDHE,
    encode_certificate_type,
    encode_ec_point_formats,
    encode_renegotiation_info,
    message_name,
)
from d2tls.core.dtls.pending_hellos import PendingHellos
from d2tls.core.dtls.rawpk import choose_type, fingerprint, load_raw_public_key, spki_of
from d2tls.core.dtls.record import Record, encode_record, parse_datagram
from d2tls.core.dtls.session import Session
from d2tls.core.dtls.twinpeaks import REFUSAL_ALERTS, REFUSAL_REASONS, Refusal, check_hello
from d2tls.core.errors import (
    CertificateError,
    D2TLSError,
    DecryptError,
    HandshakeFailure,
    IllegalParameter,
    ProtocolError,
    SpecError,
)
from d2tls.core.model.machine import HandlerNames, Handlers, expecting, ignoring
from d2tls.core.model.spec import RoleSpec, load_spec
from d2tls.core.model.states import ServerState
from d2tls.core.pki.verdict_cache import VerdictCache
from d2tls.core.pki.verify import certificate_identity, verify_client_path
from d2tls.core.randomness import RandomBytes, system_random

#: Largest ClientHello body accepted (bytes). Measured DTLS 1.2 ClientHellos are 180-300 bytes
#: (OpenSSL 3 s_client: 180, with every cipher suite 298; GnuTLS: 194); 4 KiB also leaves
#: room for a client that offers DTLS 1.3 with post-quantum key shares (about 1.2 KiB each).
#: Longer ClientHellos are dropped before any state is kept (RFC 6347 §4.2.1).
MAX_CLIENT_HELLO_LENGTH = 4096
#: Highest ClientHello message_seq accepted: it counts the HelloVerifyRequests the client has
#: answered (RFC 6347 §4.2.2: the first message of a handshake has message_seq 0).
MAX_CLIENT_HELLO_SEQ = 16
#: Epoch-0 record sequence numbers kept free after the ClientHello's for our own flights
#: (RFC 6347 §4.2.1 makes the HelloVerifyRequest reuse the ClientHello's; numbers never wrap).
EPOCH0_RESERVE = 2**16
#: Bounds of the one buffer of fragmented ClientHellos before a cookie (RFC 6347 §4.2.1,
#: §4.2.3): at most this many partial hellos, this many accounted bytes, for this long.
MAX_PENDING_HELLOS = 1024
MAX_PENDING_HELLO_BYTES = 1 << 20
PENDING_HELLO_TIMEOUT = 5.0
#: Timer retransmissions of a flight sent to an address no cookie proved (a resumption
#: without cookie): one, so that a lost final client flight can still be recovered, while a
#: spoofed ClientHello draws at most two flights (docs/security.md).
UNPROVEN_RETRANSMISSIONS = 1

#: ``(peer, now) -> bool``: may a new association with ``peer`` be admitted now?
Admission = Callable[[Address, float], bool]


class CookieJar:
    """Stateless cookies: HMAC of the client address and ClientHello (RFC 6347 §4.2.1).

    The secret rotates every ``rotation`` seconds; cookies made with the previous secret are
    still accepted, so a client caught by a rotation does not fail.
    """

    def __init__(self, rotation: float, random_bytes: RandomBytes = system_random) -> None:
        self._rotation = rotation
        self._random = random_bytes
        self._secrets = [random_bytes(32), random_bytes(32)]
        #: Monotonic time of the last rotation; the first use of the jar starts the period.
        self._rotated_at: float | None = None

    def _maybe_rotate(self, now: float) -> None:
        if self._rotated_at is None:
            self._rotated_at = now
        elif now - self._rotated_at >= self._rotation:
            self._secrets = [self._random(32), self._secrets[0]]
            self._rotated_at = now

    @staticmethod
    def _material(peer: Address, hello: ClientHello) -> bytes:
        return b"|".join(
            [
                f"{peer[0]}:{peer[1]}".encode(),
                hello.client_version.to_bytes(2, "big"),
                hello.random,
                hello.session_id,
                b"".join(s.to_bytes(2, "big") for s in hello.cipher_suites),
                bytes(hello.compression_methods),
            ]
        )

    def make(self, peer: Address, hello: ClientHello, now: float) -> bytes:
        self._maybe_rotate(now)
        return hmac.new(self._secrets[0], self._material(peer, hello), hashlib.sha256).digest()

    def check(self, peer: Address, hello: ClientHello, now: float) -> bool:
        self._maybe_rotate(now)
        if len(hello.cookie) != hashlib.sha256().digest_size:
            return False  # not one of our HMAC-SHA256 cookies (an empty one: the first hello)
        material = self._material(peer, hello)
        return any(
            hmac.compare_digest(hmac.new(s, material, hashlib.sha256).digest(), hello.cookie)
            for s in self._secrets
        )


class ServerConnection(Connection):
    """The server side of one DTLS 1.2 association (sans-IO)."""

    ROLE = "dtls_server"
    IS_CLIENT = False

    def __init__(
        self,
        config: ServerConfig,
        peer: Address,
        cookies: CookieJar,
        tracer: Tracer | None = None,
        admission: Admission | None = None,
        verdicts: VerdictCache | None = None,
        cookieless: bool = False,
    ) -> None:
        self.config = config
        self._cookies = cookies
        self._admission = admission
        self._verdicts = verdicts
        #: The listener lets this ClientHello resume without a cookie (guard of the same name).
        self._cookieless = cookieless
        #: True once a session was resumed without a cookie proving the client's address.
        self.without_cookie = False
        #: True once a ClientHello was refused for want of room in the association table.
        self.refused = False
        #: The shared handlers, made on first use (:meth:`_shared_table`).
        self._shared: Handlers[Payload] | None = None
        super().__init__(
            mtu=config.mtu,
            timers=config.timers,
            keylog=config.keylog,
            peer=peer,
            tracer=tracer,
            states=ServerState,
        )
        #: The ClientHello being answered (set by the actions that take it).
        self._hello: ClientHello | None = None
        #: (ClientHello, cookie verdict) of the last cookie check (guard ``cookie_valid``).
        self._cookie_checked: tuple[ClientHello, bool] | None = None
        self._choice: CipherSuite | None = None
        self._session_id = b""
        self._resumed = False
        self._resumable: Session | None = None
        self._ephemeral: ec.EllipticCurvePrivateKey | None = None
        self._client_key: ec.EllipticCurvePublicKey | None = None
        self._client_certificates: tuple[bytes, ...] = ()
        self._psk_identity: bytes | None = None
        #: Certificate types chosen for this handshake (RFC 7250 §4.2).
        self._server_cert_type = CertificateType.X509
        self._client_cert_type = CertificateType.X509
        #: The client's raw public key (DER SubjectPublicKeyInfo) once accepted.
        self._client_raw_key: bytes | None = None
        self._twinpeaks_refusal: Refusal | None = None
        self.server_name: str | None = None
        self.session: Session | None = None

    # ------------------------------------------------------------------ reassembly hook
    def _prepare_reassembly(self, fragment: HandshakeFragment) -> None:
        """Align with a ClientHello that follows a stateless cookie exchange (RFC 6347 §4.2.1).

        The ClientHello then has message_seq 1 and our replies continue from there; our record
        sequence numbers start at the ClientHello's, so that the HelloVerifyRequest and the
        ServerHello never share one.
        """
        if self.stateless and fragment.msg_type == HandshakeType.CLIENT_HELLO:
            if fragment.message_seq > MAX_CLIENT_HELLO_SEQ:
                raise IllegalParameter(
                    f"ClientHello message_seq {fragment.message_seq} exceeds "
                    f"{MAX_CLIENT_HELLO_SEQ} (RFC 6347 §4.2.2)"
                )
            if self._record_seq > MAX_SEQUENCE - EPOCH0_RESERVE:
                raise IllegalParameter(
                    f"ClientHello record sequence number {self._record_seq} leaves no room "
                    "for our epoch-0 records (RFC 6347 §4.1)"
                )
            if self._reassembler.next_seq != fragment.message_seq:
                self._reassembler.reset(fragment.message_seq)
            self._send_seq = fragment.message_seq
            self._writes[0].write_seq = self._record_seq

    @property
    def state(self) -> ServerState:
        """The current state (``spec/dtls.yaml``, role ``dtls_server``)."""
        return ServerState(self._machine.state)

    @property
    def stateless(self) -> bool:
        """Whether the spec's state keeps nothing for the peer (RFC 6347 §4.2.1), so that the
        listener answers from it and drops the machine."""
        return self._machine.spec_state.stateless

    # ------------------------------------------------------------------ the spec's handlers
    def _handlers(self) -> Handlers[Payload]:
        """The spec's handlers, each bound to this connection when first used: a listener
        makes a connection per ClientHello and most of them answer one HelloVerifyRequest,
        which uses four of the table's 40 entries (:class:`_BoundOnUse`)."""
        return _ServerHandlers(
            guards=_BoundOnUse(self, _GUARDS, "guards", _shared_guards),
            actions=_BoundOnUse(self, _ACTIONS, "actions", _shared_actions),
            builders=_BoundOnUse(self, _BUILDERS, "builders", _shared_builders),
            hold=self._hold,
            emit=self._emit,
        )

    def _shared_table(self) -> Handlers[Payload]:
        """The handlers both roles share (:meth:`Connection._table_with`), made once."""
        if self._shared is None:
            self._shared = self._table_with({}, {}, {})
        return self._shared

    def _client_hello(self) -> ClientHello:
        """The ClientHello being answered (builders run after the action that took it)."""
        assert self._hello is not None
        return self._hello

    # ------------------------------------------------------------------ guards
    def _cookie_valid(self, hello: ClientHello) -> bool:
        """The guard of several ClientHello transitions (spec/dtls.yaml): the HMAC is
        computed once per ClientHello and its verdict reused by the later guards."""
        if not self.config.cookie_exchange:
            return True
        checked = self._cookie_checked
        if checked is not None and checked[0] is hello:
            return checked[1]
        assert self.peer is not None
        valid = self._cookies.check(self.peer, hello, self._now)
        self._cookie_checked = (hello, valid)
        return valid

    def _resume_without_cookie(self, hello: ClientHello) -> bool:
        """RFC 6347 §4.2.1: a server MAY skip the cookie exchange when resuming. Only when the
        operator allows it (``config.resume_without_cookie``), for a ClientHello that carries
        no cookie (one that does is on the cookie path), and when the address holds no live
        association, which a spoofed ClientHello must not be able to replace."""
        return self._cookieless and self.config.resume_without_cookie and not hello.cookie

    def _association_available(self) -> bool:
        """Room for this association: the server may evict a half-open one or an idle
        established one, but never a live established one (docs/security.md)."""
        if self._admission is None:
            return True
        assert self.peer is not None
        return self._admission(self.peer, self._now)

    def _refuse_association(self) -> None:
        """No room: a fatal internal_error alert (RFC 5246 §7.2.2: a resource failure
        unrelated to the peer), and no state is kept."""
        self.refused = True
        self._error = ProtocolError(
            "association table full: handshake refused", AlertDescription.INTERNAL_ERROR
        )
        self._queue_alert(AlertLevel.FATAL, AlertDescription.INTERNAL_ERROR)
        self._events.append(
            ConnectionTerminated(
                self._error.reason,
                AlertDescription.INTERNAL_ERROR,
                by_peer=False,
                error=True,
                peer=self.peer,
            )
        )
        self._wipe()

    def _session_resumable(self, hello: ClientHello) -> bool:
        """RFC 5246 §7.4.1.2 and RFC 7627 §5.3: resume only an identical, unexpired session."""
        if not hello.session_id:
            return False
        session = self.config.session_store.get(hello.session_id)
        if session is None or session.expired(self.config.wall_clock()):
            return False
        if session.cipher_suite not in self.config.cipher_suites:
            return False
        if int(session.cipher_suite) not in hello.cipher_suites:
            return False
        if session.extended_master_secret != hello.has_extended_master_secret:
            return False  # RFC 7627 §5.3: fall back to a full handshake
        if session.server_name != hello.server_name:
            return False  # RFC 6066 §3: SNI must match the original session
        if not self._client_identity_acceptable(session):
            return False  # the session's client identity is not one we accept now
        self._resumable = session
        return True

    def _client_identity_acceptable(self, session: Session) -> bool:
        """The client identity bound to ``session`` must satisfy the current policy.

        An abbreviated handshake carries no Certificate (RFC 5246 §7.3): the resumed connection
        inherits the identity authenticated by the full handshake that created the session. In
        D2TLS the agent ran that handshake with the *device's* certificate chain, so the
        identity is that certificate itself (not an address: agent and device differ). Like
        OpenSSL's session ID context, a session is only resumed where that identity would be
        accepted again (a shared store may hold sessions made under another policy):

        * a client certificate chain must still verify against this server's trust store
          (same CA, not expired) — no trust store, no resumption;
        * a PSK identity must still be configured;
        * a server that requires client certificates does not resume an unauthenticated one.
        """
        if session.psk_identity is not None:
            return session.psk_identity in self.config.psk_keys
        if session.peer_certificates and _is_raw_public_key(session.peer_certificates):
            return session.peer_certificates[0] in self.config.trusted_client_keys
        if session.peer_certificates:
            if self.config.trust_store is None:
                return False
            try:
                self._verify_client_path(session.peer_certificates)
            except CertificateError:
                return False
            return True
        return self.config.client_auth is not ClientAuth.REQUIRED

    def _verify_client_path(self, chain: tuple[bytes, ...]) -> tuple[x509.Certificate, ...]:
        """Verify a client chain (RFC 5280 §6), through the verdict cache when it is on, then
        check revocation, which is never cached (docs/security.md, "Verdict cache")."""
        store = self.config.trust_store
        assert store is not None
        if self._verdicts is not None and self.config.verdict_cache_size > 0:
            misses = self._verdicts.misses
            path = self._verdicts.verify(chain, store, self.config.wall_clock())
            if self._verdicts.misses != misses:
                self.stats["verify"] += len(chain)  # one signature per link
        else:
            path = tuple(verify_client_path(chain, store, utc(self.config.wall_clock())))
            self.stats["verify"] += len(chain)
        self._check_revocation(path)
        return path

    def _check_revocation(self, path: Sequence[x509.Certificate]) -> None:
        """Refuse a path with a certificate that a CRL of its issuer lists (RFC 5280 §6.3),
        alert certificate_revoked (RFC 5246 §7.2.2)."""
        revocations = self.config.revocations
        revoked = revocations.revoked(path) if revocations is not None else None
        if revoked is not None:
            raise CertificateError(
                f"certificate {revoked.subject.rfc4514_string()} (serial "
                f"{revoked.serial_number:x}) is revoked by a CRL of its issuer",
                AlertDescription.CERTIFICATE_REVOKED,
            )

    def _psk_suite_chosen(self, hello: ClientHello) -> bool:
        return self._negotiate_suite(hello) in PSK_SUITES

    def _ecdhe_psk_suite_chosen(self, hello: ClientHello) -> bool:
        """RFC 5489 §2: ServerKeyExchange with hint and ECDH parameters, no certificate."""
        return self._negotiate_suite(hello) in ECDHE_PSK_SUITES

    def _client_certificate_wanted(self) -> bool:
        return self.config.client_auth is not ClientAuth.NONE

    def _client_certificate_present(self, certificate: Payload) -> bool:
        return isinstance(certificate, RawPublicKeyCertificate) or (
            isinstance(certificate, Certificate) and bool(certificate.certificates)
        )

    def _client_sent_raw_public_key(self) -> bool:
        """RFC 7250 §4.2: our ServerHello asked for a raw public key from the client."""
        return self._client_cert_type == CertificateType.RAW_PUBLIC_KEY

    def _peer_sends_raw_public_key(self) -> bool:
        return self._client_cert_type == CertificateType.RAW_PUBLIC_KEY

    def _twinpeaks_hello_mismatch(self, hello: ClientHello) -> bool:
        """spec/twinpeaks.md §9.3: the ClientHello's TwinPeaks extension names another
        server, address or key than ours. False without the extension or without our
        TwinPeaks identity (an unknown extension is ignored, RFC 5246 §7.4.1.4)."""
        ours = self.config.twinpeaks
        theirs = hello.twinpeaks if ours is not None else None
        if ours is None or theirs is None:
            return False
        self._twinpeaks_refusal = check_hello(ours, theirs)
        return self._twinpeaks_refusal is not None

    def _refuse_twinpeaks_hello(self) -> None:
        """Refuse with the alert naming the wrong field (spec/twinpeaks.md §9.3); no state
        is kept (the listener drops a failed candidate)."""
        refusal = self._twinpeaks_refusal
        assert refusal is not None
        alert = REFUSAL_ALERTS[refusal]
        self._error = ProtocolError(f"TwinPeaks: {REFUSAL_REASONS[refusal]}", alert)
        self._queue_alert(AlertLevel.FATAL, alert)
        self._events.append(
            ConnectionTerminated(
                self._error.reason, alert, by_peer=False, error=True, peer=self.peer
            )
        )
        self._wipe()

    # ------------------------------------------------------------------ negotiation
    def _negotiate_suite(self, hello: ClientHello) -> CipherSuite:
        """Pick our most preferred suite that the client offers and can use (RFC 5246 §7.4.1.3)."""
        if self._choice is not None:
            return self._choice
        groups = hello.supported_groups
        algorithms = hello.signature_algorithms
        formats = hello.ec_point_formats
        for suite in self.config.cipher_suites:
            if int(suite) not in hello.cipher_suites:
                continue
            if suite in PSK_SUITES:
                self._choice = suite
                return suite
            if groups is not None and SECP256R1 not in groups:
                continue
            if formats is not None and POINT_FORMAT_UNCOMPRESSED not in formats:
                continue
            if suite in ECDHE_PSK_SUITES:  # RFC 5489 §2: nothing is signed
                self._choice = suite
                return suite
            if algorithms is not None and ECDSA_SECP256R1_SHA256 not in algorithms:
                continue
            self._choice = suite
            return suite
        raise HandshakeFailure("no cipher suite in common")

    def _check_client_hello(self, hello: ClientHello) -> None:
        """Reject what no cookie can fix (RFC 5246 §7.4.1.2, RFC 6347 §4.2.1)."""
        self._hello = hello
        if hello.client_version > DTLS_1_2:  # DTLS versions count down: 0xFEFF is 1.0
            raise ProtocolError(
                f"client offers only {hello.client_version:#06x}", AlertDescription.PROTOCOL_VERSION
            )
        if COMPRESSION_NULL not in hello.compression_methods:
            raise IllegalParameter("ClientHello does not offer null compression")
        info = hello.renegotiation_info
        if info is not None and info != b"":
            raise HandshakeFailure("non-empty renegotiation_info in an initial handshake")

    def _negotiate(self, hello: ClientHello) -> None:
        self._check_client_hello(hello)
        suite = self._negotiate_suite(hello)
        self.cipher_suite = suite
        self.client_random = hello.random
        self.server_random = self.config.randomness.random_bytes(32)
        self.server_name = hello.server_name
        self.extended_master_secret = hello.has_extended_master_secret
        if self.config.require_extended_master_secret and not self.extended_master_secret:
            raise HandshakeFailure("client did not offer the extended master secret (RFC 7627)")

    def _new_session(self) -> None:
        self._session_id = self.config.randomness.random_bytes(32)
        if self.cipher_suite not in PSK_KEYED_SUITES:
            self._negotiate_certificate_types()

    def _negotiate_certificate_types(self) -> None:
        """RFC 7250 §4.2: pick the server's and (when we ask for one) the client's certificate
        type from the client's lists, its preference first; no list means X.509. No type in
        common is fatal: unsupported_certificate."""
        hello = self._client_hello()
        ours: list[CertificateType] = []
        if self.config.raw_private_key is not None:
            ours.append(CertificateType.RAW_PUBLIC_KEY)
        if self.config.has_certificate:
            ours.append(CertificateType.X509)
        chosen = choose_type(hello.server_certificate_types, ours)
        if chosen is None:
            raise CertificateError(
                "no server certificate type in common with the client",
                AlertDescription.UNSUPPORTED_CERTIFICATE,
            )
        self._server_cert_type = CertificateType(chosen)
        if not self._client_certificate_wanted():
            return
        accepted: list[CertificateType] = []
        if self.config.trusted_client_keys:
            accepted.append(CertificateType.RAW_PUBLIC_KEY)
        if self.config.trust_store is not None:
            accepted.append(CertificateType.X509)
        chosen = choose_type(hello.client_certificate_types, accepted)
        if chosen is None and self.config.client_auth is ClientAuth.REQUIRED:
            raise CertificateError(
                "no client certificate type in common with the client",
                AlertDescription.UNSUPPORTED_CERTIFICATE,
            )
        # With optional client authentication and no common type, the client_certificate_type
        # extension is omitted: the client may still answer with an empty Certificate.
        self._client_cert_type = (
            CertificateType(chosen) if chosen is not None else (CertificateType.X509)
        )

    def _note_unproven_address(self) -> None:
        """No cookie proved the client's address: retransmit our flight on the timer at most
        :data:`UNPROVEN_RETRANSMISSIONS` times, bounding what a spoofed ClientHello draws to
        another host (RFC 6347 §4.2.1); a client that repeats its ClientHello is still answered
        (RFC 6347 §4.2.4)."""
        self.without_cookie = True
        self._timers = replace(
            self._timers,
            max_retransmissions=min(self._timers.max_retransmissions, UNPROVEN_RETRANSMISSIONS),
        )

    def _resume_session(self) -> None:
        session = self._resumable
        assert session is not None
        self._resumed = True
        self.cipher_suite = session.cipher_suite
        self._session_id = session.session_id
        self._master = bytearray(session.master_secret)
        if _is_raw_public_key(session.peer_certificates):
            self._client_raw_key = session.peer_certificates[0]
        else:
            self._client_certificates = session.peer_certificates
        self._psk_identity = session.psk_identity
        self._install_keys()

    # ------------------------------------------------------------------ builders
    def _build_hello_verify_request(self) -> None:
        assert self.peer is not None
        cookie = self._cookies.make(self.peer, self._client_hello(), self._now)
        self._queue_handshake(HelloVerifyRequest(DTLS_1_2, cookie))

    def _build_server_hello(self) -> None:
        hello = self._client_hello()
        extensions: list[Extension] = []
        if (
            hello.renegotiation_info is not None
            or EMPTY_RENEGOTIATION_INFO_SCSV in hello.cipher_suites
        ):
            extensions.append(
                Extension(ExtensionType.RENEGOTIATION_INFO, encode_renegotiation_info(b""))
            )
        if self.extended_master_secret:
            extensions.append(Extension(ExtensionType.EXTENDED_MASTER_SECRET, b""))
        if hello.ec_point_formats is not None and self.cipher_suite not in PSK_SUITES:
            extensions.append(
                Extension(
                    ExtensionType.EC_POINT_FORMATS,
                    encode_ec_point_formats([POINT_FORMAT_UNCOMPRESSED]),
                )
            )
        if not self._resumed and self.cipher_suite not in PSK_KEYED_SUITES:
            # RFC 7250 §4.2: answer each list the client sent with the one type chosen; the
            # client's type only when we send a CertificateRequest and a type was chosen.
            if hello.server_certificate_types is not None:
                extensions.append(
                    Extension(
                        ExtensionType.SERVER_CERTIFICATE_TYPE,
                        encode_certificate_type(self._server_cert_type),
                    )
                )
            if (
                hello.client_certificate_types is not None
                and self._client_certificate_wanted()
                and self._client_cert_type in hello.client_certificate_types
            ):
                extensions.append(
                    Extension(
                        ExtensionType.CLIENT_CERTIFICATE_TYPE,
                        encode_certificate_type(self._client_cert_type),
                    )
                )
        assert self.cipher_suite is not None
        self._queue_handshake(
            ServerHello(
                server_version=DTLS_1_2,
                random=self.server_random,
                session_id=self._session_id,
                cipher_suite=int(self.cipher_suite),
                compression_method=COMPRESSION_NULL,
                extensions=tuple(extensions),
            )
        )

    def _build_certificate(self) -> None:
        if self._server_cert_type == CertificateType.RAW_PUBLIC_KEY:
            assert self.config.raw_private_key is not None
            self._queue_handshake(RawPublicKeyCertificate(spki_of(self.config.raw_private_key)))
            return
        self._queue_handshake(Certificate(tuple(self.config.certificate_chain)))

    def _signing_key(self) -> ec.EllipticCurvePrivateKey:
        """The key of the Certificate we sent: the raw key or the chain's key."""
        key = (
            self.config.raw_private_key
            if self._server_cert_type == CertificateType.RAW_PUBLIC_KEY
            else self.config.private_key
        )
        assert key is not None
        return key

    def _build_server_key_exchange(self) -> None:
        """Signed ECDHE parameters (RFC 8422 §5.4), or hint and ECDH parameters (RFC 5489 §2)."""
        if self._uses_ecdhe_psk():
            self._ephemeral, exchange = ecdhe_psk.server_key_exchange(
                self.config.randomness, self.config.psk_identity_hint
            )
            self.stats["keygen"] += 1
            self._queue_handshake(exchange)
            return
        self._ephemeral = self.config.randomness.ec_private_key()
        self.stats["keygen"] += 1
        point = self._ephemeral.public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint
        )
        unsigned = ServerKeyExchangeECDHE(SECP256R1, point, ECDSA_SECP256R1_SHA256, b"")
        signed = self.client_random + self.server_random + unsigned.params_bytes()
        signature = self._signing_key().sign(signed, self.config.randomness.ecdsa())
        self.stats["sign"] += 1
        self._queue_handshake(
            ServerKeyExchangeECDHE(SECP256R1, point, ECDSA_SECP256R1_SHA256, signature)
        )

    def _build_certificate_request(self) -> None:
        """RFC 5246 §7.4.4; an empty CA list lets the client pick its certificate."""
        self._queue_handshake(
            CertificateRequest(
                certificate_types=(CERT_TYPE_ECDSA_SIGN,),
                signature_algorithms=(ECDSA_SECP256R1_SHA256,),
                certificate_authorities=(),
            )
        )

    def _build_server_hello_done(self) -> None:
        self._queue_handshake(ServerHelloDone())

    # ------------------------------------------------------------------ client flight
    def _process_client_certificate(self, certificate: Certificate) -> None:
        """Verify the client chain against the trust store (RFC 5246 §7.4.6)."""
        if self.config.trust_store is None:  # only raw keys are accepted (RFC 7250 §4.2)
            raise CertificateError(
                "client sent an X.509 certificate but only raw public keys are trusted",
                AlertDescription.UNSUPPORTED_CERTIFICATE,
            )
        path = verify_client_path(
            certificate.certificates, self.config.trust_store, utc(self.config.wall_clock())
        )
        self.stats["verify"] += len(certificate.certificates)  # one signature per link
        self._check_revocation(path)
        key = path[0].public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise CertificateError(
                "client key is not ECDSA P-256", AlertDescription.UNSUPPORTED_CERTIFICATE
            )
        self._client_key = key
        self._client_certificates = tuple(certificate.certificates)

    def _process_client_raw_public_key(self, certificate: RawPublicKeyCertificate) -> None:
        """RFC 7250 §3: accept the client's SubjectPublicKeyInfo only if it is trusted
        (certificate_unknown otherwise); it must be ECDSA P-256 (unsupported_certificate)."""
        key, spki = load_raw_public_key(certificate.subject_public_key_info, "client")
        if spki not in self.config.trusted_client_keys:
            raise CertificateError(
                f"client raw public key {fingerprint(spki)} is not trusted",
                AlertDescription.CERTIFICATE_UNKNOWN,
            )
        self._client_key = key
        self._client_raw_key = spki

    def _process_empty_client_certificate(self) -> None:
        if self.config.client_auth is ClientAuth.REQUIRED:
            raise HandshakeFailure("a client certificate is required")

    def _process_client_key_exchange(self, exchange: Payload) -> None:
        """Premaster, then (extended) master secret and the next epoch's keys."""
        if self._uses_ecdhe_psk():
            assert self._ephemeral is not None
            self._psk_identity, pre_master = ecdhe_psk.server_pre_master(
                self._ephemeral, exchange, self.config.psk_keys
            )
            self.stats["ecdh"] += 1
        elif self._uses_psk():
            if not isinstance(exchange, ClientKeyExchangePSK):
                raise IllegalParameter("expected a PSK ClientKeyExchange")
            psk = self.config.psk_keys.get(exchange.identity)
            if psk is None:
                raise ProtocolError("unknown PSK identity", AlertDescription.UNKNOWN_PSK_IDENTITY)
            self._psk_identity = exchange.identity
            pre_master = keyschedule.psk_pre_master_secret(psk)
        else:
            if not isinstance(exchange, ClientKeyExchangeECDHE):
                raise IllegalParameter("expected an ECDHE ClientKeyExchange")
            assert self._ephemeral is not None
            pre_master = keyschedule.ecdhe_pre_master_secret(self._ephemeral, exchange.public_point)
            self.stats["ecdh"] += 1
        if self.extended_master_secret:
            session_hash = keyschedule.transcript_hash(bytes(self._transcript))
            self._master = keyschedule.extended_master_secret(pre_master, session_hash)
        else:
            self._master = keyschedule.master_secret(
                pre_master, self.client_random, self.server_random
            )
        self._install_keys()

    def _verify_certificate_verify(self, verify: CertificateVerify) -> None:
        """The client proves possession of its key (RFC 5246 §7.4.8)."""
        assert self._client_key is not None
        if verify.signature_algorithm != ECDSA_SECP256R1_SHA256:
            raise IllegalParameter("CertificateVerify uses an algorithm we did not request")
        signed = bytes(self._transcript[: self._transcript_mark])
        self.stats["verify"] += 1
        try:
            self._client_key.verify(verify.signature, signed, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise DecryptError("CertificateVerify signature does not verify") from None

    def _complete_handshake(self) -> None:
        assert self.cipher_suite is not None
        if self._resumed and self._resumable is not None:
            self.session = self._resumable
        else:
            self.session = Session(
                session_id=self._session_id,
                master_secret=bytearray(self._master),
                cipher_suite=self.cipher_suite,
                extended_master_secret=self.extended_master_secret,
                server_name=self.server_name,
                peer_certificates=self._client_identity(),
                psk_identity=self._psk_identity,
                created_at=self.config.wall_clock(),
                lifetime=self.config.session_lifetime,
            )
            stored = Session(
                session_id=self.session.session_id,
                master_secret=bytearray(self._master),
                cipher_suite=self.session.cipher_suite,
                extended_master_secret=self.session.extended_master_secret,
                server_name=self.session.server_name,
                peer_certificates=self.session.peer_certificates,
                psk_identity=self.session.psk_identity,
                created_at=self.session.created_at,
                lifetime=self.session.lifetime,
            )
            self.config.session_store.put(stored)
        self._events.append(
            HandshakeCompleted(
                session=self.session,
                resumed=self._resumed,
                cipher_suite=self.cipher_suite,
                extended_master_secret=self.extended_master_secret,
                peer=self.peer,
            )
        )

    def _refuse_renegotiation(self) -> None:
        """RFC 5746 / our policy: refuse with a no_renegotiation warning, stay established."""
        self._queue_alert(AlertLevel.WARNING, AlertDescription.NO_RENEGOTIATION)

    @property
    def resumed(self) -> bool:
        return self._resumed

    @property
    def peer_certificates(self) -> tuple[bytes, ...]:
        """The client's verified chain (DER), empty if none."""
        return self._client_certificates

    def _client_identity(self) -> tuple[bytes, ...]:
        """What the session remembers of the client: its chain, or its raw public key."""
        if self._client_raw_key is not None:
            return (self._client_raw_key,)
        return self._client_certificates

    @property
    def peer_raw_public_key(self) -> bytes | None:
        """The client's raw public key (DER SubjectPublicKeyInfo), if it sent one."""
        return self._client_raw_key

    def peer_subject(self) -> str | None:
        """RFC 4514 subject of the client certificate, or ``rawpk sha256:...`` for a raw
        public key; None without either."""
        if self._client_raw_key is not None:
            return f"rawpk {fingerprint(self._client_raw_key)}"
        if not self._client_certificates:
            return None
        return x509.load_der_x509_certificate(self._client_certificates[0]).subject.rfc4514_string()

    def peer_identity(self) -> str | None:
        """The client's identity: its first SAN, else its subject CN (``certificate_identity``);
        for a raw public key its fingerprint."""
        if self._client_raw_key is not None:
            return fingerprint(self._client_raw_key)
        return (
            certificate_identity(self._client_certificates[0])
            if self._client_certificates
            else None
        )


V = TypeVar("V")
#: How to bind one handler to a connection.
_Maker = Callable[[ServerConnection], V]

_GUARDS: dict[str, _Maker[Callable[[Payload], bool]]] = {
    "cookie_valid": lambda c: expecting(ClientHello, c._cookie_valid),
    "resume_without_cookie": lambda c: expecting(ClientHello, c._resume_without_cookie),
    "association_available": lambda c: ignoring(c._association_available),
    "session_resumable": lambda c: expecting(ClientHello, c._session_resumable),
    "psk_suite_chosen": lambda c: expecting(ClientHello, c._psk_suite_chosen),
    "ecdhe_psk_suite_chosen": lambda c: expecting(ClientHello, c._ecdhe_psk_suite_chosen),
    "client_certificate_wanted": lambda c: ignoring(c._client_certificate_wanted),
    "client_certificate_present": lambda c: c._client_certificate_present,
    "client_sent_raw_public_key": lambda c: ignoring(c._client_sent_raw_public_key),
    "twinpeaks_hello_mismatch": lambda c: expecting(ClientHello, c._twinpeaks_hello_mismatch),
}
_ACTIONS: dict[str, _Maker[Callable[[Payload], None]]] = {
    "check_client_hello": lambda c: expecting(ClientHello, c._check_client_hello),
    "refuse_association": lambda c: ignoring(c._refuse_association),
    "refuse_twinpeaks_hello": lambda c: ignoring(c._refuse_twinpeaks_hello),
    "negotiate": lambda c: expecting(ClientHello, c._negotiate),
    "new_session": lambda c: ignoring(c._new_session),
    "resume_session": lambda c: ignoring(c._resume_session),
    "note_unproven_address": lambda c: ignoring(c._note_unproven_address),
    "process_client_certificate": lambda c: expecting(Certificate, c._process_client_certificate),
    "process_client_raw_public_key": lambda c: expecting(
        RawPublicKeyCertificate, c._process_client_raw_public_key
    ),
    "process_empty_client_certificate": lambda c: ignoring(c._process_empty_client_certificate),
    "process_client_key_exchange": lambda c: c._process_client_key_exchange,
    "verify_certificate_verify": lambda c: expecting(
        CertificateVerify, c._verify_certificate_verify
    ),
    "complete_handshake": lambda c: ignoring(c._complete_handshake),
    "refuse_renegotiation": lambda c: ignoring(c._refuse_renegotiation),
}
_BUILDERS: dict[str, _Maker[Callable[[], None]]] = {
    "HelloVerifyRequest": lambda c: c._build_hello_verify_request,
    "ServerHello": lambda c: c._build_server_hello,
    "Certificate": lambda c: c._build_certificate,
    "ServerKeyExchange": lambda c: c._build_server_key_exchange,
    "CertificateRequest": lambda c: c._build_certificate_request,
    "ServerHelloDone": lambda c: c._build_server_hello_done,
}
#: Names of the shared handlers of :meth:`Connection._table_with`, by kind (filled once).
_SHARED_NAMES: dict[str, tuple[str, ...]] = {}


@dataclass(frozen=True)
class _ServerHandlers(Handlers[Payload]):
    """A :class:`ServerConnection`'s table; its names are the same for every connection."""

    def names(self) -> HandlerNames:
        global _TABLE_NAMES
        if _TABLE_NAMES is None:
            _TABLE_NAMES = super().names()
        return _TABLE_NAMES


_TABLE_NAMES: HandlerNames | None = None


def _shared_guards(table: Handlers[Payload]) -> Mapping[str, Callable[[Payload], bool]]:
    return table.guards


def _shared_actions(table: Handlers[Payload]) -> Mapping[str, Callable[[Payload], None]]:
    return table.actions


def _shared_builders(table: Handlers[Payload]) -> Mapping[str, Callable[[], None]]:
    return table.builders


class _BoundOnUse(Mapping[str, V]):
    """One kind of a :class:`ServerConnection`'s handler table: the server's own handlers
    (``makers``) and the shared ones of :meth:`Connection._table_with`, each bound to the
    connection the first time the machine asks for it. Its names are the full table's from
    the start, so the machine's check against the spec (:mod:`d2tls.core.model.machine`) sees
    every handler."""

    __slots__ = ("_bound", "_kind", "_makers", "_owner", "_shared")

    def __init__(
        self,
        owner: ServerConnection,
        makers: dict[str, _Maker[V]],
        kind: str,
        shared: Callable[[Handlers[Payload]], Mapping[str, V]],
    ) -> None:
        self._owner = owner
        self._makers = makers
        self._kind = kind
        self._shared = shared
        self._bound: dict[str, V] = {}

    def _shared_names(self) -> tuple[str, ...]:
        names = _SHARED_NAMES.get(self._kind)
        if names is None:
            table = self._shared(self._owner._shared_table())
            names = _SHARED_NAMES[self._kind] = tuple(n for n in table if n not in self._makers)
        return names

    def __getitem__(self, name: str) -> V:
        handler = self._bound.get(name)
        if handler is None:
            maker = self._makers.get(name)
            if maker is not None:
                handler = maker(self._owner)
            elif name in self._shared_names():
                handler = self._shared(self._owner._shared_table())[name]
            else:
                raise KeyError(name)
            self._bound[name] = handler
        return handler

    def __iter__(self) -> Iterator[str]:
        yield from self._makers
        yield from self._shared_names()

    def __len__(self) -> int:
        return len(self._makers) + len(self._shared_names())


def _is_raw_public_key(identity: tuple[bytes, ...]) -> bool:
    """True for a session identity that is one SubjectPublicKeyInfo, not a chain: DER of a
    Certificate never parses as a SubjectPublicKeyInfo (RFC 5280 §4.1)."""
    if len(identity) != 1 or not _looks_like_spki(identity[0]):
        return False
    try:
        load_raw_public_key(identity[0], "session")
    except CertificateError:
        return False
    return True


def _der_content_start(der: bytes, offset: int) -> int | None:
    """Offset of the contents of the DER TLV at ``offset`` (X.690 §8.1.3), None if cut."""
    if offset + 2 > len(der):
        return None
    first = der[offset + 1]
    if first < 0x80:
        return offset + 2
    size = first & 0x7F
    return offset + 2 + size if 0 < size <= 4 and offset + 2 + size <= len(der) else None


def _looks_like_spki(der: bytes) -> bool:
    """Cheap shape test before a full parse: a SubjectPublicKeyInfo is SEQUENCE { SEQUENCE {
    OBJECT IDENTIFIER, ...}, BIT STRING } (RFC 5280 §4.1.2.7), while a Certificate's inner
    SEQUENCE (tbsCertificate) starts with [0] version or INTEGER serialNumber (§4.1)."""
    if not der or der[0] != 0x30:
        return False
    inner = _der_content_start(der, 0)
    if inner is None or inner >= len(der) or der[inner] != 0x30:
        return False
    first = _der_content_start(der, inner)
    return first is not None and first < len(der) and der[first] == 0x06


def _is_initial_client_hello(data: bytes) -> bool:
    """True if the datagram starts with an epoch-0 ClientHello with message_seq 0 or 1."""
    if len(data) < 13 or data[0] != ContentType.HANDSHAKE or data[3] or data[4]:
        return False  # the first record (RFC 6347 §4.1 header) is no epoch-0 handshake
    records, _ = parse_datagram(data)
    if not records:
        return False
    first = records[0]
    if first.content_type != ContentType.HANDSHAKE or first.epoch != 0:
        return False
    try:
        fragments = parse_handshake_fragments(first.fragment)
    except D2TLSError:
        return False
    return bool(fragments) and fragments[0].msg_type == HandshakeType.CLIENT_HELLO


def _is_new_client_hello(data: bytes, connection: ServerConnection) -> bool:
    """True for an initial ClientHello that does not repeat the one ``connection`` answered.

    A delayed or duplicated copy of that ClientHello (same random, RFC 5246 §7.4.1.2) is a
    retransmission, not a new handshake, and must not end the association (RFC 6347 §4.2.8).
    """
    if not _is_initial_client_hello(data):
        return False
    records, _ = parse_datagram(data)
    first = parse_handshake_fragments(records[0].fragment)[0]
    random = first.body[2:34] if first.fragment_offset == 0 else b""
    return len(random) != 32 or random != connection.client_random


_LISTEN: dict[int, tuple[RoleSpec, frozenset[str], frozenset[int]]] = {}


def _listen_filter() -> tuple[frozenset[str], frozenset[int]]:
    """What the stateless initial state of ``dtls_server`` takes (spec/dtls.yaml): the record
    content types of epoch 0 and the handshake types it has a transition for (computed once
    per loaded spec)."""
    role = load_spec().role("dtls_server")
    hit = _LISTEN.get(id(role))
    if hit is not None and hit[0] is role:
        return hit[1], hit[2]
    listen = role.states[role.initial]
    if not listen.stateless:
        raise SpecError(f"dtls_server: the initial state {role.initial} must be stateless")
    triggers = role.triggers_from(role.initial)
    types = frozenset(t for t in HandshakeType if f"recv_{message_name(t)}" in triggers)
    if types != {HandshakeType.CLIENT_HELLO}:
        raise SpecError(f"dtls_server: {role.initial} must take exactly ClientHello")
    content_types = listen.rules.epoch0 & listen.rules.accept
    _LISTEN[id(role)] = (role, content_types, types)
    return content_types, types


def _client_hello_fragments(data: bytes) -> list[tuple[Record, HandshakeFragment]] | None:
    """The ClientHello fragments of a datagram from an address without an association.

    Before a cookie only what the stateless ``listen`` state of the spec takes is accepted
    (RFC 6347 §4.2.1): epoch-0 handshake records carrying ClientHello fragments, of at most
    :data:`MAX_CLIENT_HELLO_LENGTH` bytes; anything else in the datagram makes it worthless
    (None).
    """
    content_types, message_types = _listen_filter()
    records, _ = parse_datagram(data)
    out: list[tuple[Record, HandshakeFragment]] = []
    for record in records:
        if (
            CONTENT_NAMES.get(record.content_type) not in content_types
            or record.epoch != 0
            or record.version not in (DTLS_1_2, DTLS_1_0)
            or len(record.fragment) > MAX_PLAINTEXT
        ):
            return None
        try:
            fragments = parse_handshake_fragments(record.fragment)
        except D2TLSError:
            return None
        for fragment in fragments:
            if fragment.msg_type not in message_types or fragment.length > MAX_CLIENT_HELLO_LENGTH:
                return None
            out.append((record, fragment))
    return out or None


@dataclass(frozen=True)
class ServerStats:
    """A read-only snapshot of a server's state and counters (:meth:`DTLSServer.counters`)."""

    #: Fragmented ClientHellos waiting for their other fragments (before any cookie).
    pending_hellos: int
    #: Accounted bytes they hold (bytes received plus per-piece overhead).
    pending_hello_bytes: int
    #: Associations whose cookie was valid and whose handshake is not finished.
    half_open: int
    #: Established associations.
    established: int
    #: Accounted bytes held by the associations' handshake reassembly buffers.
    reassembly_bytes: int
    #: Engine bugs caught (each ended one connection with internal_error).
    internal_errors: int
    #: Datagrams answered without keeping state (HelloVerifyRequest or an alert).
    stateless_replies: int
    #: Datagrams from addresses without an association that carried no ClientHello.
    dropped_datagrams: int
    #: Partial ClientHellos dropped (for room, expired, replaced or inconsistent).
    dropped_hellos: int
    #: Handshakes refused because no association could be made room for.
    refused_handshakes: int
    #: Half-open associations evicted (oldest first) to make room.
    evicted_half_open: int
    #: Established associations closed (close_notify) after idle_timeout to make room.
    evicted_idle: int
    #: Resumptions answered without a cookie exchange (``config.resume_without_cookie``).
    cookieless_resumptions: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class DTLSServer:
    """A DTLS 1.2 server endpoint serving many client addresses (sans-IO).

    Before a valid cookie nothing is kept per address (RFC 6347 §4.2.1): a complete ClientHello
    is answered statelessly, fragments of one wait in one bounded buffer for all addresses.
    Associations are bounded by ``config.max_half_open`` and ``config.max_connections``; half-open
    ones are evicted first (oldest first), an established one only after ``config.idle_timeout``
    without traffic and with close_notify; otherwise a new handshake is refused.

    Work per call is independent of the number of associations: only connections touched
    since the last :meth:`datagrams_to_send` are polled for output, and timers are kept in a
    heap whose stale entries are skipped lazily.
    """

    def __init__(self, config: ServerConfig, tracer: Tracer | None = None) -> None:
        config.validate()
        self.config = config
        self._cookies = CookieJar(config.cookie_rotation, config.randomness.random_bytes)
        #: Client-chain verdicts shared by every association (``config.verdict_cache_size``).
        self.verdicts = VerdictCache(
            max(1, config.verdict_cache_size), config.verdict_cache_max_age
        )
        self._connections: dict[Address, ServerConnection] = {}
        #: Half-open associations by creation time (first = oldest).
        self._half_open: dict[Address, float] = {}
        #: Established associations by last activity (first = idle longest).
        self._established: dict[Address, float] = {}
        self._pending = PendingHellos(
            max_hellos=MAX_PENDING_HELLOS,
            max_bytes=MAX_PENDING_HELLO_BYTES,
            max_length=MAX_CLIENT_HELLO_LENGTH,
            timeout=PENDING_HELLO_TIMEOUT,
        )
        self._events: deque[Event] = deque()
        self._stateless_out: list[tuple[bytes, Address]] = []
        #: Connections that may have output or a new timer (insertion-ordered set).
        self._touched: dict[Address, None] = {}
        #: (deadline, tie-breaker, address); an entry is live while it equals the timer.
        self._timers: list[tuple[float, int, Address]] = []
        self._timer_entries = itertools.count()
        self._tracer = tracer
        #: Counters; :meth:`counters` gives a read-only snapshot with the current state.
        self.stats = {
            "stateless_replies": 0,
            "dropped_datagrams": 0,
            "internal_errors": 0,
            "refused_handshakes": 0,
            "evicted_half_open": 0,
            "evicted_idle": 0,
            "cookieless_resumptions": 0,
        }

    # ------------------------------------------------------------------ datagrams
    def receive_datagram(self, data: bytes, peer: Address, now: float) -> None:
        """Process one datagram from ``peer``. Never raises on hostile input."""
        try:
            self._receive(data, peer, now)
        except Exception as exc:  # a bug must not reach the transport; counted and logged
            self.stats["internal_errors"] += 1
            log.error("internal error in the DTLS server (peer %s)", peer, exc_info=exc)
            if Connection.raise_internal_errors:
                raise

    def _receive(self, data: bytes, peer: Address, now: float) -> None:
        connection = self._connections.get(peer)
        if (
            connection is not None
            and not connection.is_closed
            and not (connection.is_established and _is_new_client_hello(data, connection))
        ):
            connection.receive_datagram(data, peer, now)
            self._collect(connection)
            self._account(peer, connection, now)
            self._touch(peer)
            return
        hello = self._client_hello(data, peer, now)
        if hello is None:
            return
        # A resumption without cookie must never replace a live association of the address.
        cookieless = connection is None or connection.is_closed
        candidate = ServerConnection(
            self.config,
            peer,
            self._cookies,
            self._tracer,
            admission=self._admissible,
            verdicts=self.verdicts,
            cookieless=cookieless,
        )
        candidate.receive_datagram(hello, peer, now)
        if candidate.stateless or candidate.is_closed:
            # RFC 6347 §4.2.1: no state is kept before the cookie proves the address.
            self.stats["stateless_replies"] += 1
            self.stats["refused_handshakes"] += candidate.refused
            self._stateless_out.extend(candidate.datagrams_to_send(now))
            if connection is None or connection.is_closed:
                self._collect(candidate)
            else:
                # A failed stray ClientHello must not look like the end of the live association.
                self.stats["internal_errors"] += candidate.stats["internal_errors"]
            return
        if connection is not None:
            # The same address starts over (its cookie proved it). The old association is
            # forgotten without a close_notify: the only reader at that address is the new
            # client, which would take an alert under the old keys for a record of its own next
            # epoch (RFC 6347 §4.2.8 keeps the old state from reaching the new handshake).
            self._drop(peer, now, notify=False)
        # A resumption without cookie is half-open like any other until its Finished arrives.
        self.stats["cookieless_resumptions"] += candidate.without_cookie
        self._make_room(now)
        self._connections[peer] = candidate
        self._half_open[peer] = now
        self._collect(candidate)
        self._account(peer, candidate, now)
        self._touch(peer)

    def _client_hello(self, data: bytes, peer: Address, now: float) -> bytes | None:
        """A datagram holding one complete ClientHello from ``peer``, else None.

        A ClientHello in one fragment is returned as received; fragments wait in the shared
        bounded buffer and the completed message is returned as one unfragmented record
        (RFC 6347 §4.2.3), carrying the highest record sequence number of its fragments.
        """
        fragments = _client_hello_fragments(data)
        if fragments is None:
            self.stats["dropped_datagrams"] += 1
            return None
        if len(fragments) == 1:
            fragment = fragments[0][1]
            if fragment.fragment_offset == 0 and fragment.fragment_length == fragment.length:
                self._pending.discard(peer)
                return data
        completed = None
        for record, fragment in fragments:
            done = self._pending.add(peer, fragment, record.sequence_number, record.version, now)
            completed = done or completed
        if completed is None:
            return None
        body = completed.body
        whole = HandshakeFragment(
            HandshakeType.CLIENT_HELLO, len(body), completed.message_seq, 0, len(body), body
        )
        return encode_record(
            Record(
                ContentType.HANDSHAKE,
                completed.record_version,
                0,
                completed.record_seq,
                encode_fragment(whole),
            )
        )

    # ------------------------------------------------------------------ association table
    def _admissible(self, peer: Address, now: float) -> bool:
        """Can room be made for a new association with ``peer`` without displacing a live
        established one? (Guard ``association_available`` of spec/dtls.yaml.)"""
        live = self._connections.get(peer)
        if live is not None and not live.is_closed:
            return True  # it replaces the association of the same address
        if len(self._established) < self.config.max_connections:
            return True  # room, possibly after evicting half-open associations
        return self._idle_established(now) is not None

    def _idle_established(self, now: float) -> Address | None:
        """The established association idle longest, if idle for ``idle_timeout``."""
        for peer, last in self._established.items():
            return peer if now - last >= self.config.idle_timeout else None
        return None

    def _make_room(self, now: float) -> None:
        """Evict so that one more half-open association fits: half-open ones first (oldest
        first), else one established association idle for ``idle_timeout``."""
        limit = self.config.max_connections
        while self._half_open and (
            len(self._half_open) >= self.config.max_half_open
            or len(self._half_open) + len(self._established) >= limit
        ):
            self.stats["evicted_half_open"] += 1
            self._drop(next(iter(self._half_open)), now)
        if len(self._established) >= limit:
            idle = self._idle_established(now)
            if idle is not None:
                self.stats["evicted_idle"] += 1
                self._drop(idle, now)

    def _account(self, peer: Address, connection: ServerConnection, now: float) -> None:
        """Keep the half-open / established tables in step with ``connection``'s state."""
        if connection.is_closed:
            self._half_open.pop(peer, None)
            self._established.pop(peer, None)
        elif connection.is_established:
            self._half_open.pop(peer, None)
            self._established.pop(peer, None)
            self._established[peer] = connection.last_activity or now  # most recent last

    def _drop(self, peer: Address, now: float, *, notify: bool = True) -> None:
        """Close ``peer``'s association (close_notify unless ``notify`` is false) and forget
        it at once."""
        connection = self._connections.pop(peer, None)
        self._half_open.pop(peer, None)
        self._established.pop(peer, None)
        self._touched.pop(peer, None)
        if connection is None:
            return
        connection.close()
        self._collect(connection)
        goodbye = connection.datagrams_to_send(now)
        if notify:
            self._stateless_out.extend(goodbye)

    # ------------------------------------------------------------------ plumbing
    def _collect(self, connection: ServerConnection) -> None:
        while (event := connection.next_event()) is not None:
            if isinstance(event, InternalError):
                self.stats["internal_errors"] += 1
            self._events.append(event)

    def _touch(self, peer: Address) -> None:
        """Note that ``peer``'s connection may have output or a changed timer."""
        self._touched[peer] = None

    def _schedule(self, peer: Address, connection: ServerConnection) -> None:
        deadline = connection.next_timer()
        if deadline is not None:
            heapq.heappush(self._timers, (deadline, next(self._timer_entries), peer))

    def _live_timer(self) -> tuple[float, Address] | None:
        """The earliest timer that is still current, dropping stale heap entries."""
        while self._timers:
            deadline, _, peer = self._timers[0]
            connection = self._connections.get(peer)
            if connection is not None and connection.next_timer() == deadline:
                return deadline, peer
            heapq.heappop(self._timers)
        return None

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        out, self._stateless_out = self._stateless_out, []
        touched, self._touched = self._touched, {}
        for address in touched:
            connection = self._connections.get(address)
            if connection is None:
                continue
            out.extend(connection.datagrams_to_send(now))
            if connection.is_closed:
                del self._connections[address]
                self._account(address, connection, now)
            else:
                self._schedule(address, connection)
        return out

    def next_timer(self) -> float | None:
        """The earliest retransmission timer or expiry of a partial ClientHello."""
        live = self._live_timer()
        expiry = self._pending.next_expiry()
        deadlines = [d for d in (live[0] if live else None, expiry) if d is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Retransmit or time out due associations; purge expired partial ClientHellos."""
        self._pending.expire(now)
        due: dict[Address, None] = {}
        while (live := self._live_timer()) is not None and live[0] <= now:
            heapq.heappop(self._timers)
            due[live[1]] = None
        for peer in due:
            connection = self._connections[peer]
            connection.handle_timer(now)
            self._collect(connection)
            self._account(peer, connection, now)
            self._touch(peer)
            self._schedule(peer, connection)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ application API
    def connection(self, peer: Address) -> ServerConnection | None:
        """The association with ``peer``; the caller may act on it, so it is polled next."""
        if peer in self._connections:
            self._touch(peer)
        return self._connections.get(peer)

    def connections(self) -> list[ServerConnection]:
        """Every association the server keeps, in the order they were made."""
        return list(self._connections.values())

    def send_application_data(self, peer: Address, data: bytes) -> None:
        connection = self._connections.get(peer)
        if connection is None:
            raise InvalidStateError(f"no connection with {peer}")
        connection.send_application_data(data)
        self._touch(peer)

    def close(self, peer: Address) -> None:
        connection = self._connections.get(peer)
        if connection is not None:
            connection.close()
            self._collect(connection)
            self._account(peer, connection, connection.last_activity)
            self._touch(peer)

    def close_all(self) -> None:
        for peer in list(self._connections):
            self.close(peer)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def counters(self) -> ServerStats:
        """A read-only snapshot of pending state and counters (for benchmarks and operators).

        ``reassembly_bytes`` sums over every association (linear in their number); the rest
        is constant time.
        """
        return ServerStats(
            pending_hellos=len(self._pending),
            pending_hello_bytes=self._pending.buffered_bytes,
            half_open=len(self._half_open),
            established=len(self._established),
            reassembly_bytes=sum(c.reassembly_bytes for c in self._connections.values()),
            internal_errors=self.stats["internal_errors"],
            stateless_replies=self.stats["stateless_replies"],
            dropped_datagrams=self.stats["dropped_datagrams"],
            dropped_hellos=self._pending.dropped,
            refused_handshakes=self.stats["refused_handshakes"],
            evicted_half_open=self.stats["evicted_half_open"],
            evicted_idle=self.stats["evicted_idle"],
            cookieless_resumptions=self.stats["cookieless_resumptions"],
        )
