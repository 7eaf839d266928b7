"""The sans-IO core shared by the client and server engines.

A ``Connection`` consumes datagrams and the current time and produces datagrams, events and a
timer deadline (RFC 6347 §4.2.4). It owns the record layer (epochs, sequence numbers, replay
window), handshake reassembly, flights and retransmission. *Which* message is acceptable when,
and which record the current state takes (content types, the next epoch, an early
ChangeCipherSpec), is decided only by ``spec/dtls.yaml``: this module feeds the state machine
triggers and looks up the current state's record rules.

The spec calls the engine through a typed handler table (``Connection._handlers``); the
handlers are private methods that take the message that fired the transition as an argument.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from d2tls.core.dtls import keyschedule
from d2tls.core.dtls.config import KeyLogCallback, TimerConfig
from d2tls.core.dtls.constants import (
    DTLS_1_0,
    DTLS_1_2,
    ECDHE_PSK_SUITES,
    HANDSHAKE_HEADER_LEN,
    MAX_PLAINTEXT,
    PSK_SUITES,
    RECORD_HEADER_LEN,
    AlertDescription,
    AlertLevel,
    CipherSuite,
    ContentType,
    HandshakeType,
)
from d2tls.core.dtls.events import (
    AlertReceived,
    ApplicationDataReceived,
    ConnectionTerminated,
    Event,
    InternalError,
)
from d2tls.core.dtls.fragments import (
    HandshakeFragment,
    Reassembler,
    encode_fragment,
    fragment_message,
    parse_handshake_fragments,
)
from d2tls.core.dtls.keylog import keylog_line
from d2tls.core.dtls.messages import (
    CHANGE_CIPHER_SPEC_BODY,
    Finished,
    HandshakeMessage,
    decode_alert,
    decode_change_cipher_spec,
    decode_handshake_body,
    encode_alert,
    encode_handshake,
    message_name,
)
from d2tls.core.dtls.record import (
    AEADProtection,
    EpochState,
    Record,
    parse_datagram,
    protect,
    unprotect,
)
from d2tls.core.errors import (
    DecodeError,
    DecryptError,
    ProtocolError,
    RecordError,
    UnexpectedMessage,
)
from d2tls.core.errors import (
    InvalidStateError as InvalidStateError,  # re-exported: its home is d2tls.core.errors
)
from d2tls.core.model.machine import Handlers, SpecMachine, expecting, ignoring
from d2tls.core.model.spec import load_spec

Address = tuple[str, int]
Tracer = Callable[[dict[str, Any]], None]

log = logging.getLogger("d2tls.core.dtls")

#: Per-record overhead of our AEAD suites: header + explicit nonce (8) + tag (at most 16).
AEAD_OVERHEAD = RECORD_HEADER_LEN + 8 + 16
#: Records of the next epoch kept until its ChangeCipherSpec arrives (RFC 6347 §4.1), and
#: the bytes they may hold in all (a Finished and a little early data are what peers send).
MAX_FUTURE_RECORDS = 16
MAX_FUTURE_BYTES = 32 * 1024
#: The spec's name of each record content type (``accept`` lists in spec/dtls.yaml).
CONTENT_NAMES: dict[int, str] = {
    ContentType.CHANGE_CIPHER_SPEC: "change_cipher_spec",
    ContentType.ALERT: "alert",
    ContentType.HANDSHAKE: "handshake",
    ContentType.APPLICATION_DATA: "application_data",
}
#: What the spec's guards and actions receive: the handshake message that fired the
#: transition, or None (a ChangeCipherSpec or a local event).
Payload = HandshakeMessage | None


@dataclass
class FlightItem:
    """One entry of a flight: a handshake message, a ChangeCipherSpec or an alert."""

    content_type: ContentType
    epoch: int
    payload: bytes
    msg_type: int = -1
    message_seq: int = -1


class Connection(ABC):
    """Record layer, reassembly, flights and timers, driven by a spec state machine whose
    states are the members of ``states`` (the role's Enum in :mod:`d2tls.core.model.states`)."""

    ROLE: ClassVar[str]
    IS_CLIENT: ClassVar[bool]
    #: Production keeps a bug inside the engine from reaching the transport: the connection
    #: ends with internal_error (see :class:`~d2tls.core.dtls.events.InternalError`). The test suite
    #: sets this to True so that the original exception propagates and the test fails.
    raise_internal_errors: ClassVar[bool] = False

    def __init__(
        self,
        *,
        mtu: int,
        timers: TimerConfig,
        keylog: KeyLogCallback | None,
        peer: Address | None,
        tracer: Tracer | None,
        states: type[StrEnum],
    ) -> None:
        self.peer = peer
        #: Where this connection's datagrams go, and the only source it accepts datagrams from
        #: (None: a client not told its server's address; only a connected socket may drive it).
        self.remote: Address | None = peer
        self._mtu = mtu
        self._timers = timers
        self._keylog = keylog
        self._tracer = tracer
        self._events: deque[Event] = deque()
        self._outgoing: list[bytes] = []
        #: The last queued datagram if it holds only application data records (more may join).
        self._data_tail: bytes | None = None
        self._read = EpochState(epoch=0, protection=None)
        self._old_reads: dict[int, EpochState] = {}
        self._writes: dict[int, EpochState] = {0: EpochState(epoch=0, protection=None)}
        self._write_epoch = 0
        self._pending_read: EpochState | None = None
        self._pending_write: EpochState | None = None
        self._future_records: list[Record] = []
        self._record_seq = 0
        self._reassembler = Reassembler()
        self._send_seq = 0
        self._transcript = bytearray()
        self._transcript_mark = 0
        self._flight: list[FlightItem] = []
        #: Messages built ahead (``builds``), by name, waiting for their flight.
        self._held: dict[str, list[FlightItem]] = {}
        self._flight_answers_below = 0
        self._building_flight: list[FlightItem] | None = None
        self._timer_deadline: float | None = None
        self._timeout = timers.initial
        self._retransmissions = 0
        self._last_duplicate_response = -1e9
        self._ccs_held = False
        self._now = 0.0
        self._error: ProtocolError | None = None
        self._internal: str | None = None
        #: Time of the last datagram received (the server evicts idle associations by it).
        self.last_activity = 0.0
        self._peer_alert: AlertDescription | None = None
        self._master: bytearray = bytearray()
        self.client_random = b""
        self.server_random = b""
        self.cipher_suite: CipherSuite | None = None
        self.extended_master_secret = False
        #: Counters useful to benchmarks and attacker tests.
        self.stats: dict[str, int] = {
            "datagrams_sent": 0,
            "datagrams_received": 0,
            "bytes_sent": 0,
            "bytes_received": 0,
            "records_discarded": 0,
            "retransmissions": 0,
            "round_trips": 0,
            "sign": 0,
            "verify": 0,
            "ecdh": 0,
            "keygen": 0,
            "internal_errors": 0,
        }
        self._table = self._handlers()
        self._machine: SpecMachine[StrEnum, Payload] = SpecMachine(
            load_spec().role(self.ROLE), states, self._table
        )

    # ------------------------------------------------------------------ public sans-IO API
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Process one datagram from ``addr``. Never raises on hostile input: failures become
        events. A datagram from anywhere but :attr:`remote` (when known) is not for us."""
        if self.remote is not None and addr != self.remote:
            return
        self._now = now
        self.last_activity = now
        self.stats["datagrams_received"] += 1
        self.stats["bytes_received"] += len(data)
        if self._machine.is_final():
            return
        records, discarded = parse_datagram(data)
        if discarded:
            self.stats["records_discarded"] += 1
        saw_duplicate = False
        for record in records:
            if self._machine.is_final():
                break
            try:
                saw_duplicate |= self._handle_record(record)
            except ProtocolError as exc:
                self._fail(exc)
            except Exception as exc:  # a bug must not escape to the transport
                self._internal_error(exc)
        if saw_duplicate and not self._machine.is_final():
            self._retransmit_on_duplicate()

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """Datagrams ready to go out, each with its destination (:attr:`remote`), in order."""
        self._now = now
        if not self._outgoing:
            return []
        if self.remote is None:
            raise InvalidStateError("the connection does not know its peer's address (remote)")
        out, self._outgoing = self._outgoing, []
        self._data_tail = None
        for datagram in out:
            self.stats["datagrams_sent"] += 1
            self.stats["bytes_sent"] += len(datagram)
        return [(datagram, self.remote) for datagram in out]

    def next_timer(self) -> float | None:
        """When ``handle_timer`` must next be called, or None."""
        return self._timer_deadline

    def handle_timer(self, now: float) -> None:
        """Retransmit the current flight or give up (RFC 6347 §4.2.4.1)."""
        self._now = now
        if self._timer_deadline is None or now < self._timer_deadline:
            return
        if self._retransmissions >= self._timers.max_retransmissions:
            self._timer_deadline = None
            self._fire_safely("timeout")
            return
        self._retransmissions += 1
        self.stats["retransmissions"] += 1
        self._timeout = min(self._timeout * 2, self._timers.maximum)
        self._trace("retransmit", reason="timer", attempt=self._retransmissions)
        self._transmit_flight(self._flight)
        self._timer_deadline = now + self._timeout

    def next_event(self) -> Event | None:
        """Pop the next event, or None."""
        return self._events.popleft() if self._events else None

    @property
    def state(self) -> StrEnum:
        """The current state of the spec machine (the role's Enum member)."""
        return self._machine.state

    def send_application_data(self, data: bytes) -> None:
        """Queue application data; only allowed once the handshake completed."""
        if not self.is_established:
            raise InvalidStateError(f"cannot send application data in state {self.state}")
        write = self._writes[self._write_epoch]
        room = max(1, self._mtu - AEAD_OVERHEAD)
        chunks = [data[i : i + room] for i in range(0, len(data), room)] or [b""]
        outgoing = self._outgoing
        for chunk in chunks:
            record = protect(write, ContentType.APPLICATION_DATA, chunk)
            tail = self._data_tail
            # RFC 6347 §4.1.1: several records may share one datagram (e.g. an agent's
            # SessionContext and Wiped, queued in one step).
            if (
                tail is not None
                and outgoing
                and outgoing[-1] is tail
                and len(tail) + len(record) <= self._mtu
            ):
                record = outgoing.pop() + record
            outgoing.append(record)
            self._data_tail = record

    def close(self) -> None:
        """Send close_notify and close (RFC 5246 §7.2.1). Idempotent."""
        if not self._machine.is_final():
            self._fire_safely("close")

    def abort(self, alert: AlertDescription, reason: str) -> None:
        """End the connection with the fatal ``alert`` (RFC 5246 §7.2.2): the application
        refuses to go on, e.g. the D2TLS device refused to sign. Idempotent."""
        self._fail(ProtocolError(reason, alert))

    @property
    def has_partial_message(self) -> bool:
        """True while fragments of a handshake message wait for the rest (RFC 6347 §4.2.3)."""
        return self._reassembler.pending > 0

    @property
    def reassembly_bytes(self) -> int:
        """Accounted bytes held for handshake messages not yet complete (bounded by
        :data:`~d2tls.core.dtls.fragments.MAX_REASSEMBLY_BYTES`)."""
        return self._reassembler.buffered_bytes

    @property
    def is_established(self) -> bool:
        """True while application data may flow (the spec's state accepts it)."""
        return "application_data" in self._machine.rules.accept

    @property
    def is_closed(self) -> bool:
        """True once the connection ended (cleanly or not)."""
        machine: SpecMachine[StrEnum, Payload] | None = self.__dict__.get("_machine")
        return machine is not None and machine.is_final()

    # ------------------------------------------------------------------ record layer
    def _handle_record(self, record: Record) -> bool:
        """Handle one record; returns True if it repeated a message we already processed."""
        if record.version not in (DTLS_1_2, DTLS_1_0):
            return self._discard(record, "unsupported record version")
        self._record_seq = record.sequence_number
        rules = self._machine.rules
        if record.epoch == self._read.epoch:
            try:
                payload = self._open(self._read, record)
            except RecordError as exc:
                if rules.undecryptable == "fatal_with_psk" and (
                    self._uses_psk() or self._uses_ecdhe_psk()
                ):
                    # RFC 4279 §2: a wrong key is answered with decrypt_error; the peer's
                    # Finished is the first record under the new keys (RFC 6347 §4.1.2.7
                    # allows a fatal alert instead of the silent discard).
                    raise DecryptError(
                        f"the peer's Finished does not authenticate: {exc}; "
                        "the pre-shared keys differ"
                    ) from None
                return self._discard(record, str(exc))
            return self._dispatch(record, payload, old_epoch=False)
        if record.epoch == self._read.epoch + 1 and rules.next_epoch == "buffer":
            held = sum(len(r.fragment) for r in self._future_records)
            if (
                len(self._future_records) < MAX_FUTURE_RECORDS
                and held + len(record.fragment) <= MAX_FUTURE_BYTES
            ):
                self._future_records.append(record)
            else:
                self._discard(record, "too many records of the next epoch")
            return False
        old = self._old_reads.get(record.epoch)
        if old is not None and CONTENT_NAMES.get(record.content_type) in rules.old_epoch:
            try:
                payload = self._open(old, record)
                # Only a retransmission check: a malformed old-epoch record (unauthenticated
                # in epoch 0) is dropped, never fatal (RFC 6347 §4.1.2.7).
                return self._dispatch(record, payload, old_epoch=True)
            except (RecordError, DecodeError) as exc:
                return self._discard(record, str(exc))
        return self._discard(record, f"record of epoch {record.epoch} not acceptable now")

    @staticmethod
    def _open(state: EpochState, record: Record) -> bytes:
        """The record's plaintext, or RecordError if it must be discarded.

        Epoch 0 has no MAC, so its replay window is not used: one forged record with a huge
        sequence number would otherwise move the window past every genuine record
        (RFC 6347 §4.1.2.6 updates the window only for authenticated records). Repeated
        handshake messages are recognised by their message_seq instead (RFC 6347 §4.2.2).
        """
        if state.protection is None:
            if len(record.fragment) > MAX_PLAINTEXT:
                raise RecordError("plaintext exceeds 2^14 bytes")
            return bytes(record.fragment)
        return unprotect(state, record)

    def _discard(self, record: Record, why: str) -> bool:
        """Silently drop a record (RFC 6347 §4.1.2.7), counting it."""
        self.stats["records_discarded"] += 1
        self._trace("record_discarded", epoch=record.epoch, seq=record.sequence_number, why=why)
        return False

    def _dispatch(self, record: Record, payload: bytes, *, old_epoch: bool) -> bool:
        content = record.content_type
        name = CONTENT_NAMES.get(content)
        if name is None:
            return self._discard(record, f"unknown content type {content}")
        if not old_epoch and not self._machine.rules.accepts(name, record.epoch):
            # RFC 6347 §4.1.2.7: e.g. unprotected or early application data: discarded.
            return self._discard(record, f"{name} in epoch {record.epoch} not accepted now")
        if content == ContentType.HANDSHAKE:
            return self._handle_handshake_payload(payload, old_epoch=old_epoch)
        if content == ContentType.CHANGE_CIPHER_SPEC:
            decode_change_cipher_spec(payload)
            if old_epoch:
                return False  # part of a retransmitted flight; its handshake messages decide
            self._handle_change_cipher_spec()
            return False
        if content == ContentType.ALERT:
            self._handle_alert(payload)
            return False
        self._events.append(ApplicationDataReceived(payload, peer=self.peer))
        return False

    def _handle_handshake_payload(self, payload: bytes, *, old_epoch: bool) -> bool:
        duplicate = False
        for fragment in parse_handshake_fragments(payload):
            # Only a repeat of the peer flight our last flight answered calls for a resend.
            repeat = fragment.message_seq < self._flight_answers_below
            if old_epoch:
                duplicate |= repeat
                continue
            self._prepare_reassembly(fragment)
            if self._reassembler.add(fragment) == "old":
                duplicate |= repeat
        while not self._machine.is_final():
            message = self._reassembler.pop()
            if message is None:
                break
            self._process_handshake(message.msg_type, message.message_seq, message.body)
        return duplicate

    def _prepare_reassembly(self, fragment: HandshakeFragment) -> None:
        """Hook for the server to align message_seq after a cookie exchange (the client has
        nothing to align)."""
        return None

    def _process_handshake(self, msg_type: int, message_seq: int, body: bytes) -> None:
        name = message_name(msg_type)
        trigger = f"recv_{name}"
        if not self._machine.accepts(trigger):
            raise UnexpectedMessage(f"{name} is not allowed in state {self.state}")
        message = decode_handshake_body(
            msg_type,
            body,
            psk=self._uses_psk(),
            raw_public_key=self._peer_sends_raw_public_key(),
            ecdhe_psk=self._uses_ecdhe_psk(),
        )
        self._trace("message_received", message=name, message_seq=message_seq, length=len(body))
        self._transcript_mark = len(self._transcript)
        if msg_type != HandshakeType.HELLO_REQUEST:  # RFC 5246 §7.4.1.1: not hashed
            self._transcript += encode_handshake(msg_type, message_seq, body)
        self._fire(trigger, message)
        self._after_transition()

    def _handle_change_cipher_spec(self) -> None:
        trigger = "recv_ChangeCipherSpec"
        if self._machine.accepts(trigger):
            self._trace("message_received", message="ChangeCipherSpec")
            self._fire(trigger, None)
            self._after_transition()
            return
        if self._machine.rules.early_change_cipher_spec == "hold":
            # DTLS may reorder a ChangeCipherSpec ahead of the handshake messages before it
            # (it has no message_seq), and a retransmitted flight repeats it (RFC 6347 §4.2.4):
            # hold one; keys are only switched when the machine accepts it.
            self._ccs_held = True
            return
        raise UnexpectedMessage(f"ChangeCipherSpec is not allowed in state {self.state}")

    def _handle_alert(self, payload: bytes) -> None:
        alert = decode_alert(payload)
        try:
            description = AlertDescription(alert.description)
        except ValueError:
            description = AlertDescription.INTERNAL_ERROR
        self._trace("alert_received", level=alert.level, description=alert.description)
        if description == AlertDescription.CLOSE_NOTIFY:
            self._fire_safely("peer_closed")
            self._timer_deadline = None  # nothing is retransmitted after the end
        elif alert.level == AlertLevel.FATAL:
            self._peer_alert = description
            self._fire_safely("peer_failed")
            self._timer_deadline = None
        else:
            self._events.append(AlertReceived(description, peer=self.peer))

    def _after_transition(self) -> None:
        """Apply a held ChangeCipherSpec once the machine can take it; manage the timer."""
        if self._ccs_held and self._machine.accepts("recv_ChangeCipherSpec"):
            self._ccs_held = False
            self._fire("recv_ChangeCipherSpec", None)
        if self._machine.flight_kind() != "await":
            self._timer_deadline = None

    # ------------------------------------------------------------------ machine plumbing
    def _fire(self, trigger: str, message: Payload) -> None:
        before = self.state
        self._machine.fire(trigger, message)
        if before != self.state:
            self._trace("state", source=before, dest=self.state, trigger=trigger)

    def _fire_safely(self, trigger: str) -> None:
        """Fire a local event; a failure inside it still ends the connection cleanly."""
        try:
            before = self.state
            self._machine.fire_local(trigger, None)
            self._trace("state", source=before, dest=self.state, trigger=trigger)
        except ProtocolError as exc:
            self._fail(exc)
        except Exception as exc:
            self._internal_error(exc)

    def _internal_error(self, exc: Exception) -> None:
        """A bug, not the peer: count and log it, then end with internal_error (RFC 5246
        §7.2.2), or let it propagate when :attr:`raise_internal_errors` is set (tests)."""
        self.stats["internal_errors"] += 1
        log.error(
            "internal error in %s (peer %s, state %s): %s: %s",
            self.ROLE,
            self.peer,
            self.state,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        if self.raise_internal_errors:
            raise exc
        self._internal = f"{type(exc).__name__}: {exc}"
        self._fail(ProtocolError(f"internal error: {self._internal}"))

    def _fail(self, error: ProtocolError) -> None:
        """End the connection with a fatal alert for ``error`` (RFC 5246 §7.2.2)."""
        if self._machine.is_final():
            return
        # A failure in the middle of building a flight drops that flight: the alert goes alone.
        self._building_flight = None
        self._error = error
        self._trace("error", reason=error.reason, alert=error.alert.name.lower())
        # abort exists from every non-final state (the spec loader expands "*"); the machine
        # is in "failed" before the action that sends the alert runs.
        self._machine.fire_local("abort", None)
        self._timer_deadline = None

    def _uses_psk(self) -> bool:
        return self.cipher_suite in PSK_SUITES

    def _uses_ecdhe_psk(self) -> bool:
        """An ECDHE_PSK suite was negotiated (RFC 5489 §2)."""
        return self.cipher_suite in ECDHE_PSK_SUITES

    def _peer_sends_raw_public_key(self) -> bool:
        """True when the peer's Certificate carries a raw public key (RFC 7250 §4.2)."""
        return False

    # ------------------------------------------------------------------ the handler table
    @abstractmethod
    def _handlers(self) -> Handlers[Payload]:
        """The engine's handlers by spec name (checked against the spec by the machine)."""

    def _table_with(
        self,
        guards: dict[str, Callable[[Payload], bool]],
        actions: dict[str, Callable[[Payload], None]],
        builders: dict[str, Callable[[], None]],
    ) -> Handlers[Payload]:
        """``guards``, ``actions`` and ``builders`` of a role plus the ones both roles share."""
        shared_actions: dict[str, Callable[[Payload], None]] = {
            "activate_read_epoch": ignoring(self._activate_read_epoch),
            "verify_peer_finished": expecting(Finished, self._verify_peer_finished),
            "send_fatal_alert": ignoring(self._send_fatal_alert),
            "report_closed": ignoring(self._report_closed),
            "report_peer_closed": ignoring(self._report_peer_closed),
            "report_peer_alert": ignoring(self._report_peer_alert),
            "report_timeout": ignoring(self._report_timeout),
        }
        shared_builders: dict[str, Callable[[], None]] = {
            "ChangeCipherSpec": self._build_change_cipher_spec,
            "Finished": self._build_finished,
            "CloseNotify": self._build_close_notify,
        }
        return Handlers(
            guards=guards,
            actions={**shared_actions, **actions},
            builders={**shared_builders, **builders},
            hold=self._hold,
            emit=self._emit,
        )

    # ------------------------------------------------------------------ flights
    def _hold(self, messages: tuple[str, ...]) -> None:
        """Build ``messages`` now and keep them for the next flight (spec ``builds``)."""
        for name in messages:
            self._building_flight = []
            self._table.builders[name]()
            self._held[name], self._building_flight = self._building_flight, None

    def _emit(self, messages: tuple[str, ...]) -> None:
        """Build ``messages`` in order (taking those built ahead) and send them as one flight
        (RFC 6347 §4.2.4)."""
        self._building_flight = []
        for name in messages:
            held = self._held.pop(name, None)
            if held is not None:
                self._building_flight.extend(held)
            else:
                self._table.builders[name]()
        self._held.clear()
        items, self._building_flight = self._building_flight, None
        handshake_items = [i for i in items if i.content_type != ContentType.ALERT]
        if handshake_items:
            self._flight = handshake_items
            self._flight_answers_below = self._reassembler.next_seq
            self._retransmissions = 0
            self._timeout = self._timers.initial
        self._transmit_flight(items)
        if handshake_items and self._machine.flight_kind() == "await":
            self.stats["round_trips"] += 1
            self._timer_deadline = self._now + self._timeout
        else:
            self._timer_deadline = None

    def _queue(self, item: FlightItem) -> None:
        if self._building_flight is None:
            self._transmit_flight([item])
        else:
            self._building_flight.append(item)

    def _queue_handshake(self, message: HandshakeMessage) -> FlightItem:
        """Assign a message_seq, add to the transcript and queue (RFC 6347 §4.2.2)."""
        body = message.encode()
        item = FlightItem(
            ContentType.HANDSHAKE,
            self._write_epoch,
            body,
            msg_type=int(message.msg_type),
            message_seq=self._send_seq,
        )
        self._send_seq += 1
        if message.msg_type != HandshakeType.HELLO_VERIFY_REQUEST:
            self._transcript += encode_handshake(item.msg_type, item.message_seq, body)
        self._trace(
            "message_sent", message=message_name(item.msg_type), message_seq=item.message_seq
        )
        self._queue(item)
        return item

    def _build_change_cipher_spec(self) -> None:
        """Queue ChangeCipherSpec and switch the write epoch (RFC 5246 §7.1)."""
        if self._pending_write is None:
            raise ProtocolError("ChangeCipherSpec without negotiated keys")
        self._queue(
            FlightItem(ContentType.CHANGE_CIPHER_SPEC, self._write_epoch, CHANGE_CIPHER_SPEC_BODY)
        )
        self._trace("message_sent", message="ChangeCipherSpec")
        self._writes[self._pending_write.epoch] = self._pending_write
        self._write_epoch = self._pending_write.epoch
        self._pending_write = None

    def _build_finished(self) -> None:
        """Queue our Finished over the transcript so far (RFC 5246 §7.4.9)."""
        label = b"client finished" if self.IS_CLIENT else b"server finished"
        data = keyschedule.verify_data(
            bytes(self._master), label, keyschedule.transcript_hash(bytes(self._transcript))
        )
        self._queue_handshake(Finished(data))

    def _build_close_notify(self) -> None:
        """Queue a close_notify warning alert (RFC 5246 §7.2.1)."""
        self._queue_alert(AlertLevel.WARNING, AlertDescription.CLOSE_NOTIFY)

    def _queue_alert(self, level: AlertLevel, description: AlertDescription) -> None:
        payload = encode_alert(int(level), int(description))
        self._queue(FlightItem(ContentType.ALERT, self._write_epoch, payload))

    def _activate_read_epoch(self) -> None:
        """Switch the read side to the next epoch and replay records that waited for it."""
        if self._pending_read is None:
            raise UnexpectedMessage("ChangeCipherSpec before keys were negotiated")
        self._old_reads[self._read.epoch] = self._read
        self._read = self._pending_read
        self._pending_read = None
        waiting, self._future_records = self._future_records, []
        for record in waiting:
            if self._machine.is_final():
                break
            self._handle_record(record)

    def _verify_peer_finished(self, finished: Finished) -> None:
        """Check the peer's verify_data over the transcript before it (RFC 5246 §7.4.9)."""
        label = b"server finished" if self.IS_CLIENT else b"client finished"
        expected = keyschedule.verify_data(
            bytes(self._master),
            label,
            keyschedule.transcript_hash(bytes(self._transcript[: self._transcript_mark])),
        )
        if not hmac.compare_digest(expected, finished.verify_data):
            raise ProtocolError("Finished verify_data mismatch", AlertDescription.DECRYPT_ERROR)

    def _send_fatal_alert(self) -> None:
        """Action of ``abort``: send the fatal alert for the recorded error."""
        error = self._error or ProtocolError("aborted")
        # With no record sequence number left for the alert (RFC 6347 §4.1) it ends silently.
        with contextlib.suppress(ProtocolError):
            self._queue_alert(AlertLevel.FATAL, error.alert)
        if self._internal is not None:
            self._events.append(
                InternalError(
                    error.reason,
                    error.alert,
                    by_peer=False,
                    error=True,
                    peer=self.peer,
                    exception=self._internal,
                )
            )
        else:
            self._events.append(
                ConnectionTerminated(
                    error.reason, error.alert, by_peer=False, error=True, peer=self.peer
                )
            )
        self._wipe()

    def _report_closed(self) -> None:
        self._events.append(
            ConnectionTerminated(
                "closed", AlertDescription.CLOSE_NOTIFY, by_peer=False, error=False, peer=self.peer
            )
        )
        self._wipe()

    def _report_peer_closed(self) -> None:
        self._events.append(
            ConnectionTerminated(
                "closed by peer",
                AlertDescription.CLOSE_NOTIFY,
                by_peer=True,
                error=False,
                peer=self.peer,
            )
        )
        self._wipe()

    def _report_peer_alert(self) -> None:
        alert = self._peer_alert or AlertDescription.INTERNAL_ERROR
        self._events.append(
            ConnectionTerminated(
                f"peer sent fatal alert {alert.name.lower()}",
                alert,
                by_peer=True,
                error=True,
                peer=self.peer,
            )
        )
        self._wipe()

    def _report_timeout(self) -> None:
        self._events.append(
            ConnectionTerminated(
                "handshake timed out (retransmissions exhausted)",
                None,
                by_peer=False,
                error=True,
                peer=self.peer,
            )
        )
        self._wipe()

    # ------------------------------------------------------------------ keys
    def _install_keys(self) -> None:
        """Derive the next epoch's keys from the master secret (RFC 5246 §6.3)."""
        assert self.cipher_suite is not None
        keys = keyschedule.key_block(
            bytes(self._master), self.client_random, self.server_random, self.cipher_suite
        )
        epoch = self._write_epoch + 1
        client = AEADProtection(self.cipher_suite, keys.client_write_key, keys.client_write_iv)
        server = AEADProtection(self.cipher_suite, keys.server_write_key, keys.server_write_iv)
        mine, theirs = (client, server) if self.IS_CLIENT else (server, client)
        self._pending_write = EpochState(epoch=epoch, protection=mine)
        self._pending_read = EpochState(epoch=self._read.epoch + 1, protection=theirs)
        if self._keylog is not None:
            self._keylog(keylog_line(self.client_random, bytes(self._master)))

    def _wipe(self) -> None:
        """Overwrite the master secret we hold (best effort in Python)."""
        for i in range(len(self._master)):
            self._master[i] = 0

    # ------------------------------------------------------------------ output
    def _transmit_flight(self, items: list[FlightItem]) -> None:
        """Pack a flight into datagrams no larger than the MTU (RFC 6347 §4.1.1)."""
        datagram = bytearray()
        for record in self._records_for(items):
            if datagram and len(datagram) + len(record) > self._mtu:
                self._outgoing.append(bytes(datagram))
                datagram = bytearray()
            datagram += record
        if datagram:
            self._outgoing.append(bytes(datagram))

    def _records_for(self, items: list[FlightItem]) -> list[bytes]:
        records: list[bytes] = []
        for item in items:
            write = self._writes[item.epoch]
            if item.content_type != ContentType.HANDSHAKE:
                records.append(protect(write, item.content_type, item.payload))
                continue
            room = self._mtu - AEAD_OVERHEAD - HANDSHAKE_HEADER_LEN
            room = max(16, min(room, MAX_PLAINTEXT - HANDSHAKE_HEADER_LEN))
            for fragment in fragment_message(item.msg_type, item.message_seq, item.payload, room):
                records.append(protect(write, ContentType.HANDSHAKE, encode_fragment(fragment)))
        return records

    def _retransmit_on_duplicate(self) -> None:
        """The peer repeated a flight we already answered: resend ours (RFC 6347 §4.2.4)."""
        if not self._flight or self._machine.flight_kind() == "none":
            return
        if self._now - self._last_duplicate_response < self._timers.initial / 4:
            return
        self._last_duplicate_response = self._now
        self.stats["retransmissions"] += 1
        self._trace("retransmit", reason="peer repeated its flight")
        self._transmit_flight(self._flight)

    def _trace(self, kind: str, **fields: Any) -> None:
        if self._tracer is not None:
            self._tracer({"t": self._now, "role": self.ROLE, "event": kind, **fields})
