"""End-to-end DTLS 1.2 handshakes of the sans-IO engines in the simulated network.

Every test runs a :class:`d2tls.DTLSClient` against a :class:`d2tls.DTLSServer` through
:class:`d2tls.sim.Simulation` on a virtual clock (no sockets, seeded impairments). The
adversary tests rewrite datagrams with the ``tap`` hook using the record, fragment and message
codecs, so that every rejection is made by the engines' state machines and checks.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import (
    CLIENT_ADDRESS,
    SERVER_ADDRESS,
    SERVER_NAME,
    LoadedPKI,
    Run,
    client_config,
    psk_client_config,
    psk_server_config,
    server_config,
)
from d2tls.core.dtls.config import TimerConfig
from d2tls.core.dtls.connection import InvalidStateError
from d2tls.core.dtls.constants import (
    COMPRESSION_NULL,
    DTLS_1_2,
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
    HandshakeCompleted,
    SignatureRequested,
)
from d2tls.core.dtls.fragments import (
    HandshakeFragment,
    encode_fragment,
    fragment_message,
    parse_handshake_fragments,
)
from d2tls.core.dtls.messages import (
    ClientHello,
    HelloRequest,
    HelloVerifyRequest,
    decode_alert,
    extended_master_secret_extension,
    renegotiation_info_extension,
)
from d2tls.core.dtls.record import Record, encode_record, parse_datagram, protect
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.dtls.session import Session
from d2tls.sim import Impairments

CCM8 = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
GCM = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
PSK_CCM8 = CipherSuite.TLS_PSK_WITH_AES_128_CCM_8

Address = tuple[str, int]


# --------------------------------------------------------------------------- helpers


def epoch0_fragments(datagram: bytes) -> list[HandshakeFragment]:
    """The plaintext handshake fragments of a datagram."""
    records, _ = parse_datagram(datagram)
    out: list[HandshakeFragment] = []
    for record in records:
        if record.content_type == ContentType.HANDSHAKE and record.epoch == 0:
            out.extend(parse_handshake_fragments(record.fragment))
    return out


def rewrite_epoch0_handshake(
    datagram: bytes, change: Callable[[HandshakeFragment], HandshakeFragment]
) -> bytes:
    """Re-encode every plaintext handshake record of ``datagram`` with ``change`` applied to
    each of its fragments; other records are kept byte for byte."""
    records, _ = parse_datagram(datagram)
    out = bytearray()
    for record in records:
        if record.content_type == ContentType.HANDSHAKE and record.epoch == 0:
            payload = b"".join(
                encode_fragment(change(f)) for f in parse_handshake_fragments(record.fragment)
            )
            record = Record(record.content_type, record.version, 0, record.sequence_number, payload)
        out += encode_record(record)
    return bytes(out)


def client_hellos(datagram: bytes) -> list[ClientHello]:
    return [
        ClientHello.decode(f.body)
        for f in epoch0_fragments(datagram)
        if f.msg_type == HandshakeType.CLIENT_HELLO
    ]


def replace_client_hello(datagram: bytes, change: Callable[[ClientHello], ClientHello]) -> bytes:
    """Re-encode the (unfragmented) ClientHello of ``datagram`` after ``change``."""

    def rewrite(fragment: HandshakeFragment) -> HandshakeFragment:
        if fragment.msg_type != HandshakeType.CLIENT_HELLO:
            return fragment
        body = change(ClientHello.decode(fragment.body)).encode()
        return HandshakeFragment(
            fragment.msg_type, len(body), fragment.message_seq, 0, len(body), body
        )

    return rewrite_epoch0_handshake(datagram, rewrite)


def alerts_in(datagram: bytes) -> list[tuple[int, int]]:
    """(level, description) of the plaintext alerts of a datagram."""
    records, _ = parse_datagram(datagram)
    return [
        (a.level, a.description)
        for a in (
            decode_alert(r.fragment)
            for r in records
            if r.content_type == ContentType.ALERT and r.epoch == 0
        )
    ]


def only(events: list[ConnectionTerminated]) -> ConnectionTerminated:
    assert len(events) == 1, events
    return events[0]


def assert_established(run: Run) -> tuple[HandshakeCompleted, HandshakeCompleted]:
    assert run.both_established(), (run.client_events, run.server_events)
    client_done = only_completed(run.client_events)
    server_done = only_completed(run.server_events)
    assert client_done.session.session_id == server_done.session.session_id
    assert client_done.cipher_suite == server_done.cipher_suite
    assert client_done.resumed == server_done.resumed
    assert not run.terminated(run.client_events)
    assert not run.terminated(run.server_events)
    return client_done, server_done


def only_completed(events: list[object]) -> HandshakeCompleted:
    done = [e for e in events if isinstance(e, HandshakeCompleted)]
    assert len(done) == 1, events
    return done[0]


def exchange_application_data(run: Run, tag: bytes = b"") -> None:
    """RFC 5246 §6.2: application data flows both ways once the handshake is complete."""
    before_server = len(run.received(run.server_events))
    before_client = len(run.received(run.client_events))
    run.send_to_server(b"ping from the device" + tag)
    run.send_to_client(b"pong from the cloud" + tag)
    run.settle()
    assert run.received(run.server_events)[before_server:] == [b"ping from the device" + tag]
    assert run.received(run.client_events)[before_client:] == [b"pong from the cloud" + tag]


def assert_failed_with(
    run: Run, *, sender: str, alert: AlertDescription, during_handshake: bool = True
) -> tuple[ConnectionTerminated, ConnectionTerminated]:
    """The ``sender`` side aborted with a fatal ``alert`` and the other side received it."""
    run.settle(2.0)
    client_end = only(run.terminated(run.client_events))
    server_end = only(run.terminated(run.server_events))
    local, remote = (client_end, server_end) if sender == "client" else (server_end, client_end)
    assert (local.alert, local.by_peer, local.error) == (alert, False, True), local
    assert (remote.alert, remote.by_peer, remote.error) == (alert, True, True), remote
    assert remote.reason == f"peer sent fatal alert {alert.name.lower()}"
    if during_handshake:
        assert not run.completed(run.client_events)
        assert not run.completed(run.server_events)
        # The alert travelled in the clear (epoch 0) from the side that failed.
        source = run.address if sender == "client" else SERVER_ADDRESS
        sent = [a for s, _, d in run.sim.delivered if s == source for a in alerts_in(d)]
        assert (AlertLevel.FATAL, alert) in sent
    assert not run.client.is_established and run.client.is_closed
    return local, remote


def first_session(pki: LoadedPKI, server: DTLSServer, **client_overrides: object) -> Session:
    """Run a full handshake on ``server`` and return the client's resumable session."""
    run = Run(server.config, client_config(pki, **client_overrides), server=server)
    run.handshake()
    client_done, _ = assert_established(run)
    run.client.close()
    run.settle()
    return client_done.session


