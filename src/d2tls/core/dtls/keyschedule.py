"""TLS 1.2 key schedule with the SHA-256 PRF (RFC 5246 §5, §6.3, §8.1; RFC 7627; RFC 4279 §2;
RFC 5489 §2).

Every d2tls suite (CCM_8, GCM_SHA256, PSK_CCM_8, ECDHE_PSK_CHACHA20_POLY1305_SHA256,
ECDHE_PSK_AES_128_GCM_SHA256) uses the SHA-256 PRF: RFC 5246 §5 makes it the default,
RFC 5289 §3.2, RFC 6655 §3 / RFC 7251 §2, RFC 7905 §2 and RFC 8442 §2 keep it for these AEAD
suites.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from d2tls.core.dtls.constants import CHACHA20_SUITES, CipherSuite
from d2tls.core.errors import IllegalParameter

#: Length of the master secret (RFC 5246 §8.1).
MASTER_SECRET_LEN = 48
#: Length of ClientHello.random / ServerHello.random (RFC 5246 §7.4.1.2).
RANDOM_LEN = 32
#: Length of Finished.verify_data for the TLS 1.2 PRF (RFC 5246 §7.4.9).
VERIFY_DATA_LEN = 12
#: enc_key_length of AES-128 (RFC 5246 §6.3).
KEY_LEN = 16
#: fixed_iv_length, the implicit nonce salt of the AEAD suites (RFC 5288 §3, RFC 6655 §3).
SALT_LEN = 4
#: enc_key_length and fixed_iv_length of ChaCha20-Poly1305 (RFC 7905 §2).
CHACHA20_KEY_LEN = 32
CHACHA20_IV_LEN = 12

CLIENT_FINISHED = b"client finished"
SERVER_FINISHED = b"server finished"

#: Uncompressed secp256r1 point: 0x04 || X(32) || Y(32) (RFC 8422 §5.4, §5.1.2; SEC 1 §2.3.3).
_UNCOMPRESSED_P256_LEN = 65


def _hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) in one call (OpenSSL through the stdlib's one-shot digest)."""
    return hmac.digest(key, data, "sha256")


