"""Coverage-guided fuzzing (atheris) of the record layer, handshake and delegation decoders.

``python -m d2tls.adversary.fuzz [record|handshake|delegation|all] [libFuzzer flags]``, e.g.
``python -m d2tls.adversary.fuzz handshake -max_total_time=300``. A decoder may reject input
only with a typed :class:`~d2tls.core.errors.D2TLSError` (RFC 6347 §4.1.2.7: invalid records are
dropped; RFC 5246 §7.2.2: decode_error); any other exception is a finding. ``record`` also
feeds each input to a fresh server engine, whose ``receive_datagram`` must never raise.

The targets are plain functions (``fuzz_record`` ...), so regression tests replay findings
without atheris. atheris is the optional extra ``fuzz`` (``pip install -e .[fuzz]``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable

from d2tls.core.delegation.messages import decode_message, encode_message
from d2tls.core.dtls.config import ServerConfig
from d2tls.core.dtls.constants import CipherSuite, HandshakeType
from d2tls.core.dtls.fragments import Reassembler, parse_handshake_fragments
from d2tls.core.dtls.messages import decode_handshake_body
from d2tls.core.dtls.record import encode_record, parse_datagram
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.errors import D2TLSError

PEER = ("192.0.2.1", 40000)
_server: DTLSServer | None = None


def _engine() -> DTLSServer:
    global _server
    if _server is None:
        _server = DTLSServer(
            ServerConfig(
                cipher_suites=(CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,),
                psk_keys={b"device-1": bytes(32)},
            )
        )
    return _server


def fuzz_record(data: bytes) -> None:
    """Records parse or are dropped; re-encoding a parsed record gives its bytes back."""
    records, _ = parse_datagram(data)
    for record in records:
        encoded = encode_record(record)
        again, _ = parse_datagram(encoded)
        if again != [record]:
            raise AssertionError(f"record does not round-trip: {record!r}")
    engine = _engine()
    bugs = engine.stats["internal_errors"]
    engine.receive_datagram(data, PEER, 0.0)
    engine.datagrams_to_send(0.0)
    while engine.next_event() is not None:
        pass
    if engine.stats["internal_errors"] != bugs:  # the engine caught a bug of its own
        raise AssertionError("internal error in the server engine (see the d2tls.core.dtls log)")


def fuzz_handshake(data: bytes) -> None:
    """Fragments, reassembly and every handshake body decoder (both key exchanges)."""
    try:
        fragments = parse_handshake_fragments(data)
    except D2TLSError:
        fragments = []
    reassembler = Reassembler()
    for fragment in fragments:
        try:
            reassembler.add(fragment)
        except D2TLSError:
            continue
        while reassembler.pop() is not None:
            pass
    body = data[1:]
    msg_type = data[0] if data else HandshakeType.CLIENT_HELLO
    for psk in (False, True):
        with contextlib.suppress(D2TLSError):
            decode_handshake_body(msg_type, body, psk=psk)


def fuzz_delegation(data: bytes) -> None:
    """Delegation messages (CBOR) decode to a message that re-encodes and decodes equal."""
    try:
        message = decode_message(data)
    except D2TLSError:
        return
    if decode_message(encode_message(message)) != message:
        raise AssertionError(f"delegation message does not round-trip: {message!r}")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "record": fuzz_record,
    "handshake": fuzz_handshake,
    "delegation": fuzz_delegation,
}


def guarded(target: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """The harness: typed errors are rejections, anything else propagates (a finding)."""

    def run(data: bytes) -> None:
        with contextlib.suppress(D2TLSError):
            target(data)

    return run


def _all(data: bytes) -> None:
    if not data:
        return
    name = sorted(TARGETS)[data[0] % len(TARGETS)]
    guarded(TARGETS[name])(data[1:])


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv if argv is None else argv)
    rest = args[1:]
    name = rest.pop(0) if rest and rest[0] in (*TARGETS, "all") else "all"
    if rest and not rest[0].startswith("-") and not os.path.exists(rest[0]):
        print(
            f"unknown target {rest[0]!r}: choose one of {', '.join(TARGETS)}, all", file=sys.stderr
        )
        return 2
    flags = [args[0], *rest]  # libFuzzer flags and corpus directories
    try:
        import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError:
        print("atheris is not installed: pip install -e .[fuzz]", file=sys.stderr)
        return 2
    atheris.instrument_all()  # every module loaded so far: d2tls, cbor2, cryptography glue
    atheris.Setup(flags, _all if name == "all" else guarded(TARGETS[name]))
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
