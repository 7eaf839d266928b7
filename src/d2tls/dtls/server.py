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
import os
import time
from collections import deque

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from d2tls.dtls import keyschedule
from d2tls.dtls.config import ClientAuth, ServerConfig
from d2tls.dtls.connection import Address, Connection, InvalidStateError, Tracer
from d2tls.dtls.constants import (
    CERT_TYPE_ECDSA_SIGN,
    COMPRESSION_NULL,
    DTLS_1_2,
    ECDSA_SECP256R1_SHA256,
    EMPTY_RENEGOTIATION_INFO_SCSV,
    POINT_FORMAT_UNCOMPRESSED,
    PSK_SUITES,
    SECP256R1,
    AlertDescription,
    AlertLevel,
    CipherSuite,
    ContentType,
    ExtensionType,
    HandshakeType,
)
from d2tls.dtls.events import Event, HandshakeCompleted
from d2tls.dtls.fragments import HandshakeFragment, parse_handshake_fragments
from d2tls.dtls.messages import (
    Certificate,
    CertificateRequest,
    CertificateVerify,
    ClientHello,
    ClientKeyExchangeECDHE,
    ClientKeyExchangePSK,
    Extension,
    HelloVerifyRequest,
    ServerHello,
    ServerHelloDone,
    ServerKeyExchangeECDHE,
    encode_ec_point_formats,
    encode_renegotiation_info,
)
from d2tls.dtls.record import parse_datagram
from d2tls.dtls.session import Session
from d2tls.errors import (
    CertificateError,
    D2TLSError,
    DecryptError,
    HandshakeFailure,
    IllegalParameter,
    ProtocolError,
)
from d2tls.pki.verify import certificate_identity, verify_client_chain


