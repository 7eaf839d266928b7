"""Certificate verification: SAN-less device certificates, plain-word failures (issue 18).

Every certificate here is made by the ``openssl`` command line (tests/openssl_pki.py). Each
refusal must name the certificate and the failed check in words a user understands, and carry
the alert RFC 5246 §7.2.2 asks for; nothing may leak the library's "candidates exhausted".
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from d2tls.core.dtls.constants import AlertDescription
from d2tls.core.errors import CertificateError
from d2tls.core.pki.verify import (
    certificate_identity,
    load_certificate_chain,
    load_trust_store,
    verify_client_chain,
    verify_server_chain,
)
from openssl_pki import (
    CA_AS_LEAF_EXT,
    DEVICE_CN,
    DEVICE_EXT,
    KEY_ENCIPHERMENT_EXT,
    MINIMAL_EXT,
    SERVER_AUTH_ONLY_EXT,
    WRONG_NAME_EXT,
    Identity,
    OpenSSLPKI,
)

A = AlertDescription


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> OpenSSLPKI:
    return OpenSSLPKI(tmp_path_factory.mktemp("openssl-pki"))


def chain(identity: Identity) -> list[bytes]:
    return load_certificate_chain(identity.cert)


def test_openssl_device_certificate_has_no_san(pki: OpenSSLPKI) -> None:
    """The premise: ``openssl req`` defaults give a CN-only subject and no SAN."""
    cert = x509.load_der_x509_certificate(chain(pki.device)[0])
    assert cert.subject.rfc4514_string() == f"CN={DEVICE_CN}"
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


@pytest.mark.parametrize("ext", [DEVICE_EXT, MINIMAL_EXT], ids=["device-profile", "minimal"])
def test_client_certificate_without_san_is_accepted(pki: OpenSSLPKI, ext: str) -> None:
    identity = pki.issue(f"nosan-{len(ext)}", DEVICE_CN, ext)
    leaf = verify_client_chain(chain(identity), load_trust_store(pki.ca.cert))
    assert leaf.subject.rfc4514_string() == f"CN={DEVICE_CN}"
    assert certificate_identity(chain(identity)[0]) == f"CN={DEVICE_CN}"


def test_identity_prefers_the_san(pki: OpenSSLPKI) -> None:
    assert certificate_identity(chain(pki.server)[0]) == "DNS:localhost"


def test_server_certificate_still_needs_a_san(pki: OpenSSLPKI) -> None:
    """The Web-PKI rule stays for servers: a name must match a SAN (RFC 6125 §6.4.4)."""
    with pytest.raises(CertificateError) as info:
        verify_server_chain(chain(pki.device), load_trust_store(pki.ca.cert), "localhost")
    assert "wrong name: expected 'localhost', the certificate has no subjectAltName" in str(
        info.value
    )


Case = tuple[Callable[[OpenSSLPKI], Identity], AlertDescription, str]

CLIENT_CASES: dict[str, Case] = {
    "unknown-issuer": (
        lambda p: p.issue("untrusted", DEVICE_CN, DEVICE_EXT, ca=p.other_ca),
        A.UNKNOWN_CA,
        "unknown issuer: it was issued by 'CN=Untrusted CA', which is not a trusted CA",
    ),
    "expired": (
        lambda p: p.expired_device(),
        A.CERTIFICATE_EXPIRED,
        "expired on 2021-01-01 00:00:00 UTC",
    ),
    "not-yet-valid": (
        lambda p: p.issue_dated(
            "future", DEVICE_CN, "device", "20400101000000Z", "20410101000000Z"
        ),
        A.CERTIFICATE_EXPIRED,
        "not yet valid: valid from 2040-01-01 00:00:00 UTC",
    ),
    "server-auth-only-eku": (
        lambda p: p.issue("server-eku", DEVICE_CN, SERVER_AUTH_ONLY_EXT),
        A.UNSUPPORTED_CERTIFICATE,
        "wrong extended key usage: it allows serverAuth, not clientAuth",
    ),
    "key-usage-without-digital-signature": (
        lambda p: p.issue("key-enc", DEVICE_CN, KEY_ENCIPHERMENT_EXT),
        A.UNSUPPORTED_CERTIFICATE,
        "wrong key usage: keyUsage does not assert digitalSignature",
    ),
    "bad-signature": (
        lambda p: p.issue("forged", DEVICE_CN, DEVICE_EXT, ca=p.forged_ca),
        A.BAD_CERTIFICATE,
        "bad signature: it was issued by 'CN=Test Device CA', but its signature does not verify",
    ),
    "ca-as-leaf": (
        lambda p: p.issue("ca-leaf", DEVICE_CN, CA_AS_LEAF_EXT),
        A.BAD_CERTIFICATE,
        "it is a CA certificate (basicConstraints CA:TRUE), not a peer certificate",
    ),
    "version-1": (
        lambda p: p.issue("v1", DEVICE_CN, None),
        A.BAD_CERTIFICATE,
        "it is an X.509 version 1 certificate; version 3 is required",
    ),
}


@pytest.mark.parametrize("case", list(CLIENT_CASES))
def test_client_refusal_in_plain_words(pki: OpenSSLPKI, case: str) -> None:
    make, alert, words = CLIENT_CASES[case]
    with pytest.raises(CertificateError) as info:
        verify_client_chain(chain(make(pki)), load_trust_store(pki.ca.cert))
    message = str(info.value)
    assert message.startswith(f"certificate 'CN={DEVICE_CN}' not accepted: "), message
    assert words in message, message
    assert "candidates exhausted" not in message
    assert info.value.alert == alert, (info.value.alert, message)


def test_untrusted_server_in_plain_words(pki: OpenSSLPKI) -> None:
    with pytest.raises(CertificateError) as info:
        verify_server_chain(chain(pki.server), load_trust_store(pki.other_ca.cert), "localhost")
    assert str(info.value) == (
        "certificate 'CN=localhost' not accepted: unknown issuer: it was issued by "
        "'CN=Test Device CA', which is not a trusted CA (not in the CA file)"
    )
    assert info.value.alert == A.UNKNOWN_CA


def test_wrong_server_name_in_plain_words(pki: OpenSSLPKI) -> None:
    server = pki.issue("wrong-name", "srv", WRONG_NAME_EXT)
    with pytest.raises(CertificateError) as info:
        verify_server_chain(chain(server), load_trust_store(pki.ca.cert), "localhost")
    assert "wrong name: expected 'localhost', the certificate has subjectAltName " in str(
        info.value
    )
    assert "DNS:other.example" in str(info.value)
    assert info.value.alert == A.BAD_CERTIFICATE


def test_expired_ca_in_plain_words(pki: OpenSSLPKI) -> None:
    ca = pki.expired_ca()
    device = pki.issue("under-expired-ca", DEVICE_CN, DEVICE_EXT, ca=ca)
    with pytest.raises(CertificateError) as info:
        verify_client_chain(chain(device), load_trust_store(ca.cert))
    assert "the CA certificate 'CN=Expired CA' that issued it has expired" in str(info.value)
    assert info.value.alert == A.CERTIFICATE_EXPIRED


def test_ca_without_key_usage_in_plain_words(pki: OpenSSLPKI) -> None:
    """``openssl req -x509`` without ``-addext keyUsage=...`` makes a CA the Web-PKI profile
    refuses; say so instead of "candidates exhausted"."""
    ca = pki.ca_without_key_usage()
    device = pki.issue("under-bare-ca", DEVICE_CN, DEVICE_EXT, ca=ca)
    with pytest.raises(CertificateError) as info:
        verify_client_chain(chain(device), load_trust_store(ca.cert))
    assert "the CA certificate 'CN=Bare CA' has no keyUsage extension" in str(info.value)


def test_non_p256_key_in_plain_words(pki: OpenSSLPKI, tmp_path: Path) -> None:
    from openssl_pki import openssl

    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384",
            "-out", "p384.key", cwd=tmp_path)  # fmt: skip
    openssl("req", "-new", "-key", "p384.key", "-subj", "/CN=p384", "-out", "p384.csr",
            cwd=tmp_path)  # fmt: skip
    (tmp_path / "ext").write_text(DEVICE_EXT)
    openssl("x509", "-req", "-in", "p384.csr", "-CA", str(pki.ca.cert), "-CAkey",
            str(pki.ca.key), "-CAcreateserial", "-extfile", "ext", "-out", "p384.pem",
            cwd=tmp_path)  # fmt: skip
    with pytest.raises(CertificateError) as info:
        verify_client_chain(
            load_certificate_chain(tmp_path / "p384.pem"), load_trust_store(pki.ca.cert)
        )
    assert str(info.value) == (
        "certificate 'CN=p384' not accepted: it has a secp384r1 EC key; only ECDSA P-256 is "
        "supported"
    )
    assert info.value.alert == A.UNSUPPORTED_CERTIFICATE
