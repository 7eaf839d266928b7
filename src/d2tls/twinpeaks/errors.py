"""Typed errors of TwinPeaks. Every one is a :class:`~d2tls.errors.D2TLSError`."""

from __future__ import annotations

from d2tls.errors import D2TLSError


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