class CookieJar:
    """Stateless cookies: HMAC of the client address and ClientHello (RFC 6347 §4.2.1).

    The secret rotates every ``rotation`` seconds; cookies made with the previous secret are
    still accepted, so a client caught by a rotation does not fail.
    """

    def __init__(self, rotation: float) -> None:
        self._rotation = rotation
        self._secrets = [os.urandom(32), os.urandom(32)]
        self._rotated_at = time.monotonic()

    def _maybe_rotate(self) -> None:
        if time.monotonic() - self._rotated_at >= self._rotation:
            self._secrets = [os.urandom(32), self._secrets[0]]
            self._rotated_at = time.monotonic()

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

    def make(self, peer: Address, hello: ClientHello) -> bytes:
        self._maybe_rotate()
        return hmac.new(self._secrets[0], self._material(peer, hello), hashlib.sha256).digest()

    def check(self, peer: Address, hello: ClientHello) -> bool:
        self._maybe_rotate()
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
    ) -> None:
        self.config = config
        self._cookies = cookies
        super().__init__(
            mtu=config.mtu, timers=config.timers, keylog=config.keylog, peer=peer, tracer=tracer
        )
        self._hello: ClientHello | None = None
        self._choice: CipherSuite | None = None
        self._session_id = b""
        self._resumed = False
        self._resumable: Session | None = None
        self._ephemeral: ec.EllipticCurvePrivateKey | None = None
        self._client_key: ec.EllipticCurvePublicKey | None = None
        self._client_certificates: tuple[bytes, ...] = ()
        self._psk_identity: bytes | None = None
        self.server_name: str | None = None
        self.session: Session | None = None

    # ------------------------------------------------------------------ reassembly hook
    def _prepare_reassembly(self, fragment: HandshakeFragment) -> None:
        """Align with a ClientHello that follows a stateless cookie exchange (RFC 6347 §4.2.1).

        The ClientHello then has message_seq 1 and our replies continue from there; our record
        sequence numbers start at the ClientHello's, so that the HelloVerifyRequest and the
        ServerHello never share one.
        """
        if self.state == "listen" and fragment.msg_type == HandshakeType.CLIENT_HELLO:
            if self._reassembler.next_seq != fragment.message_seq:
                self._reassembler.reset(fragment.message_seq)
            self._send_seq = fragment.message_seq
            self._writes[0].write_seq = self._record_seq

    # ------------------------------------------------------------------ guards
    def _client_hello(self) -> ClientHello:
        hello = self._current
        assert isinstance(hello, ClientHello)
        return hello

    def cookie_valid(self) -> bool:
        if not self.config.cookie_exchange:
            return True
        assert self.peer is not None
        return self._cookies.check(self.peer, self._client_hello())

    def session_resumable(self) -> bool:
        """RFC 5246 §7.4.1.2 and RFC 7627 §5.3: resume only an identical, unexpired session."""
        hello = self._client_hello()
        if not hello.session_id:
            return False
        session = self.config.session_store.get(hello.session_id)
        if session is None or session.expired():
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
        if session.peer_certificates:
            if self.config.trust_store is None:
                return False
            try:
                verify_client_chain(session.peer_certificates, self.config.trust_store)
            except CertificateError:
                return False
            return True
        return self.config.client_auth is not ClientAuth.REQUIRED

    def psk_suite_chosen(self) -> bool:
        return self._negotiate_suite() in PSK_SUITES

    def client_certificate_wanted(self) -> bool:
        return self.config.client_auth is not ClientAuth.NONE

    def client_certificate_present(self) -> bool:
        return isinstance(self._current, Certificate) and bool(self._current.certificates)

    # ------------------------------------------------------------------ negotiation
    def _negotiate_suite(self) -> CipherSuite:
        """Pick our most preferred suite that the client offers and can use (RFC 5246 §7.4.1.3)."""
        if self._choice is not None:
            return self._choice
        hello = self._client_hello()
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
            if algorithms is not None and ECDSA_SECP256R1_SHA256 not in algorithms:
                continue
            if formats is not None and POINT_FORMAT_UNCOMPRESSED not in formats:
                continue
            self._choice = suite
            return suite
        raise HandshakeFailure("no cipher suite in common")

    def check_client_hello(self) -> None:
        """Reject what no cookie can fix (RFC 5246 §7.4.1.2, RFC 6347 §4.2.1)."""
        hello = self._client_hello()
        if hello.client_version > DTLS_1_2:  # DTLS versions count down: 0xFEFF is 1.0
            raise ProtocolError(
                f"client offers only {hello.client_version:#06x}", AlertDescription.PROTOCOL_VERSION
            )
        if COMPRESSION_NULL not in hello.compression_methods:
            raise IllegalParameter("ClientHello does not offer null compression")
        info = hello.renegotiation_info
        if info is not None and info != b"":
            raise HandshakeFailure("non-empty renegotiation_info in an initial handshake")

    def negotiate(self) -> None:
        self.check_client_hello()
        hello = self._client_hello()
        suite = self._negotiate_suite()
        self._hello = hello
        self.cipher_suite = suite
        self.client_random = hello.random
        self.server_random = os.urandom(32)
        self.server_name = hello.server_name
        self.extended_master_secret = hello.has_extended_master_secret
        if self.config.require_extended_master_secret and not self.extended_master_secret:
            raise HandshakeFailure("client did not offer the extended master secret (RFC 7627)")

    def new_session(self) -> None:
        self._session_id = os.urandom(32)

    def resume_session(self) -> None:
        session = self._resumable
        assert session is not None
        self._resumed = True
        self.cipher_suite = session.cipher_suite
        self._session_id = session.session_id
        self._master = bytearray(session.master_secret)
        self._client_certificates = session.peer_certificates
        self._psk_identity = session.psk_identity
        self._install_keys()

    # ------------------------------------------------------------------ builders
    def build_HelloVerifyRequest(self) -> None:
        assert self.peer is not None
        cookie = self._cookies.make(self.peer, self._client_hello())
        self._queue_handshake(HelloVerifyRequest(DTLS_1_2, cookie))

    def build_ServerHello(self) -> None:
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

    def build_Certificate(self) -> None:
        self._queue_handshake(Certificate(tuple(self.config.certificate_chain)))

    def build_ServerKeyExchange(self) -> None:
        """Signed ECDHE parameters (RFC 8422 §5.4)."""
        assert self.config.private_key is not None
        self._ephemeral = ec.generate_private_key(ec.SECP256R1())
        point = self._ephemeral.public_key().public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint
        )
        unsigned = ServerKeyExchangeECDHE(SECP256R1, point, ECDSA_SECP256R1_SHA256, b"")
        signed = self.client_random + self.server_random + unsigned.params_bytes()
        signature = self.config.private_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        self._queue_handshake(
            ServerKeyExchangeECDHE(SECP256R1, point, ECDSA_SECP256R1_SHA256, signature)
        )

    def build_CertificateRequest(self) -> None:
        """RFC 5246 §7.4.4; an empty CA list lets the client pick its certificate."""
        self._queue_handshake(
            CertificateRequest(
                certificate_types=(CERT_TYPE_ECDSA_SIGN,),
                signature_algorithms=(ECDSA_SECP256R1_SHA256,),
                certificate_authorities=(),
            )
        )

    def build_ServerHelloDone(self) -> None:
        self._queue_handshake(ServerHelloDone())

    # ------------------------------------------------------------------ client flight
    def process_client_certificate(self) -> None:
        """Verify the client chain against the trust store (RFC 5246 §7.4.6)."""
        certificate = self._current
        assert isinstance(certificate, Certificate) and self.config.trust_store is not None
        leaf = verify_client_chain(certificate.certificates, self.config.trust_store)
        key = leaf.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise CertificateError(
                "client key is not ECDSA P-256", AlertDescription.UNSUPPORTED_CERTIFICATE
            )
        self._client_key = key
        self._client_certificates = tuple(certificate.certificates)

    def process_empty_client_certificate(self) -> None:
        if self.config.client_auth is ClientAuth.REQUIRED:
            raise HandshakeFailure("a client certificate is required")

    def process_client_key_exchange(self) -> None:
        """Premaster, then (extended) master secret and the next epoch's keys."""
        exchange = self._current
        if self._uses_psk():
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
        if self.extended_master_secret:
            session_hash = keyschedule.transcript_hash(bytes(self._transcript))
            self._master = keyschedule.extended_master_secret(pre_master, session_hash)
        else:
            self._master = keyschedule.master_secret(
                pre_master, self.client_random, self.server_random
            )
        self._install_keys()

    def verify_certificate_verify(self) -> None:
        """The client proves possession of its key (RFC 5246 §7.4.8)."""
        verify = self._current
        assert isinstance(verify, CertificateVerify) and self._client_key is not None
        if verify.signature_algorithm != ECDSA_SECP256R1_SHA256:
            raise IllegalParameter("CertificateVerify uses an algorithm we did not request")
        signed = bytes(self._transcript[: self._transcript_mark])
        try:
            self._client_key.verify(verify.signature, signed, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise DecryptError("CertificateVerify signature does not verify") from None

    def complete_handshake(self) -> None:
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
                peer_certificates=self._client_certificates,
                psk_identity=self._psk_identity,
                created_at=time.time(),
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

    def refuse_renegotiation(self) -> None:
        """RFC 5746 / our policy: refuse with a no_renegotiation warning, stay established."""
        self._queue_alert(AlertLevel.WARNING, AlertDescription.NO_RENEGOTIATION)

    @property
    def resumed(self) -> bool:
        return self._resumed

    @property
    def peer_certificates(self) -> tuple[bytes, ...]:
        """The client's verified chain (DER), empty if none."""
        return self._client_certificates

    def peer_subject(self) -> str | None:
        """RFC 4514 subject of the client certificate, if any."""
        if not self._client_certificates:
            return None
        return x509.load_der_x509_certificate(self._client_certificates[0]).subject.rfc4514_string()

    def peer_identity(self) -> str | None:
        """The client's identity: its first SAN, else its subject CN (``certificate_identity``)."""
        return (
            certificate_identity(self._client_certificates[0])
            if self._client_certificates
            else None
        )


def _is_initial_client_hello(data: bytes) -> bool:
    """True if the datagram starts with an epoch-0 ClientHello with message_seq 0 or 1."""
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


#: Fragmented ClientHellos whose reassembly is in progress, per listener (memory bound).
MAX_PARTIAL_HELLOS = 256
#: How long the fragments of an incomplete ClientHello are kept.
PARTIAL_HELLO_TIMEOUT = 5.0


class DTLSServer:
    """A DTLS 1.2 server endpoint serving many client addresses (sans-IO).

    Work per call is independent of the number of associations: only connections touched
    since the last :meth:`datagrams_to_send` are polled for output, and timers are kept in a
    heap whose stale entries are skipped lazily.
    """

    def __init__(self, config: ServerConfig, tracer: Tracer | None = None) -> None:
        config.validate()
        self.config = config
        self._cookies = CookieJar(config.cookie_rotation)
        self._connections: dict[Address, ServerConnection] = {}
        self._events: deque[Event] = deque()
        self._stateless_out: list[tuple[bytes, Address]] = []
        self._partial_hellos: dict[Address, tuple[ServerConnection, float]] = {}
        #: Connections that may have output or a new timer (insertion-ordered set).
        self._touched: dict[Address, None] = {}
        #: (deadline, tie-breaker, address); an entry is live while it equals the timer.
        self._timers: list[tuple[float, int, Address]] = []
        self._timer_entries = itertools.count()
        self._tracer = tracer
        self.stats = {"stateless_replies": 0, "dropped_datagrams": 0}

    def receive_datagram(self, data: bytes, peer: Address, now: float) -> None:
        """Process one datagram from ``peer``. Never raises on hostile input."""
        connection = self._connections.get(peer)
        if (
            connection is not None
            and not connection.is_closed
            and not (connection.is_established and _is_new_client_hello(data, connection))
        ):
            connection.receive_datagram(data, now)
            self._collect(connection)
            self._touch(peer)
            return
        held = self._partial_hellos.pop(peer, None)
        if held is not None and now - held[1] <= PARTIAL_HELLO_TIMEOUT:
            candidate = held[0]  # the rest of a fragmented ClientHello (RFC 6347 §4.2.3)
        elif _is_initial_client_hello(data):
            candidate = ServerConnection(self.config, peer, self._cookies, self._tracer)
        else:
            self.stats["dropped_datagrams"] += 1
            return
        candidate.receive_datagram(data, now)
        if (
            candidate.state == "listen"
            and not candidate.is_closed
            and candidate.has_partial_message
        ):
            # Keep only the fragments, bounded in number and time, until the message is whole.
            if len(self._partial_hellos) >= MAX_PARTIAL_HELLOS:
                self._partial_hellos.pop(next(iter(self._partial_hellos)))
            self._partial_hellos[peer] = (candidate, now)
            return
        if candidate.state == "listen" or candidate.is_closed:
            # RFC 6347 §4.2.1: no state is kept before the cookie proves the address.
            self.stats["stateless_replies"] += 1
            self._stateless_out.extend((d, peer) for d in candidate.datagrams_to_send(now))
            if connection is None or connection.is_closed:
                # A failed stray ClientHello must not look like the end of the live association.
                self._collect(candidate)
            return
        if len(self._connections) >= self.config.max_connections and peer not in self._connections:
            self._evict_one()
        if connection is not None:
            connection.close()
            self._collect(connection)
        self._connections[peer] = candidate
        self._collect(candidate)
        self._touch(peer)

    def _evict_one(self) -> None:
        for address, conn in list(self._connections.items()):
            if conn.is_closed:
                del self._connections[address]
                return
        oldest = next(iter(self._connections))
        self._connections.pop(oldest).close()

    def _collect(self, connection: ServerConnection) -> None:
        while (event := connection.next_event()) is not None:
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
            out.extend((d, address) for d in connection.datagrams_to_send(now))
            if connection.is_closed:
                del self._connections[address]
            else:
                self._schedule(address, connection)
        return out

    def next_timer(self) -> float | None:
        live = self._live_timer()
        return live[0] if live is not None else None

    def handle_timer(self, now: float) -> None:
        due: dict[Address, None] = {}
        while (live := self._live_timer()) is not None and live[0] <= now:
            heapq.heappop(self._timers)
            due[live[1]] = None
        for peer in due:
            connection = self._connections[peer]
            connection.handle_timer(now)
            self._collect(connection)
            self._touch(peer)
            self._schedule(peer, connection)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def connection(self, peer: Address) -> ServerConnection | None:
        """The association with ``peer``; the caller may act on it, so it is polled next."""
        if peer in self._connections:
            self._touch(peer)
        return self._connections.get(peer)

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
            self._touch(peer)

    def close_all(self) -> None:
        for peer in list(self._connections):
            self.close(peer)

    @property
    def connection_count(self) -> int:
        return len(self._connections)
