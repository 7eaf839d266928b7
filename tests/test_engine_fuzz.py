"""Hostile datagrams against the sans-IO engines (RFC 6347 §4.1.2.7: "invalid records SHOULD be
silently discarded").

Inputs are arbitrary bytes, real datagrams captured from a simulated handshake with bytes
flipped, truncated or spliced, and structurally valid records with random contents. They are
fed to a client in every state a real handshake passes through between datagrams, and to the
server before, during and after a handshake. ``receive_datagram`` must never raise.

What happens to garbage (documented behaviour, checked below):

* Records that do not authenticate — any record of a protected epoch without the keys, a record
  of an epoch not currently readable, an unparseable record header — are dropped silently and
  counted in ``stats["records_discarded"]``; state, events and timers are untouched, and the
  honest handshake then completes.
* Plaintext (epoch 0) records cannot be authenticated. While epoch 0 is the read epoch they are
  processed: a handshake fragment that is malformed, or a message the state machine does not
  expect in the current state, ends the connection with a fatal alert (decode_error,
  illegal_parameter, unexpected_message, ...); a forged alert ends it (fatal) or is reported
  (warning); a fragment of a message not yet due is buffered. The connection then either
  completes or ends with exactly one ConnectionTerminated event: it never hangs or raises.
  Once the peer's epoch 1 is active, epoch-0 records only serve to detect retransmissions and
  are never fatal.
* An engine bug is never an acceptable outcome: tests run the engines strict
  (``Connection.raise_internal_errors``, set in tests/conftest.py), so an exception the engine
  would turn into an internal_error termination in production propagates and fails the test;
  an :class:`~d2tls.core.dtls.events.InternalError` event fails it as well.
"""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import (
    CLIENT_ADDRESS,
    SERVER_ADDRESS,
    LoadedPKI,
    Run,
    client_config,
    server_config,
)
from d2tls.core.dtls.connection import Connection
from d2tls.core.dtls.constants import (
    DTLS_1_0,
    DTLS_1_2,
    AlertDescription,
    ContentType,
    HandshakeType,
)
from d2tls.core.dtls.events import (
    ConnectionTerminated,
    Event,
    HandshakeCompleted,
    InternalError,
    SignatureRequested,
)
from d2tls.core.dtls.fragments import HandshakeFragment, encode_fragment
from d2tls.core.dtls.record import Record, encode_record, parse_datagram
from d2tls.core.dtls.server import ServerConnection

