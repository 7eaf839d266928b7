"""The TwinPeaks identity ``ID = domain-name || IP-address || h(params)``.

Section 2.4.2 of "A New Certificateless Public Key Distribution and Lightweight Secure
Communication" (Eunsang Cho, Seoul National University) binds a member's key to its domain
name, its IP address and the hash of its key server's public parameters. spec/twinpeaks.md §3
makes the concatenation unambiguous: each field is length-prefixed, the name is normalised to
lowercase ASCII without a trailing dot, the address is its 4- or 16-byte network form.

    ID = len(D) || D || len(A) || A || len(H) || H      (each len one byte)
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final, TypeAlias

from d2tls.core.twinpeaks.errors import InvalidIdentity

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_NAME_LENGTH: Final = 253
"""Longest name in text form without the trailing dot (RFC 1035 §2.3.4: 255 octets on the
wire, which is 253 characters of text)."""
MAX_LABEL_LENGTH: Final = 63
PARAMS_HASH_SIZE: Final = 32
ROOT_ZONE: Final = "."
_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")


def normalize_name(name: str) -> str:
    """A host name in the form the identity uses: lowercase ASCII, no trailing dot, labels of
    letters, digits and inner hyphens, 1-63 characters each (RFC 1123 §2.1), at most 253
    characters. Internationalised names must be given as A-labels (``xn--...``)."""
    if not isinstance(name, str):
        raise InvalidIdentity("a domain name must be a string")
    if not name.isascii():
        raise InvalidIdentity(f"{name!r}: not ASCII; give the A-label (xn--) form")
    text = name.lower()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise InvalidIdentity("empty domain name")
    if len(text) > MAX_NAME_LENGTH:
        raise InvalidIdentity(f"domain name longer than {MAX_NAME_LENGTH} characters")
    for label in text.split("."):
        if not _LABEL.match(label):
            raise InvalidIdentity(
                f"{name!r}: label {label!r} is not 1-63 letters, digits and inner hyphens"
            )
    return text


def normalize_zone(zone: str) -> str:
    """A zone a key server serves: the root ``"."`` or a normalised name."""
    return ROOT_ZONE if zone == ROOT_ZONE else normalize_name(zone)


def parse_address(address: str | bytes | IPAddress) -> IPAddress:
    """An IPv4 or IPv6 address, given as text, as its 4- or 16-byte form, or as an
    ``ipaddress`` object. IPv4-mapped IPv6 addresses and scoped IPv6 addresses are refused
    (an IPv4 host has exactly one identity: the 4-byte one)."""
    if isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
        parsed: IPAddress = address
    elif isinstance(address, bytes):
        if len(address) not in (4, 16):
            raise InvalidIdentity(f"an IP address is 4 or 16 bytes (got {len(address)})")
        parsed = ipaddress.ip_address(address)
    elif isinstance(address, str):
        try:
            parsed = ipaddress.ip_address(address)
        except ValueError:
            raise InvalidIdentity(f"{address!r} is not an IP address") from None
    else:
        raise InvalidIdentity("an IP address must be text, bytes or an ipaddress object")
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            raise InvalidIdentity(f"{parsed}: IPv4-mapped; use the IPv4 address")
        if parsed.scope_id is not None:
            raise InvalidIdentity(f"{parsed}: a scoped address is not a host's identity")
    return parsed


@dataclass(frozen=True, slots=True)
class Identity:
    """A member's identity: its domain name, its IP address and h(params) of its key server
    (the KGC that extracts its partial private key). Construct with :meth:`of`."""

    name: str
    address: IPAddress
    params_hash: bytes

    def __post_init__(self) -> None:
        if normalize_name(self.name) != self.name:
            raise InvalidIdentity(f"{self.name!r} is not in normalised form")
        if parse_address(self.address) != self.address:
            raise InvalidIdentity("address is not in canonical form")
        if not isinstance(self.params_hash, bytes) or len(self.params_hash) != PARAMS_HASH_SIZE:
            raise InvalidIdentity(f"h(params) is {PARAMS_HASH_SIZE} bytes")

    @classmethod
    def of(cls, name: str, address: str | bytes | IPAddress, params_hash: bytes) -> Identity:
        """Normalise the name and the address, then build the identity."""
        return cls(normalize_name(name), parse_address(address), bytes(params_hash))

    def encode(self) -> bytes:
        """``len(D) || D || len(A) || A || len(H) || H`` (spec/twinpeaks.md §3)."""
        out = bytearray()
        for field in (self.name.encode("ascii"), self.address.packed, self.params_hash):
            out.append(len(field))
            out += field
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> Identity:
        """Decode :meth:`encode`'s output; anything else raises InvalidIdentity."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise InvalidIdentity("an identity must be bytes")
        data = bytes(data)
        fields: list[bytes] = []
        offset = 0
        for _ in range(3):
            if offset >= len(data):
                raise InvalidIdentity("identity truncated")
            size = data[offset]
            end = offset + 1 + size
            if end > len(data):
                raise InvalidIdentity("identity field runs past the end")
            fields.append(data[offset + 1 : end])
            offset = end
        if offset != len(data):
            raise InvalidIdentity(f"{len(data) - offset} bytes after the identity")
        name, address, params_hash = fields
        try:
            text = name.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidIdentity("domain name is not ASCII") from None
        identity = cls(text, parse_address(address), params_hash)
        if identity.encode() != data:  # unreachable given the checks; keep the invariant
            raise InvalidIdentity("identity is not in canonical form")
        return identity

    def __str__(self) -> str:
        return f"{self.name}|{self.address}|{self.params_hash.hex()[:16]}..."
