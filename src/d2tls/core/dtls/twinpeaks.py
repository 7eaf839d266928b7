"""TwinPeaks in DTLS 1.2 (spec/twinpeaks.md §9; dissertation sections 2.4.4 and 2.4.5).

The client already holds the server's key from the key-server hierarchy, so the server
authenticates with that key as an RFC 7250 raw public key, and the ClientHello carries the
TwinPeaks extension (``TwinPeaksHello`` of ``d2tls.core.dtls.messages``): the server's domain name,
IP address and ``h(public key || params)``. The server checks each field and refuses a wrong
one with the alert that names it (:data:`REFUSAL_ALERTS`); the client surfaces the refusal as
a :class:`~d2tls.core.dtls.events.TwinPeaksRefused` event and, through :func:`refusal_error`, as a
typed error. :class:`OutdatedPublicKey` tells the caller to invalidate its cached key and look
it up again (:class:`KeyCache`).
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from d2tls.core.dtls.config import ClientConfig
from d2tls.core.dtls.constants import AlertDescription
from d2tls.core.dtls.events import ConnectionTerminated, TwinPeaksRefused
from d2tls.core.dtls.messages import TwinPeaksHello
from d2tls.core.dtls.rawpk import spki_of
from d2tls.core.errors import D2TLSError
from d2tls.core.twinpeaks.clpkc import FullPrivateKey, Params, PublicKey, public_point
from d2tls.core.twinpeaks.hashing import sha256

#: Domain separation of h(public key || params) (spec/twinpeaks.md §9.2).
KEY_HASH_CONTEXT: Final = b"D2TLS-TWINPEAKS-V1 KEY-HASH\x00"


class Refusal(enum.Enum):
    """Which field of the TwinPeaks extension the server refused."""

    NAME = "name"
    ADDRESS = "address"
    OUTDATED_KEY = "outdated_key"


#: The alert of each refusal (spec/twinpeaks.md §9.3): RFC 6066 §3's unrecognized_name for the
#: name, RFC 5246 §7.2.2's illegal_parameter ("inconsistent with other fields") for the
#: address and certificate_unknown for a key hash that is not the server's current key.
REFUSAL_ALERTS: Final = {
    Refusal.NAME: AlertDescription.UNRECOGNIZED_NAME,
    Refusal.ADDRESS: AlertDescription.ILLEGAL_PARAMETER,
    Refusal.OUTDATED_KEY: AlertDescription.CERTIFICATE_UNKNOWN,
}
REFUSAL_OF_ALERT: Final = {alert: refusal for refusal, alert in REFUSAL_ALERTS.items()}
REFUSAL_REASONS: Final = {
    Refusal.NAME: "the server is not the domain name of the TwinPeaks extension",
    Refusal.ADDRESS: "the server is not at the IP address of the TwinPeaks extension",
    Refusal.OUTDATED_KEY: "outdated public key: the server's key or params changed",
}


def check_hello(ours: TwinPeaksHello, theirs: TwinPeaksHello) -> Refusal | None:
    """Compare a received extension with the server's identity, field by field in wire
    order (spec/twinpeaks.md §9.3); the first wrong field, or None when all match."""
    if theirs.host_name != ours.host_name:
        return Refusal.NAME
    if theirs.address != ours.address:
        return Refusal.ADDRESS
    if not hmac.compare_digest(theirs.key_hash, ours.key_hash):
        return Refusal.OUTDATED_KEY
    return None


# --------------------------------------------------------------------------- typed errors
class TwinPeaksRefusal(D2TLSError):
    """The server refused our TwinPeaks extension; ``refusal`` says which field."""

    refusal: Refusal = Refusal.NAME


class WrongServerName(TwinPeaksRefusal):
    """unrecognized_name: the server does not serve the name we looked up."""

    refusal = Refusal.NAME


class WrongServerAddress(TwinPeaksRefusal):
    """illegal_parameter: the server is not at the address bound to the name."""

    refusal = Refusal.ADDRESS


class OutdatedPublicKey(TwinPeaksRefusal):
    """certificate_unknown: our cached key is not the server's current one ("outdated public
    key", dissertation 2.4.4). Invalidate the cached entry and look the key up again."""

    refusal = Refusal.OUTDATED_KEY