# --------------------------------------------------------------------------- full handshakes


@pytest.mark.parametrize("suite", [CCM8, GCM], ids=["CCM_8", "GCM_SHA256"])
def test_full_ecdhe_ecdsa_handshake_with_required_client_certificate(
    pki: LoadedPKI, suite: CipherSuite
) -> None:
    """RFC 5246 §7.3 Figure 1 with RFC 6347 §4.2.1 cookie exchange, RFC 8422 ECDHE_ECDSA and
    a required client certificate (§7.4.4, §7.4.6, §7.4.8); EMS is negotiated (RFC 7627)."""
    run = Run(
        server_config(pki, cipher_suites=(suite,)),
        client_config(pki, cipher_suites=(CCM8, GCM) if suite == GCM else (suite,)),
    )
    run.handshake()
    client_done, server_done = assert_established(run)
    assert client_done.cipher_suite == suite
    assert not client_done.resumed
    assert client_done.extended_master_secret and server_done.extended_master_secret
    assert len(client_done.session.session_id) == 32
    assert server_done.peer == CLIENT_ADDRESS
    connection = run.server.connection(CLIENT_ADDRESS)
    assert connection is not None
    assert connection.peer_certificates == pki.device.chain
    assert connection.peer_subject() == "CN=device-1,O=d2tls"
    assert run.client.peer_certificates == pki.server.chain
    exchange_application_data(run)


def test_psk_handshake_with_ccm8() -> None:
    """RFC 4279 §2 (TLS_PSK_WITH_AES_128_CCM_8, RFC 6655): no certificates, no ServerKeyExchange
    without a hint; application data flows both ways."""
    run = Run(psk_server_config(), psk_client_config())
    run.handshake()
    client_done, server_done = assert_established(run)
    assert client_done.cipher_suite == PSK_CCM8
    assert server_done.session.psk_identity == b"device-1"
    assert run.client.peer_certificates == ()
    exchange_application_data(run)


def test_psk_handshake_with_unknown_identity_fails_with_unknown_psk_identity() -> None:
    """RFC 4279 §2: a server that does not know the identity sends unknown_psk_identity."""
    run = Run(psk_server_config(), psk_client_config(psk_identity=b"stranger"))
    run.handshake()
    assert_failed_with(run, sender="server", alert=AlertDescription.UNKNOWN_PSK_IDENTITY)


def test_close_notify_ends_both_sides_cleanly(pki: LoadedPKI) -> None:
    """RFC 5246 §7.2.1: close_notify is answered with close_notify; nothing is an error and the
    server forgets the association."""
    run = Run(server_config(pki), client_config(pki))
    run.handshake()
    assert_established(run)
    run.client.close()
    run.settle()
    client_end = only(run.terminated(run.client_events))
    server_end = only(run.terminated(run.server_events))
    assert (client_end.reason, client_end.by_peer, client_end.error) == ("closed", False, False)
    assert (server_end.reason, server_end.by_peer, server_end.error) == (
        "closed by peer",
        True,
        False,
    )
    assert client_end.alert == server_end.alert == AlertDescription.CLOSE_NOTIFY
    assert run.client.is_closed
    assert run.server.connection_count == 0
    with pytest.raises(InvalidStateError):
        run.client.send_application_data(b"too late")
    run.client.close()  # idempotent
    assert len(run.terminated(run.client_events)) == 1


def test_server_close_notify_is_answered_by_the_client(pki: LoadedPKI) -> None:
    """RFC 5246 §7.2.1, server side first."""
    run = Run(server_config(pki), client_config(pki))
    run.handshake()
    assert_established(run)
    run.server.close(CLIENT_ADDRESS)
    run.settle()
    assert only(run.terminated(run.server_events)).by_peer is False
    client_end = only(run.terminated(run.client_events))
    assert (client_end.by_peer, client_end.error) == (True, False)
    assert run.server.connection_count == 0


def test_key_log_lines_match_on_both_sides(pki: LoadedPKI) -> None:
    """NSS key log format: ``CLIENT_RANDOM <client_random> <master_secret>`` (RFC 5246 §8.1:
    the master secret is 48 bytes), identical at the client and the server."""
    client_lines: list[str] = []
    server_lines: list[str] = []
    run = Run(
        server_config(pki, keylog=server_lines.append),
        client_config(pki, keylog=client_lines.append),
    )
    run.handshake()
    assert_established(run)
    assert len(client_lines) == 1
    assert client_lines == server_lines
    match = re.fullmatch(r"CLIENT_RANDOM ([0-9a-f]{64}) ([0-9a-f]{96})", client_lines[0])
    assert match is not None
    assert bytes.fromhex(match.group(1)) == run.client.client_random
    assert match.group(2) != "0" * 96


# --------------------------------------------------------------------------- resumption


def test_resumption_with_session_id_gives_an_abbreviated_handshake(pki: LoadedPKI) -> None:
    """RFC 5246 §7.3 Figure 2: the server echoes the session ID and finishes first."""
    server = DTLSServer(server_config(pki))
    session = first_session(pki, server)
    run = Run(
        server.config,
        client_config(pki, session=session),
        server=server,
        address=("198.51.100.8", 50001),
    )
    trace: list[dict[str, object]] = []
    run.client._tracer = trace.append
    run.handshake()
    client_done, server_done = assert_established(run)
    assert client_done.resumed and server_done.resumed and run.client.resumed
    assert client_done.session.session_id == session.session_id
    assert client_done.cipher_suite == session.cipher_suite
    received = [e["message"] for e in trace if e["event"] == "message_received"]
    assert received == ["HelloVerifyRequest", "ServerHello", "ChangeCipherSpec", "Finished"]
    exchange_application_data(run, b" (resumed)")


