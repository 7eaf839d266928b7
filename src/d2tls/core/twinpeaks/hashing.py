"""Hashing for TwinPeaks: SHA-256, expand_message_xmd and hash-to-scalar, from ``cryptography``.

``hash_to_scalar`` is hash_to_field of RFC 9380 §5.2 with count = 1, m = 1 and the modulus
set to the P-256 group order n, as RFC 9497 §4.3 does for its P256-SHA256 HashToScalar:
expand_message_xmd with SHA-256 (RFC 9380 §5.3.1) to L = 48 bytes, reduced mod n.
"""

from __future__ import annotations

from typing import Final

from cryptography.hazmat.primitives import hashes

from d2tls.core.twinpeaks.curve import ORDER
from d2tls.core.twinpeaks.errors import TwinPeaksError

HASH_SIZE: Final = 32
_BLOCK_SIZE: Final = 64  # s_in_bytes of SHA-256
SCALAR_HASH_BYTES: Final = 48
"""L = ceil((ceil(log2(n)) + k) / 8) with k = 128 (RFC 9380 §5.1)."""


def sha256(data: bytes) -> bytes:
    """SHA-256 (FIPS 180-4)."""
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


def expand_message_xmd(msg: bytes, dst: bytes, length: int) -> bytes:
    """expand_message_xmd with SHA-256 (RFC 9380 §5.3.1)."""
    ell = -(-length // HASH_SIZE)
    if ell > 255 or length > 65535 or length < 1 or not 1 <= len(dst) <= 255:
        raise TwinPeaksError("expand_message_xmd: length or DST out of range (RFC 9380 §5.3.1)")
    dst_prime = dst + bytes([len(dst)])
    b_0 = sha256(bytes(_BLOCK_SIZE) + msg + length.to_bytes(2, "big") + b"\x00" + dst_prime)
    blocks = [sha256(b_0 + b"\x01" + dst_prime)]
    for i in range(2, ell + 1):
        mixed = bytes(a ^ b for a, b in zip(b_0, blocks[-1], strict=True))
        blocks.append(sha256(mixed + bytes([i]) + dst_prime))
    return b"".join(blocks)[:length]


def hash_to_scalar(msg: bytes, dst: bytes) -> int:
    """hash_to_field(msg, 1) into Z/nZ (RFC 9380 §5.2; RFC 9497 §4.3). May be 0 with
    probability about 2^-256; callers that need a non-zero scalar check."""
    return int.from_bytes(expand_message_xmd(msg, dst, SCALAR_HASH_BYTES), "big") % ORDER
