"""Bounds-checked byte reader and writer; every short read is a DecodeError."""

from __future__ import annotations

from d2tls.core.errors import DecodeError


class Reader:
    """Reads big-endian fields from hostile bytes (RFC 5246 §4 presentation language)."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        """Bytes not yet read."""
        return len(self._data) - self._pos

    def eof(self) -> bool:
        """True when every byte has been consumed."""
        return self._pos >= len(self._data)

    def read(self, n: int) -> bytes:
        """Read exactly ``n`` bytes."""
        pos = self._pos
        end = pos + n
        if n < 0 or end > len(self._data):
            raise DecodeError(f"truncated: wanted {n} bytes, {self.remaining} left")
        self._pos = end
        return self._data[pos:end]

    def uint(self, width: int) -> int:
        """Read an unsigned integer of ``width`` bytes."""
        pos = self._pos
        end = pos + width
        if width < 0 or end > len(self._data):
            raise DecodeError(f"truncated: wanted {width} bytes, {self.remaining} left")
        self._pos = end
        return int.from_bytes(self._data[pos:end], "big")

    def u8(self) -> int:
        pos = self._pos
        if pos >= len(self._data):
            raise DecodeError(f"truncated: wanted 1 bytes, {self.remaining} left")
        self._pos = pos + 1
        return self._data[pos]

    def u16(self) -> int:
        return self.uint(2)

    def u24(self) -> int:
        return self.uint(3)

    def u48(self) -> int:
        return self.uint(6)

    def vector(self, length_width: int, minimum: int = 0, maximum: int | None = None) -> bytes:
        """Read an opaque vector ``<minimum..maximum>`` with a ``length_width``-byte length."""
        n = self.uint(length_width)
        if n < minimum or (maximum is not None and n > maximum):
            raise DecodeError(f"vector length {n} outside <{minimum}..{maximum}>")
        return self.read(n)

    def rest(self) -> bytes:
        """Read everything that is left."""
        return self.read(self.remaining)

    def expect_end(self, what: str) -> None:
        """Fail on trailing bytes (RFC 5246 §7.4: messages have exact lengths)."""
        if not self.eof():
            raise DecodeError(f"{self.remaining} trailing bytes after {what}")


class Writer:
    """Builds big-endian fields."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def raw(self, data: bytes) -> Writer:
        self._parts.append(bytes(data))
        return self

    def uint(self, value: int, width: int) -> Writer:
        self._parts.append(value.to_bytes(width, "big"))
        return self

    def u8(self, value: int) -> Writer:
        return self.uint(value, 1)

    def u16(self, value: int) -> Writer:
        return self.uint(value, 2)

    def u24(self, value: int) -> Writer:
        return self.uint(value, 3)

    def u48(self, value: int) -> Writer:
        return self.uint(value, 6)

    def vector(self, data: bytes, length_width: int) -> Writer:
        """Write an opaque vector with a ``length_width``-byte length prefix."""
        if len(data) >= 1 << (8 * length_width):
            raise ValueError("vector too long for its length field")
        return self.uint(len(data), length_width).raw(data)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)
