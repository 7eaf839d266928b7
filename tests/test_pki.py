"""PKI generation, loading and chain verification (d2tls.core.pki)."""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import Store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d2tls.core.dtls.constants import AlertDescription
from d2tls.core.errors import CertificateError, ConfigurationError
from d2tls.core.pki import (
    PKIPaths,
    certificate_subject,
    create_ca,
    init_pki,
    issue_certificate,
    load_certificate_chain,
    load_private_key,
    load_psk_file,
    load_trust_store,
    parse_psk,
    verify_client_chain,
    verify_server_chain,
    write_pem_certificate,
    write_pem_private_key,
)
from d2tls.lab.peers import require_tool

DER = serialization.Encoding.DER
IGNORE_CRYPTO_DEPRECATION = pytest.mark.filterwarnings(
    "ignore::cryptography.utils.CryptographyDeprecationWarning"
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKIPaths:
    return init_pki(tmp_path_factory.mktemp("pki"), devices=2)


@pytest.fixture(scope="module")
def store(pki: PKIPaths) -> Store:
    return load_trust_store(pki.ca_cert)


@pytest.fixture(scope="module")
def ca(pki: PKIPaths) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    return cert, load_private_key(pki.ca_key)


@pytest.fixture(scope="module")
def server_der(pki: PKIPaths) -> bytes:
    return load_certificate_chain(pki.server_chain)[0]


@pytest.fixture(scope="module")
def device_der(pki: PKIPaths) -> bytes:
    return load_certificate_chain(pki.devices[0].cert)[0]


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(DER)


def alert_of(excinfo: pytest.ExceptionInfo[CertificateError]) -> AlertDescription:
    return excinfo.value.alert


# --------------------------------------------------------------------------- generation


def test_init_pki_layout_and_modes(pki: PKIPaths) -> None:
    files = [
        pki.ca_cert,
        pki.ca_key,
        pki.server_cert,
        pki.server_key,
        pki.server_chain,
        pki.psk_file,
        pki.other_ca_cert,
        pki.other_ca_key,
    ]
    for dev in pki.devices:
        files += [dev.cert, dev.key]
    for path in files:
        assert path.parent == pki.directory
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert [d.name for d in pki.devices] == ["device-1", "device-2"]
    assert len(load_certificate_chain(pki.server_chain)) == 1  # leaf only


def test_certificate_profile(pki: PKIPaths) -> None:
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    server = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == (
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    )
    for cert in (ca, server):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    device = x509.load_pem_x509_certificate(pki.devices[1].cert.read_bytes())
    san = device.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["device-2.d2tls.invalid"]


def test_psk_file(pki: PKIPaths) -> None:
    table = load_psk_file(pki.psk_file)
    assert sorted(table) == [b"device-1", b"device-2"]
    assert all(len(k) == 32 for k in table.values())
    assert table[b"device-1"] != table[b"device-2"]


def test_write_private_key_tightens_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_text("old")
    path.chmod(0o644)
    write_pem_private_key(path, ec.generate_private_key(ec.SECP256R1()))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert isinstance(load_private_key(path), ec.EllipticCurvePrivateKey)


def test_issue_certificate_needs_a_name(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
) -> None:
    with pytest.raises(ValueError):
        issue_certificate(*ca, "x", client=True)


# --------------------------------------------------------------------------- verification


@pytest.mark.parametrize("name", ["localhost", "LOCALHOST", "127.0.0.1", "::1", "[::1]"])
def test_server_chain_verifies(server_der: bytes, store: Store, name: str) -> None:
    leaf = verify_server_chain([server_der], store, name)
    assert leaf.subject.rfc4514_string() == "CN=localhost,O=d2tls"


def test_server_chain_with_ca_appended_verifies(
    pki: PKIPaths, server_der: bytes, store: Store
) -> None:
    # OpenSSL's s_server sends leaf + CA.
    ca_der = load_certificate_chain(pki.ca_cert)[0]
    verify_server_chain([server_der, ca_der], store, "localhost")


def test_client_chains_verify(pki: PKIPaths, store: Store) -> None:
    for dev in pki.devices:
        leaf = verify_client_chain(load_certificate_chain(dev.cert), store)
        assert leaf.subject.rfc4514_string() == f"CN={dev.name},O=d2tls"


def test_server_name_is_required(server_der: bytes, store: Store) -> None:
    with pytest.raises(ConfigurationError):
        verify_server_chain([server_der], store, None)
    with pytest.raises(ConfigurationError):
        verify_server_chain([server_der], store, "not a name!")


def test_wrong_name_is_bad_certificate(server_der: bytes, store: Store) -> None:
    for name in ("example.com", "127.0.0.2", "::2"):
        with pytest.raises(CertificateError) as excinfo:
            verify_server_chain([server_der], store, name)
        assert alert_of(excinfo) == AlertDescription.BAD_CERTIFICATE


@pytest.mark.parametrize(
    ("start", "end"),
    [(-10, -1), (1, 10)],
    ids=["expired", "not-yet-valid"],
)
def test_validity_period(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], store: Store, start: int, end: int
) -> None:
    now = datetime.now(UTC)
    for client in (False, True):
        cert, _ = issue_certificate(
            *ca,
            "x",
            server_names=["localhost"],
            client=client,
            not_before=now + timedelta(days=start),
            not_after=now + timedelta(days=end),
        )
        with pytest.raises(CertificateError) as excinfo:
            if client:
                verify_client_chain([der(cert)], store)
            else:
                verify_server_chain([der(cert)], store, "localhost")
        assert alert_of(excinfo) == AlertDescription.CERTIFICATE_EXPIRED