def test_resume_only_with_an_unknown_session_is_refused(pki: LoadedPKI) -> None:
    """D2TLS resume-only mode: a ServerHello with a new session ID (RFC 5246 §7.4.1.3: the
    server did not find the session) ends the connection with reason resumption_refused."""
    unknown = Session(
        session_id=bytes(range(32)),
        master_secret=bytearray(48),
        cipher_suite=CCM8,
        extended_master_secret=True,
        server_name=SERVER_NAME,
    )
    run = Run(server_config(pki), client_config(pki, session=unknown, resume_only=True))
    run.handshake()
    run.settle()
    client_end = only(run.terminated(run.client_events))
    assert client_end.reason == "resumption_refused"
    assert client_end.alert == AlertDescription.HANDSHAKE_FAILURE
    assert not client_end.by_peer
    server_end = only(run.terminated(run.server_events))
    assert (server_end.alert, server_end.by_peer) == (AlertDescription.HANDSHAKE_FAILURE, True)
    assert not run.completed(run.client_events)


def test_resume_only_with_a_session_expired_at_the_server_is_refused(pki: LoadedPKI) -> None:
    """RFC 5246 §7.4.1.2: the server may forget sessions; a resume-only client then stops."""
    server = DTLSServer(server_config(pki))
    session = first_session(pki, server)
    stored = server.config.session_store.get(session.session_id)
    assert stored is not None
    stored.created_at -= stored.lifetime + 1  # expire it at the server only
    run = Run(server.config, client_config(pki, session=session, resume_only=True), server=server)
    run.handshake()
    assert only(run.terminated(run.client_events)).reason == "resumption_refused"


def test_resumption_falls_back_to_a_full_handshake_when_the_server_forgot(
    pki: LoadedPKI,
) -> None:
    """RFC 5246 §7.4.1.3: a ServerHello with a different session ID starts a full handshake."""
    server = DTLSServer(server_config(pki))
    session = first_session(pki, server)
    server.config.session_store.delete(session.session_id)
    run = Run(server.config, client_config(pki, session=session), server=server)
    run.handshake()
    client_done, _ = assert_established(run)
    assert not client_done.resumed
    assert client_done.session.session_id != session.session_id


def test_session_whose_suite_is_no_longer_offered_is_not_resumed(pki: LoadedPKI) -> None:
    """RFC 5246 §7.4.1.2: a ClientHello resuming a session "MUST include at least the
    cipher_suite from that session"; a client that changed its offer does a full handshake
    without offering the session."""
    server = DTLSServer(server_config(pki, cipher_suites=(CCM8, GCM)))
    session = first_session(pki, server, cipher_suites=(CCM8,))
    assert session.cipher_suite == CCM8
    hellos: list[ClientHello] = []

    def watch(source: Address, destination: Address, datagram: bytes) -> list[bytes]:
        if destination == SERVER_ADDRESS:
            hellos.extend(client_hellos(datagram))
        return [datagram]

    run = Run(
        server.config,
        client_config(pki, session=session, cipher_suites=(GCM,)),
        server=server,
        tap=watch,
    )
    run.handshake()
    client_done, _ = assert_established(run)
    assert not client_done.resumed
    assert client_done.cipher_suite == GCM
    assert [h.session_id for h in hellos] == [b"", b""]


def test_server_does_not_resume_a_session_whose_suite_it_no_longer_accepts(
    pki: LoadedPKI,
) -> None:
    """RFC 5246 §7.4.1.3: the server resumes only with the session's own cipher suite."""
    server = DTLSServer(server_config(pki, cipher_suites=(GCM, CCM8)))
    session = first_session(pki, server)
    assert session.cipher_suite == GCM
    server.config.cipher_suites = (CCM8,)
    run = Run(server.config, client_config(pki, session=session), server=server)
    run.handshake()
    client_done, _ = assert_established(run)
    assert not client_done.resumed
    assert client_done.cipher_suite == CCM8


def test_resume_only_with_a_locally_expired_session_fails_without_sending_a_hello(
    pki: LoadedPKI,
) -> None:
    """A resume-only client never offers an expired session (RFC 5246 §7.4.1.2)."""
    server = DTLSServer(server_config(pki))
    session = first_session(pki, server)
    session.created_at -= session.lifetime + 1
    sent: list[bytes] = []

    def watch(source: Address, destination: Address, datagram: bytes) -> list[bytes]:
        sent.append(datagram)
        return [datagram]

    run = Run(
        server.config,
        client_config(pki, session=session, resume_only=True),
        server=server,
        tap=watch,
    )
    run.handshake()
    assert only(run.terminated(run.client_events)).reason == "resumption_refused"
    assert not any(client_hellos(d) for d in sent)


@pytest.mark.parametrize("stored_ems", [False, True], ids=["session without EMS", "with EMS"])
def test_session_without_ems_is_not_resumed_by_an_ems_client_hello(
    pki: LoadedPKI, stored_ems: bool
) -> None:
    """RFC 7627 §5.3: a server whose session was made without the extended master secret does
    not resume it for a ClientHello carrying the extension: a full handshake follows. The same
    session stored with EMS (the control case) is resumed."""
    server = DTLSServer(server_config(pki))

    def session() -> Session:
        return Session(
            session_id=b"L" * 32,
            master_secret=bytearray(b"m" * 48),
            cipher_suite=CCM8,
            extended_master_secret=stored_ems,
            server_name=SERVER_NAME,
            peer_certificates=pki.device.chain,
        )

    server.config.session_store.put(session())
    run = Run(server.config, client_config(pki, session=session()), server=server)
    run.handshake()
    client_done, server_done = assert_established(run)
    assert client_done.resumed is server_done.resumed is stored_ems
    assert (client_done.session.session_id == b"L" * 32) is stored_ems
    assert client_done.extended_master_secret
    exchange_application_data(run)


def test_client_aborts_resumption_that_would_add_ems(pki: LoadedPKI) -> None:
    """RFC 7627 §5.3: "If the original session did not use the extension but the new
    ServerHello contains the extension, the client MUST abort the handshake"."""
    server = DTLSServer(server_config(pki))
    session = first_session(pki, server)
    stale = Session(
        session_id=session.session_id,
        master_secret=bytearray(session.master_secret),
        cipher_suite=session.cipher_suite,
        extended_master_secret=False,  # the client believes the session had no EMS
        server_name=SERVER_NAME,
    )
    run = Run(server.config, client_config(pki, session=stale), server=server)
    run.handshake()
    assert_failed_with(run, sender="client", alert=AlertDescription.HANDSHAKE_FAILURE)


