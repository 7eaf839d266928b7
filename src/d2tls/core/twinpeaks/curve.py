"""The P-256 group (SEC 2 v2 §2.4.2 secp256r1, FIPS 186-5 P-256) for TwinPeaks.

Point arithmetic is the ``ecdsa`` package's (``ecdsa.ellipticcurve`` over
``ecdsa.curves.NIST256p``); point decoding is ``cryptography``'s SEC 1 decoder, which checks that
the point is on the curve; nothing here does field arithmetic by hand. Points are immutable
affine :class:`Point` values and never the point at infinity: an operation whose result would
be the identity raises :class:`~d2tls.core.twinpeaks.errors.InvalidPoint`.

Randomness is injected: every function that needs it takes a :data:`RandomSource` (a callable
returning that many random bytes), whose default, :func:`~d2tls.core.randomness.system_random`
(re-exported here), lives in :mod:`d2tls.core.randomness`, the one module of the protocol core that
reads the operating system's generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, cast

from cryptography.hazmat.primitives.asymmetric import ec
from ecdsa.curves import NIST256p  # type: ignore[import-untyped]
from ecdsa.ellipticcurve import INFINITY, PointJacobi  # type: ignore[import-untyped]

from d2tls.core.randomness import RandomBytes, system_random
from d2tls.core.twinpeaks.errors import InvalidPoint, InvalidScalar, TwinPeaksError

RandomSource = RandomBytes
"""Returns the given number of uniformly random bytes (like ``os.urandom``)."""

ORDER: Final[int] = cast(int, NIST256p.order)
"""n, the order of the base point G (prime; the cofactor of P-256 is 1)."""
FIELD_PRIME: Final[int] = cast(int, NIST256p.curve.p())
SCALAR_SIZE: Final = 32
POINT_SIZE: Final = 65
"""An uncompressed SEC 1 point: 0x04 || X || Y, 32 bytes each."""
RANDOM_SCALAR_BYTES: Final = 48
"""Bytes drawn per random scalar: 64 bits more than n has (FIPS 186-5 §A.2.1)."""

_CURVE: Final[Any] = NIST256p.curve
_GENERATOR: Final[Any] = NIST256p.generator


@dataclass(frozen=True, slots=True)
class Point:
    """An affine P-256 point other than the identity. Build one with :func:`decode_point` or
    the arithmetic below; the constructor checks that (x, y) is on the curve."""

    x: int
    y: int

    def __post_init__(self) -> None:
        if not (0 <= self.x < FIELD_PRIME and 0 <= self.y < FIELD_PRIME) or not bool(
            _CURVE.contains_point(self.x, self.y)
        ):
            raise InvalidPoint("point is not on P-256")

    def encode(self) -> bytes:
        """The uncompressed SEC 1 encoding (SEC 1 v2 §2.3.3), 65 bytes."""
        return b"\x04" + self.x.to_bytes(32, "big") + self.y.to_bytes(32, "big")

    def to_public_key(self) -> ec.EllipticCurvePublicKey:
        """This point as a ``cryptography`` public key (for ECDSA verification or ECDH)."""
        return ec.EllipticCurvePublicNumbers(self.x, self.y, ec.SECP256R1()).public_key()

    def __repr__(self) -> str:
        return f"Point({self.encode().hex()})"


def _from_jacobi(point: Any) -> Point:
    if point == INFINITY:
        raise InvalidPoint("the result is the point at infinity")
    return Point(int(point.x()), int(point.y()))


def _to_jacobi(point: Point) -> Any:
    return PointJacobi(_CURVE, point.x, point.y, 1, ORDER)


GENERATOR: Final[Point] = _from_jacobi(_GENERATOR)
"""G, the base point of P-256."""


def check_scalar(k: int) -> int:
    """Return k if 1 <= k < n, else raise InvalidScalar."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < ORDER:
        raise InvalidScalar("scalar is not in [1, n-1]")
    return k


def base_mul(k: int) -> Point:
    """[k]G for 1 <= k < n."""
    return _from_jacobi(_GENERATOR * check_scalar(k))


def mul(point: Point, k: int) -> Point:
    """[k]P for 1 <= k < n (never the identity: n is prime and P is not the identity)."""
    return _from_jacobi(_to_jacobi(point) * check_scalar(k))


def add(p: Point, q: Point) -> Point:
    """P + Q; raises InvalidPoint if the sum is the identity (Q = -P)."""
    return _from_jacobi(_to_jacobi(p) + _to_jacobi(q))


def decode_point(data: bytes) -> Point:
    """Decode an uncompressed SEC 1 point, checking it (SEC 1 v2 §3.2.2.1): exactly 65 bytes
    starting 0x04, coordinates below p, on the curve. Compressed, hybrid and identity
    encodings are refused, so every point has exactly one encoding."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidPoint("a point must be bytes")
    data = bytes(data)
    if len(data) != POINT_SIZE or data[0] != 0x04:
        raise InvalidPoint(f"a point is 65 bytes starting 0x04 (got {len(data)} bytes)")
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), data)
    except ValueError:
        raise InvalidPoint("point is not on P-256") from None
    numbers = key.public_numbers()
    return Point(numbers.x, numbers.y)


def encode_scalar(k: int) -> bytes:
    """A scalar in [1, n-1] as 32 bytes, big-endian."""
    return check_scalar(k).to_bytes(SCALAR_SIZE, "big")


def decode_scalar(data: bytes) -> int:
    """Decode a 32-byte big-endian scalar; refuse 0 and values >= n."""
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) != SCALAR_SIZE:
        raise InvalidScalar("a scalar is 32 bytes")
    return check_scalar(int.from_bytes(bytes(data), "big"))


def random_scalar(rng: RandomSource) -> int:
    """A uniform scalar in [1, n-1]: 48 random bytes reduced mod n-1, plus one
    (FIPS 186-5 §A.2.1, "extra random bits"; the bias is below 2^-64)."""
    data = rng(RANDOM_SCALAR_BYTES)
    if not isinstance(data, bytes) or len(data) != RANDOM_SCALAR_BYTES:
        raise TwinPeaksError(f"the random source must return {RANDOM_SCALAR_BYTES} bytes")
    return int.from_bytes(data, "big") % (ORDER - 1) + 1


def private_key(k: int) -> ec.EllipticCurvePrivateKey:
    """The scalar k as a ``cryptography`` P-256 private key (for ECDSA or ECDH)."""
    return ec.derive_private_key(check_scalar(k), ec.SECP256R1())


__all__ = [
    "FIELD_PRIME",
    "GENERATOR",
    "ORDER",
    "POINT_SIZE",
    "SCALAR_SIZE",
    "Point",
    "RandomSource",
    "add",
    "base_mul",
    "check_scalar",
    "decode_point",
    "decode_scalar",
    "encode_scalar",
    "mul",
    "private_key",
    "random_scalar",
    "system_random",
]
