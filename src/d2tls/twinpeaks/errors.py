"""Typed errors of TwinPeaks, defined in :mod:`d2tls.errors` (the one error hierarchy) and
re-exported here. Every one is a :class:`~d2tls.errors.D2TLSError`."""

from __future__ import annotations

from d2tls.errors import (
    CrossCheckError,
    EncodingError,
    InvalidIdentity,
    InvalidPoint,
    InvalidScalar,
    KeyValidationError,
    ResponseMismatch,
    SignatureError,
    StaleRecord,
    TwinPeaksError,
)

__all__ = [
    "CrossCheckError",
    "EncodingError",
    "InvalidIdentity",
    "InvalidPoint",
    "InvalidScalar",
    "KeyValidationError",
    "ResponseMismatch",
    "SignatureError",
    "StaleRecord",
    "TwinPeaksError",
]
