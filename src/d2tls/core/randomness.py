"""Randomness for the protocol core: the only module of the core that reads the system CSPRNG
or generates keys with the system generator (docs/architecture.md, "Time and randomness").

Engines take a :class:`Randomness` (``ClientConfig.randomness``, ``ServerConfig.randomness``,
``DeviceConfig.randomness``, ...) whose default, :data:`SYSTEM`, is the operating system's
generator: hello randoms, session IDs and cookie secrets come from ``os.urandom``, ephemeral
ECDHE keys from ``cryptography``'s key generation, and ECDSA signatures are randomized.

``cryptography`` cannot generate a key from a caller's generator, so the key generation itself
is injected (:meth:`Randomness.ec_private_key`). :class:`SeededRandomness` derives every byte
and every key from a seed, and signs with RFC 6979 deterministic ECDSA (``cryptography`` >= 44),
so that two runs with the same seed and clock send byte-identical datagrams. It is for tests and
simulations only: a seed known to anyone makes every key and secret known to them.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from typing import Protocol, TypeAlias

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

RandomBytes: TypeAlias = Callable[[int], bytes]
"""Returns the given number of uniformly random bytes (like ``os.urandom``)."""

#: The order of the P-256 base point (SEC 2 v2 §2.4.2).
_P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def system_random(size: int) -> bytes:
    """The default :data:`RandomBytes`: the operating system's CSPRNG."""
    return os.urandom(size)


class Randomness(Protocol):
    """Where an engine gets random bytes, ephemeral keys and its ECDSA signature scheme."""

    def random_bytes(self, size: int) -> bytes:
        """``size`` uniformly random bytes."""
        ...

    def ec_private_key(self) -> ec.EllipticCurvePrivateKey:
        """A fresh P-256 private key (ECDHE ephemeral keys, RFC 8422 §5.10)."""
        ...

    def ecdsa(self) -> ec.ECDSA:
        """The ECDSA-with-SHA-256 signature algorithm to sign with (RFC 5246 §7.4.8)."""
        ...


class SystemRandomness:
    """The secure default: the operating system's generator, randomized ECDSA."""

    def random_bytes(self, size: int) -> bytes:
        return system_random(size)

    def ec_private_key(self) -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def ecdsa(self) -> ec.ECDSA:
        return ec.ECDSA(hashes.SHA256())


#: The default :class:`Randomness` of every engine.
SYSTEM: Randomness = SystemRandomness()


class SeededRandomness:
    """A deterministic :class:`Randomness` for tests: HMAC-SHA256 in counter mode over a seed,
    P-256 keys derived from its output (FIPS 186-5 §A.2.1: 64 extra bits, reduced), and
    RFC 6979 deterministic ECDSA. Never use it outside tests and simulations."""

    def __init__(self, seed: bytes | str | int, *, deterministic_signing: bool = True) -> None:
        if isinstance(seed, int):
            seed = seed.to_bytes(16, "big", signed=True)
        elif isinstance(seed, str):
            seed = seed.encode("utf-8")
        self._key = hashlib.sha256(b"d2tls seeded randomness|" + seed).digest()
        self._counter = 0
        self._buffer = b""
        self.deterministic_signing = deterministic_signing

    def random_bytes(self, size: int) -> bytes:
        while len(self._buffer) < size:
            block = hmac.new(self._key, self._counter.to_bytes(8, "big"), "sha256").digest()
            self._buffer += block
            self._counter += 1
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    def ec_private_key(self) -> ec.EllipticCurvePrivateKey:
        scalar = int.from_bytes(self.random_bytes(48), "big") % (_P256_ORDER - 1) + 1
        return ec.derive_private_key(scalar, ec.SECP256R1())

    def ecdsa(self) -> ec.ECDSA:
        return ec.ECDSA(hashes.SHA256(), deterministic_signing=self.deterministic_signing)