MTU = 256  # small flights: more datagrams, so more states between them
#: Deterministic by default; D2TLS_FUZZ_EXAMPLES=N runs N random examples per test instead.
_EXAMPLES = os.environ.get("D2TLS_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(_EXAMPLES) if _EXAMPLES else 50,
    deadline=None,
    derandomize=not _EXAMPLES,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: States a client passes through between two datagrams of a real handshake at MTU 256.
CLIENT_STATES = [
    "start",
    "wait_server_hello",
    "wait_certificate",
    "wait_server_key_exchange",
    "wait_signature",
    "wait_change_cipher_spec",
    "established",
    "closed",
]
#: States of the server's connection between datagrams ("none": no connection yet).
SERVER_STATES = ["none", "wait_certificate", "wait_certificate_verify", "established"]


# --------------------------------------------------------------------------- real traffic


class Captured(list[bytes]):
    """Real datagrams (a short repr for reports)."""

    def __repr__(self) -> str:
        return f"<{len(self)} captured datagrams>"


@pytest.fixture(scope="module")
def captured(pki: LoadedPKI) -> list[bytes]:
    """Every datagram of a full handshake, application data and close, both directions."""
    run = Run(server_config(pki, mtu=MTU), client_config(pki, mtu=MTU))
    run.handshake()
    assert run.both_established()
    run.send_to_server(b"telemetry")
    run.send_to_client(b"command")
    run.client.close()
    run.settle()
    datagrams = Captured(d for _, _, d in run.sim.delivered)
    assert len(datagrams) >= 10
    return datagrams


def sign_requests(run: Run, pki: LoadedPKI) -> None:
    """Answer a SignatureRequested event as the device's signer would."""
    for event in run.client_events:
        if isinstance(event, SignatureRequested) and run.client.state == "wait_signature":
            signature = pki.device.key.sign(event.transcript, ec.ECDSA(hashes.SHA256()))
            run.client.provide_signature(signature, run.sim.now)
            run.sim.flush()


def client_at(pki: LoadedPKI, state: str) -> Run:
    """A fresh client/server pair stepped until the client is in ``state``."""
    external = state == "wait_signature"
    run = Run(
        server_config(pki, mtu=MTU),
        client_config(pki, mtu=MTU, private_key=None if external else pki.device.key),
    )
    if state == "start":
        return run
    run.sim.connect(CLIENT_ADDRESS)
    if state == "closed":
        run.run(run.both_established)
        run.client.close()
        run.sim.flush()
    while run.client.state != state:
        assert run.sim.step(), f"client never reached {state}"
    return run


def server_at(pki: LoadedPKI, state: str) -> Run:
    """A fresh pair stepped until the server's connection is in ``state``."""
    run = Run(server_config(pki, mtu=MTU), client_config(pki, mtu=MTU))
    if state == "none":
        return run
    run.sim.connect(CLIENT_ADDRESS)
    while (conn := run.server.connection(CLIENT_ADDRESS)) is None or conn.state != state:
        assert run.sim.step(), f"server never reached {state}"
    return run


def finish(run: Run, pki: LoadedPKI) -> None:
    """Let the honest peers go on until the handshake completes or something ends it."""
    if run.client.state == "start":
        run.sim.connect(CLIENT_ADDRESS)
    for _ in range(3):
        run.run(lambda: run.both_established() or run.any_terminated() or wants_signature(run))
        sign_requests(run, pki)
    run.settle()


def wants_signature(run: Run) -> bool:
    return run.client.state == "wait_signature"


# --------------------------------------------------------------------------- strategies


def _mutate(base: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    data = bytearray(base)
    for position, mask in flips:
        if data:
            data[position % len(data)] ^= mask
    return bytes(data[:cut] if cut is not None else data)


def hostile_datagram(data: st.DataObject, captured: list[bytes]) -> bytes:
    """One hostile datagram: random bytes, a mutated real datagram, a splice of two real ones,
    or a well-formed record with random contents."""
    kind = data.draw(st.sampled_from(["random", "mutated", "spliced", "record"]), label="kind")
    if kind == "random":
        return data.draw(st.binary(max_size=300), label="bytes")
    if kind == "mutated":
        base = data.draw(st.sampled_from(captured), label="base")
        flips = data.draw(
            st.lists(st.tuples(st.integers(0, 1500), st.integers(1, 255)), max_size=4),
            label="flips",
        )
        cut = data.draw(st.none() | st.integers(0, len(base)), label="cut")
        return _mutate(base, flips, cut)
    if kind == "spliced":
        first = data.draw(st.sampled_from(captured), label="first")
        second = data.draw(st.sampled_from(captured), label="second")
        at = data.draw(st.integers(0, len(first)), label="at")
        return first[:at] + second[at:]
    content = data.draw(st.sampled_from([int(t) for t in ContentType] + [0, 99]), label="type")
    version = data.draw(st.sampled_from([DTLS_1_2, DTLS_1_0, 0x0303, 0]), label="version")
    epoch = data.draw(st.sampled_from([0, 0, 1, 2, 0xFFFF]), label="epoch")
    seq = data.draw(st.sampled_from([0, 1, 5, 2**40]) | st.integers(0, 2**48 - 1), label="seq")
    if content == ContentType.HANDSHAKE and data.draw(st.booleans(), label="as fragment"):
        msg_type = data.draw(st.sampled_from([int(t) for t in HandshakeType] + [99]), label="mt")
        body = data.draw(st.binary(max_size=120), label="body")
        length = len(body) + data.draw(st.integers(0, 40), label="extra")
        offset = data.draw(st.integers(0, length - len(body)), label="offset")
        message_seq = data.draw(st.integers(0, 9), label="message_seq")
        payload = encode_fragment(
            HandshakeFragment(msg_type, length, message_seq, offset, len(body), body)
        )
    else:
        payload = data.draw(st.binary(max_size=80), label="payload")
    if content not in {int(t) for t in ContentType}:
        return bytes([content]) + encode_record(Record(22, version, epoch, seq, payload))[1:]
    return encode_record(Record(content, version, epoch, seq, payload))


def plaintext_records(datagram: bytes) -> list[Record]:
    """Records of the datagram that the engine reads without authentication (epoch 0)."""
    records, _ = parse_datagram(datagram)
    return [r for r in records if r.epoch == 0 and r.version in (DTLS_1_2, DTLS_1_0)]


def terminations(
    events: list[Event], peer: tuple[str, int] | None = None
) -> list[ConnectionTerminated]:
    """ConnectionTerminated events (of one peer's connection, for a server)."""
    return [
        e
        for e in events
        if isinstance(e, ConnectionTerminated) and (peer is None or e.peer == peer)
    ]


def check_outcome(run: Run, client_reads_plaintext: bool, garbage: list[bytes]) -> None:
    """After the garbage and the rest of the honest exchange: completed, or exactly one
    ConnectionTerminated at the client (never a hang, never a second end, never a bug)."""
    bugs = [e for e in run.client_events + run.server_events if isinstance(e, InternalError)]
    assert not bugs, bugs
    assert run.server.counters().internal_errors == 0
    assert run.client.stats["internal_errors"] == 0
    ends = terminations(run.client_events)
    assert len(ends) <= 1, ends
    if not any(plaintext_records(d) for d in garbage) or not client_reads_plaintext:
        # Nothing the client could read without keys: it was all dropped.
        assert run.both_established(), (run.client_events, run.server_events)
        return
    if ends:
        assert run.client.is_closed
    else:
        assert run.both_established(), (run.client_events, run.server_events)


# --------------------------------------------------------------------------- client


@pytest.mark.parametrize("state", CLIENT_STATES)
@FUZZ
@given(data=st.data())
def test_client_survives_hostile_datagrams_in_every_state(
    pki: LoadedPKI, captured: list[bytes], state: str, data: st.DataObject
) -> None:
    """RFC 6347 §4.1.2.7: ``receive_datagram`` never raises; unauthenticated garbage is dropped
    without any effect, plaintext garbage at worst ends the handshake with an alert."""
    run = client_at(pki, state)
    client = run.client
    garbage = [hostile_datagram(data, captured) for _ in range(data.draw(st.integers(1, 3)))]
    # Until the server's ChangeCipherSpec the client's read epoch is 0 (plaintext).
    reads_plaintext = state not in {"established", "closed"}
    before = (client.state, len(run.client_events), client.next_timer())
    discarded = client.stats["records_discarded"]
    for datagram in garbage:
        client.receive_datagram(datagram, SERVER_ADDRESS, run.sim.now)
    if state == "closed":
        assert (client.state, len(run.client_events)) == before[:2]
        assert client.datagrams_to_send(run.sim.now) == []
        return
    has_plaintext = any(plaintext_records(d) for d in garbage)
    if not (reads_plaintext and has_plaintext):
        assert (client.state, len(run.client_events), client.next_timer()) == before
        assert client.next_event() is None
        if state == "established" and any(garbage) and not has_plaintext:
            assert client.stats["records_discarded"] > discarded
    run.sim.flush()
    finish(run, pki)
    check_outcome(run, reads_plaintext, garbage)
    if not (reads_plaintext and has_plaintext):
        assert run.both_established()


@pytest.mark.parametrize("state", CLIENT_STATES[2:7])
def test_datagrams_of_another_association_never_disturb_an_established_client(
    pki: LoadedPKI, captured: list[bytes], state: str
) -> None:
    """Datagrams of another association never raise. During the handshake they are plaintext
    the client may act on (and then fail once); once established, they have no effect: its
    epoch-1 records do not authenticate and epoch-0 ones only look like retransmissions."""
    run = client_at(pki, state)
    for datagram in captured:
        run.client.receive_datagram(datagram, SERVER_ADDRESS, run.sim.now)
    assert len(terminations(run.client_events)) <= 1
    if state == "established":
        assert run.client.is_established and not terminations(run.client_events)


# --------------------------------------------------------------------------- server


@pytest.mark.parametrize("state", SERVER_STATES)
@FUZZ
@given(data=st.data())
def test_server_survives_hostile_datagrams_in_every_state(
    pki: LoadedPKI, captured: list[bytes], state: str, data: st.DataObject
) -> None:
    """``DTLSServer.receive_datagram`` never raises, keeps no state for garbage from unknown
    addresses (RFC 6347 §4.2.1) and drops what does not authenticate (RFC 6347 §4.1.2.7)."""
    run = server_at(pki, state)
    server = run.server
    garbage = [hostile_datagram(data, captured) for _ in range(data.draw(st.integers(1, 3)))]
    stranger = ("203.0.113.66", 666)
    for datagram in garbage:
        server.receive_datagram(datagram, stranger, run.sim.now)
    # A stranger never gets state: only a ClientHello with a valid cookie would create it.
    assert server.connection(stranger) is None
    for _reply, address in server.datagrams_to_send(run.sim.now):
        assert address == stranger
    before = run.server.connection(CLIENT_ADDRESS)
    for datagram in garbage:
        server.receive_datagram(datagram, CLIENT_ADDRESS, run.sim.now)
    run.sim.flush()
    if state == "established":
        # Epoch 0 is only read for retransmission detection now; nothing else authenticates.
        assert server.connection(CLIENT_ADDRESS) is before
        assert before is not None and before.is_established
        assert not terminations(run.server_events, CLIENT_ADDRESS)
    finish(run, pki)
    if not any(plaintext_records(d) for d in garbage):
        assert run.both_established(), (run.client_events, run.server_events)
        assert not terminations(run.server_events, CLIENT_ADDRESS)
    else:
        assert run.both_established() or run.any_terminated()


# --------------------------------------------------------------------------- specific cases


def forged(content: ContentType, payload: bytes, epoch: int = 0, seq: int = 1000) -> bytes:
    return encode_record(Record(content, DTLS_1_2, epoch, seq, payload))


MALFORMED_PLAINTEXT = {
    "truncated handshake header": forged(ContentType.HANDSHAKE, b"\x01"),
    "malformed ChangeCipherSpec": forged(ContentType.CHANGE_CIPHER_SPEC, b"\x02"),
    "handshake message far ahead": forged(
        ContentType.HANDSHAKE,
        encode_fragment(HandshakeFragment(HandshakeType.FINISHED, 12, 50, 0, 12, bytes(12))),
        seq=2**40,
    ),
    "plaintext fatal alert after the handshake": forged(ContentType.ALERT, b"\x02\x0a"),
    "truncated ClientHello": forged(
        ContentType.HANDSHAKE,
        encode_fragment(HandshakeFragment(HandshakeType.CLIENT_HELLO, 10, 0, 0, 10, bytes(10))),
    ),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_PLAINTEXT))
@pytest.mark.parametrize("side", ["client", "server"])
def test_plaintext_garbage_after_the_handshake_is_dropped(
    pki: LoadedPKI, name: str, side: str
) -> None:
    """RFC 6347 §4.1.2.7: once epoch 1 is active, a malformed or forged epoch-0 record (anyone can
    send one) is discarded; it used to end an established connection with decode_error. A
    malformed ClientHello is answered statelessly by the server without an event that would
    look like the end of the live association (RFC 6347 §4.2.8)."""
    run = Run(server_config(pki), client_config(pki))
    run.handshake()
    assert run.both_established()
    datagram = MALFORMED_PLAINTEXT[name]
    if side == "client":
        run.client.receive_datagram(datagram, SERVER_ADDRESS, run.sim.now)
    else:
        run.server.receive_datagram(datagram, CLIENT_ADDRESS, run.sim.now)
    run.settle()
    assert not run.any_terminated()
    run.send_to_server(b"still here")
    run.settle()
    assert run.received(run.server_events) == [b"still here"]


def test_forged_plaintext_record_cannot_poison_the_epoch0_replay_window(pki: LoadedPKI) -> None:
    """RFC 6347 §4.1.2.6 moves the replay window only for authenticated records; epoch 0 has no
    MAC. A forged epoch-0 record with sequence number 2^40 used to push the window past every
    genuine server record, so the handshake silently timed out."""
    run = Run(server_config(pki), client_config(pki))
    run.sim.connect(CLIENT_ADDRESS)
    run.client.receive_datagram(
        MALFORMED_PLAINTEXT["handshake message far ahead"], SERVER_ADDRESS, 0.0
    )
    run.run(lambda: run.both_established() or run.any_terminated())
    assert run.both_established()
    assert run.sim.now < 1.0


def test_handshake_garbage_in_the_handshake_ends_it_with_an_alert(pki: LoadedPKI) -> None:
    """Documented behaviour: a plaintext handshake message the machine does not expect in the
    current state (here a Finished while waiting for ServerHello) is a fatal unexpected_message,
    the peer is told, and both sides report it."""
    run = Run(server_config(pki), client_config(pki))
    run.sim.connect(CLIENT_ADDRESS)
    bogus = forged(
        ContentType.HANDSHAKE,
        encode_fragment(HandshakeFragment(HandshakeType.FINISHED, 12, 0, 0, 12, bytes(12))),
        seq=0,
    )
    run.client.receive_datagram(bogus, SERVER_ADDRESS, 0.0)
    ((alert, _),) = run.client.datagrams_to_send(0.0)
    (record,), _ = parse_datagram(alert)
    assert (record.content_type, record.epoch, record.fragment) == (
        ContentType.ALERT,
        0,
        b"\x02\x0a",
    )
    run.sim.flush()
    (end,) = terminations(run.client_events)
    assert end.reason == "Finished is not allowed in state wait_server_hello"
    assert (end.alert, end.by_peer) == (AlertDescription.UNEXPECTED_MESSAGE, False)
    assert not any(isinstance(e, HandshakeCompleted) for e in run.client_events)


def test_an_injected_engine_bug_fails_the_fuzz_checks(
    pki: LoadedPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fuzz tests can catch engine bugs: a crashing callback used to become a quiet
    "internal error" termination that ``check_outcome`` accepted as one ConnectionTerminated."""

    def crash(self: ServerConnection, message: object) -> None:
        raise RuntimeError("injected bug")

    monkeypatch.setattr(ServerConnection, "_process_client_key_exchange", crash)
    run = server_at(pki, "none")
    with pytest.raises(RuntimeError, match="injected bug"):  # strict: the bug propagates
        finish(run, pki)
    monkeypatch.setattr(Connection, "raise_internal_errors", False)
    run = server_at(pki, "none")
    finish(run, pki)  # production: caught, alert sent, counted, but still a failed check
    with pytest.raises(AssertionError, match="InternalError"):
        check_outcome(run, True, [])
