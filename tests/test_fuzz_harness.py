"""The atheris harnesses of d2tls.adversary.fuzz, replayed without atheris.

Every target accepts real protocol bytes and their mutations, rejecting bad input only with a
typed D2TLSError (RFC 6347 §4.1.2.7, RFC 5246 §7.2.2); a harness that raised on its own
seeds, or let an untyped exception through, would make the fuzzing runs meaningless.
"""

from __future__ import annotations

import random

import pytest

from d2tls.adversary.fuzz import TARGETS, _all, guarded, main
from d2tls.adversary.world import D2TLSWorld
from d2tls.delegation.messages import (
    DelegationError,
    DelegationErrorCode,
    DelegationMessage,
    SessionContext,
    SignRequest,
    Wiped,
    encode_message,
)
from d2tls.dtls.fragments import parse_handshake_fragments
from d2tls.dtls.record import parse_datagram
from d2tls.errors import D2TLSError


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