# --------------------------------------------------------------------------- cookie exchange


def test_cookie_exchange_is_stateless_until_the_cookie_returns(pki: LoadedPKI) -> None:
    """RFC 6347 §4.2.1: the first ClientHello gets a HelloVerifyRequest and the server commits
    no state until a ClientHello returns a valid cookie; a forged cookie gets another HVR."""
    server = DTLSServer(server_config(pki))
    run = Run(server.config, client_config(pki), server=server)
    client = run.client
    client.connect(0.0)
    ((hello1, _),) = client.datagrams_to_send(0.0)
    assert client_hellos(hello1)[0].cookie == b""

    server.receive_datagram(hello1, CLIENT_ADDRESS, 0.01)
    assert server.connection_count == 0
    (hvr_datagram, peer), *rest = server.datagrams_to_send(0.01)
    assert rest == [] and peer == CLIENT_ADDRESS
    (fragment,) = epoch0_fragments(hvr_datagram)
    assert fragment.msg_type == HandshakeType.HELLO_VERIFY_REQUEST
    cookie = HelloVerifyRequest.decode(fragment.body).cookie
    assert len(cookie) >= 16
    assert server.next_timer() is None  # no retransmission state either

    client.receive_datagram(hvr_datagram, SERVER_ADDRESS, 0.02)
    ((hello2, _),) = client.datagrams_to_send(0.02)
    (second,) = client_hellos(hello2)
    assert second.cookie == cookie
    assert second.random == client_hellos(hello1)[0].random

    # The same ClientHello with a flipped cookie bit, or from another address, is not trusted.
    forged = bytes([cookie[0] ^ 1]) + cookie[1:]
    server.receive_datagram(
        replace_client_hello(
            hello2,
            lambda h: ClientHello(
                h.client_version,
                h.random,
                h.session_id,
                forged,
                h.cipher_suites,
                h.compression_methods,
                h.extensions,
            ),
        ),
        CLIENT_ADDRESS,
        0.03,
    )
    server.receive_datagram(hello2, ("203.0.113.9", 4000), 0.03)
    assert server.connection_count == 0
    replies = server.datagrams_to_send(0.03)
    assert [p for _, p in replies] == [CLIENT_ADDRESS, ("203.0.113.9", 4000)]
    for datagram, _ in replies:
        assert [f.msg_type for f in epoch0_fragments(datagram)] == [
            HandshakeType.HELLO_VERIFY_REQUEST
        ]
    assert server.stats["stateless_replies"] == 3

    server.receive_datagram(hello2, CLIENT_ADDRESS, 0.04)
    assert server.connection_count == 1
    (flight_start, _), *_ = server.datagrams_to_send(0.04)
    assert epoch0_fragments(flight_start)[0].msg_type == HandshakeType.SERVER_HELLO


def test_garbage_from_unknown_addresses_creates_no_state(pki: LoadedPKI) -> None:
    """RFC 6347 §4.2.1: only a ClientHello is answered, and only statelessly."""
    server = DTLSServer(server_config(pki))
    for i in range(20):
        server.receive_datagram(bytes([22, 0xFE, 0xFD]) + bytes(i), ("203.0.113.1", i), 0.0)
    assert server.connection_count == 0
    assert server.datagrams_to_send(0.0) == []
    assert server.stats["dropped_datagrams"] == 20


def cookie_hello_datagram(run: Run) -> bytes:
    """The delivered client datagram whose ClientHello carries the cookie."""
    (datagram,) = [
        d
        for s, _, d in run.sim.delivered
        if s == run.address and any(h.cookie for h in client_hellos(d))
    ]
    return datagram


def test_a_repeated_client_hello_does_not_end_the_association(pki: LoadedPKI) -> None:
    """RFC 6347 §4.2.8: the server "MUST NOT destroy the existing association" for a ClientHello
    that does not start a new handshake; a late duplicate (or replay) of the cookie-bearing
    ClientHello that created the association is only a retransmission (regression: it used to
    replace the established connection)."""
    run = Run(server_config(pki), client_config(pki))
    run.handshake()
    assert_established(run)
    connection = run.server.connection(CLIENT_ADDRESS)
    events_before = len(run.server_events)
    hello = cookie_hello_datagram(run)
    for _ in range(2):
        run.sim.inject(CLIENT_ADDRESS, SERVER_ADDRESS, hello)
        run.settle()
    assert run.server.connection(CLIENT_ADDRESS) is connection
    assert connection is not None and connection.is_established
    assert run.server_events[events_before:] == []
    assert not run.terminated(run.client_events)
    exchange_application_data(run)


def test_a_client_restarting_on_the_same_address_gets_a_new_association(pki: LoadedPKI) -> None:
    """RFC 6347 §4.2.8: a new ClientHello (new random) that completes the cookie exchange on the
    address of an existing association starts a new handshake that replaces it."""
    server = DTLSServer(server_config(pki))
    old = Run(server.config, client_config(pki), server=server)
    old.handshake()
    assert_established(old)
    first = server.connection(CLIENT_ADDRESS)
    new = Run(server.config, client_config(pki), server=server)
    new.sim.connect(CLIENT_ADDRESS)
    new.run(lambda: new.client.is_established and len(new.completed(new.server_events)) == 1)
    new.settle()
    second = server.connection(CLIENT_ADDRESS)
    assert second is not None and second is not first and second.is_established
    assert first is not None and first.is_closed
    assert [type(e).__name__ for e in new.server_events] == [
        "ConnectionTerminated",
        "HandshakeCompleted",
    ]
    exchange_application_data(new)


def test_a_psk_client_restarting_on_the_same_address_completes_its_handshake() -> None:
    """RFC 6347 §4.2.8 with a PSK suite: the replaced association sends nothing to the address,
    so the new client never takes the old epoch's close_notify for a record of its own next
    epoch, which RFC 4279 §2 would make a fatal decrypt_error (regression)."""
    server = DTLSServer(psk_server_config())
    old = Run(server.config, psk_client_config(), server=server)
    old.handshake()
    assert_established(old)
    first = server.connection(CLIENT_ADDRESS)
    new = Run(server.config, psk_client_config(), server=server)
    new.sim.connect(CLIENT_ADDRESS)
    new.run(lambda: new.client.is_established and len(new.completed(new.server_events)) == 1)
    new.settle()
    assert not new.terminated(new.client_events)
    second = server.connection(CLIENT_ADDRESS)
    assert second is not None and second is not first and second.is_established
    exchange_application_data(new)