_ERRORS: Final[dict[Refusal, type[TwinPeaksRefusal]]] = {
    Refusal.NAME: WrongServerName,
    Refusal.ADDRESS: WrongServerAddress,
    Refusal.OUTDATED_KEY: OutdatedPublicKey,
}


def refusal_error(event: ConnectionTerminated) -> TwinPeaksRefusal | None:
    """The typed error of a :class:`~d2tls.core.dtls.events.TwinPeaksRefused` termination,
    else None."""
    if not isinstance(event, TwinPeaksRefused):
        return None
    refusal = Refusal(event.refusal)
    return _ERRORS[refusal](event.reason)


# --------------------------------------------------------------------------- bindings
def key_hash(params: Params, key: PublicKey) -> bytes:
    """h(public key || params) = SHA-256(context || len || PK || len || params), with PK and
    params in their spec/twinpeaks.md §7 encodings and 2-byte lengths (§9.2)."""
    pk, pp = key.encode(), params.encode()
    return sha256(
        KEY_HASH_CONTEXT + len(pk).to_bytes(2, "big") + pk + len(pp).to_bytes(2, "big") + pp
    )


def hello_for(params: Params, key: PublicKey) -> TwinPeaksHello:
    """The extension naming ``key``'s member: its name, address and h(key || params)."""
    identity = key.identity
    return TwinPeaksHello(identity.name, identity.address.packed, key_hash(params, key))


def raw_public_key(params: Params, key: PublicKey) -> bytes:
    """The SubjectPublicKeyInfo of Q = X + [λ]P_pub, the key the member signs with."""
    return spki_of(public_point(params, key).to_public_key())


def server_identity(key: FullPrivateKey) -> TwinPeaksHello:
    """A server's TwinPeaks identity (ServerConfig.twinpeaks) from its full private key."""
    return hello_for(key.params, key.public_key)


@dataclass(frozen=True)
class ResolvedKey:
    """What a key lookup returns for a name: the KGC params and the member's public key
    (already validated by the resolver against the key-server hierarchy)."""

    params: Params
    key: PublicKey

    @property
    def spki(self) -> bytes:
        return raw_public_key(self.params, self.key)

    @property
    def hello(self) -> TwinPeaksHello:
        return hello_for(self.params, self.key)


class KeyCache:
    """A client's cache of resolved TwinPeaks keys in front of a lookup (dissertation 2.4.4).

    :meth:`resolve` returns the cached entry or looks it up; :meth:`invalidate` drops one after
    an :class:`OutdatedPublicKey` refusal, so that the next :meth:`resolve` fetches it again.
    :meth:`expected_key` is a ``ServerKeyLookup`` (``d2tls.core.dtls.config``) over the cache.
    """

    def __init__(self, lookup: Callable[[str], ResolvedKey]) -> None:
        self._lookup = lookup
        self._entries: dict[str, ResolvedKey] = {}
        self.hits = 0
        self.misses = 0

    def resolve(self, name: str) -> ResolvedKey:
        entry = self._entries.get(name)
        if entry is not None:
            self.hits += 1
            return entry
        self.misses += 1
        entry = self._lookup(name)
        self._entries[name] = entry
        return entry

    def invalidate(self, name: str) -> None:
        self._entries.pop(name, None)

    def expected_key(self, server_name: str | None) -> bytes | None:
        entry = self._entries.get(server_name) if server_name is not None else None
        return entry.spki if entry is not None else None

    def client_config(self, name: str, base: ClientConfig) -> ClientConfig:
        """``base`` set up for a TwinPeaks handshake with ``name``: the key resolved now (from
        the cache or a lookup) is the only one trusted, and the extension names it."""
        entry = self.resolve(name)
        return replace(
            base,
            server_name=name,
            server_key_lookup=self.expected_key,
            twinpeaks=entry.hello,
        )

    def handle_failure(self, name: str, event: ConnectionTerminated) -> TwinPeaksRefusal | None:
        """After a failed handshake with ``name``: the typed refusal, if any; an outdated
        public key also drops the cached entry, so that a retry (:meth:`client_config`) looks
        the key up again (dissertation 2.4.4)."""
        error = refusal_error(event)
        if isinstance(error, OutdatedPublicKey):
            self.invalidate(name)
        return error