def test_verification_time_parameter(server_der: bytes, device_der: bytes, store: Store) -> None:
    later = datetime.now(UTC) + timedelta(days=400)
    with pytest.raises(CertificateError) as excinfo:
        verify_server_chain([server_der], store, "localhost", now=later)
    assert alert_of(excinfo) == AlertDescription.CERTIFICATE_EXPIRED
    with pytest.raises(CertificateError) as excinfo:
        verify_client_chain([device_der], store, now=datetime(2000, 1, 1, tzinfo=UTC))
    assert alert_of(excinfo) == AlertDescription.CERTIFICATE_EXPIRED


def test_expired_ca_is_certificate_expired(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], store: Store
) -> None:
    now = datetime.now(UTC)
    cert, _ = issue_certificate(
        *ca, "x", server_names=["localhost"], client=False, not_after=now + timedelta(days=5000)
    )
    with pytest.raises(CertificateError) as excinfo:
        verify_server_chain([der(cert)], store, "localhost", now=now + timedelta(days=1000))
    assert alert_of(excinfo) == AlertDescription.CERTIFICATE_EXPIRED


def test_other_ca_is_unknown_ca(pki: PKIPaths, server_der: bytes, device_der: bytes) -> None:
    other_cert = x509.load_pem_x509_certificate(pki.other_ca_cert.read_bytes())
    other_key = load_private_key(pki.other_ca_key)
    store = load_trust_store(pki.ca_cert)
    srv, _ = issue_certificate(other_cert, other_key, "s", server_names=["localhost"], client=False)
    dev, _ = issue_certificate(other_cert, other_key, "d", server_names=["d.invalid"], client=True)
    cases: list[Callable[[], x509.Certificate]] = [
        lambda: verify_server_chain([der(srv)], store, "localhost"),
        lambda: verify_client_chain([der(dev)], store),
        # the unrelated CA sent along does not help
        lambda: verify_client_chain([der(dev), der(other_cert)], store),
        # our certificates against a store holding only the other CA
        lambda: verify_server_chain([server_der], load_trust_store(pki.other_ca_cert), "::1"),
        lambda: verify_client_chain([device_der], load_trust_store(pki.other_ca_cert)),
    ]
    for case in cases:
        with pytest.raises(CertificateError) as excinfo:
            case()
        assert alert_of(excinfo) == AlertDescription.UNKNOWN_CA


def test_forged_issuer_signature_is_bad_certificate(store: Store) -> None:
    fake_ca, fake_key = create_ca("d2tls test CA")  # same name as the real CA
    cert, _ = issue_certificate(fake_ca, fake_key, "x", server_names=["localhost"], client=False)
    with pytest.raises(CertificateError) as excinfo:
        verify_server_chain([der(cert)], store, "localhost")
    assert alert_of(excinfo) == AlertDescription.BAD_CERTIFICATE


def test_wrong_eku_is_unsupported_certificate(
    server_der: bytes, device_der: bytes, store: Store
) -> None:
    with pytest.raises(CertificateError) as excinfo:
        verify_client_chain([server_der], store)
    assert alert_of(excinfo) == AlertDescription.UNSUPPORTED_CERTIFICATE
    with pytest.raises(CertificateError) as excinfo:
        verify_server_chain([device_der], store, "device-1.d2tls.invalid")
    assert alert_of(excinfo) == AlertDescription.UNSUPPORTED_CERTIFICATE