# --------------------------------------------------------------------------- lossy networks

LOSSY = Impairments(loss=0.25, duplicate=0.15, reorder=0.25, latency=0.02, jitter=0.01)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_handshakes_complete_over_a_lossy_network_with_fragmented_flights(
    pki: LoadedPKI, seed: int
) -> None:
    """RFC 6347 §4.2.3-4.2.4: with loss, duplication and reordering, and an MTU of 300 bytes that
    fragments the certificate flights, retransmission and reassembly complete both a full and
    a resumed handshake."""
    server = DTLSServer(server_config(pki, mtu=300))
    fragmented: list[bool] = []

    def watch(source: Address, destination: Address, datagram: bytes) -> list[bytes]:
        assert len(datagram) <= 300
        fragmented.extend(f.fragment_length < f.length for f in epoch0_fragments(datagram))
        return [datagram]

    full = Run(
        server.config,
        client_config(pki, mtu=300),
        server=server,
        seed=seed,
        impairments=LOSSY,
        tap=watch,
    )
    full.handshake()
    client_done, _ = assert_established(full)
    assert any(fragmented)
    full.sim.impairments = Impairments()  # application data is not retransmitted
    exchange_application_data(full)
    retransmissions = full.client.stats["retransmissions"]
    connection = server.connection(CLIENT_ADDRESS)
    assert connection is not None
    retransmissions += connection.stats["retransmissions"]
    resumed = Run(
        server.config,
        client_config(pki, mtu=300, session=client_done.session, resume_only=True),
        server=server,
        seed=seed + 100,
        impairments=LOSSY,
        address=("198.51.100.9", 50002),
    )
    resumed.handshake()
    done, _ = assert_established(resumed)
    assert done.resumed
    resumed.sim.impairments = Impairments()
    exchange_application_data(resumed)
    assert retransmissions + resumed.client.stats["retransmissions"] > 0


def test_early_and_repeated_change_cipher_spec_is_held_not_fatal(pki: LoadedPKI) -> None:
    """RFC 6347 §4.2.4 and §4.1: a ChangeCipherSpec has no message_seq, so reordering can bring
    it (and retransmission several copies of it) before the handshake messages it follows. The
    server holds it until its machine accepts it (regression: a second early copy was fatal)."""
    early: list[bytes] = []

    def repeat_ccs(source: Address, destination: Address, datagram: bytes) -> list[bytes]:
        records, _ = parse_datagram(datagram)
        ccs = [r for r in records if r.content_type == ContentType.CHANGE_CIPHER_SPEC]
        if destination == SERVER_ADDRESS and ccs and not early:
            copies = [
                encode_record(Record(r.content_type, r.version, 0, r.sequence_number + n, b"\x01"))
                for r in ccs
                for n in (1000, 1001)
            ]
            early.extend(copies)
            return [*copies, datagram]
        return [datagram]

    run = Run(server_config(pki), client_config(pki), tap=repeat_ccs)
    run.handshake()
    assert len(early) == 2
    assert_established(run)
    exchange_application_data(run)


def test_retransmission_timer_doubles_then_gives_up(pki: LoadedPKI) -> None:
    """RFC 6347 §4.2.4.1: the timer starts at 1 s and doubles on each retransmission (capped at
    60 s); after the retransmission budget the handshake ends with a timeout."""
    sent_at: list[float] = []
    run: Run

    def black_hole(source: Address, destination: Address, datagram: bytes) -> list[bytes]:
        if destination == SERVER_ADDRESS:
            sent_at.append(run.sim.now)
            return []
        return [datagram]

    run = Run(server_config(pki), client_config(pki, timers=TimerConfig()), tap=black_hole)
    run.handshake(max_time=1000)
    assert sent_at == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 63.0]
    assert run.client.stats["retransmissions"] == 6
    end = only(run.terminated(run.client_events))
    assert (end.alert, end.by_peer, end.error) == (None, False, True)
    assert "timed out" in end.reason
    assert run.sim.now == pytest.approx(63.0 + 60.0)
    assert run.client.is_closed and run.client.next_timer() is None
    assert run.server.connection_count == 0


def test_retransmission_timer_respects_its_configuration(pki: LoadedPKI) -> None:
    """RFC 6347 §4.2.4.1: initial value, cap and budget are configurable."""
    sent_at: list[float] = []
    run: Run

    def black_hole(source: Address, destination: Address, datagram: bytes) -> list[bytes]:
        if destination == SERVER_ADDRESS:
            sent_at.append(run.sim.now)
        return []

    timers = TimerConfig(initial=0.5, maximum=2.0, max_retransmissions=4)
    run = Run(server_config(pki), client_config(pki, timers=timers), tap=black_hole)
    run.handshake()
    assert sent_at == [0.0, 0.5, 1.5, 3.5, 5.5]
    assert run.sim.now == pytest.approx(7.5)
    assert "timed out" in only(run.terminated(run.client_events)).reason


def test_simulation_never_runs_past_max_time(pki: LoadedPKI) -> None:
    """The virtual clock stops at ``max_time``: the retransmission due at 3 s is not processed by
    a run limited to 2 s (regression: one step beyond the limit used to run)."""
    run = Run(server_config(pki), client_config(pki), tap=lambda s, d, datagram: [])
    run.sim.connect(CLIENT_ADDRESS)
    run.sim.run(max_time=2.0)
    assert run.sim.now == 1.0
    assert run.client.stats["retransmissions"] == 1
    assert run.client.next_timer() == 3.0
    run.sim.run(max_time=3.0)
    assert run.client.stats["retransmissions"] == 2


# --------------------------------------------------------------------------- unexpected messages


