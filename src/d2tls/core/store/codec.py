"""Encrypted, pickle-free encoding of sessions for stores outside the server's memory.

A stored entry is ``header || nonce || AES-256-GCM(record)`` where

* ``header`` is the format version (1 byte) and the key ID (4 bytes) of the key that sealed it;
* ``record`` is a CBOR map with explicit fields (never pickle): session ID, master secret,
  cipher suite, EMS flag, SNI, the client certificate chain (DER), the PSK identity, creation
  time and lifetime;
* the associated data is a label, the header and the **session ID**, so an entry moved to
  another session ID (or altered in any way) does not decrypt.

The whole record is sealed, not only the master secret: the fields that bind a session
(cipher suite, EMS, SNI, client identity) are then authenticated too, and someone who can write
to the store cannot rebind a session to another identity without the key.

Keys come from a key file (``--store-key-file``): one key per line, 32 bytes as 64 hex digits;
blank lines and ``#`` comments are ignored. The first key seals new entries; every key in the
file opens entries (key rotation: put the new key first, keep the old one until its sessions
have expired).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.dtls.session import Session
from d2tls.core.errors import ConfigurationError
from d2tls.core.errors import (
    CorruptEntry as CorruptEntry,  # re-exported: its home is d2tls.core.errors
)
from d2tls.core.randomness import RandomBytes, system_random

FORMAT_VERSION = 1
KEY_LEN = 32
KEY_ID_LEN = 4
NONCE_LEN = 12
HEADER_LEN = 1 + KEY_ID_LEN
AAD_LABEL = b"d2tls session store v1\x00"
#: Most certificates kept for one client chain (as d2tls.core.pki.verify.MAX_CHAIN_LENGTH).
MAX_CERTIFICATES = 8
MASTER_SECRET_LEN = 48


def key_id(key: bytes) -> bytes:
    """A short public identifier of ``key`` (HMAC of a label; reveals nothing of the key)."""
    return hmac.new(key, b"d2tls store key id", hashlib.sha256).digest()[:KEY_ID_LEN]


@dataclass(frozen=True)
class StoreKeys:
    """The keys of a store: ``keys[0]`` seals, all of them open."""

    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigurationError("a store key file needs at least one key")
        for key in self.keys:
            if len(key) != KEY_LEN:
                raise ConfigurationError(f"store keys are {KEY_LEN} bytes, got {len(key)}")

    @classmethod
    def generate(cls, random_bytes: RandomBytes = system_random) -> StoreKeys:
        return cls((random_bytes(KEY_LEN),))

    def __repr__(self) -> str:  # never print keys
        ids = ", ".join(key_id(k).hex() for k in self.keys)
        return f"StoreKeys(ids=[{ids}])"


def parse_key_text(text: str, source: str = "key file") -> StoreKeys:
    """Parse the key file format (see module docstring)."""
    keys: list[bytes] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            key = bytes.fromhex(line)
        except ValueError:
            raise ConfigurationError(
                f"{source} line {number}: not hex (expected {2 * KEY_LEN} hex digits)"
            ) from None
        if len(key) != KEY_LEN:
            raise ConfigurationError(
                f"{source} line {number}: {len(key)} bytes, expected {KEY_LEN} "
                f"({2 * KEY_LEN} hex digits)"
            )
        keys.append(key)
    if not keys:
        raise ConfigurationError(
            f"{source} holds no key; generate one with: "
            "python -c 'import os; print(os.urandom(32).hex())' > FILE && chmod 600 FILE"
        )
    return StoreKeys(tuple(keys))


def load_key_file(path: Path) -> StoreKeys:
    """Read ``--store-key-file``; ConfigurationError with a clear message on any problem."""
    try:
        info = path.stat()
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigurationError(f"cannot read store key file {path}: {reason}") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Not fatal (containers often mount secrets 0644), but worth saying.
        import logging

        logging.getLogger("d2tls.core.store").warning(
            "store key file %s is readable by group/others (mode %o); chmod 600 it",
            path,
            stat.S_IMODE(info.st_mode),
        )
    return parse_key_text(text, f"store key file {path}")


def write_key_file(path: Path, keys: StoreKeys | None = None) -> StoreKeys:
    """Create a key file (mode 0600) with ``keys`` or a fresh key; returns the keys."""
    keys = keys or StoreKeys.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write("".join(k.hex() + "\n" for k in keys.keys))
    os.chmod(path, 0o600)
    return keys


class SessionCodec:
    """Seals sessions into opaque entries and opens them again (see module docstring)."""

    def __init__(self, keys: StoreKeys, random_bytes: RandomBytes = system_random) -> None:
        #: Source of the AES-GCM nonces (96 random bits each, NIST SP 800-38D §8.2.2).
        self._random = random_bytes
        self._seal_id = key_id(keys.keys[0])
        self._seal = AESGCM(keys.keys[0])
        self._open = {key_id(k): AESGCM(k) for k in keys.keys}

    @property
    def key_id(self) -> bytes:
        """ID of the sealing key (public)."""
        return self._seal_id

    @staticmethod
    def _aad(header: bytes, session_id: bytes) -> bytes:
        return AAD_LABEL + header + session_id

    def seal(self, session: Session) -> bytes:
        record = {
            "id": bytes(session.session_id),
            "ms": bytes(session.master_secret),
            "suite": int(session.cipher_suite),
            "ems": bool(session.extended_master_secret),
            "sni": session.server_name,
            "certs": [bytes(c) for c in session.peer_certificates],
            "psk": None if session.psk_identity is None else bytes(session.psk_identity),
            "created": float(session.created_at),
            "lifetime": float(session.lifetime),
        }
        plaintext = bytearray(cbor2.dumps(record))
        header = bytes([FORMAT_VERSION]) + self._seal_id
        nonce = self._random(NONCE_LEN)
        try:
            sealed = self._seal.encrypt(
                nonce, bytes(plaintext), self._aad(header, session.session_id)
            )
        finally:
            plaintext[:] = bytes(len(plaintext))  # best effort wipe
        return header + nonce + sealed

    def open(self, session_id: bytes, entry: bytes) -> Session:
        """The session sealed in ``entry`` for ``session_id``; CorruptEntry if unusable."""
        if len(entry) < HEADER_LEN + NONCE_LEN + 16:
            raise CorruptEntry(f"entry too short ({len(entry)} bytes)")
        if entry[0] != FORMAT_VERSION:
            raise CorruptEntry(f"unknown entry format {entry[0]}")
        header = entry[:HEADER_LEN]
        aead = self._open.get(header[1:])
        if aead is None:
            raise CorruptEntry(
                f"entry sealed with key {header[1:].hex()}, not one of this store's keys "
                f"({', '.join(k.hex() for k in self._open)})"
            )
        nonce = entry[HEADER_LEN : HEADER_LEN + NONCE_LEN]
        try:
            plaintext = aead.decrypt(
                nonce, entry[HEADER_LEN + NONCE_LEN :], self._aad(header, session_id)
            )
        except InvalidTag:
            raise CorruptEntry(
                "entry does not authenticate (tampered, or stored under another session ID)"
            ) from None
        return _decode_record(session_id, plaintext)


def _field(record: dict[Any, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = record.get(name)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise CorruptEntry(f"record field {name!r} missing or of the wrong type")
    return value


def _decode_record(session_id: bytes, plaintext: bytes) -> Session:
    # Messages below name fields only: never echo decoder errors, they may quote plaintext.
    try:
        record = cbor2.loads(plaintext)
    except Exception:
        raise CorruptEntry("record is not valid CBOR") from None
    if not isinstance(record, dict):
        raise CorruptEntry("record is not a map")
    if _field(record, "id", bytes) != session_id:
        raise CorruptEntry("record is for another session ID")
    master = _field(record, "ms", bytes)
    if len(master) != MASTER_SECRET_LEN:
        raise CorruptEntry("master secret of the wrong length")
    try:
        suite = CipherSuite(_field(record, "suite", int))
    except ValueError:
        raise CorruptEntry("unknown cipher suite") from None
    sni = record.get("sni")
    if sni is not None and not isinstance(sni, str):
        raise CorruptEntry("record field 'sni' of the wrong type")
    certs = _field(record, "certs", list)
    if len(certs) > MAX_CERTIFICATES or not all(isinstance(c, bytes) and c for c in certs):
        raise CorruptEntry("record field 'certs' malformed")
    psk = record.get("psk")
    if psk is not None and not isinstance(psk, bytes):
        raise CorruptEntry("record field 'psk' of the wrong type")
    created = _field(record, "created", (float, int))
    lifetime = _field(record, "lifetime", (float, int))
    return Session(
        session_id=session_id,
        master_secret=bytearray(master),
        cipher_suite=suite,
        extended_master_secret=_field(record, "ems", bool),
        server_name=sni,
        peer_certificates=tuple(certs),
        psk_identity=psk,
        created_at=float(created),
        lifetime=float(lifetime),
    )