def test_non_p256_leaf_is_unsupported_certificate(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], store: Store
) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    cert, _ = issue_certificate(*ca, "x", server_names=["localhost"], client=True, key=p384)
    with pytest.raises(CertificateError) as excinfo:
        verify_client_chain([der(cert)], store)
    assert alert_of(excinfo) == AlertDescription.UNSUPPORTED_CERTIFICATE

    ca_cert, ca_key = ca
    rsa_key = rsa.generate_private_key(65537, 2048)
    now = datetime.now(UTC)
    rsa_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa")]))
        .issuer_name(ca_cert.subject)
        .public_key(rsa_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .sign(ca_key, hashes.SHA256())
    )
    with pytest.raises(CertificateError) as excinfo:
        verify_server_chain([der(rsa_cert)], store, "localhost")
    assert alert_of(excinfo) == AlertDescription.UNSUPPORTED_CERTIFICATE


def test_ca_as_leaf_is_bad_certificate(pki: PKIPaths, store: Store) -> None:
    ca_der = load_certificate_chain(pki.ca_cert)[0]
    checks: list[Callable[[], x509.Certificate]] = [
        lambda: verify_server_chain([ca_der], store, "localhost"),
        lambda: verify_client_chain([ca_der], store),
    ]
    for check in checks:
        with pytest.raises(CertificateError) as excinfo:
            check()
        assert alert_of(excinfo) == AlertDescription.BAD_CERTIFICATE


def test_empty_and_oversized_chains(server_der: bytes, store: Store) -> None:
    for chain in ([], [server_der] * 9):
        with pytest.raises(CertificateError) as excinfo:
            verify_server_chain(chain, store, "localhost")
        assert alert_of(excinfo) == AlertDescription.BAD_CERTIFICATE
        with pytest.raises(CertificateError) as excinfo:
            verify_client_chain(chain, store)
        assert alert_of(excinfo) == AlertDescription.BAD_CERTIFICATE


def test_undecodable_der_is_bad_certificate(server_der: bytes, store: Store) -> None:
    for blob in (b"", b"\x30", server_der[:-1], server_der + b"\x00", b"not a certificate"):
        with pytest.raises(CertificateError) as excinfo:
            verify_server_chain([blob], store, "localhost")
        assert alert_of(excinfo) == AlertDescription.BAD_CERTIFICATE
    with pytest.raises(CertificateError):
        verify_server_chain([server_der, b"junk"], store, "localhost")


def test_certificate_subject(server_der: bytes) -> None:
    assert certificate_subject(server_der) == "CN=localhost,O=d2tls"
    with pytest.raises(CertificateError):
        certificate_subject(b"\x30\x03\x02\x01\x00")


# --------------------------------------------------------------------------- hostile DER


def _check_hostile(blob: bytes, original: bytes | None, store: Store) -> None:
    """Only CertificateError may come out, and a modified certificate verifies only if what the
    issuer signed is untouched: the signed part (tbsCertificate) and the signature value are
    the original's. (The outer wrapper is malleable: a non-zero unused-bits count in the
    signature BIT STRING, for one, changes the DER but neither of those, RFC 5280 §4.1.1.3.)"""
    for verify in (
        lambda: verify_server_chain([blob], store, "localhost"),
        lambda: verify_client_chain([blob], store),
        lambda: certificate_subject(blob),
    ):
        try:
            result = verify()
        except CertificateError:
            continue
        if isinstance(result, x509.Certificate) and blob != original:
            assert original is not None, "a certificate made of random bytes verified"
            signed = x509.load_der_x509_certificate(original)
            assert result.tbs_certificate_bytes == signed.tbs_certificate_bytes
            assert result.signature == signed.signature


@IGNORE_CRYPTO_DEPRECATION
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blob=st.binary(max_size=1200))
def test_random_bytes_only_raise_certificate_error(blob: bytes, store: Store) -> None:
    _check_hostile(blob, None, store)


