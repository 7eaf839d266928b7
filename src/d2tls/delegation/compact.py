"""The compact bound-mode transcript (spec/delegation.md §6, "Compact transcript").

The agent sends the transcript without the device's own Certificate message: the device
holds that message's content (its chain or raw public key) and rebuilds the exact bytes. The
message sits right before the ClientKeyExchange (RFC 5246 §7.3, client flight) and its DTLS
message_seq is the ClientKeyExchange's minus one (RFC 6347 §4.2.2), so the rebuilt transcript
is unique; the device then applies every §6 rule to it, exactly as to a full transcript.
"""

from __future__ import annotations

from collections.abc import Sequence

from d2tls.dtls.constants import HandshakeType
from d2tls.dtls.fragments import parse_handshake_fragments
from d2tls.dtls.messages import Certificate, RawPublicKeyCertificate, encode_handshake
from d2tls.errors import D2TLSError

_HEADER = 12


class CompactTranscriptError(D2TLSError):
    """A compact transcript cannot be expanded: it does not end with a ClientKeyExchange."""


def client_certificate_body(
    certificate_chain: Sequence[bytes], raw_public_key: bytes | None
) -> bytes:
    """The body of the device's Certificate message (RFC 5246 §7.4.6, RFC 7250 §3)."""
    if raw_public_key is not None:
        return RawPublicKeyCertificate(raw_public_key).encode()
    return Certificate(tuple(certificate_chain)).encode()


def _last_message_start(transcript: bytes) -> tuple[int, int]:
    """(offset, message_seq) of the last handshake message, which must be whole and a
    ClientKeyExchange."""
    messages = parse_handshake_fragments(transcript)
    last = messages[-1]
    if last.msg_type != HandshakeType.CLIENT_KEY_EXCHANGE:
        raise CompactTranscriptError("the transcript does not end with the ClientKeyExchange")
    if last.fragment_offset != 0 or last.fragment_length != last.length:
        raise CompactTranscriptError("the ClientKeyExchange is fragmented")
    if last.message_seq < 1:
        raise CompactTranscriptError("the ClientKeyExchange has message_seq 0")
    return len(transcript) - _HEADER - last.fragment_length, last.message_seq


def compact_transcript(transcript: bytes, client_certificate: bytes) -> bytes | None:
    """Agent: ``transcript`` without the device's Certificate message, or None if the
    transcript does not hold that message (with body ``client_certificate``) right before a
    final ClientKeyExchange (then the full transcript must be sent)."""
    try:
        end, seq = _last_message_start(transcript)
    except D2TLSError:
        return None
    message = encode_handshake(HandshakeType.CERTIFICATE, seq - 1, client_certificate)
    start = end - len(message)
    if start < 0 or transcript[start:end] != message:
        return None
    return transcript[:start] + transcript[end:]


def rebuild_transcript(
    compact: bytes, certificate_chain: Sequence[bytes], raw_public_key: bytes | None
) -> bytes:
    """Device: the full transcript, with its own Certificate message put back in front of the
    final ClientKeyExchange. CompactTranscriptError (or DecodeError) if ``compact`` is not a
    sequence of handshake messages ending with a whole ClientKeyExchange."""
    end, seq = _last_message_start(compact)
    body = client_certificate_body(certificate_chain, raw_public_key)
    return (
        compact[:end] + encode_handshake(HandshakeType.CERTIFICATE, seq - 1, body) + compact[end:]
    )
