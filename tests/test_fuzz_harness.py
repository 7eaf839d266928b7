"""The atheris harnesses of d2tls.adversary.fuzz, replayed without atheris.

Every target accepts real protocol bytes and their mutations, rejecting bad input only with a
typed D2TLSError (RFC 6347 §4.1.2.7, RFC 5246 §7.2.2); a harness that raised on its own
seeds, or let an untyped exception through, would make the fuzzing runs meaningless.
"""

from __future__ import annotations

import logging
import random

import pytest

from d2tls.adversary.fuzz import TARGETS, _all, fuzz_record, guarded, main
from d2tls.adversary.world import D2TLSWorld
from d2tls.core.delegation.messages import (
    DelegationError,
    DelegationErrorCode,
    DelegationMessage,
    SessionContext,
    SignRequest,
    Wiped,
    encode_message,
)
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientConfig, ServerConfig
from d2tls.core.dtls.connection import Connection
from d2tls.core.dtls.constants import AlertDescription, CipherSuite
from d2tls.core.dtls.events import InternalError
from d2tls.core.dtls.fragments import parse_handshake_fragments
from d2tls.core.dtls.record import parse_datagram
from d2tls.core.dtls.server import DTLSServer, ServerConnection
from d2tls.core.errors import D2TLSError


def _seeds() -> dict[str, list[bytes]]:
    """Datagrams, handshake payloads and delegation messages of one real D2TLS run."""
    world = D2TLSWorld()
    assert world.connect_device() == "connected"
    datagrams = [d.data for d in world.net.history]
    handshakes: list[bytes] = []
    for data in datagrams:
        for record in parse_datagram(data)[0]:
            if record.epoch == 0 and record.content_type == 22:
                handshakes.append(record.fragment)
                for fragment in parse_handshake_fragments(record.fragment):
                    handshakes.append(bytes([fragment.msg_type]) + fragment.body)
    replies: list[DelegationMessage] = [
        SignRequest(1, bytes(32), handshakes[0] if handshakes else None),
        SessionContext(1, bytes(32), bytes(48), 0xC0AE, True, (b"cert",), 3600, 0),
        DelegationError(1, DelegationErrorCode.TIMEOUT, "the server did not answer"),
        Wiped(1),
    ]
    messages = [encode_message(m) for m in [*world.device.sent_messages, *replies]]
    return {"record": datagrams, "handshake": handshakes, "delegation": messages}


@pytest.fixture(scope="module")
def seeds() -> dict[str, list[bytes]]:
    return _seeds()


def _mutations(data: bytes, rng: random.Random) -> list[bytes]:
    out = [data, data[: len(data) // 2], data + data[:7]]
    for _ in range(20):
        b = bytearray(data or b"\x00")
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        out.append(bytes(b))
    return out


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_accepts_seeds_and_mutations(name: str, seeds: dict[str, list[bytes]]) -> None:
    assert seeds[name], f"no seeds for {name}"
    rng = random.Random(name)
    run = guarded(TARGETS[name])
    for seed in seeds[name]:
        TARGETS[name](seed)  # real protocol bytes: not even a typed rejection
        for data in _mutations(seed, rng):
            run(data)
            _all(bytes([sorted(TARGETS).index(name)]) + data)


def test_harness_lets_untyped_errors_through() -> None:
    """A finding must propagate: only typed D2TLSErrors are swallowed."""

    def typed(_: bytes) -> None:
        raise D2TLSError("rejected")

    def untyped(_: bytes) -> None:
        raise IndexError("bug")

    guarded(typed)(b"")
    with pytest.raises(IndexError):
        guarded(untyped)(b"")


def test_unknown_target_is_an_error() -> None:
    assert main(["fuzz", "nonsense"]) == 2


def _client_hello_datagram() -> bytes:
    client = DTLSClient(
        ClientConfig(
            cipher_suites=(CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,),
            psk_identity=b"device-1",
            psk=bytes(32),
        ),
        remote=("192.0.2.1", 4433),
    )
    client.connect(0.0)
    ((hello, _),) = client.datagrams_to_send(0.0)
    return hello


def _inject_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """A callback of the server's state machine that crashes: an engine bug."""

    def crash(self: object, hello: object) -> None:
        raise KeyError("injected bug")

    monkeypatch.setattr(ServerConnection, "_check_client_hello", crash)


def test_an_injected_internal_error_fails_the_strict_harness(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tests run the engine strict (tests/conftest.py): the bug itself propagates through the
    harness, which lets only typed rejections pass."""
    hello = _client_hello_datagram()
    guarded(fuzz_record)(hello)  # the real ClientHello passes
    _inject_bug(monkeypatch)
    with pytest.raises(KeyError, match="injected bug"):
        guarded(fuzz_record)(hello)


def test_without_strict_mode_an_internal_error_is_still_a_finding(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Production mode (atheris runs): the engine catches the bug and ends the handshake with
    a fatal internal_error alert, an InternalError event, a counter and a log line; the
    harness turns the counter into a finding."""
    monkeypatch.setattr(Connection, "raise_internal_errors", False)
    _inject_bug(monkeypatch)
    hello = _client_hello_datagram()
    with pytest.raises(AssertionError, match="internal error in the server engine"):
        guarded(fuzz_record)(hello)

    server = DTLSServer(
        ServerConfig(
            cipher_suites=(CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,),
            psk_keys={b"device-1": bytes(32)},
        )
    )
    with caplog.at_level(logging.ERROR, logger="d2tls.core.dtls"):
        server.receive_datagram(hello, ("192.0.2.9", 9), 0.0)
    ((reply, _),) = server.datagrams_to_send(0.0)
    ((record,), _) = parse_datagram(reply)
    assert (record.content_type, record.fragment) == (21, bytes([2, 80]))  # fatal internal_error
    (event,) = iter(server.next_event, None)
    assert isinstance(event, InternalError) and event.exception == "KeyError: 'injected bug'"
    assert event.alert == AlertDescription.INTERNAL_ERROR
    assert server.counters().internal_errors == 1
    assert "internal error in dtls_server" in caplog.text and "KeyError" in caplog.text
