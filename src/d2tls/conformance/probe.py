"""A scripted, deliberately permissive DTLS 1.2 client for conformance testing.

The :class:`Prober` builds every record itself from the codecs of :mod:`d2tls.core.dtls` (messages,
fragments, record layer, key schedule), so that a test can send *anything* — messages out of
order, a Finished with bad verify_data, records in a wrong epoch, replays — and observe what the
server answers. It keeps just enough client state (transcript, randoms, keys, epochs) to make
correct messages when asked to, and it never refuses to send.

Two transports carry its datagrams: :class:`UDPTransport` (a real socket, with a response
timeout) and :class:`InProcessTransport` (our own sans-IO
:class:`~d2tls.core.dtls.server.DTLSServer`
called directly: no timeouts, so state-machine learning of our server is fast and exact).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from d2tls.core.dtls import keyschedule
from d2tls.core.dtls.constants import (
    CERT_TYPE_ECDSA_SIGN,
    COMPRESSION_NULL,
    DTLS_1_2,
    ECDSA_SECP256R1_SHA256,
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
from d2tls.core.dtls.events import ApplicationDataReceived
from d2tls.core.dtls.fragments import HandshakeFragment, encode_fragment, parse_handshake_fragments
from d2tls.core.dtls.messages import (
    CHANGE_CIPHER_SPEC_BODY,
    Certificate,
    CertificateRequest,
    CertificateVerify,
    ClientHello,
    ClientKeyExchangeECDHE,
    ClientKeyExchangePSK,
    Extension,
    Finished,
    HandshakeMessage,
    HelloVerifyRequest,
    ServerHello,
    ServerKeyExchangeECDHE,
    decode_alert,
    decode_handshake_body,
    encode_ec_point_formats,
    encode_handshake,
    encode_renegotiation_info,
    encode_server_name,
    encode_signature_algorithms,
    encode_supported_groups,
    message_name,
)
from d2tls.core.dtls.record import AEADProtection, EpochState, Record, encode_record, parse_datagram
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.errors import D2TLSError, RecordError

Address = tuple[str, int]

#: How long to wait for the first datagram of an answer, and for each further one.
DEFAULT_WAIT = 0.4
DEFAULT_GAP = 0.05
TIMEOUT = "TIMEOUT"


@dataclass(frozen=True)
class RetransmissionTimer:
    """RFC 6347 §4.2.4.1: retransmit a flight after ``initial`` s (1 s recommended), doubling
    the timer each time up to ``maximum`` (60 s); bounded here by ``retransmissions``."""

    initial: float = 1.0
    maximum: float = 60.0
    retransmissions: int = 4

    def waits(self) -> list[float]:
        """How long to wait after each transmission (first + retransmissions)."""
        out, timer = [], self.initial
        for _ in range(self.retransmissions + 1):
            out.append(timer)
            timer = min(timer * 2, self.maximum)
        return out

    @property
    def budget(self) -> float:
        return sum(self.waits())


#: 1 + 2 + 4 + 8 + 16 s: a server still finishing an earlier association (its own timers
#: run up to a minute or two) gets 31 s to come back before a check calls it busy.
DEFAULT_TIMER = RetransmissionTimer()


# --------------------------------------------------------------------------- transports


class ProbeError(D2TLSError):
    """The prober cannot reach or drive the server under test."""


class Transport(Protocol):
    """Moves datagrams between the prober and one server."""

    def send(self, datagram: bytes) -> None:
        """Send one datagram to the server."""

    def receive(self, wait: float, gap: float) -> list[bytes]:
        """Datagrams that arrive within ``wait`` s, then while each next one follows within
        ``gap`` s; an empty list means the server said nothing (a timeout)."""

    def close(self) -> None:
        """Release the transport."""


class UDPTransport:
    """A UDP socket connected to ``target``, bound to ``source`` (port 0: any free port)."""

    def __init__(self, target: Address, source: Address | None = None) -> None:
        if not _is_loopback(target[0]):
            raise ProbeError(f"{target[0]} is not a loopback address (the prober stays on lo)")
        family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        self.target = target
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        if source is None:
            # Loopback only: the conformance suite never binds a wildcard address.
            source = ("::1" if family == socket.AF_INET6 else "127.0.0.1", 0)
        self._sock.bind(source)
        self._sock.connect(target)
        self.local_address: Address = tuple(self._sock.getsockname()[:2])

    def send(self, datagram: bytes) -> None:
        # An ICMP error from an earlier send, or the like: the datagram is simply lost.
        with contextlib.suppress(OSError):
            self._sock.send(datagram)

    def receive(self, wait: float, gap: float) -> list[bytes]:
        out: list[bytes] = []
        timeout = wait
        while True:
            ready, _, _ = select.select([self._sock], [], [], timeout)
            if not ready:
                return out
            try:
                out.append(self._sock.recv(65535))
            except OSError:
                return out  # ICMP error: the server is not (or no longer) there
            timeout = gap

    def close(self) -> None:
        self._sock.close()


class InProcessTransport:
    """Our own sans-IO server, called directly (no sockets, no timers, no waiting)."""

    def __init__(
        self, server: DTLSServer, address: Address = ("192.0.2.1", 40000), *, echo: bool = False
    ) -> None:
        self.server = server
        self.local_address = address
        self.echo = echo
        self._pending: list[bytes] = []

    def send(self, datagram: bytes) -> None:
        now = time.monotonic()
        self.server.receive_datagram(datagram, self.local_address, now)
        while (event := self.server.next_event()) is not None:
            if self.echo and isinstance(event, ApplicationDataReceived):
                self.server.send_application_data(self.local_address, event.data)
        self._pending += [
            d for d, peer in self.server.datagrams_to_send(now) if peer == self.local_address
        ]

    def receive(self, wait: float, gap: float) -> list[bytes]:
        out, self._pending = self._pending, []
        return out

    def close(self) -> None:
        pass


def _is_loopback(host: str) -> bool:
    return host.startswith("127.") or host in ("::1", "localhost")


# --------------------------------------------------------------------------- observations


@dataclass(frozen=True)
class Item:
    """One thing the server sent: a handshake message, a CCS, an alert, data, or garbage."""

    kind: str  # "handshake" | "ccs" | "alert" | "data" | "undecryptable"
    name: str
    epoch: int
    message_seq: int = -1
    level: int = 0
    description: int = 0
    body: bytes = b""

    @property
    def label(self) -> str:
        """Abstract name: ``ServerHello``, ``ChangeCipherSpec``, ``Alert(fatal,decrypt_error)``."""
        if self.kind == "alert":
            return f"Alert({_level_name(self.level)},{_alert_name(self.description)})"
        return self.name


def _level_name(level: int) -> str:
    try:
        return AlertLevel(level).name.lower()
    except ValueError:
        return str(level)


def _alert_name(description: int) -> str:
    try:
        return AlertDescription(description).name.lower()
    except ValueError:
        return str(description)


@dataclass
class Observation:
    """What the server answered to one step (new items only; retransmissions are dropped)."""

    items: list[Item] = field(default_factory=list)
    retransmitted: int = 0

    @property
    def timeout(self) -> bool:
        return not self.items

    @property
    def label(self) -> str:
        """``TIMEOUT`` or the item labels joined by ``+`` (repeats collapsed)."""
        if not self.items:
            return TIMEOUT
        labels: list[str] = []
        for item in self.items:
            if not labels or labels[-1] != item.label:
                labels.append(item.label)
        return "+".join(labels)

    def names(self) -> list[str]:
        return [i.label for i in self.items]

    def alerts(self) -> list[Item]:
        return [i for i in self.items if i.kind == "alert"]

    def fatal_alert(self) -> Item | None:
        return next((i for i in self.items if i.kind == "alert" and i.level == 2), None)

    def has(self, name: str) -> bool:
        return any(i.label == name or i.name == name for i in self.items)

    def describe(self) -> str:
        return self.label


# --------------------------------------------------------------------------- credentials


@dataclass
class ClientCredentials:
    """What the prober may present: a certificate chain and key, a PSK, the server name."""

    chain: tuple[bytes, ...] = ()
    key: ec.EllipticCurvePrivateKey | None = None
    psk_identity: bytes | None = None
    psk: bytes | None = None
    server_name: str | None = None


@dataclass
class ResumableSession:
    """A session the prober may offer for resumption (RFC 5246 §7.4.1.2)."""

    session_id: bytes
    master_secret: bytes
    cipher_suite: CipherSuite
    extended_master_secret: bool


# --------------------------------------------------------------------------- the prober


@dataclass
class PendingKeyExchange:
    """A ClientKeyExchange and the premaster secret it commits to (``known``: the server
    can compute it too)."""

    message: HandshakeMessage
    pre_master: bytes
    known: bool


class Prober:
    """A step-by-step DTLS 1.2 client whose every message is chosen by the caller.

    Each ``send_*`` method builds one message (correct by default, broken on request) and
    sends it; :meth:`receive` collects the server's answer as an :class:`Observation` and
    updates what the prober knows (cookie, server random, keys, epochs).
    """

    def __init__(
        self,
        transport: Transport,
        credentials: ClientCredentials,
        *,
        suite: CipherSuite = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,
        wait: float = DEFAULT_WAIT,
        gap: float = DEFAULT_GAP,
    ) -> None:
        self.transport = transport
        self.credentials = credentials
        self.suite = suite
        self.wait, self.gap = wait, gap
        self.client_random = os.urandom(32)
        self.cookie = b""
        self.send_seq = 0
        self.transcript = bytearray()
        self.write = EpochState(epoch=0)
        self.old_writes: dict[int, EpochState] = {}
        self.pending_write: EpochState | None = None
        self.read = EpochState(epoch=0)
        self.pending_read: EpochState | None = None
        self.future: list[Record] = []
        # what the server told us
        self.server_hello: ServerHello | None = None
        self.server_random = b""
        self.server_point = b""
        self.server_certificates: tuple[bytes, ...] = ()
        self.certificate_requested = False
        self.cipher_suite: CipherSuite | None = None
        self.extended_master_secret = False
        self.session_id = b""
        self.offered_session: ResumableSession | None = None
        self.resumed = False
        self.master = b""
        self.keys_known = False
        self.server_finished_ok: bool | None = None
        self.seen_server_seqs: set[int] = set()
        self.server_ccs_count = 0
        self.last_sent: list[bytes] = []
        self.handshake_complete = False
        self.client_verify_data = b""
        self.server_verify_data = b""
        self.log: list[str] = []
        self._partials: dict[tuple[int, int, int, int], dict[int, bytes]] = {}
        self._seen: dict[tuple[int, int], bytes] = {}
        self.old_reads: dict[int, EpochState] = {}
        self.largest_datagram = 0
        #: What the records being built and the last flight sent are made of, so that a
        #: retransmission re-seals them with fresh sequence numbers (RFC 6347 §4.2.4).
        self._building: list[tuple[int, bytes, EpochState]] = []
        self._flight: list[tuple[int, bytes, EpochState]] = []
        self._flight_datagrams = 1
        #: The server ended the association (a fatal alert or close_notify from it).
        self.server_closed = False
        self.closed = False
        self.transmissions = 0

    # ------------------------------------------------------------------ record output
    def _seal(self, content_type: int, payload: bytes, epoch_state: EpochState) -> bytes:
        self._building.append((content_type, bytes(payload), epoch_state))
        return self._seal_only(content_type, payload, epoch_state)

    def _seal_only(self, content_type: int, payload: bytes, epoch_state: EpochState) -> bytes:
        seq = epoch_state.next_sequence()
        version = DTLS_1_2
        if epoch_state.protection is None:
            fragment = bytes(payload)
        else:
            fragment = epoch_state.protection.seal(
                content_type, version, epoch_state.epoch, seq, payload
            )
        return encode_record(Record(content_type, version, epoch_state.epoch, seq, fragment))

    def send_records(self, records: Sequence[bytes], *, one_datagram: bool = True) -> None:
        """Send already-built records (in one datagram by default)."""
        datagrams = [b"".join(records)] if one_datagram else list(records)
        self.last_sent = datagrams
        self._flight, self._building = self._building, []
        self._flight_datagrams = 1 if one_datagram else len(records)
        self.transmissions = 1
        for datagram in datagrams:
            self.transport.send(datagram)

    def retransmit(self) -> None:
        """Send the last flight again, re-sealed with new record sequence numbers (RFC 6347
        §4.2.4: a retransmission is not a replay; the server's replay window would drop it)."""
        records = [self._seal_only(t, p, state) for t, p, state in self._flight]
        datagrams = [b"".join(records)] if self._flight_datagrams == 1 else records
        self.last_sent = datagrams
        self.transmissions += 1
        self.log.append(f"-> (retransmission {self.transmissions - 1})")
        for datagram in datagrams:
            self.transport.send(datagram)

    def await_answer(self, timer: RetransmissionTimer | None) -> Observation:
        """The answer to the flight just sent; without one, retransmit on ``timer``
        (RFC 6347 §4.2.4) until an answer comes or the timer's bound is reached."""
        if timer is None:
            return self.receive()
        waits = timer.waits()
        answer = self.receive(wait=max(self.wait, waits[0]))
        for wait in waits[1:]:
            if not answer.timeout:
                break
            self.retransmit()
            answer = self.receive(wait=wait)
        return answer

    def close_association(self, *, linger: float = 0.2) -> None:
        """End the association cleanly (RFC 5246 §7.2.1): close_notify, unless the server
        already ended it (its fatal alert or close_notify: anything more would be a stray
        datagram to a server that has moved on). Mid-handshake, when the server may not have
        switched to our new epoch, close_notify goes in every epoch we wrote in (it drops the
        ones it cannot read). Waits ``linger`` s for the server's own close_notify."""
        if self.server_closed or self.closed:
            self.closed = True
            return
        self.closed = True
        records = [self.alert_record()]
        if self.write.epoch > 0 and not self.handshake_complete:
            # The server may read any epoch we wrote in (it may have dropped our CCS).
            for epoch in sorted(self.old_writes, reverse=True):
                records.append(
                    self._seal_only(ContentType.ALERT, bytes((1, 0)), self.old_writes[epoch])
                )
        for record in records:
            self.transport.send(record)
        if linger > 0:
            self.receive(wait=linger)

    def record(self, content_type: int, payload: bytes, *, epoch: int | None = None) -> bytes:
        """One record in the current write epoch (or an older/other one when asked)."""
        state = self.write
        if epoch is not None and epoch != self.write.epoch:
            state = self.old_writes.get(epoch) or EpochState(
                epoch=epoch,
                protection=None
                if epoch == 0
                else AEADProtection(
                    CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8, bytes(16), bytes(4)
                ),
            )
        return self._seal(content_type, payload, state)

    def handshake_records(
        self,
        message: HandshakeMessage | None,
        *,
        msg_type: int | None = None,
        body: bytes | None = None,
        message_seq: int | None = None,
        fragment_size: int | None = None,
        epoch: int | None = None,
        hash_it: bool = True,
    ) -> list[bytes]:
        """Records carrying one handshake message (fragmented if ``fragment_size``)."""
        if message is not None:
            msg_type, body = int(message.msg_type), message.encode()
        assert msg_type is not None and body is not None
        seq = self.send_seq if message_seq is None else message_seq
        if message_seq is None:
            self.send_seq += 1
        if hash_it and msg_type != HandshakeType.HELLO_VERIFY_REQUEST:
            self.transcript += encode_handshake(msg_type, seq, body)
        size = fragment_size or max(1, len(body))
        records = []
        for offset in range(0, max(1, len(body)), size):
            chunk = body[offset : offset + size]
            fragment = HandshakeFragment(msg_type, len(body), seq, offset, len(chunk), chunk)
            records.append(
                self.record(ContentType.HANDSHAKE, encode_fragment(fragment), epoch=epoch)
            )
        self.log.append(f"-> {message_name(msg_type)}")
        return records

    def send_handshake(self, message: HandshakeMessage, **kwargs: object) -> None:
        self.send_records(self.handshake_records(message, **kwargs))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ client messages
    def client_hello(
        self,
        *,
        session: ResumableSession | None = None,
        suites: Sequence[int] | None = None,
        extended_master_secret: bool = True,
        cookie: bytes | None = None,
        version: int = DTLS_1_2,
        extra_extensions: Sequence[Extension] = (),
        renegotiation_info: bytes | None = b"",
    ) -> ClientHello:
        """A ClientHello offering ``suites`` (default: the prober's suite)."""
        offered = tuple(int(s) for s in (suites if suites is not None else (self.suite,)))
        extensions: list[Extension] = []
        name = self.credentials.server_name
        if name and not _is_ip(name):
            extensions.append(Extension(ExtensionType.SERVER_NAME, encode_server_name(name)))
        if any(s not in PSK_SUITES for s in offered):
            extensions += [
                Extension(ExtensionType.SUPPORTED_GROUPS, encode_supported_groups([SECP256R1])),
                Extension(
                    ExtensionType.EC_POINT_FORMATS,
                    encode_ec_point_formats([POINT_FORMAT_UNCOMPRESSED]),
                ),
                Extension(
                    ExtensionType.SIGNATURE_ALGORITHMS,
                    encode_signature_algorithms([ECDSA_SECP256R1_SHA256]),
                ),
            ]
        if extended_master_secret:
            extensions.append(Extension(ExtensionType.EXTENDED_MASTER_SECRET, b""))
        if renegotiation_info is not None:
            extensions.append(
                Extension(
                    ExtensionType.RENEGOTIATION_INFO, encode_renegotiation_info(renegotiation_info)
                )
            )
        extensions += list(extra_extensions)
        self.offered_session = session
        return ClientHello(
            client_version=version,
            random=self.client_random,
            session_id=session.session_id if session is not None else b"",
            cookie=self.cookie if cookie is None else cookie,
            cipher_suites=offered,
            compression_methods=(COMPRESSION_NULL,),
            extensions=tuple(extensions),
        )

    def send_client_hello(self, **kwargs: object) -> None:
        self.send_handshake(self.client_hello(**kwargs))  # type: ignore[arg-type]

    def certificate(self, chain: Sequence[bytes] | None = None) -> Certificate:
        return Certificate(tuple(self.credentials.chain if chain is None else chain))

    def client_key_exchange(self) -> PendingKeyExchange:
        """The key exchange; derives the master secret and the pending epoch's keys."""
        suite = self.cipher_suite or self.suite
        message: HandshakeMessage
        if suite in PSK_SUITES:
            identity = self.credentials.psk_identity or b"unknown"
            message = ClientKeyExchangePSK(identity)
            pre_master = keyschedule.psk_pre_master_secret(self.credentials.psk or bytes(16))
            known = self.credentials.psk is not None
        else:
            private = ec.generate_private_key(ec.SECP256R1())
            point = private.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
            message = ClientKeyExchangeECDHE(point)
            known = bool(self.server_point)
            try:
                pre_master = (
                    keyschedule.ecdhe_pre_master_secret(private, self.server_point)
                    if known
                    else os.urandom(32)
                )
            except D2TLSError:
                pre_master, known = os.urandom(32), False
        return PendingKeyExchange(message, pre_master, known)

    def send_client_key_exchange(self) -> None:
        pending = self.client_key_exchange()
        records = self.handshake_records(pending.message)
        self.derive_master(pending.pre_master, pending.known)
        self.send_records(records)

    def derive_master(self, pre_master: bytes, known: bool) -> None:
        """Master secret (EMS over the transcript so far if negotiated) and pending keys."""
        server_random = self.server_random or os.urandom(32)
        if self.extended_master_secret:
            session_hash = keyschedule.transcript_hash(bytes(self.transcript))
            self.master = bytes(keyschedule.extended_master_secret(pre_master, session_hash))
        else:
            self.master = bytes(
                keyschedule.master_secret(pre_master, self.client_random, server_random)
            )
        self.keys_known = known and bool(self.server_random)
        self.install_pending_keys(server_random)

    def install_pending_keys(self, server_random: bytes | None = None) -> None:
        suite = self.cipher_suite or self.suite
        keys = keyschedule.key_block(
            self.master, self.client_random, server_random or self.server_random, suite
        )
        self.pending_write = EpochState(
            epoch=self.write.epoch + 1,
            protection=AEADProtection(suite, keys.client_write_key, keys.client_write_iv),
        )
        self.pending_read = EpochState(
            epoch=self.read.epoch + 1,
            protection=AEADProtection(suite, keys.server_write_key, keys.server_write_iv),
        )

    def certificate_verify(self, *, bad: bool = False) -> CertificateVerify:
        """A signature over the transcript so far (RFC 5246 §7.4.8); ``bad`` flips a bit."""
        key = self.credentials.key or ec.generate_private_key(ec.SECP256R1())
        signature = key.sign(bytes(self.transcript), ec.ECDSA(hashes.SHA256()))
        if bad:
            signature = _corrupt_signature(key, signature)
        return CertificateVerify(ECDSA_SECP256R1_SHA256, signature)

    def send_change_cipher_spec(self, *, switch: bool = True) -> None:
        """Send ChangeCipherSpec; switch the write epoch when keys are pending."""
        self.send_records([self.ccs_record(switch=switch)])

    def ccs_record(self, *, switch: bool = True) -> bytes:
        record = self.record(ContentType.CHANGE_CIPHER_SPEC, CHANGE_CIPHER_SPEC_BODY)
        self.log.append("-> ChangeCipherSpec")
        if switch and self.pending_write is not None:
            self.old_writes[self.write.epoch] = self.write
            self.write, self.pending_write = self.pending_write, None
        return record

    def finished(self, *, bad: bool = False) -> Finished:
        """Our Finished over the transcript (RFC 5246 §7.4.9); ``bad`` flips verify_data."""
        data = keyschedule.verify_data(
            self.master or bytes(48),
            keyschedule.CLIENT_FINISHED,
            keyschedule.transcript_hash(bytes(self.transcript)),
        )
        if bad:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        else:
            self.client_verify_data = data
        return Finished(data)

    def application_data(self, data: bytes) -> bytes:
        self.log.append("-> ApplicationData")
        return self.record(ContentType.APPLICATION_DATA, data)

    def alert_record(
        self, level: int = AlertLevel.WARNING, description: int = AlertDescription.CLOSE_NOTIFY
    ) -> bytes:
        self.log.append(f"-> Alert({_level_name(level)},{_alert_name(description)})")
        return self.record(ContentType.ALERT, bytes((level, description)))

    # ------------------------------------------------------------------ input
    def receive(self, wait: float | None = None) -> Observation:
        """Collect the server's answer and learn from it."""
        datagrams = self.transport.receive(self.wait if wait is None else wait, self.gap)
        self.largest_datagram = max([self.largest_datagram, *map(len, datagrams)])
        observation = Observation()
        for datagram in datagrams:
            records, _ = parse_datagram(datagram)
            for record in records:
                self._receive_record(record, observation)
        self._drop_retransmitted_ccs(observation)
        self.log.append(f"<- {observation.label}")
        return observation

    def _drop_retransmitted_ccs(self, observation: Observation) -> None:
        """A resent server CCS comes with resent (already seen) handshake messages."""
        if observation.retransmitted and not any(i.kind == "handshake" for i in observation.items):
            kept = [i for i in observation.items if i.kind != "ccs"]
            observation.retransmitted += len(observation.items) - len(kept)
            observation.items = kept

    def _receive_record(self, record: Record, observation: Observation) -> None:
        if record.epoch == self.read.epoch:
            state: EpochState | None = self.read
        elif self.pending_read is not None and record.epoch == self.pending_read.epoch:
            self.future.append(record)
            return
        elif record.epoch == 0:
            state = EpochState(epoch=0)  # a new association's records (RFC 6347 §4.2.8)
        else:
            state = self.old_reads.get(record.epoch)
        if state is None:
            observation.items.append(Item("undecryptable", "UnknownEpochRecord", record.epoch))
            return
        try:
            if state.protection is None:
                payload = bytes(record.fragment)
            else:
                payload = state.protection.open(record)
        except RecordError:
            observation.items.append(Item("undecryptable", "Undecryptable", record.epoch))
            return
        content = record.content_type
        if content == ContentType.CHANGE_CIPHER_SPEC:
            observation.items.append(Item("ccs", "ChangeCipherSpec", record.epoch))
            self.server_ccs_count += 1
            if self.pending_read is not None:
                self.old_reads[self.read.epoch] = self.read
                self.read, self.pending_read = self.pending_read, None
                waiting, self.future = self.future, []
                for later in waiting:
                    self._receive_record(later, observation)
        elif content == ContentType.ALERT:
            try:
                alert = decode_alert(payload)
                observation.items.append(
                    Item(
                        "alert",
                        "Alert",
                        record.epoch,
                        level=alert.level,
                        description=alert.description,
                    )
                )
                if alert.level == AlertLevel.FATAL or alert.description == 0:
                    self.server_closed = True
            except D2TLSError:
                observation.items.append(Item("undecryptable", "MalformedAlert", record.epoch))
        elif content == ContentType.APPLICATION_DATA:
            observation.items.append(Item("data", "ApplicationData", record.epoch, body=payload))
        elif content == ContentType.HANDSHAKE:
            self._receive_handshake(payload, record.epoch, observation)

    def _receive_handshake(self, payload: bytes, epoch: int, observation: Observation) -> None:
        try:
            fragments = parse_handshake_fragments(payload)
        except D2TLSError:
            observation.items.append(Item("undecryptable", "MalformedHandshake", epoch))
            return
        for fragment in fragments:
            key = (epoch, fragment.message_seq, fragment.msg_type, fragment.length)
            partial = self._partials.setdefault(key, {})
            partial[fragment.fragment_offset] = fragment.body
            if sum(len(b) for b in partial.values()) < fragment.length:
                continue
            body = b"".join(partial[o] for o in sorted(partial))[: fragment.length]
            del self._partials[key]
            seen = (epoch, fragment.message_seq)
            if self._seen.get(seen) == body:
                observation.retransmitted += 1  # the same message again: a retransmission
                continue
            # A different message with this message_seq: the server started a new handshake.
            for old in [k for k in self._seen if k[0] == epoch and k[1] >= seen[1]]:
                del self._seen[old]
            self._seen[seen] = body
            self.seen_server_seqs.add(fragment.message_seq)
            if fragment.msg_type == HandshakeType.SERVER_HELLO and epoch == 0 and self.read.epoch:
                # A new association: the server reads and writes epoch 0 again.
                self.old_reads[self.read.epoch] = self.read
                self.read, self.pending_read = EpochState(epoch=0), None
            observation.items.append(
                Item(
                    "handshake",
                    message_name(fragment.msg_type),
                    epoch,
                    fragment.message_seq,
                    body=body,
                )
            )
            self._learn(fragment.msg_type, fragment.message_seq, body)

    def _learn(self, msg_type: int, message_seq: int, body: bytes) -> None:
        """Update client knowledge from one server handshake message."""
        psk = (self.cipher_suite or self.suite) in PSK_SUITES
        try:
            message = decode_handshake_body(msg_type, body, psk=psk)
        except D2TLSError:
            return
        if isinstance(message, HelloVerifyRequest | ServerHello):
            self.server_closed = self.closed = False  # a new association on this port
        if isinstance(message, HelloVerifyRequest):
            self.cookie = message.cookie
            self.transcript.clear()  # RFC 6347 §4.2.6: ClientHello #1 and HVR are not hashed
            return
        if isinstance(message, Finished):
            expected = keyschedule.verify_data(
                self.master or bytes(48),
                keyschedule.SERVER_FINISHED,
                keyschedule.transcript_hash(bytes(self.transcript)),
            )
            self.server_finished_ok = hmac.compare_digest(expected, message.verify_data)
            if self.server_finished_ok:
                self.server_verify_data = message.verify_data
            self.transcript += encode_handshake(msg_type, message_seq, body)
            if self.resumed:
                return
            self.handshake_complete = bool(self.server_finished_ok)
            return
        self.transcript += encode_handshake(msg_type, message_seq, body)
        if isinstance(message, ServerHello):
            self.server_hello = message
            self.server_random = message.random
            try:
                self.cipher_suite = CipherSuite(message.cipher_suite)
            except ValueError:
                self.cipher_suite = None
            self.extended_master_secret = message.has_extended_master_secret
            self.session_id = message.session_id
            offered = self.offered_session
            self.resumed = False
            self.pending_write = self.pending_read = None  # a new handshake: old keys are void
            if offered is not None and message.session_id == offered.session_id:
                self.resumed = True
                self.master = offered.master_secret
                self.keys_known = True
                self.install_pending_keys()
        elif isinstance(message, Certificate):
            self.server_certificates = message.certificates
        elif isinstance(message, ServerKeyExchangeECDHE):
            self.server_point = message.public_point
        elif isinstance(message, CertificateRequest):
            self.certificate_requested = CERT_TYPE_ECDSA_SIGN in message.certificate_types

    # ------------------------------------------------------------------ helpers
    def session(self) -> ResumableSession | None:
        """The session just negotiated, to offer later (after a verified server Finished)."""
        if not self.session_id or not self.master or self.cipher_suite is None:
            return None
        return ResumableSession(
            self.session_id, self.master, self.cipher_suite, self.extended_master_secret
        )

    def replay_last(self) -> None:
        """Send the last datagrams again, byte for byte (same epoch and sequence numbers)."""
        for datagram in self.last_sent:
            self.transport.send(datagram)

    def close(self) -> None:
        self.transport.close()


def _corrupt_signature(key: ec.EllipticCurvePrivateKey, signature: bytes) -> bytes:
    """A well-formed ECDSA signature by ``key`` over other data (so it parses but fails)."""
    return key.sign(b"not the transcript" + signature, ec.ECDSA(hashes.SHA256()))


def _is_ip(name: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- full handshakes


def full_handshake(
    prober: Prober,
    *,
    session: ResumableSession | None = None,
    send_certificate: bool = True,
    max_hello_verify: int = 3,
    fragment_size: int | None = None,
    extended_master_secret: bool = True,
    timer: RetransmissionTimer | None = DEFAULT_TIMER,
) -> Observation:
    """Run a complete, correct handshake (or an abbreviated one when ``session`` is
    resumed); returns the server's last answer. ``prober.handshake_complete`` tells.

    ``fragment_size`` splits every handshake message into fragments of at most that many
    bytes, each record in its own datagram (RFC 6347 §4.2.3), as a small-MTU client does.
    ClientHello flights are retransmitted on ``timer`` (RFC 6347 §4.2.4), so a server that
    serves one association at a time answers once it is free; later flights are sent once
    and their answer awaited for at least ``timer.initial`` s (retransmitting them after a
    silent refusal would send stray records to a server that has moved on).
    """

    def send(records: list[bytes]) -> None:
        prober.send_records(records, one_datagram=fragment_size is None)

    def hello() -> Observation:
        message = prober.client_hello(
            session=session, extended_master_secret=extended_master_secret
        )
        send(prober.handshake_records(message, fragment_size=fragment_size))
        return prober.await_answer(timer)

    def later() -> Observation:
        return prober.receive(wait=max(prober.wait, timer.initial if timer else 0.0))

    def handshake(message: HandshakeMessage) -> list[bytes]:
        return prober.handshake_records(message, fragment_size=fragment_size)

    answer = hello()
    for _ in range(max_hello_verify):
        if not answer.has("HelloVerifyRequest"):
            break
        answer = hello()
    if not answer.has("ServerHello"):
        return answer
    if prober.resumed:
        if not answer.has("Finished"):
            more = later()
            answer.items += more.items
        if not prober.server_finished_ok:
            return answer
        records = [prober.ccs_record()]
        records += handshake(prober.finished())
        send(records)
        prober.handshake_complete = True
        return prober.receive(wait=min(prober.wait, 0.2))
    if not answer.has("ServerHelloDone"):
        more = later()
        answer.items += more.items
        if not answer.has("ServerHelloDone"):
            return answer
    records = []
    certified = prober.certificate_requested and send_certificate and prober.credentials.chain
    if prober.certificate_requested:
        records += handshake(prober.certificate(None if certified else ()))
    pending = prober.client_key_exchange()
    records += handshake(pending.message)
    prober.derive_master(pending.pre_master, pending.known)
    if certified:
        records += handshake(prober.certificate_verify())
    records.append(prober.ccs_record())
    records += handshake(prober.finished())
    send(records)
    answer = later()
    if answer.has("ChangeCipherSpec") and not answer.has("Finished"):
        answer.items += later().items
    return answer


__all__ = [
    "DEFAULT_GAP",
    "DEFAULT_TIMER",
    "DEFAULT_WAIT",
    "TIMEOUT",
    "ClientCredentials",
    "InProcessTransport",
    "Item",
    "Observation",
    "ProbeError",
    "Prober",
    "ResumableSession",
    "RetransmissionTimer",
    "Transport",
    "UDPTransport",
    "full_handshake",
]