def test_server_key_exchange_before_certificate_is_an_unexpected_message(
    pki: LoadedPKI,
) -> None:
    """RFC 5246 §7.3/§7.4 order: Certificate precedes ServerKeyExchange in an ECDHE_ECDSA flight.
    A flight re-encoded with the two message_seq values swapped puts ServerKeyExchange next;
    the client's machine has no such transition and ends with unexpected_message (§7.2.2)."""

    def swap(fragment: HandshakeFragment) -> HandshakeFragment:
        new_type = {
            HandshakeType.CERTIFICATE: HandshakeType.SERVER_KEY_EXCHANGE,
            HandshakeType.SERVER_KEY_EXCHANGE: HandshakeType.CERTIFICATE,
        }
        if fragment.msg_type not in new_type:
            return fragment
        seq = {HandshakeType.CERTIFICATE: 3, HandshakeType.SERVER_KEY_EXCHANGE: 2}
        assert fragment.message_seq == 5 - seq[HandshakeType(fragment.msg_type)]
        return HandshakeFragment(
            fragment.msg_type,
            fragment.length,
            seq[HandshakeType(fragment.msg_type)],
            fragment.fragment_offset,
            fragment.fragment_length,
            fragment.body,
        )

    def reorder(source: Address, destination: Address, datagram: bytes) -> list[bytes]:
        if source == SERVER_ADDRESS:
            return [rewrite_epoch0_handshake(datagram, swap)]
        return [datagram]

    run = Run(server_config(pki), client_config(pki), tap=reorder)
    trace: list[dict[str, object]] = []
    run.client._tracer = trace.append
    run.handshake()
    local, _ = assert_failed_with(run, sender="client", alert=AlertDescription.UNEXPECTED_MESSAGE)
    assert local.reason == "ServerKeyExchange is not allowed in state wait_certificate"
    assert [e["message"] for e in trace if e["event"] == "message_received"] == [
        "HelloVerifyRequest",
        "ServerHello",
    ]


def test_finished_right_after_client_hello_is_an_unexpected_message(pki: LoadedPKI) -> None:
    """RFC 5246 §7.4.9: Finished comes only after ChangeCipherSpec. A plaintext Finished
    following the cookie-bearing ClientHello is refused by the server's machine with a fatal
    unexpected_message (RFC 5246 §7.2.2)."""
    injected: list[bytes] = []

    def early_finished(source: Address, destination: Address, datagram: bytes) -> list[bytes]:
        hellos = client_hellos(datagram) if destination == SERVER_ADDRESS else []
        if hellos and hellos[0].cookie and not injected:
            (record,), _ = parse_datagram(datagram)
            (fragment,) = fragment_message(HandshakeType.FINISHED, 2, bytes(12), 1000)
            forged = encode_record(
                Record(
                    ContentType.HANDSHAKE,
                    DTLS_1_2,
                    0,
                    record.sequence_number + 1,
                    encode_fragment(fragment),
                )
            )
            injected.append(forged)
            return [datagram, forged]
        return [datagram]

    run = Run(server_config(pki), client_config(pki), tap=early_finished)
    run.handshake()
    local, _ = assert_failed_with(run, sender="server", alert=AlertDescription.UNEXPECTED_MESSAGE)
    assert local.reason == "Finished is not allowed in state wait_certificate"
    assert injected


def test_change_cipher_spec_after_the_handshake_is_an_unexpected_message(pki: LoadedPKI) -> None:
    """RFC 5246 §7.1: ChangeCipherSpec only in the handshake; a second one (in the current
    epoch) after the handshake ends the connection with unexpected_message."""
    run = Run(server_config(pki), client_config(pki))
    run.handshake()
    assert_established(run)
    connection = run.server.connection(CLIENT_ADDRESS)
    assert connection is not None
    ccs = protect(
        connection._writes[connection._write_epoch], ContentType.CHANGE_CIPHER_SPEC, b"\x01"
    )
    run.sim.inject(SERVER_ADDRESS, CLIENT_ADDRESS, ccs)
    local, _ = assert_failed_with(
        run, sender="client", alert=AlertDescription.UNEXPECTED_MESSAGE, during_handshake=False
    )
    assert local.reason == "ChangeCipherSpec is not allowed in state established"


# --------------------------------------------------------------------------- certificates


def test_missing_client_certificate_when_required_is_a_handshake_failure(pki: LoadedPKI) -> None:
    """RFC 5246 §7.4.6: a client without a certificate sends an empty Certificate; a server that
    requires one "MAY respond with a fatal handshake_failure alert"."""
    run = Run(server_config(pki), client_config(pki, certificate_chain=(), private_key=None))
    run.handshake()
    local, _ = assert_failed_with(run, sender="server", alert=AlertDescription.HANDSHAKE_FAILURE)
    assert "required" in local.reason


def test_missing_client_certificate_is_accepted_when_optional(pki: LoadedPKI) -> None:
    """RFC 5246 §7.4.6: with optional client authentication an empty Certificate is fine."""
    from d2tls.core.dtls.config import ClientAuth

    run = Run(
        server_config(pki, client_auth=ClientAuth.OPTIONAL),
        client_config(pki, certificate_chain=(), private_key=None),
    )
    run.handshake()
    assert_established(run)
    connection = run.server.connection(CLIENT_ADDRESS)
    assert connection is not None and connection.peer_certificates == ()


def test_client_certificate_from_another_ca_is_unknown_ca(pki: LoadedPKI) -> None:
    """RFC 5246 §7.2.2 unknown_ca: no path from the client certificate to a trust anchor."""
    rogue = pki.issue("device-1", client=True, names=("device-1.d2tls.invalid",), other_ca=True)
    run = Run(
        server_config(pki),
        client_config(pki, certificate_chain=rogue.chain, private_key=rogue.key),
    )
    run.handshake()
    assert_failed_with(run, sender="server", alert=AlertDescription.UNKNOWN_CA)


def test_expired_client_certificate_is_certificate_expired(pki: LoadedPKI) -> None:
    """RFC 5246 §7.2.2 certificate_expired (RFC 5280 §4.1.2.5 validity)."""
    old = pki.issue("device-9", client=True, names=("device-9.d2tls.invalid",), expired=True)
    run = Run(
        server_config(pki), client_config(pki, certificate_chain=old.chain, private_key=old.key)
    )
    run.handshake()
    assert_failed_with(run, sender="server", alert=AlertDescription.CERTIFICATE_EXPIRED)


