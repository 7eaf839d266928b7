"""Records the adversary builds itself, with the keys it knows.

Epoch 0 needs no key. For protected epochs the adversary uses keys it legitimately holds (its own
connections), keys a compromised agent leaked, or keys it derives from a leaked master secret and
the public randoms it saw on the wire (RFC 5246 §6.3: key_block = PRF(master, "key expansion",
server_random + client_random)) — exactly what DTLS 1.2 resumption lets such an agent do.
"""

from __future__ import annotations

from dataclasses import dataclass

from d2tls.core.dtls import keyschedule
from d2tls.core.dtls.connection import Connection
from d2tls.core.dtls.constants import (
    DTLS_1_2,
    MAX_SEQUENCE,
    CipherSuite,
    ContentType,
    HandshakeType,
)
from d2tls.core.dtls.fragments import parse_handshake_fragments
from d2tls.core.dtls.messages import ClientHello, ServerHello
from d2tls.core.dtls.record import AEADProtection, Record, encode_record, parse_datagram
from d2tls.core.errors import D2TLSError
from d2tls.sim import Address, Network


def seal(
    protection: AEADProtection | None,
    epoch: int,
    seq: int,
    payload: bytes,
    content_type: int = ContentType.APPLICATION_DATA,
    version: int = DTLS_1_2,
) -> Record:
    """One record with an explicit epoch and sequence number (no sender state involved)."""
    seq = min(max(seq, 0), MAX_SEQUENCE)
    if protection is None:
        fragment = bytes(payload)
    else:
        fragment = protection.seal(content_type, version, epoch, seq, payload)
    return Record(content_type, version, epoch, seq, fragment)


def datagram(*records: Record) -> bytes:
    return b"".join(encode_record(r) for r in records)


@dataclass(frozen=True)
class EpochKeys:
    """The write protection of one direction of one epoch, and the next sequence number."""

    epoch: int
    protection: AEADProtection | None
    next_seq: int


def write_keys(conn: Connection) -> EpochKeys:
    """The keys ``conn`` currently writes with (what leaks with the endpoint's memory)."""
    state = conn._writes[conn._write_epoch]
    return EpochKeys(state.epoch, state.protection, state.write_seq)


def derive_keys(
    master: bytes, client_random: bytes, server_random: bytes, suite: CipherSuite
) -> tuple[AEADProtection, AEADProtection]:
    """(client_write, server_write) protections of a connection, from public randoms."""
    keys = keyschedule.key_block(master, client_random, server_random, suite)
    return (
        AEADProtection(suite, keys.client_write_key, keys.client_write_iv),
        AEADProtection(suite, keys.server_write_key, keys.server_write_iv),
    )


@dataclass(frozen=True)
class Hellos:
    """What an on-path observer learns from the cleartext hellos of one connection."""

    client_random: bytes
    server_random: bytes
    session_id: bytes
    cipher_suite: int


def observed_hellos(net: Network, client: Address, server: Address) -> Hellos | None:
    """The last ClientHello/ServerHello pair seen between ``client`` and ``server``."""
    client_random = server_random = session_id = b""
    suite = 0
    for sent in net.history:
        if {sent.source, sent.destination} != {client, server}:
            continue
        records, _ = parse_datagram(sent.data)
        for record in records:
            if record.epoch != 0 or record.content_type != ContentType.HANDSHAKE:
                continue
            try:
                fragments = parse_handshake_fragments(record.fragment)
            except D2TLSError:
                continue
            for fragment in fragments:
                if fragment.fragment_offset != 0 or fragment.fragment_length != fragment.length:
                    continue
                try:
                    if fragment.msg_type == HandshakeType.CLIENT_HELLO and sent.source == client:
                        client_random = ClientHello.decode(fragment.body).random
                    elif fragment.msg_type == HandshakeType.SERVER_HELLO and sent.source == server:
                        hello = ServerHello.decode(fragment.body)
                        server_random, session_id = hello.random, hello.session_id
                        suite = hello.cipher_suite
                except D2TLSError:
                    continue
    if not client_random or not server_random:
        return None
    return Hellos(client_random, server_random, session_id, suite)


def highest_sequence(net: Network, source: Address, destination: Address, epoch: int) -> int:
    """Highest record sequence number seen on a link in ``epoch`` (-1 if none)."""
    highest = -1
    for sent in net.datagrams(source, destination):
        records, _ = parse_datagram(sent.data)
        for record in records:
            if record.epoch == epoch:
                highest = max(highest, record.sequence_number)
    return highest
