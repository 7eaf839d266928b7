"""Typed errors: the one hierarchy of d2tls. Every protocol failure carries the alert it must
produce; callers classify errors by type (and alerts by
:class:`~d2tls.core.dtls.constants.AlertDescription` member), never
by message or alert-name strings.

Every exception class of the package derives from :class:`D2TLSError` (tests/test_errors.py
checks it). The classes of the protocol core live here; the modules that raise them re-export
them under their old names (``d2tls.core.dtls.connection.InvalidStateError``, ...). Tooling errors
(``net``, ``conformance``, ``prove``, ``bench``, ``demo``, ``peers``) stay beside their tools
but derive from :class:`D2TLSError` too. ``TwinPeaksRefusal`` stays in
:mod:`d2tls.core.dtls.twinpeaks` beside the ``Refusal`` it carries; ``SigningRefused`` in
:mod:`d2tls.core.roles.signer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from d2tls.core.dtls.constants import AlertDescription

if TYPE_CHECKING:
    from d2tls.core.delegation.messages import DelegationErrorCode


class D2TLSError(Exception):
    """Base class of every error raised by d2tls."""


class ProtocolError(D2TLSError):
    """A protocol violation that ends the connection with a fatal alert (RFC 5246 §7.2.2)."""

    alert: AlertDescription = AlertDescription.INTERNAL_ERROR

    def __init__(self, message: str, alert: AlertDescription | None = None) -> None:
        super().__init__(message)
        if alert is not None:
            self.alert = alert

    @property
    def reason(self) -> str:
        """The human-readable reason."""
        return str(self.args[0]) if self.args else self.alert.name.lower()


class DecodeError(ProtocolError):
    """Malformed bytes: wrong length, truncated field, trailing data (alert decode_error)."""

    alert = AlertDescription.DECODE_ERROR


class IllegalParameter(ProtocolError):
    """A well-formed field with a value the protocol forbids (alert illegal_parameter)."""

    alert = AlertDescription.ILLEGAL_PARAMETER


class UnexpectedMessage(ProtocolError):
    """A message the state machine has no transition for (alert unexpected_message)."""

    alert = AlertDescription.UNEXPECTED_MESSAGE


class HandshakeFailure(ProtocolError):
    """No acceptable parameters, or a negotiation rule violated (alert handshake_failure)."""

    alert = AlertDescription.HANDSHAKE_FAILURE


class DecryptError(ProtocolError):
    """A signature or Finished check failed (alert decrypt_error)."""

    alert = AlertDescription.DECRYPT_ERROR


class CertificateError(ProtocolError):
    """A certificate chain was refused; the alert says why (bad_certificate, unknown_ca, ...)."""

    alert = AlertDescription.BAD_CERTIFICATE


class RecordError(D2TLSError):
    """A record that must be discarded silently (RFC 6347 §4.1.2.7), e.g. a bad MAC."""


class SpecError(D2TLSError):
    """The protocol spec in spec/ is inconsistent, or the implementation lacks a callback."""


class ConfigurationError(D2TLSError):
    """A configuration the library refuses to run with."""


# --------------------------------------------------------------------------- DTLS engine


class InvalidStateError(D2TLSError):
    """The application called something the connection cannot do in its current state."""


class SessionNotResumable(ConfigurationError):
    """The server issued an empty session ID: its sessions cannot be resumed."""


# --------------------------------------------------------------------------- hosts


class EventTimeout(TimeoutError, D2TLSError):
    """A host waited for the next event of a role longer than it was told to."""


class TransportClosed(D2TLSError):
    """A host's socket is closed: no more events will come."""


# --------------------------------------------------------------------------- delegation


class DelegationProtocolError(D2TLSError):
    """A received delegation message is unacceptable; ``error_for`` builds the reply."""

    def __init__(
        self, code: DelegationErrorCode, reason: str, request_id: int | None = None
    ) -> None:
        super().__init__(f"{code.name}: {reason}")
        self.code = code
        self.reason = reason
        self.request_id = request_id


class DelegationFailed(D2TLSError):
    """The device could not obtain an end-to-end session; ``reason`` says why."""


# --------------------------------------------------------------------------- PKI and stores


class OCSPError(D2TLSError):
    """An OCSP check could not establish the certificate status (unreachable, bad, stale...)."""


class PKIExistsError(ConfigurationError):
    """The directory already holds a PKI and replacing it was not asked for."""


class CorruptEntry(D2TLSError):
    """A stored entry that cannot be used: undecryptable, tampered or malformed.

    The message never contains any part of the entry's plaintext.
    """


class RedisServerMissing(ConfigurationError):
    """No ``redis-server`` binary on this machine."""


# --------------------------------------------------------------------------- TwinPeaks


class TwinPeaksError(D2TLSError):
    """Base class of every TwinPeaks error."""


class EncodingError(TwinPeaksError):
    """Malformed bytes: wrong length, bad CBOR, unknown or missing field, trailing data."""


class InvalidPoint(EncodingError):
    """A point encoding that is not an uncompressed P-256 point, not on the curve, or the
    point at infinity (SEC 1 v2 §2.3.4 with the checks of §3.2.2.1)."""


class InvalidScalar(EncodingError):
    """A scalar that is not 32 bytes or not in [1, n-1]."""


class InvalidIdentity(EncodingError):
    """A domain name, an IP address or an identity encoding that spec/twinpeaks.md §3 refuses."""


class KeyValidationError(TwinPeaksError):
    """Key material that does not fit together: a partial private key that fails its check,
    a public key not bound to the identity, or parameters that do not match h(params)."""


class SignatureError(TwinPeaksError):
    """A certificateless signature that does not verify."""


class StaleRecord(TwinPeaksError):
    """A key record outside its time window: issued in the future, past its TTL, or a
    subject key outside its validity (spec/twinpeaks.md §8.5)."""


class ResponseMismatch(TwinPeaksError):
    """A key response that does not answer the request it claims to: another request ID,
    name, address or signer, or issuer parameters other than those the chain led to."""


class CrossCheckError(TwinPeaksError):
    """Answers for one name from several roots that disagree (spec/twinpeaks.md §8.8;
    section 2.5.1 of the dissertation: cross-verification among root key servers)."""


class LookupFailed(TwinPeaksError):
    """A key lookup of the resolver ended without a key (spec/twinpeaks.md §8.5, §11)."""


class AddressMismatch(LookupFailed):
    """The DNS and the key servers disagree on the name's address: the DNS gave no address,
    or not the one asked, or the key server has no key for the DNS's address (dissertation
    2.5.1: the ID contains the IP address)."""


class KeyDenied(LookupFailed):
    """A key server answered with a signed denial (unknown name, address, or not in zone)."""


class LookupTimeout(LookupFailed):
    """No valid key response after the last retransmission."""


class RegistrationFailed(TwinPeaksError):
    """A member's registration or key update with its parent failed: refused by the parent
    (a tp-status), a partial private key that does not check, or no association."""


class TwinPeaksConnectFailed(TwinPeaksError):
    """The relying client's handshake with a looked-up name failed for a reason that is not a
    TwinPeaks refusal (no answer, another alert), or data was sent before it connected."""


class StateFileError(TwinPeaksError):
    """A key server's state file is unreadable, corrupt or for another server: the server
    refuses to start rather than issue keys under a master key it cannot trust."""
