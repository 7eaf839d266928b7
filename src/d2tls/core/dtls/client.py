"""Sans-IO DTLS 1.2 client, driven by the ``dtls_client`` machine of ``spec/dtls.yaml``.

Besides a normal client this engine supports what D2TLS needs: an *external signer* (the
CertificateVerify signature is requested with a ``SignatureRequested`` event and supplied with
``provide_signature``), a caller-chosen ClientHello random, and resume-only connections that
fail instead of falling back to a full handshake.

The spec's guards, actions and builders are private methods listed in ``_handlers``;
each handler of a received message takes it as its argument.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from d2tls.core.clock import utc
from d2tls.core.dtls import ecdhe_psk, keyschedule
from d2tls.core.dtls.config import ClientConfig
from d2tls.core.dtls.connection import Address, Connection, InvalidStateError, Payload, Tracer
from d2tls.core.dtls.constants import (
    CERT_TYPE_ECDSA_SIGN,
    COMPRESSION_NULL,
    DTLS_1_2,
    ECDHE_PSK_SUITES,
    ECDSA_SECP256R1_SHA256,
    POINT_FORMAT_UNCOMPRESSED,
    PSK_SUITES,
    SECP256R1,
    AlertDescription,
    AlertLevel,
    CertificateType,
    CipherSuite,
    ExtensionType,
)
from d2tls.core.dtls.events import (
    ConnectionTerminated,
    HandshakeCompleted,
    SignatureRequested,
    TwinPeaksRefused,
)
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
    ServerKeyExchangeECDHE,
    ServerKeyExchangePSK,
    encode_certificate_types,
    encode_ec_point_formats,
    encode_renegotiation_info,
    encode_server_name,
    encode_signature_algorithms,
    encode_supported_groups,
)
from d2tls.core.dtls.rawpk import fingerprint, load_raw_public_key
from d2tls.core.dtls.session import Session
from d2tls.core.dtls.twinpeaks import REFUSAL_OF_ALERT, REFUSAL_REASONS
from d2tls.core.errors import (
    CertificateError,
    DecryptError,
    HandshakeFailure,
    IllegalParameter,
    ProtocolError,
)
from d2tls.core.model.machine import Handlers, expecting, ignoring
from d2tls.core.model.states import ClientState
from d2tls.core.pki.verify import verify_server_chain

#: A server may answer with several HelloVerifyRequests; more than this is an attack or a bug.
MAX_HELLO_VERIFY_REQUESTS = 4


@lru_cache(maxsize=64)
def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class DTLSClient(Connection):
    """A DTLS 1.2 client connection (sans-IO)."""

    ROLE = "dtls_client"
    IS_CLIENT = True

    def __init__(
        self, config: ClientConfig, tracer: Tracer | None = None, *, remote: Address | None = None
    ) -> None:
        """``remote``: the server's address (an IP literal), the destination of every
        datagram; a host on a connected socket may set :attr:`remote` before connecting."""
        config.validate()
        self.config = config
        super().__init__(
            mtu=config.mtu,
            timers=config.timers,
            keylog=config.keylog,
            peer=None,
            tracer=tracer,
            states=ClientState,
        )
        self.remote = remote
        self._cookie = b""
        self._hello_verify_count = 0
        self._hello_extensions: tuple[Extension, ...] | None = None
        self._session_id = b""
        self._offered_session_id = b""
        self._server_public_key: ec.EllipticCurvePublicKey | None = None
        self._server_certificates: tuple[bytes, ...] = ()
        self._server_point = b""
        self._certificate_requested = False
        self._ephemeral: ec.EllipticCurvePrivateKey | None = None
        self._pre_master = b""
        self._signature: bytes | None = None
        self._resumed = False
        #: Certificate types negotiated by the ServerHello (RFC 7250 §4.2; absent: X.509).
        self._server_cert_type = CertificateType.X509
        self._client_cert_type = CertificateType.X509
        #: The server's raw public key (DER SubjectPublicKeyInfo) once validated.
        self.peer_raw_public_key: bytes | None = None
        self.session: Session | None = None
        self.handshake_started_at: float | None = None
        self.handshake_completed_at: float | None = None

    # ------------------------------------------------------------------ public API
    @property
    def state(self) -> ClientState:
        """The current state (``spec/dtls.yaml``, role ``dtls_client``)."""
        return ClientState(self._machine.state)

    def connect(self, now: float) -> None:
        """Start the handshake by sending the ClientHello."""
        self._now = now
        self.handshake_started_at = now
        self._fire_safely("connect")

    def provide_signature(self, signature: bytes, now: float) -> None:
        """Supply the CertificateVerify signature asked for by ``SignatureRequested``."""
        self._now = now
        if self.state is not ClientState.WAIT_SIGNATURE:
            raise InvalidStateError(f"no signature was requested (state {self.state})")
        self._signature = bytes(signature)
        self._fire_safely("signature_provided")

    # ------------------------------------------------------------------ the spec's handlers
    def _handlers(self) -> Handlers[Payload]:
        return self._table_with(
            guards={
                "server_resumes_session": expecting(ServerHello, self._server_resumes_session),
                "resume_only": ignoring(self._resume_only),
                "server_chose_psk": expecting(ServerHello, self._server_chose_psk),
                "server_chose_ecdhe_psk": expecting(ServerHello, self._server_chose_ecdhe_psk),
                "has_client_certificate": ignoring(self._has_client_certificate),
                "server_sent_raw_public_key": ignoring(self._server_sent_raw_public_key),
                "twinpeaks_refused": ignoring(self._twinpeaks_refused),
                "signer_is_external": ignoring(self._signer_is_external),
            },
            actions={
                "prepare_client_hello": ignoring(self._prepare_client_hello),
                "process_hello_verify_request": expecting(
                    HelloVerifyRequest, self._process_hello_verify_request
                ),
                "process_server_hello": expecting(ServerHello, self._process_server_hello),
                "resume_session": ignoring(self._resume_session),
                "abandon_resumption": ignoring(self._abandon_resumption),
                "process_server_certificate": self._process_server_certificate,
                "process_server_raw_public_key": self._process_server_raw_public_key,
                "process_server_key_exchange": self._process_server_key_exchange,
                "process_certificate_request": expecting(
                    CertificateRequest, self._process_certificate_request
                ),
                "process_psk_identity_hint": self._process_psk_identity_hint,
                "process_ecdhe_psk_server_key_exchange": (
                    self._process_ecdhe_psk_server_key_exchange
                ),
                "request_signature": ignoring(self._request_signature),
                "accept_signature": ignoring(self._accept_signature),
                "complete_handshake": ignoring(self._complete_handshake),
                "report_twinpeaks_refusal": ignoring(self._report_twinpeaks_refusal),
                "refuse_renegotiation": ignoring(self._refuse_renegotiation),
            },
            builders={
                "ClientHello": self._build_client_hello,
                "Certificate": self._build_certificate,
                "ClientKeyExchange": self._build_client_key_exchange,
                "CertificateVerify": self._build_certificate_verify,
            },
        )

    # ------------------------------------------------------------------ guards
    def _server_resumes_session(self, hello: ServerHello) -> bool:
        """RFC 5246 §7.4.1.3: the server echoes our session ID to resume it."""
        return (
            self.config.session is not None
            and len(self._offered_session_id) > 0
            and hello.session_id == self._offered_session_id
        )

    def _resume_only(self) -> bool:
        return self.config.resume_only and self.config.session is not None

    def _server_chose_psk(self, hello: ServerHello) -> bool:
        return hello.cipher_suite in PSK_SUITES

    def _server_chose_ecdhe_psk(self, hello: ServerHello) -> bool:
        """RFC 5489 §2: an ECDHE_PSK suite; its ServerKeyExchange is mandatory."""
        return hello.cipher_suite in ECDHE_PSK_SUITES

    def _has_client_certificate(self) -> bool:
        if not self._certificate_requested:
            return False
        if self._client_cert_type == CertificateType.RAW_PUBLIC_KEY:
            return self.config.client_raw_public_key is not None
        return bool(self.config.certificate_chain)

    def _server_sent_raw_public_key(self) -> bool:
        """RFC 7250 §4.2: the ServerHello chose RawPublicKey for the server's Certificate."""
        return self._server_cert_type == CertificateType.RAW_PUBLIC_KEY

    def _peer_sends_raw_public_key(self) -> bool:
        return self._server_cert_type == CertificateType.RAW_PUBLIC_KEY

    def _twinpeaks_refused(self) -> bool:
        """spec/twinpeaks.md §9.4: we sent the TwinPeaks extension and the server's fatal
        alert answering it is one of the three that name a refused field."""
        return self.config.twinpeaks is not None and self._peer_alert in REFUSAL_OF_ALERT

    def _signer_is_external(self) -> bool:
        return self.config.private_key is None

    # ------------------------------------------------------------------ actions
    def _prepare_client_hello(self) -> None:
        """Choose the random (RFC 5246 §7.4.1.2) and the session to offer."""
        self.client_random = self.config.client_random or self.config.randomness.random_bytes(32)
        session = self.config.session
        if session is None:
            return
        if (
            session.expired(self.config.wall_clock())
            or session.cipher_suite not in self.config.cipher_suites
        ):
            # RFC 5246 §7.4.1.2: only an unexpired session whose cipher suite we offer may be
            # offered; without it a client falls back to a full handshake, a resume-only one stops.
            if self.config.resume_only:
                raise HandshakeFailure("resumption_refused")
            return
        self._session_id = self._offered_session_id = session.session_id

    def _offered_server_types(self) -> tuple[CertificateType, ...]:
        """Server certificate types we can validate, preferred first (RFC 7250 §4.1)."""
        types = [CertificateType.RAW_PUBLIC_KEY] if self.config.accepts_raw_server_key else []
        if self.config.trust_store is not None:
            types.append(CertificateType.X509)
        return tuple(types)

    def _offered_client_types(self) -> tuple[CertificateType, ...]:
        types = [CertificateType.RAW_PUBLIC_KEY] if self.config.client_raw_public_key else []
        if self.config.certificate_chain:
            types.append(CertificateType.X509)
        return tuple(types)

    def _certificate_type_extensions(self) -> list[Extension]:
        """RFC 7250 §4.1: offer a type list only when it holds RawPublicKey (without one,
        X.509 is assumed, and a ClientHello stays as without RFC 7250)."""
        out: list[Extension] = []
        client_types = self._offered_client_types()
        if CertificateType.RAW_PUBLIC_KEY in client_types:
            out.append(
                Extension(
                    ExtensionType.CLIENT_CERTIFICATE_TYPE, encode_certificate_types(client_types)
                )
            )
        server_types = self._offered_server_types()
        if CertificateType.RAW_PUBLIC_KEY in server_types:
            out.append(
                Extension(
                    ExtensionType.SERVER_CERTIFICATE_TYPE, encode_certificate_types(server_types)
                )
            )
        return out

    def _build_client_hello(self) -> None:
        # RFC 6347 §4.2.1: the ClientHello after a HelloVerifyRequest repeats the first one's
        # parameters, the cookie added: its extensions are made once.
        if self._hello_extensions is None:
            self._hello_extensions = self._client_hello_extensions()
        self._queue_handshake(
            ClientHello(
                client_version=DTLS_1_2,
                random=self.client_random,
                session_id=self._session_id,
                cookie=self._cookie,
                cipher_suites=tuple(int(s) for s in self.config.cipher_suites),
                compression_methods=(COMPRESSION_NULL,),
                extensions=self._hello_extensions,
            )
        )

    def _client_hello_extensions(self) -> tuple[Extension, ...]:
        extensions = [
            Extension(ExtensionType.SUPPORTED_GROUPS, encode_supported_groups([SECP256R1])),
            Extension(
                ExtensionType.EC_POINT_FORMATS, encode_ec_point_formats([POINT_FORMAT_UNCOMPRESSED])
            ),
            Extension(
                ExtensionType.SIGNATURE_ALGORITHMS,
                encode_signature_algorithms([ECDSA_SECP256R1_SHA256]),
            ),
            Extension(ExtensionType.EXTENDED_MASTER_SECRET, b""),
            Extension(ExtensionType.RENEGOTIATION_INFO, encode_renegotiation_info(b"")),
            *self._certificate_type_extensions(),
        ]
        if self.config.twinpeaks is not None:
            extensions.append(Extension(ExtensionType.TWINPEAKS, self.config.twinpeaks.encode()))
        name = self.config.server_name
        if name and not _is_ip_literal(name):  # RFC 6066 §3: no IP literals in SNI
            extensions.insert(0, Extension(ExtensionType.SERVER_NAME, encode_server_name(name)))
        return tuple(extensions)

    def _process_hello_verify_request(self, request: HelloVerifyRequest) -> None:
        """RFC 6347 §4.2.1: resend the ClientHello with the cookie; neither is hashed."""
        self._hello_verify_count += 1
        if self._hello_verify_count > MAX_HELLO_VERIFY_REQUESTS:
            raise HandshakeFailure("too many HelloVerifyRequests")
        self._cookie = request.cookie
        self._transcript.clear()  # RFC 6347 §4.2.6: exclude ClientHello #1 and the HVR
        # Nothing buffered before ClientHello #2 leaves can answer it: drop spoofed messages.
        self._reassembler.reset(self._reassembler.next_seq)

    def _process_server_hello(self, hello: ServerHello) -> None:
        """Check the server's choices against what we offered (RFC 5246 §7.4.1.3)."""
        if hello.server_version != DTLS_1_2:
            raise ProtocolError(
                f"server chose version {hello.server_version:#06x}",
                AlertDescription.PROTOCOL_VERSION,
            )
        if hello.cipher_suite not in [int(s) for s in self.config.cipher_suites]:
            raise IllegalParameter("server chose a cipher suite we did not offer")
        if hello.compression_method != COMPRESSION_NULL:
            raise IllegalParameter("server chose a compression method we did not offer")
        offered = {
            ExtensionType.SERVER_NAME,
            ExtensionType.SUPPORTED_GROUPS,
            ExtensionType.EC_POINT_FORMATS,
            ExtensionType.SIGNATURE_ALGORITHMS,
            ExtensionType.EXTENDED_MASTER_SECRET,
            ExtensionType.RENEGOTIATION_INFO,
        }
        offered |= {ExtensionType(e.type) for e in self._certificate_type_extensions()}
        for extension in hello.extensions:
            if extension.type not in offered or extension.type in (
                ExtensionType.SUPPORTED_GROUPS,
                ExtensionType.SIGNATURE_ALGORITHMS,
            ):
                raise ProtocolError(
                    f"server sent unsolicited extension {extension.type}",
                    AlertDescription.UNSUPPORTED_EXTENSION,
                )
        info = hello.renegotiation_info
        if info is not None and info != b"":
            raise HandshakeFailure("non-empty renegotiation_info in an initial handshake")
        self._server_cert_type = self._chosen_type(
            hello.server_certificate_type, self._offered_server_types(), "server"
        )
        self._client_cert_type = self._chosen_type(
            hello.client_certificate_type, self._offered_client_types(), "client"
        )
        self.server_random = hello.random
        self.cipher_suite = CipherSuite(hello.cipher_suite)
        self.extended_master_secret = hello.has_extended_master_secret
        self._session_id = hello.session_id
        resuming = self._server_resumes_session(hello)
        if (
            not resuming
            and self.config.require_extended_master_secret
            and not (self.extended_master_secret)
        ):
            raise HandshakeFailure("server did not negotiate the extended master secret (RFC 7627)")

    @staticmethod
    def _chosen_type(
        chosen: int | None, offered: tuple[CertificateType, ...], whose: str
    ) -> CertificateType:
        """RFC 7250 §4.2: the server picks one of the types we offered; none means X.509."""
        if chosen is None:
            return CertificateType.X509
        if chosen not in offered:
            raise IllegalParameter(f"server chose a {whose} certificate type we did not offer")
        return CertificateType(chosen)

    def _resume_session(self) -> None:
        """Abbreviated handshake: reuse the master secret (RFC 5246 §7.3, RFC 7627 §5.3)."""
        session = self.config.session
        assert session is not None and self.cipher_suite is not None
        if self.cipher_suite != session.cipher_suite:
            raise IllegalParameter("resumed session with a different cipher suite")
        if session.extended_master_secret != self.extended_master_secret:
            raise HandshakeFailure("extended_master_secret differs from the original session")
        self._resumed = True
        self._master = bytearray(session.master_secret)
        self._server_certificates = session.peer_certificates
        self._install_keys()

    def _abandon_resumption(self) -> None:
        """Resume-only mode: the server did not resume, so stop (D2TLS paper §4.2)."""
        self._error = HandshakeFailure(
            "resumption refused: the server answered with a new session ID"
        )
        self._queue_alert(AlertLevel.FATAL, AlertDescription.HANDSHAKE_FAILURE)
        self._events.append(
            ConnectionTerminated(
                "resumption_refused",
                AlertDescription.HANDSHAKE_FAILURE,
                by_peer=False,
                error=True,
            )
        )
        self._timer_deadline = None

    def _process_server_certificate(self, certificate: Payload) -> None:
        """Verify the server chain and name (RFC 5246 §7.4.2, RFC 6125 via cryptography)."""
        if not isinstance(certificate, Certificate) or not certificate.certificates:
            raise CertificateError(
                "server sent an empty Certificate", AlertDescription.DECODE_ERROR
            )
        if self.config.trust_store is None:
            # We offered only RawPublicKey and the server ignored it (RFC 7250 §4.2).
            raise CertificateError(
                "server sent an X.509 certificate but only raw public keys are trusted",
                AlertDescription.UNSUPPORTED_CERTIFICATE,
            )
        leaf = verify_server_chain(
            certificate.certificates,
            self.config.trust_store,
            self.config.server_name,
            utc(self.config.wall_clock()),
        )
        self.stats["verify"] += len(certificate.certificates)  # one signature per link
        key = leaf.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise CertificateError(
                "server key is not ECDSA P-256", AlertDescription.UNSUPPORTED_CERTIFICATE
            )
        self._server_public_key = key
        self._server_certificates = tuple(certificate.certificates)

    def _process_server_raw_public_key(self, certificate: Payload) -> None:
        """RFC 7250 §3: a SubjectPublicKeyInfo instead of a chain, trusted only if it is a
        pinned key or the key the lookup gives for our server name (TwinPeaks)."""
        if not isinstance(certificate, RawPublicKeyCertificate):
            raise CertificateError(
                "server sent an empty Certificate", AlertDescription.DECODE_ERROR
            )
        key, spki = load_raw_public_key(certificate.subject_public_key_info, "server")
        lookup = self.config.server_key_lookup
        expected = lookup(self.config.server_name) if lookup is not None else None
        if spki not in self.config.trusted_server_keys and spki != expected:
            raise CertificateError(
                f"server raw public key {fingerprint(spki)} is not trusted",
                AlertDescription.CERTIFICATE_UNKNOWN,
            )
        self._server_public_key = key
        self.peer_raw_public_key = spki

    def _process_server_key_exchange(self, exchange: Payload) -> None:
        """Verify the signed ECDHE parameters (RFC 8422 §5.4)."""
        if not isinstance(exchange, ServerKeyExchangeECDHE):
            raise IllegalParameter("expected ECDHE ServerKeyExchange")
        if exchange.named_curve != SECP256R1:
            raise IllegalParameter("server chose a curve we did not offer")
        if exchange.signature_algorithm != ECDSA_SECP256R1_SHA256:
            raise IllegalParameter("server used a signature algorithm we did not offer")
        assert self._server_public_key is not None
        signed = self.client_random + self.server_random + exchange.params_bytes()
        self.stats["verify"] += 1
        try:
            self._server_public_key.verify(exchange.signature, signed, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise DecryptError("ServerKeyExchange signature does not verify") from None
        self._server_point = exchange.public_point

    def _process_certificate_request(self, request: CertificateRequest) -> None:
        """RFC 5246 §7.4.4: answer with our certificate only if it fits the request."""
        self._certificate_requested = (
            CERT_TYPE_ECDSA_SIGN in request.certificate_types
            and ECDSA_SECP256R1_SHA256 in request.signature_algorithms
        )

    def _process_psk_identity_hint(self, exchange: Payload) -> None:
        """RFC 4279 §2: the hint is informational; we use our configured identity."""
        if not isinstance(exchange, ServerKeyExchangePSK):
            raise IllegalParameter("expected a PSK ServerKeyExchange")

    def _process_ecdhe_psk_server_key_exchange(self, exchange: Payload) -> None:
        """Keep the server's ephemeral point; the hint is informational (RFC 5489 §2)."""
        self._server_point = ecdhe_psk.server_point(exchange)

    def _request_signature(self) -> None:
        """External signer: ask for the signature over the transcript, which holds the
        Certificate and ClientKeyExchange built ahead (the spec's ``builds``)."""
        transcript = bytes(self._transcript)
        self._events.append(
            SignatureRequested(
                transcript=transcript,
                digest=keyschedule.transcript_hash(transcript),
                client_random=self.client_random,
            )
        )

    def _accept_signature(self) -> None:
        """Check the external signature against our certificate before sending it."""
        assert self._signature is not None
        leaf_key = self._client_public_key()
        self.stats["verify"] += 1
        try:
            leaf_key.verify(self._signature, bytes(self._transcript), ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise ProtocolError("the external signer returned an invalid signature") from None

    def _client_public_key(self) -> ec.EllipticCurvePublicKey:
        if self._client_cert_type == CertificateType.RAW_PUBLIC_KEY:
            assert self.config.client_raw_public_key is not None
            return load_raw_public_key(self.config.client_raw_public_key, "our")[0]
        key = x509.load_der_x509_certificate(self.config.certificate_chain[0]).public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ProtocolError("our certificate does not hold an EC key")
        return key

    def _build_certificate(self) -> None:
        if self._has_client_certificate() and self._client_cert_type == (
            CertificateType.RAW_PUBLIC_KEY
        ):
            assert self.config.client_raw_public_key is not None
            self._queue_handshake(RawPublicKeyCertificate(self.config.client_raw_public_key))
            return
        chain = tuple(self.config.certificate_chain) if self._has_client_certificate() else ()
        self._queue_handshake(Certificate(chain))

    def _build_client_key_exchange(self) -> None:
        """Compute the premaster secret (RFC 8422 §5.10, RFC 4279 §2, RFC 5489 §2), send our
        key share, then derive the master secret (RFC 7627 §4: session hash)."""
        if self._uses_ecdhe_psk():
            assert self.config.psk is not None and self.config.psk_identity is not None
            exchange, self._pre_master = ecdhe_psk.client_key_exchange(
                self.config.randomness,
                self.config.psk_identity,
                self.config.psk,
                self._server_point,
            )
            self.stats["keygen"] += 1
            self.stats["ecdh"] += 1
            self._queue_handshake(exchange)
        elif self._uses_psk():
            assert self.config.psk is not None and self.config.psk_identity is not None
            self._pre_master = keyschedule.psk_pre_master_secret(self.config.psk)
            self._queue_handshake(ClientKeyExchangePSK(self.config.psk_identity))
        else:
            self._ephemeral = self.config.randomness.ec_private_key()
            self._pre_master = keyschedule.ecdhe_pre_master_secret(
                self._ephemeral, self._server_point
            )
            self.stats["keygen"] += 1
            self.stats["ecdh"] += 1
            point = self._ephemeral.public_key().public_bytes(
                Encoding.X962, PublicFormat.UncompressedPoint
            )
            self._queue_handshake(ClientKeyExchangeECDHE(point))
        self._derive_master_secret()

    def _derive_master_secret(self) -> None:
        if self.extended_master_secret:
            session_hash = keyschedule.transcript_hash(bytes(self._transcript))
            self._master = keyschedule.extended_master_secret(self._pre_master, session_hash)
        else:
            self._master = keyschedule.master_secret(
                self._pre_master, self.client_random, self.server_random
            )
        self._pre_master = b""
        self._install_keys()

    def _build_certificate_verify(self) -> None:
        """Sign the transcript so far (RFC 5246 §7.4.8) — locally or with the external signature."""
        if self._signature is not None:
            signature = self._signature
        else:
            assert self.config.private_key is not None
            self.stats["sign"] += 1
            signature = self.config.private_key.sign(
                bytes(self._transcript), self.config.randomness.ecdsa()
            )
        self._queue_handshake(CertificateVerify(ECDSA_SECP256R1_SHA256, signature))

    def _complete_handshake(self) -> None:
        assert self.cipher_suite is not None
        if self._resumed and self.config.session is not None:
            self.session = self.config.session
        else:
            self.session = Session(
                session_id=self._session_id,
                master_secret=bytearray(self._master),
                cipher_suite=self.cipher_suite,
                extended_master_secret=self.extended_master_secret,
                server_name=self.config.server_name,
                peer_certificates=self._server_certificates,
                psk_identity=(
                    self.config.psk_identity if self._uses_psk() or self._uses_ecdhe_psk() else None
                ),
                created_at=self.config.wall_clock(),
            )
        self.handshake_completed_at = self._now
        self._events.append(
            HandshakeCompleted(
                session=self.session,
                resumed=self._resumed,
                cipher_suite=self.cipher_suite,
                extended_master_secret=self.extended_master_secret,
            )
        )

    def _report_twinpeaks_refusal(self) -> None:
        """The server refused our TwinPeaks extension (spec/twinpeaks.md §9.4)."""
        alert = self._peer_alert
        assert alert is not None
        refusal = REFUSAL_OF_ALERT[alert]
        self._events.append(
            TwinPeaksRefused(
                f"{REFUSAL_REASONS[refusal]} (peer sent fatal alert {alert.name.lower()})",
                alert,
                by_peer=True,
                error=True,
                refusal=refusal.value,
            )
        )
        self._wipe()

    def _refuse_renegotiation(self) -> None:
        """Answer HelloRequest with a no_renegotiation warning (RFC 5246 §7.4.1.1)."""
        self._queue_alert(AlertLevel.WARNING, AlertDescription.NO_RENEGOTIATION)

    @property
    def resumed(self) -> bool:
        """True if the handshake was abbreviated."""
        return self._resumed

    @property
    def peer_certificates(self) -> tuple[bytes, ...]:
        """The server's verified chain (DER), empty for PSK."""
        return self._server_certificates