@IGNORE_CRYPTO_DEPRECATION
@settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_mutated_certificates_only_raise_certificate_error(
    data: st.DataObject, server_der: bytes, device_der: bytes, store: Store
) -> None:
    original = data.draw(st.sampled_from([server_der, device_der]))
    blob = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(blob) - 1))
        kind = data.draw(st.sampled_from(["flip", "set", "delete", "insert"]))
        if kind == "flip":
            blob[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set":
            blob[pos] = data.draw(st.integers(0, 255))
        elif kind == "delete":
            del blob[pos : pos + data.draw(st.integers(1, 8))]
        else:
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
        if not blob:
            blob = bytearray(b"\x30")
    _check_hostile(bytes(blob), original, store)


# --------------------------------------------------------------------------- loaders


def test_load_certificate_chain(pki: PKIPaths, tmp_path: Path) -> None:
    both = tmp_path / "both.pem"
    both.write_bytes(pki.server_cert.read_bytes() + pki.ca_cert.read_bytes())
    chain = load_certificate_chain(both)
    assert len(chain) == 2 and chain[0] == load_certificate_chain(pki.server_cert)[0]
    (tmp_path / "empty.pem").write_bytes(b"")
    (tmp_path / "junk.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n")
    for bad in ("missing.pem", "empty.pem", "junk.pem"):
        with pytest.raises(ConfigurationError):
            load_certificate_chain(tmp_path / bad)


def test_load_private_key(pki: PKIPaths, tmp_path: Path) -> None:
    assert isinstance(load_private_key(pki.server_key), ec.EllipticCurvePrivateKey)
    p384 = tmp_path / "p384.key"
    p384.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    rsa_path = tmp_path / "rsa.key"
    rsa_path.write_bytes(
        rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    encrypted = tmp_path / "enc.key"
    encrypted.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    for bad in (p384, rsa_path, encrypted, pki.server_cert, tmp_path / "missing.key"):
        with pytest.raises(ConfigurationError):
            load_private_key(bad)


def test_load_trust_store_errors(tmp_path: Path) -> None:
    (tmp_path / "junk.pem").write_text("junk")
    for bad in ("junk.pem", "missing.pem"):
        with pytest.raises(ConfigurationError):
            load_trust_store(tmp_path / bad)


def test_parse_psk() -> None:
    key = bytes(range(32))
    assert parse_psk(f"device-1:{key.hex()}") == (b"device-1", key)
    assert parse_psk(f"  urn:dev:ops:1:{key.hex().upper()}\n") == (b"urn:dev:ops:1", key)
    assert parse_psk(f"gerät:{key[:16].hex()}") == ("gerät".encode(), key[:16])
    for bad in (
        "no-colon",
        f":{key.hex()}",
        "id:zz" + key.hex(),
        "id:" + (key * 3).hex(),
        "x" * 129 + ":" + key.hex(),
        "id:",
    ):
        with pytest.raises(ConfigurationError):
            parse_psk(bad)


def test_load_psk_file_errors(tmp_path: Path) -> None:
    key = "ab" * 16
    good = tmp_path / "good.txt"
    good.write_text(f"# comment\n\na:{key}\nb:{key}\n")
    assert load_psk_file(good) == {b"a": bytes.fromhex(key), b"b": bytes.fromhex(key)}
    dup = tmp_path / "dup.txt"
    dup.write_text(f"a:{key}\na:{key}\n")
    bad = tmp_path / "bad.txt"
    bad.write_text(f"a:{key}\nb:xyz\n")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe")
    for path in (dup, bad, binary, tmp_path / "missing.txt"):
        with pytest.raises(ConfigurationError):
            load_psk_file(path)


# --------------------------------------------------------------------------- other tools


def test_openssl_verify_accepts_chains(pki: PKIPaths) -> None:
    openssl = require_tool("openssl")

    def verify(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [openssl, "verify", "-CAfile", *args], capture_output=True, text=True, check=False
        )

    ca = str(pki.ca_cert)
    server = str(pki.server_cert)
    for name in ("-verify_hostname", "localhost"), ("-verify_ip", "127.0.0.1"):
        result = verify(ca, "-purpose", "sslserver", *name, server)
        assert result.returncode == 0, result.stdout + result.stderr
    for dev in pki.devices:
        result = verify(ca, "-purpose", "sslclient", str(dev.cert))
        assert result.returncode == 0, result.stdout + result.stderr
    assert verify(str(pki.other_ca_cert), server).returncode != 0
    assert verify(ca, "-verify_hostname", "example.com", server).returncode != 0


def test_certtool_verify_accepts_chains(pki: PKIPaths) -> None:
    certtool = require_tool("certtool")

    def verify(ca: Path, cert: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [certtool, "--verify", "--load-ca-certificate", str(ca), "--infile", str(cert), *args],
            capture_output=True,
            text=True,
            check=False,
        )

    server_auth = "--verify-purpose=1.3.6.1.5.5.7.3.1"
    client_auth = "--verify-purpose=1.3.6.1.5.5.7.3.2"
    result = verify(pki.ca_cert, pki.server_cert, server_auth, "--verify-hostname=localhost")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "The certificate is trusted" in result.stdout
    for dev in pki.devices:
        result = verify(pki.ca_cert, dev.cert, client_auth)
        assert result.returncode == 0, result.stdout + result.stderr
    assert verify(pki.other_ca_cert, pki.server_cert).returncode != 0
    assert verify(pki.ca_cert, pki.server_cert, "--verify-hostname=example.com").returncode != 0


def test_written_chain_round_trips(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey], tmp_path: Path
) -> None:
    cert, key = issue_certificate(*ca, "y", server_names=["::1"], client=False)
    path = tmp_path / "chain.pem"
    write_pem_certificate(path, cert, ca[0])
    assert load_certificate_chain(path) == [der(cert), der(ca[0])]
    verify_server_chain(load_certificate_chain(path), Store([ca[0]]), "::1")
    assert key.curve.name == "secp256r1"
