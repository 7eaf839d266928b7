"""Typed errors. Every protocol failure carries the alert it must produce."""

from __future__ import annotations

from d2tls.dtls.constants import AlertDescription


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
