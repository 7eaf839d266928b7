"""Plain-word explanations of certificate verification failures.

``cryptography.x509.verification`` reports failures as terse strings ("candidates exhausted:
all candidates exhausted with no interior errors", "required EKU not found", ...). A user needs
to know *which certificate* failed *which check*. :func:`explain` turns the library's message
plus the presented chain into one sentence: ``certificate 'CN=sensor-42' not accepted: unknown
issuer: ...``. It only explains; the verdict is always the library's (and ours, in
:mod:`d2tls.core.pki.verify`).

The trust store is opaque (``cryptography`` does not list its anchors), so an issuer that is not
in the presented chain is named by the ``issuer`` field of the certificate it signed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from d2tls.core.clock import utc_now

#: ``(encountered processing <Certificate(subject=<Name(CN=x)>, ...)>)`` in library messages.
_PROCESSING = re.compile(r"encountered processing <Certificate\(subject=<Name\((.*?)\)>")

_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.CODE_SIGNING: "codeSigning",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
    ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE: "anyExtendedKeyUsage",
}


def name_of(name: x509.Name) -> str:
    """``'CN=sensor-42,O=acme'`` (RFC 4514), or ``'(empty subject)'``."""
    try:
        text = name.rfc4514_string()
    except ValueError:  # undecodable attribute
        return "(undecodable name)"
    return f"'{text}'" if text else "'(empty subject)'"


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ekus(cert: x509.Certificate) -> str:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return "no extendedKeyUsage"
    return ", ".join(_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku) or "an empty EKU"


def _sans(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subjectAltName"
    names = [
        f"DNS:{n.value}"
        if isinstance(n, x509.DNSName)
        else f"IP:{n.value}"
        if isinstance(n, x509.IPAddress)
        else f"{type(n).__name__}:{n.value}"
        for n in san
    ]
    return "subjectAltName " + ", ".join(names) if names else "an empty subjectAltName"


def _validity(cert: x509.Certificate, now: datetime) -> str | None:
    """``expired on ...`` / ``not valid before ...`` for a certificate outside its period."""
    if now > cert.not_valid_after_utc:
        return f"expired on {_when(cert.not_valid_after_utc)} (now {_when(now)})"
    if now < cert.not_valid_before_utc:
        return f"not yet valid: valid from {_when(cert.not_valid_before_utc)} (now {_when(now)})"
    return None


def _processed(raw: str, chain: Sequence[x509.Certificate]) -> x509.Certificate | None:
    """The presented certificate the library names in ``encountered processing ...``."""
    match = _PROCESSING.search(raw)
    if match is None:
        return None
    for cert in chain:
        if repr(cert.subject).startswith(f"<Name({match.group(1)})>"):
            return cert
    return None


def _top(chain: Sequence[x509.Certificate]) -> x509.Certificate:
    """The last presented certificate reachable from the leaf by issuer name (the one whose
    issuer must come from the trust store)."""
    current = chain[0]
    rest = list(chain[1:])
    while True:
        parent = next((c for c in rest if c.subject == current.issuer), None)
        if parent is None or parent.subject == parent.issuer:
            return current
        rest.remove(parent)
        current = parent


def _issuer_problem(raw: str, top: x509.Certificate, leaf: x509.Certificate) -> str:
    """Explain ``candidates exhausted: ...`` (no usable issuer was found)."""
    issuer = name_of(top.issuer)
    who = "it" if top is leaf else f"{name_of(top.subject)} in its chain"
    signed = f"{who} was issued by {issuer}"
    if "signature does not match" in raw:
        return (
            f"bad signature: {signed}, but its signature does not verify with the key of the "
            f"trusted CA of that name (forged, or issued by another CA with the same name)"
        )
    if "not valid at validation time" in raw:
        what = "it" if top is leaf else name_of(top.subject)
        return f"the CA certificate {issuer} that issued {what} has expired or is not yet valid"
    if "keyUsage" in raw and "missing required extension" in raw.lower():
        return (
            f"the CA certificate {issuer} has no keyUsage extension; a CA must assert "
            f"keyCertSign (RFC 5280 §4.2.1.3)"
        )
    if "keyCertSign must be asserted" in raw:
        return f"wrong key usage: the CA certificate {issuer} does not assert keyCertSign"
    if "basicConstraints" in raw:
        return f"the certificate {issuer} is not a CA (basicConstraints CA:TRUE missing)"
    if "path length" in raw:
        return f"chain too long: a path length constraint above {name_of(top.subject)} is exceeded"
    if "no interior errors" in raw:
        return f"unknown issuer: {signed}, which is not a trusted CA (not in the CA file)"
    detail = raw.split("candidates exhausted:", 1)[-1].strip()
    return f"no trusted CA accepts it: {signed} ({detail})"


def explain(
    raw: str,
    chain: Sequence[x509.Certificate],
    *,
    usage: str,
    expected_name: str | None = None,
    now: datetime | None = None,
) -> str:
    """One sentence naming the certificate and the failed check.

    ``raw`` is the library's message, ``chain`` the presented chain (leaf first), ``usage`` the
    EKU required (``serverAuth`` or ``clientAuth``), ``expected_name`` the server name checked.
    """
    at = now.astimezone(UTC) if now is not None else utc_now()
    leaf = chain[0]
    processed = _processed(raw, chain)
    culprit = processed if processed is not None else leaf
    prefix = f"certificate {name_of(culprit.subject)} not accepted: "
    if "must be an X509v3 certificate" in raw:
        version = culprit.version.name.lstrip("v")
        return prefix + (
            f"it is an X.509 version {version} certificate; version 3 is required "
            f"(sign it with extensions, e.g. basicConstraints=CA:FALSE; RFC 5280 §4.1.2.1)"
        )
    if "not valid at validation time" in raw and "candidates exhausted" not in raw:
        for cert in [culprit, *chain]:
            reason = _validity(cert, at)
            if reason is not None:
                return f"certificate {name_of(cert.subject)} not accepted: {reason}"
        return prefix + "outside its validity period"
    if "EKU" in raw:
        return prefix + f"wrong extended key usage: it allows {_ekus(culprit)}, not {usage}"
    if "subjectAltName" in raw and expected_name is not None and "EE subjectAltName" not in raw:
        return prefix + f"wrong name: expected {expected_name!r}, the certificate has {_sans(leaf)}"
    if "cA must not be asserted" in raw:
        return prefix + "it is a CA certificate (basicConstraints CA:TRUE), not a peer certificate"
    if "keyCertSign" in raw or "digitalSignature" in raw:
        return prefix + "wrong key usage: " + _tail(raw)
    if "EE subjectAltName" in raw or "Python extension validator failed" in raw:
        return prefix + _tail(raw)
    if "candidates exhausted" in raw:
        reason = _validity(leaf, at)
        if reason is not None:
            return f"certificate {name_of(leaf.subject)} not accepted: {reason}"
        top = _top(chain)
        return f"certificate {name_of(leaf.subject)} not accepted: " + _issuer_problem(
            raw, top, leaf
        )
    if "signature does not match" in raw:
        return prefix + "bad signature: the issuer's signature does not verify"
    return prefix + _tail(raw)


def _tail(raw: str) -> str:
    """The library message without its ``validation failed:`` and ``(encountered ...)`` parts."""
    text = raw.removeprefix("validation failed: ")
    text = text.split(" (encountered processing", 1)[0]
    return text.removeprefix("Python extension validator failed: ValueError: ")
