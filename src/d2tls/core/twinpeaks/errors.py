"""Typed errors of TwinPeaks, defined in :mod:`d2tls.core.errors` (the one error hierarchy) and
re-exported here. Every one is a :class:`~d2tls.core.errors.D2TLSError`."""

from __future__ import annotations

from d2tls.core.errors import (
    AddressMismatch,
    CrossCheckError,
    EncodingError,
    InvalidIdentity,
    InvalidPoint,
    InvalidScalar,
    KeyDenied,
    KeyValidationError,
    LookupFailed,
    LookupTimeout,
    RegistrationFailed,
    ResponseMismatch,
    SignatureError,
    StaleRecord,
    TwinPeaksError,
)

__all__ = [
    "AddressMismatch",
    "CrossCheckError",
    "EncodingError",
    "InvalidIdentity",
    "InvalidPoint",
    "InvalidScalar",
    "KeyDenied",
    "KeyValidationError",
    "LookupFailed",
    "LookupTimeout",
    "RegistrationFailed",
    "ResponseMismatch",
    "SignatureError",
    "StaleRecord",
    "TwinPeaksError",
]
