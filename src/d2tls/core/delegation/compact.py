"""The compact bound-mode transcript (spec/delegation.md §6, "Compact transcript").

The agent sends the transcript without the device's own Certificate message, and without the
server's Certificate message when the device said (server_certificate_hash) that it holds
that exact message from a transcript it checked before: the device rebuilds the exact bytes.
The device's Certificate sits right before the final ClientKeyExchange (RFC 5246 §7.3, client
flight) with the ClientKeyExchange's message_seq minus one; the server's right after the
ServerHello with the ServerHello's message_seq plus one (RFC 6347 §4.2.2). The rebuilt
transcript is therefore unique, and the device applies every §6 rule to it exactly as to a
full transcript.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

from d2tls.core.dtls.constants import HandshakeType
from d2tls.core.dtls.fragments import parse_handshake_fragments
from d2tls.core.dtls.messages import Certificate, RawPublicKeyCertificate, encode_handshake
from d2tls.core.errors import D2TLSError

_HEADER = 12


class CompactTranscriptError(D2TLSError):
    """A compact transcript cannot be expanded: it does not end with a ClientKeyExchange."""


class _Span(NamedTuple):
    """One handshake message of a transcript and its byte range."""

    msg_type: int
    message_seq: int
    start: int
    end: int
    whole: bool
    body: bytes


def _spans(transcript: bytes) -> list[_Span]:
    """The handshake messages of ``transcript`` with their byte ranges (DecodeError if it is
    not a sequence of handshake fragments)."""
    spans, offset = [], 0
    for m in parse_handshake_fragments(transcript):
        end = offset + _HEADER + m.fragment_length
        whole = m.fragment_offset == 0 and m.fragment_length == m.length
        spans.append(_Span(m.msg_type, m.message_seq, offset, end, whole, m.body))
        offset = end
    return spans


def client_certificate_body(
    certificate_chain: Sequence[bytes], raw_public_key: bytes | None
) -> bytes:
    """The body of the device's Certificate message (RFC 5246 §7.4.6, RFC 7250 §3); the
    same chain gives the same bytes, so they are made once per chain."""
    return _certificate_body(tuple(certificate_chain), raw_public_key)


@lru_cache(maxsize=8)
def _certificate_body(certificate_chain: tuple[bytes, ...], raw_public_key: bytes | None) -> bytes:
    if raw_public_key is not None:
        return RawPublicKeyCertificate(raw_public_key).encode()
    return Certificate(tuple(certificate_chain)).encode()


def server_certificate_body(transcript: bytes) -> bytes | None:
    """The body of the first Certificate message of a transcript (the server's), if any."""
    try:
        spans = _spans(transcript)
    except D2TLSError:
        return None
    found = [s for s in spans if s.msg_type == HandshakeType.CERTIFICATE and s.whole]
    return found[0].body if found else None


def _final_key_exchange(spans: list[_Span]) -> _Span:
    if not spans:
        raise CompactTranscriptError("the transcript is empty")
    last = spans[-1]
    if last.msg_type != HandshakeType.CLIENT_KEY_EXCHANGE:
        raise CompactTranscriptError("the transcript does not end with the ClientKeyExchange")
    if not last.whole:
        raise CompactTranscriptError("the ClientKeyExchange is fragmented")
    if last.message_seq < 1:
        raise CompactTranscriptError("the ClientKeyExchange has message_seq 0")
    return last


def _after_server_hello(spans: list[_Span]) -> tuple[_Span, _Span | None] | None:
    """The first ServerHello and the message after it (None: no such ServerHello)."""
    for index, span in enumerate(spans):
        if span.msg_type == HandshakeType.SERVER_HELLO:
            return span, spans[index + 1] if index + 1 < len(spans) else None
    return None


def compact_transcript(
    transcript: bytes, client_certificate: bytes, server_certificate_hash: bytes | None = None
) -> bytes | None:
    """Agent: ``transcript`` without the device's Certificate message (body
    ``client_certificate``, right before a final ClientKeyExchange), and without the server's
    Certificate message right after the ServerHello if SHA-256 of its body is
    ``server_certificate_hash``. None if the device's Certificate is not where §6 says (then
    the full transcript must be sent)."""
    try:
        spans = _spans(transcript)
        last = _final_key_exchange(spans)
    except D2TLSError:
        return None
    mine = encode_handshake(HandshakeType.CERTIFICATE, last.message_seq - 1, client_certificate)
    start = last.start - len(mine)
    if start < 0 or transcript[start : last.start] != mine:
        return None
    out = transcript[:start] + transcript[last.start :]
    found = _after_server_hello(spans) if server_certificate_hash is not None else None
    if found is None or server_certificate_hash is None:
        return out
    hello, theirs = found
    if theirs is not None:
        held = server_certificate_hash
        if (
            theirs.msg_type == HandshakeType.CERTIFICATE
            and theirs.whole
            and theirs.message_seq == hello.message_seq + 1
            and theirs.end <= start
            and hmac.compare_digest(hashlib.sha256(theirs.body).digest(), held)
        ):
            out = out[: theirs.start] + out[theirs.end :]
    return out


def rebuild_transcript(
    compact: bytes,
    certificate_chain: Sequence[bytes],
    raw_public_key: bytes | None,
    server_certificate: bytes | None = None,
) -> bytes:
    """Device: the full transcript. Its own Certificate message goes back in front of the
    final ClientKeyExchange; with ``server_certificate`` (the body whose hash the request
    carried), that Certificate goes back right after the ServerHello unless a Certificate is
    already there. CompactTranscriptError (or DecodeError) if ``compact`` is not a sequence of
    handshake messages ending with a whole ClientKeyExchange."""
    spans = _spans(compact)
    last = _final_key_exchange(spans)
    body = client_certificate_body(certificate_chain, raw_public_key)
    mine = encode_handshake(HandshakeType.CERTIFICATE, last.message_seq - 1, body)
    out = compact[: last.start] + mine + compact[last.start :]
    found = _after_server_hello(spans) if server_certificate is not None else None
    if found is not None:
        hello, following = found
        if following is None or following.msg_type != HandshakeType.CERTIFICATE:
            assert server_certificate is not None
            theirs = encode_handshake(
                HandshakeType.CERTIFICATE, (hello.message_seq + 1) & 0xFFFF, server_certificate
            )
            out = out[: hello.end] + theirs + out[hello.end :]
    return out
