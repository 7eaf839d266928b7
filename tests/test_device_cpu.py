"""The device's CPU cuts of issue 23 keep every behaviour and every check.

* application data records queued in one step share one datagram (RFC 6347 §4.1.1), never past
  the MTU and never joined to a handshake flight or an alert; the agent's SessionContext and
  Wiped reach the device together;
* a host that waits only for the outcome turns the per-message events off;
* the bound-mode check in one parse (``check_transcript``) agrees with the rule-by-rule one, and
  its memo of the server certificate verdict is keyed on everything the verdict depends on;
* the memo of hello extension blocks never remembers a refusal.
"""

from __future__ import annotations

import hashlib

import pytest

from conftest import Run, psk_client_config, psk_server_config
from d2tls.adversary.credentials import SERVER_NAME
from d2tls.core.delegation.compact import server_certificate_body
from d2tls.core.dtls.constants import ContentType, ExtensionType
from d2tls.core.dtls.messages import ClientHello, Extension, ServerHello, encode_extensions
from d2tls.core.dtls.record import parse_datagram
from d2tls.core.errors import DecodeError, IllegalParameter
from d2tls.core.roles.device import MessageReceived, MessageSent
from d2tls.core.roles.signer import (
    SigningRefused,
    check_bound_transcript,
    check_server_certificate,
    check_transcript,
)
from d2tls.prove import roles_check
from test_standing_channel import World


def _established() -> Run:
    run = Run(psk_server_config(), psk_client_config())
    run.handshake()
    assert run.both_established()
    return run


def test_application_data_queued_together_shares_a_datagram() -> None:
    run = _established()
    client = run.client
    client.send_application_data(b"first")
    client.send_application_data(b"second")
    datagrams = client.datagrams_to_send(run.sim.now)
    assert len(datagrams) == 1
    records, discarded = parse_datagram(datagrams[0][0])
    assert not discarded
    assert [r.content_type for r in records] == [ContentType.APPLICATION_DATA] * 2
    assert [r.sequence_number for r in records] == sorted(r.sequence_number for r in records)
    for data, _ in datagrams:
        run.server.receive_datagram(data, run.address, run.sim.now)
    assert Run.received(_server_events(run)) == [b"first", b"second"]  # both, in order


def _server_events(run: Run) -> list[object]:
    out = []
    while (event := run.server.next_event()) is not None:
        out.append(event)
    return out


def test_records_that_do_not_fit_the_mtu_go_in_their_own_datagram() -> None:
    run = Run(psk_server_config(), psk_client_config(mtu=300))
    run.handshake()
    client = run.client
    client.send_application_data(bytes(200))
    client.send_application_data(bytes(200))  # 2 x (200 + 29) > 300
    datagrams = client.datagrams_to_send(run.sim.now)
    assert len(datagrams) == 2
    assert all(len(d) <= 300 for d, _ in datagrams)


def test_a_datagram_sent_is_never_extended() -> None:
    run = _established()
    client = run.client
    client.send_application_data(b"one")
    first = client.datagrams_to_send(run.sim.now)
    client.send_application_data(b"two")
    second = client.datagrams_to_send(run.sim.now)
    assert len(first) == len(second) == 1
    assert len(parse_datagram(second[0][0])[0]) == 1


def test_close_notify_is_not_joined_to_application_data() -> None:
    run = _established()
    client = run.client
    client.send_application_data(b"last words")
    client.close()
    datagrams = client.datagrams_to_send(run.sim.now)
    kinds = [[r.content_type for r in parse_datagram(d)[0]] for d, _ in datagrams]
    assert kinds[0] == [ContentType.APPLICATION_DATA]
    assert all(ContentType.APPLICATION_DATA not in k for k in kinds[1:])


def test_session_context_and_wiped_reach_the_device_in_one_datagram() -> None:
    world = World("psk")
    device = world.delegate()
    device.close_connection(world.net.now)
    world.net.advance(1.0)
    device = world.delegate()
    assert device.connected, device.attempt.error if device.attempt else None
    # SignRequest, then SessionContext + Wiped: two datagrams for three messages
    assert device.agent_link.datagrams_received == 2
    assert device.agent_link.datagrams_sent == 2  # DelegationRequest, SignResponse
    assert device.context is not None and world.agent.completed == 2