def test_server_certificate_for_another_name_is_a_bad_certificate(pki: LoadedPKI) -> None:
    """RFC 6125 §6 (RFC 5246 §7.2.2 bad_certificate): the server name must match its SAN."""
    run = Run(server_config(pki), client_config(pki, server_name="wrong.example"))
    run.handshake()
    assert_failed_with(run, sender="client", alert=AlertDescription.BAD_CERTIFICATE)


def test_server_certificate_from_an_unknown_ca_is_unknown_ca(pki: LoadedPKI) -> None:
    """RFC 5246 §7.2.2 unknown_ca, server side of the chain."""
    rogue = pki.issue(SERVER_NAME, client=False, names=(SERVER_NAME,), other_ca=True)
    run = Run(
        server_config(pki, certificate_chain=rogue.chain, private_key=rogue.key),
        client_config(pki),
    )
    run.handshake()
    assert_failed_with(run, sender="client", alert=AlertDescription.UNKNOWN_CA)


# --------------------------------------------------------------------------- external signer


def signature_request(run: Run) -> SignatureRequested:
    run.sim.connect(run.address)
    run.run(lambda: any(isinstance(e, SignatureRequested) for e in run.client_events))
    (request,) = [e for e in run.client_events if isinstance(e, SignatureRequested)]
    return request


def test_external_signer_is_asked_for_the_certificate_verify_signature(pki: LoadedPKI) -> None:
    """RFC 5246 §7.4.8: CertificateVerify signs every handshake message so far, each with its
    unfragmented DTLS header (RFC 6347 §4.2.6). With ``private_key=None`` the client hands the
    transcript and its SHA-256 digest to an external signer (D2TLS delegation)."""
    fixed_random = bytes(range(100, 132))
    hellos: list[ClientHello] = []

    def watch(source: Address, destination: Address, datagram: bytes) -> list[bytes]:
        if destination == SERVER_ADDRESS:
            hellos.extend(client_hellos(datagram))
        return [datagram]

    run = Run(
        server_config(pki),
        client_config(pki, private_key=None, client_random=fixed_random),
        tap=watch,
    )
    request = signature_request(run)
    assert run.client.state == "wait_signature"
    assert request.digest == hashlib.sha256(request.transcript).digest()
    assert request.client_random == fixed_random
    assert [h.random for h in hellos] == [fixed_random, fixed_random]
    assert request.transcript[0] == HandshakeType.CLIENT_HELLO
    assert fixed_random in request.transcript
    assert pki.server.chain[0] in request.transcript and pki.device.chain[0] in request.transcript
    # Nothing of the client's second flight leaves before the signature is there.
    assert run.client.next_timer() is None
    run.settle(0.5)
    assert run.client.datagrams_to_send(run.sim.now) == []

    signature = pki.device.key.sign(request.transcript, ec.ECDSA(hashes.SHA256()))
    run.client.provide_signature(signature, run.sim.now)
    run.run(lambda: run.both_established() or run.any_terminated())
    assert_established(run)
    exchange_application_data(run)


def test_external_signer_returning_a_wrong_signature_fails_locally(pki: LoadedPKI) -> None:
    """A signature that does not verify under our certificate is never sent: the client ends
    the handshake itself and no CertificateVerify leaves it."""
    sent: list[bytes] = []

    def watch(source: Address, destination: Address, datagram: bytes) -> list[bytes]:
        if destination == SERVER_ADDRESS:
            sent.append(datagram)
        return [datagram]

    run = Run(server_config(pki), client_config(pki, private_key=None), tap=watch)
    request = signature_request(run)
    wrong = pki.device.key.sign(request.transcript + b"x", ec.ECDSA(hashes.SHA256()))
    before = len(sent)
    run.client.provide_signature(wrong, run.sim.now)
    run.settle()
    end = only(run.terminated(run.client_events))
    assert (end.by_peer, end.error) == (False, True)
    assert "signature" in end.reason
    after = sent[before:]
    assert all(not epoch0_fragments(d) for d in after)
    assert all(r.content_type == ContentType.ALERT for d in after for r in parse_datagram(d)[0])
    for datagram in sent:
        assert HandshakeType.CERTIFICATE_VERIFY not in [
            f.msg_type for f in epoch0_fragments(datagram)
        ]
    assert not run.completed(run.server_events)


def test_signature_from_another_key_is_refused(pki: LoadedPKI) -> None:
    """RFC 5246 §7.4.8: the signature must be made with the certificate's key."""
    run = Run(server_config(pki), client_config(pki, private_key=None))
    request = signature_request(run)
    other = ec.generate_private_key(ec.SECP256R1())
    run.client.provide_signature(
        other.sign(request.transcript, ec.ECDSA(hashes.SHA256())), run.sim.now
    )
    assert run.client.is_closed
    assert not run.client.is_established


def test_provide_signature_without_a_request_is_an_invalid_state(pki: LoadedPKI) -> None:
    """The signature can only be supplied after SignatureRequested."""
    run = Run(server_config(pki), client_config(pki))
    with pytest.raises(InvalidStateError):
        run.client.provide_signature(b"\x30\x00", 0.0)
    run.handshake()
    assert_established(run)
    with pytest.raises(InvalidStateError):
        run.client.provide_signature(b"\x30\x00", run.sim.now)
    assert run.client.is_established


def test_fixed_client_random_is_sent_in_the_client_hello(pki: LoadedPKI) -> None:
    """RFC 5246 §7.4.1.2 ClientHello.random, chosen by the caller (D2TLS bound mode); the same
    random is repeated after the HelloVerifyRequest (RFC 6347 §4.2.1)."""
    fixed_random = b"\xd2" * 32
    hellos: list[ClientHello] = []

    def watch(source: Address, destination: Address, datagram: bytes) -> list[bytes]:
        if destination == SERVER_ADDRESS:
            hellos.extend(client_hellos(datagram))
        return [datagram]

    run = Run(server_config(pki), client_config(pki, client_random=fixed_random), tap=watch)
    run.handshake()
    assert_established(run)
    assert [h.random for h in hellos] == [fixed_random, fixed_random]
    connection = run.server.connection(CLIENT_ADDRESS)
    assert connection is not None and connection.client_random == fixed_random


# --------------------------------------------------------------------------- renegotiation