def prf(secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    """``PRF(secret, label, seed) = P_SHA256(secret, label + seed)`` truncated (RFC 5246 §5)."""
    if length < 0:
        raise ValueError("PRF output length must be non-negative")
    label_seed = bytes(label) + bytes(seed)
    secret = bytes(secret)
    out = bytearray()
    a = label_seed  # A(0) = seed
    while len(out) < length:
        a = _hmac_sha256(secret, a)  # A(i) = HMAC_hash(secret, A(i-1))
        out += _hmac_sha256(secret, a + label_seed)
    return bytes(out[:length])


def _check_random(name: str, value: bytes) -> None:
    if len(value) != RANDOM_LEN:
        raise ValueError(f"{name} must be {RANDOM_LEN} bytes, got {len(value)}")


def _check_master(master: bytes) -> None:
    if len(master) != MASTER_SECRET_LEN:
        raise ValueError(f"master secret must be {MASTER_SECRET_LEN} bytes, got {len(master)}")


def master_secret(pre_master: bytes, client_random: bytes, server_random: bytes) -> bytearray:
    """``PRF(pre_master, "master secret", client_random + server_random)[0..47]`` (RFC 5246 §8.1).

    Returned as a ``bytearray`` so the holder can overwrite it when done.
    """
    _check_random("client_random", client_random)
    _check_random("server_random", server_random)
    seed = bytes(client_random) + bytes(server_random)
    return bytearray(prf(pre_master, b"master secret", seed, MASTER_SECRET_LEN))


def extended_master_secret(pre_master: bytes, session_hash: bytes) -> bytearray:
    """``PRF(pre_master, "extended master secret", session_hash)[0..47]`` (RFC 7627 §4)."""
    return bytearray(prf(pre_master, b"extended master secret", session_hash, MASTER_SECRET_LEN))


def psk_pre_master_secret(psk: bytes) -> bytes:
    """Plain-PSK premaster: ``uint16 N, N zero octets, uint16 N, psk`` (RFC 4279 §2)."""
    n = len(psk)
    if n == 0 or n > 0xFFFF:
        raise ValueError("PSK must be 1..65535 bytes")
    length = n.to_bytes(2, "big")
    return length + bytes(n) + length + bytes(psk)


def ecdhe_psk_pre_master_secret(shared: bytes, psk: bytes) -> bytes:
    """ECDHE-PSK premaster: ``uint16 len, ECDH shared secret, uint16 len, psk``
    (RFC 5489 §2: RFC 4279 §2's structure with other_secret = the ECDH result)."""
    n = len(psk)
    if n == 0 or n > 0xFFFF:
        raise ValueError("PSK must be 1..65535 bytes")
    if not shared:
        raise ValueError("ECDH shared secret is empty")
    return len(shared).to_bytes(2, "big") + bytes(shared) + n.to_bytes(2, "big") + bytes(psk)


def ecdhe_pre_master_secret(private_key: ec.EllipticCurvePrivateKey, peer_point: bytes) -> bytes:
    """ECDH on secp256r1; the premaster is the 32-byte padded x-coordinate (RFC 8422 §5.10).

    ``peer_point`` must be an uncompressed point (RFC 8422 §5.1.2: the only format we offer) on
    the curve; anything else raises :class:`IllegalParameter` (RFC 8422 §5.11).
    """
    if not isinstance(private_key.curve, ec.SECP256R1):
        raise ValueError("ephemeral key must be on secp256r1")
    point = bytes(peer_point)
    if len(point) != _UNCOMPRESSED_P256_LEN or point[0] != 0x04:
        raise IllegalParameter("peer EC point is not an uncompressed secp256r1 point")
    try:
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        return private_key.exchange(ec.ECDH(), peer)
    except ValueError as exc:
        raise IllegalParameter(f"invalid peer EC point: {exc}") from None


@dataclass(frozen=True)
class TrafficKeys:
    """The AEAD partition of the key block (RFC 5246 §6.3; no MAC keys per RFC 5288 §3).

    ``*_write_iv`` are the 4-byte implicit nonce salts (RFC 5288 §3, RFC 6655 §3).
    """

    client_write_key: bytes
    server_write_key: bytes
    client_write_iv: bytes
    server_write_iv: bytes

    def __repr__(self) -> str:
        return "TrafficKeys(<redacted>)"

    __str__ = __repr__


def key_block(
    master: bytes, client_random: bytes, server_random: bytes, suite: CipherSuite
) -> TrafficKeys:
    """``PRF(master, "key expansion", server_random + client_random)`` split per RFC 5246 §6.3.

    For our AES-128 AEAD suites mac_key_length is 0 (RFC 5288 §3, RFC 6655 §3), so the block is
    client_write_key(16) server_write_key(16) client_write_IV(4) server_write_IV(4); for
    ChaCha20-Poly1305 the keys are 32 bytes and the IVs 12 (RFC 7905 §2).
    """
    suite = CipherSuite(suite)  # reject anything we do not implement
    _check_master(master)
    _check_random("client_random", client_random)
    _check_random("server_random", server_random)
    seed = bytes(server_random) + bytes(client_random)
    if suite in CHACHA20_SUITES:
        k, s = CHACHA20_KEY_LEN, CHACHA20_IV_LEN
    else:
        k, s = KEY_LEN, SALT_LEN
    block = prf(master, b"key expansion", seed, 2 * k + 2 * s)
    return TrafficKeys(
        client_write_key=block[0:k],
        server_write_key=block[k : 2 * k],
        client_write_iv=block[2 * k : 2 * k + s],
        server_write_iv=block[2 * k + s : 2 * k + 2 * s],
    )


def verify_data(master: bytes, label: bytes, transcript_hash: bytes) -> bytes:
    """``PRF(master, finished_label, Hash(handshake_messages))[0..11]`` (RFC 5246 §7.4.9)."""
    if label not in (CLIENT_FINISHED, SERVER_FINISHED):
        raise ValueError(f"not a Finished label: {label!r}")
    _check_master(master)
    return prf(master, label, transcript_hash, VERIFY_DATA_LEN)


def transcript_hash(transcript: bytes) -> bytes:
    """SHA-256 of the handshake transcript, the PRF hash (RFC 5246 §7.4.9, RFC 7627 §3)."""
    return hashlib.sha256(transcript).digest()