def test_message_events_can_be_turned_off() -> None:
    world = World("psk")
    world.device.connect(world.net.now)
    world.net.run(lambda: world.device.finished, max_time=120.0)
    assert world.device.connected
    kinds = {type(e) for e in world.events}
    assert MessageSent in kinds and MessageReceived in kinds  # the default reports them
    quiet = World("psk")
    quiet.device._message_events = False
    quiet.device.connect(quiet.net.now)
    quiet.net.run(lambda: quiet.device.finished, max_time=120.0)
    assert quiet.device.connected
    assert not {MessageSent, MessageReceived} & {type(e) for e in quiet.events}


def test_check_transcript_agrees_with_the_rule_by_rule_check() -> None:
    good = roles_check.good_handshake()
    transcript = good.transcript()
    digest = hashlib.sha256(transcript).digest()
    args = (transcript, digest, good.client_random, good.chain, roles_check.SERVER_NAME)
    checked = check_transcript(*args)
    assert checked.server_certificates == check_bound_transcript(*args)
    assert checked.server_certificate_body == server_certificate_body(transcript)
    for _number, cases in roles_check.VIOLATIONS.items():
        for what, make in cases:
            bad, bad_digest = make(good)
            with pytest.raises(SigningRefused):
                (
                    check_transcript(
                        bad,
                        bad_digest or hashlib.sha256(bad).digest(),
                        good.client_random,
                        good.chain,
                        roles_check.SERVER_NAME,
                    ),
                    what,
                )


def test_server_certificate_verdict_memo_keys_on_name_and_pin() -> None:
    good = roles_check.good_handshake()
    body = check_transcript(
        good.transcript(),
        hashlib.sha256(good.transcript()).digest(),
        good.client_random,
        good.chain,
        roles_check.SERVER_NAME,
    ).server_certificate_body
    assert check_server_certificate(body, roles_check.SERVER_NAME, None)  # remembered now
    with pytest.raises(SigningRefused, match="not for"):
        check_server_certificate(body, "other.example", None)
    with pytest.raises(SigningRefused, match="pinned key"):
        check_server_certificate(body, roles_check.SERVER_NAME, bytes(32))
    assert check_server_certificate(body, roles_check.SERVER_NAME, None)


def _hello(extensions: tuple[Extension, ...]) -> bytes:
    hello = ClientHello(0xFEFD, bytes(32), b"", b"", (0xC0AE,), (0,), extensions)
    return hello.encode()


def test_extension_block_memo_never_remembers_a_refusal() -> None:
    good = (
        Extension(ExtensionType.EXTENDED_MASTER_SECRET, b""),
        Extension(ExtensionType.RENEGOTIATION_INFO, b"\x00"),
    )
    assert ClientHello.decode(_hello(good)).extensions == good
    assert ClientHello.decode(_hello(good)).extensions == good  # from the memo
    bad_body = (Extension(ExtensionType.EXTENDED_MASTER_SECRET, b"\x00"),)
    for _ in range(2):
        with pytest.raises(DecodeError, match="must be empty"):
            ClientHello.decode(_hello(bad_body))
    duplicate = _hello(good)[: -len(encode_extensions(good))] + encode_extensions(good + good[:1])
    for _ in range(2):
        with pytest.raises(IllegalParameter, match="duplicate"):
            ClientHello.decode(duplicate)
    # the same block read as a ServerHello's is checked by the server-side rules
    server_name = (Extension(ExtensionType.SERVER_NAME, b"\x00\x01\x00"),)
    server_hello = ServerHello(0xFEFD, bytes(32), b"", 0xC0AE, 0, server_name).encode()
    with pytest.raises(DecodeError, match="must be empty"):
        ServerHello.decode(server_hello)
    assert SERVER_NAME
