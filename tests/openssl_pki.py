"""A test PKI made only with the ``openssl`` command line, never with d2tls or ``cryptography``.

What a user who never heard of ``d2tls pki`` has: a CA from ``openssl req -x509``, a server
certificate with a SAN, and device certificates whose CSR ``openssl req`` made with its defaults
(subject ``CN=...`` only, no subjectAltName), signed by ``openssl x509 -req`` with a small
extension file the way device-provisioning CAs do. Bad identities for the negative tests are
made the same way (another CA, ``openssl ca`` with past dates, wrong EKU, ...).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

DEVICE_CN = "sensor-42"
SERVER_NAME = "localhost"

#: Extension files (``openssl x509 -req -extfile``) of the certificates below.
DEVICE_EXT = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
DEVICE_EXT += (
    "extendedKeyUsage=clientAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
)
MINIMAL_EXT = "basicConstraints=critical,CA:FALSE\n"
SERVER_EXT = (
    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
    "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n"
)
SERVER_AUTH_ONLY_EXT = (
    MINIMAL_EXT + "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
)
KEY_ENCIPHERMENT_EXT = MINIMAL_EXT + "keyUsage=critical,keyEncipherment\n"
CA_AS_LEAF_EXT = (
    "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,digitalSignature\n"
)
WRONG_NAME_EXT = SERVER_EXT.replace("DNS:localhost,IP:127.0.0.1,IP:::1", "DNS:other.example")
CA_EXT = "keyUsage=critical,keyCertSign,cRLSign"

#: ``openssl ca`` configuration for certificates with chosen (past or future) dates.
CA_CONFIG = """[ca]
default_ca = d
[d]
dir = {dir}
database = {dir}/index.txt
new_certs_dir = {dir}
serial = {dir}/serial
default_md = sha256
policy = p
copy_extensions = none
unique_subject = no
[p]
commonName = supplied
[device]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
[ca_cert]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
"""


def openssl(*args: str, cwd: Path) -> None:
    """Run ``openssl ARGS`` in ``cwd``; fail the test with its output if it fails."""
    tool = shutil.which("openssl")
    assert tool is not None, "the openssl command line is required"
    proc = subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"openssl {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"


@dataclass(frozen=True)
class Identity:
    cert: Path
    key: Path


class OpenSSLPKI:
    """The files, made on construction in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = self._ca("ca", "Test Device CA")
        self.other_ca = self._ca("other-ca", "Untrusted CA")
        #: Same name as the trusted CA, another key: what it signs has a bad signature.
        self.forged_ca = self._ca("forged-ca", "Test Device CA")
        self.server = self.issue("server", SERVER_NAME, SERVER_EXT)
        self.device = self.issue("device", DEVICE_CN, DEVICE_EXT)

    def _key(self, name: str) -> Path:
        key = self.dir / f"{name}.key"
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", key.name, cwd=self.dir)  # fmt: skip
        return key

    def _ca(self, name: str, cn: str, *, ext: str = CA_EXT) -> Identity:
        key = self._key(name)
        cert = self.dir / f"{name}.pem"
        args = ["req", "-x509", "-new", "-key", key.name, "-subj", f"/CN={cn}", "-days", "30"]
        if ext:
            args += ["-addext", ext]
        openssl(*args, "-out", cert.name, cwd=self.dir)
        return Identity(cert, key)

    def ca_without_key_usage(self) -> Identity:
        """A CA as ``openssl req -x509`` makes it with no ``-addext`` (no keyUsage)."""
        return self._ca("bare-ca", "Bare CA", ext="")

    def csr(self, name: str, cn: str) -> tuple[Path, Path]:
        """Key and CSR with ``openssl req`` defaults: subject CN only, no extensions."""
        key = self._key(name)
        csr = self.dir / f"{name}.csr"
        openssl("req", "-new", "-key", key.name, "-subj", f"/CN={cn}", "-out", csr.name,
                cwd=self.dir)  # fmt: skip
        return key, csr

    def issue(self, name: str, cn: str, ext: str | None, *, ca: Identity | None = None) -> Identity:
        """``openssl x509 -req`` with ``ext`` as extension file (``None``: no -extfile, which
        OpenSSL 3.0 turns into an X.509 version 1 certificate)."""
        ca = ca or self.ca
        key, csr = self.csr(name, cn)
        cert = self.dir / f"{name}.pem"
        args = ["x509", "-req", "-in", csr.name, "-CA", str(ca.cert), "-CAkey", str(ca.key)]
        args += ["-CAcreateserial", "-days", "30", "-out", cert.name]
        if ext is not None:
            extfile = self.dir / f"{name}.ext"
            extfile.write_text(ext)
            args += ["-extfile", extfile.name]
        openssl(*args, cwd=self.dir)
        return Identity(cert, key)

    def issue_dated(self, name: str, cn: str, section: str, start: str, end: str) -> Identity:
        """``openssl ca`` with explicit dates (``YYYYMMDDHHMMSSZ``), e.g. an expired cert."""
        key, csr = self.csr(name, cn)
        cert = self.dir / f"{name}.pem"
        openssl("ca", "-batch", "-config", str(self._ca_db(name)), "-cert", str(self.ca.cert),
                "-keyfile", str(self.ca.key), "-in", csr.name, "-out", cert.name, "-notext",
                "-startdate", start, "-enddate", end, "-extensions", section,
                cwd=self.dir)  # fmt: skip
        return Identity(cert, key)

    def _ca_db(self, name: str) -> Path:
        cadir = self.dir / f"ca-db-{name}"
        cadir.mkdir()
        (cadir / "index.txt").write_text("")
        (cadir / "serial").write_text("1000\n")
        config = cadir / "ca.cnf"
        config.write_text(CA_CONFIG.format(dir=cadir))
        return config

    def expired_ca(self) -> Identity:
        """A self-signed CA (``openssl ca -selfsign``) that expired in 2021."""
        key, csr = self.csr("expired-ca", "Expired CA")
        cert = self.dir / "expired-ca.pem"
        openssl("ca", "-batch", "-selfsign", "-config", str(self._ca_db("expired-ca")),
                "-keyfile", key.name, "-in", csr.name, "-out", cert.name, "-notext",
                "-startdate", "20200101000000Z", "-enddate", "20210101000000Z",
                "-extensions", "ca_cert", cwd=self.dir)  # fmt: skip
        return Identity(cert, key)

    def expired_device(self) -> Identity:
        return self.issue_dated(
            "expired", DEVICE_CN, "device", "20200101000000Z", "20210101000000Z"
        )
