"""Typed events returned by the sans-IO engines (in the style of aioquic/h11)."""

from __future__ import annotations

from dataclasses import dataclass, field

from d2tls.core.dtls.constants import AlertDescription, CipherSuite
from d2tls.core.dtls.session import Session

Address = tuple[str, int]


@dataclass(frozen=True)
class Event:
    """Base class. ``peer`` is the remote address on a server, ``None`` on a client."""

    peer: Address | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class HandshakeCompleted(Event):
    """Both Finished messages verified (RFC 5246 §7.4.9)."""

    session: Session
    resumed: bool
    cipher_suite: CipherSuite
    extended_master_secret: bool


@dataclass(frozen=True)
class SignatureRequested(Event):
    """The client needs a CertificateVerify signature from an external signer.

    ``transcript`` is every handshake message so far, each with its unfragmented 12-byte DTLS
    header (RFC 6347 §4.2.6); ``digest`` is SHA-256 of it, i.e. what ecdsa_secp256r1_sha256 signs
    (RFC 5246 §7.4.8). Answer with ``provide_signature``.
    """

    transcript: bytes
    digest: bytes
    client_random: bytes


@dataclass(frozen=True)
class ApplicationDataReceived(Event):
    """Decrypted application data from the peer."""

    data: bytes


@dataclass(frozen=True)
class AlertReceived(Event):
    """A warning alert from the peer (fatal alerts end in ConnectionTerminated)."""

    description: AlertDescription


@dataclass(frozen=True)
class ConnectionTerminated(Event):
    """The connection is over. ``alert`` is the alert sent or received, if any."""

    reason: str
    alert: AlertDescription | None
    by_peer: bool
    error: bool


@dataclass(frozen=True)
class TwinPeaksRefused(ConnectionTerminated):
    """The server refused a field of our TwinPeaks extension (spec/twinpeaks.md §9.4).

    ``refusal`` is ``"name"``, ``"address"`` or ``"outdated_key"``; for the last one the key
    the client holds is not the server's current one: invalidate the cached entry and look it
    up again (:func:`d2tls.core.dtls.twinpeaks.refusal_error` gives the typed error).
    """

    refusal: str = ""


@dataclass(frozen=True)
class InternalError(ConnectionTerminated):
    """The connection ended because of a bug in d2tls, not because of the peer.

    An unexpected exception inside the engine is caught so that it cannot escape to the
    transport: the connection ends with a fatal internal_error alert (RFC 5246 §7.2.2), this
    event (a :class:`ConnectionTerminated`, so code that waits for the end still sees it), a
    log line on the ``d2tls.core.dtls`` logger and the ``internal_errors`` counter. Tests make any
    such error fail instead (``Connection.raise_internal_errors``).
    """

    exception: str = ""