def test_client_hello_after_the_handshake_is_refused_with_no_renegotiation(
    pki: LoadedPKI,
) -> None:
    """RFC 5246 §7.4.1.2/§7.2.2 and RFC 5746: renegotiation is refused with a no_renegotiation
    warning and the connection stays established."""
    run = Run(server_config(pki), client_config(pki))
    run.handshake()
    assert_established(run)
    client = run.client
    hello = ClientHello(
        client_version=DTLS_1_2,
        random=b"\x42" * 32,
        session_id=b"",
        cookie=b"",
        cipher_suites=(int(CCM8),),
        compression_methods=(COMPRESSION_NULL,),
        extensions=(extended_master_secret_extension(), renegotiation_info_extension(b"\x00" * 12)),
    )
    (fragment,) = fragment_message(
        HandshakeType.CLIENT_HELLO, client._send_seq, hello.encode(), 2000
    )
    write = client._writes[client._write_epoch]
    assert write.epoch == 1
    run.sim.inject(
        CLIENT_ADDRESS,
        SERVER_ADDRESS,
        protect(write, ContentType.HANDSHAKE, encode_fragment(fragment)),
    )
    run.settle()
    warnings = [e for e in run.client_events if isinstance(e, AlertReceived)]
    assert [w.description for w in warnings] == [AlertDescription.NO_RENEGOTIATION]
    connection = run.server.connection(CLIENT_ADDRESS)
    assert connection is not None and connection.is_established
    assert not run.terminated(run.server_events) and not run.terminated(run.client_events)
    exchange_application_data(run, b" after renegotiation attempt")


def test_hello_request_is_refused_by_the_client_with_no_renegotiation(pki: LoadedPKI) -> None:
    """RFC 5246 §7.4.1.1: a client that does not renegotiate answers HelloRequest with a
    no_renegotiation warning and stays established."""
    run = Run(server_config(pki), client_config(pki))
    run.handshake()
    assert_established(run)
    connection = run.server.connection(CLIENT_ADDRESS)
    assert connection is not None
    (fragment,) = fragment_message(
        HandshakeType.HELLO_REQUEST, connection._send_seq, HelloRequest().encode(), 100
    )
    run.sim.inject(
        SERVER_ADDRESS,
        CLIENT_ADDRESS,
        protect(connection._writes[1], ContentType.HANDSHAKE, encode_fragment(fragment)),
    )
    run.settle()
    warnings = [e for e in run.server_events if isinstance(e, AlertReceived)]
    assert [w.description for w in warnings] == [AlertDescription.NO_RENEGOTIATION]
    assert run.client.is_established
    exchange_application_data(run)


# --------------------------------------------------------------------------- record protection


def test_replayed_application_data_is_not_delivered_again(pki: LoadedPKI) -> None:
    """RFC 6347 §4.1.2.6: replayed records are discarded by the replay window — every captured
    client datagram replayed after the exchange delivers nothing new."""
    run = Run(server_config(pki), client_config(pki))
    run.handshake()
    assert_established(run)
    for i in range(3):
        run.send_to_server(b"reading %d" % i)
    run.settle()
    assert run.received(run.server_events) == [b"reading 0", b"reading 1", b"reading 2"]
    captured = [
        d
        for s, _, d in run.sim.delivered
        if s == CLIENT_ADDRESS and any(r.epoch == 1 for r in parse_datagram(d)[0])
    ]
    app_records = [
        d
        for d in captured
        if any(r.content_type == ContentType.APPLICATION_DATA for r in parse_datagram(d)[0])
    ]
    assert len(app_records) == 3
    connection = run.server.connection(CLIENT_ADDRESS)
    assert connection is not None
    events_before = len(run.server_events)
    discarded = connection.stats["records_discarded"]
    for datagram in captured:
        run.sim.inject(CLIENT_ADDRESS, SERVER_ADDRESS, datagram)
    run.settle()
    assert run.received(run.server_events) == [b"reading 0", b"reading 1", b"reading 2"]
    assert run.server_events[events_before:] == []
    assert connection.stats["records_discarded"] >= discarded + len(app_records)
    assert connection.is_established
    exchange_application_data(run)


def test_every_single_byte_corruption_of_a_record_is_dropped_silently(pki: LoadedPKI) -> None:
    """RFC 6347 §4.1.2.7: invalid records (bad MAC, bad header) are silently discarded and the
    connection goes on; the untouched record is then delivered exactly once."""
    run = Run(server_config(pki, cipher_suites=(GCM,)), client_config(pki, cipher_suites=(GCM,)))
    run.handshake()
    assert_established(run)
    connection = run.server.connection(CLIENT_ADDRESS)
    assert connection is not None
    run.client.send_application_data(b"sensor value 42")
    ((datagram, _),) = run.client.datagrams_to_send(run.sim.now)
    for position in range(len(datagram)):
        for flip in (0x01, 0x03, 0x80):
            corrupted = bytearray(datagram)
            corrupted[position] ^= flip
            discarded = connection.stats["records_discarded"]
            run.server.receive_datagram(bytes(corrupted), CLIENT_ADDRESS, run.sim.now)
            assert connection.stats["records_discarded"] > discarded, (position, flip)
            assert run.server.next_event() is None
            assert run.server.datagrams_to_send(run.sim.now) == []
            assert connection.is_established
    run.server.receive_datagram(datagram, CLIENT_ADDRESS, run.sim.now)
    event = run.server.next_event()
    assert isinstance(event, ApplicationDataReceived) and event.data == b"sensor value 42"
    run.server.receive_datagram(datagram, CLIENT_ADDRESS, run.sim.now)
    assert run.server.next_event() is None


def test_records_of_another_connection_do_not_authenticate(pki: LoadedPKI) -> None:
    """RFC 6347 §4.1.2.7: a record protected with another association's keys is dropped."""
    server = DTLSServer(server_config(pki))
    first = Run(server.config, client_config(pki), server=server)
    first.handshake()
    second = Run(server.config, client_config(pki), server=server, address=("198.51.100.20", 1))
    second.handshake()
    second.client.send_application_data(b"for the other one")
    ((datagram, _),) = second.client.datagrams_to_send(second.sim.now)
    server.receive_datagram(datagram, CLIENT_ADDRESS, second.sim.now)
    events = []
    while (event := server.next_event()) is not None:
        events.append(event)
    assert not any(isinstance(e, ApplicationDataReceived) for e in events)
    connection = server.connection(CLIENT_ADDRESS)
    assert connection is not None and connection.is_established
