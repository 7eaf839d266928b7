"""Known-answer and cross-checked tests of the TLS 1.2 key schedule and the key log writer.

Expected values were computed independently with the OpenSSL 3.0 command-line tool; each test
gives the exact command. ``hx`` below is ``printf '%s' "$1" | xxd -p | tr -d '\\n'`` (hex of a
label), and ``K LEN SECRET SEED`` is::

    openssl kdf -binary -keylen LEN -kdfopt digest:SHA256 -kdfopt hexsecret:SECRET \\
        -kdfopt hexseed:SEED TLS1-PRF | xxd -p | tr -d '\\n'

OpenSSL's TLS1-PRF takes the label as the start of the seed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from d2tls.core.dtls import keyschedule
from d2tls.core.dtls.constants import CHACHA20_SUITES, CipherSuite
from d2tls.core.dtls.keylog import KeyLogFile, keylog_from_environment, keylog_line
from d2tls.core.errors import ConfigurationError, IllegalParameter

h = bytes.fromhex

# Inputs generated with `openssl rand -hex 48` (PMS) and `openssl rand -hex 32` (the others).
PMS = h(
    "04f6727733d5a2360ce4ed353502e30db1a05d16e3b53e535652928ed5b0f24e"
    "b0d2a1de0727d2f43d724be96fa04f3e"
)
CLIENT_RANDOM = h("a7ee804f2400d6d0de349d009c5125cd9f585da11f32316291e2a1845f758c73")
SERVER_RANDOM = h("0411567fe64dc6237fbbbb2921442b40ad714da0b471c6d25d7bde02a525a3a7")
SESSION_HASH = h("2cef48ae80af0e666bdbc1b0c985a891cfb7ad48ff9f3332507da88665a32eb3")
TRANSCRIPT_HASH = h("0fa92ef807e7d10075fed1a7ad2d1c71d577535bda9e3fe69e2ab651db928d25")
PSK = h("173c52c823a360f4069714bb1c9be88e")

# MS=$(K 48 $PMS $(hx 'master secret')$CR$SR)
MASTER = h(
    "4bc63c1aa243c54e45d9779e6aaba08769500b40dde1704f5d089804b39d3ca9"
    "addf459593f4c412c2b183776aa46d55"
)


def test_prf_published_vector() -> None:
    """The widely used TLS 1.2 P_SHA256 vector (IETF TLS list, 2009), confirmed with:

    openssl kdf -keylen 100 -kdfopt digest:SHA256 -kdfopt hexsecret:9bbe436ba940f017b17652849a71db35
        -kdfopt hexseed:$(hx 'test label')a0ba9f936cda311827a6f796ffd5198c TLS1-PRF
    """
    out = keyschedule.prf(
        h("9bbe436ba940f017b17652849a71db35"),
        b"test label",
        h("a0ba9f936cda311827a6f796ffd5198c"),
        100,
    )
    assert out == h(
        "e3f229ba727be17b8d122620557cd453c2aab21d07c3d495329b52d4e61edb5a"
        "6b301791e90d35c9c9a46b4e14baf9af0fa022f7077def17abfd3797c0564bab"
        "4fbc91666e9def9b97fce34f796789baa48082d122ee42c5a72e5a5110fff701"
        "87347b66"
    )


def test_prf_prefixes_and_lengths() -> None:
    full = keyschedule.prf(b"k", b"l", b"s", 97)
    assert len(full) == 97
    assert keyschedule.prf(b"k", b"l", b"s", 0) == b""
    for n in (1, 31, 32, 33, 64, 65):
        assert keyschedule.prf(b"k", b"l", b"s", n) == full[:n]
    with pytest.raises(ValueError):
        keyschedule.prf(b"k", b"l", b"s", -1)


def test_master_secret_known_answer() -> None:
    """MS=$(K 48 $PMS $(hx 'master secret')$CR$SR)  (RFC 5246 §8.1)."""
    ms = keyschedule.master_secret(PMS, CLIENT_RANDOM, SERVER_RANDOM)
    assert isinstance(ms, bytearray)
    assert bytes(ms) == MASTER
    # The randoms are ordered client || server: swapping them must change the result.
    assert bytes(keyschedule.master_secret(PMS, SERVER_RANDOM, CLIENT_RANDOM)) != MASTER


def test_master_secret_rejects_bad_randoms() -> None:
    with pytest.raises(ValueError):
        keyschedule.master_secret(PMS, CLIENT_RANDOM[:31], SERVER_RANDOM)
    with pytest.raises(ValueError):
        keyschedule.master_secret(PMS, CLIENT_RANDOM, SERVER_RANDOM + b"\x00")


def test_extended_master_secret_known_answer() -> None:
    """EMS=$(K 48 $PMS $(hx 'extended master secret')$SH)  (RFC 7627 §4)."""
    ems = keyschedule.extended_master_secret(PMS, SESSION_HASH)
    assert isinstance(ems, bytearray)
    assert bytes(ems) == h(
        "baaa8d44b37aff8ec806264d7ac24332e764d801c2884fc6f221e5e4538d0eec"
        "19edf91566925e7af441160da2a12ced"
    )


def test_psk_pre_master_secret_layout() -> None:
    """RFC 4279 §2: uint16 N, N zero octets, uint16 N, psk."""
    assert keyschedule.psk_pre_master_secret(PSK) == (b"\x00\x10" + bytes(16) + b"\x00\x10" + PSK)
    assert keyschedule.psk_pre_master_secret(b"\xaa" * 300) == (
        b"\x01\x2c" + bytes(300) + b"\x01\x2c" + b"\xaa" * 300
    )
    with pytest.raises(ValueError):
        keyschedule.psk_pre_master_secret(b"")


def test_psk_master_secret_known_answer() -> None:
    """PPMS=0010 + 16 zero bytes + 0010 + $PSK; $(K 48 $PPMS $(hx 'master secret')$CR$SR)."""
    pms = keyschedule.psk_pre_master_secret(PSK)
    assert pms.hex() == "0010" + "00" * 16 + "0010" + PSK.hex()
    ms = keyschedule.master_secret(pms, CLIENT_RANDOM, SERVER_RANDOM)
    assert bytes(ms) == h(
        "195b0aeefd5a6d75094cbd56be9572b4b6a150216265bc3d49a17eb492825481"
        "920676abc350758bdef581fd26bb5d5f"
    )


@pytest.mark.parametrize("suite", [s for s in CipherSuite if s not in CHACHA20_SUITES])
def test_key_block_known_answer(suite: CipherSuite) -> None:
    """KB=$(K 40 $MS $(hx 'key expansion')$SR$CR)  (RFC 5246 §6.3; AEAD: no MAC keys)."""
    keys = keyschedule.key_block(MASTER, CLIENT_RANDOM, SERVER_RANDOM, suite)
    assert keys.client_write_key == h("cbe69cc51ead28bdfa026fa7b1aef50c")
    assert keys.server_write_key == h("04aeb17da8df922c5a1d76c32a092a89")
    assert keys.client_write_iv == h("5a1bbba2")
    assert keys.server_write_iv == h("948df006")


def test_key_block_chacha20_known_answer() -> None:
    """KB=$(K 88 $MS $(hx 'key expansion')$SR$CR): 32-byte keys, 12-byte IVs (RFC 7905 §2)."""
    suite = CipherSuite.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256
    keys = keyschedule.key_block(MASTER, CLIENT_RANDOM, SERVER_RANDOM, suite)
    assert keys.client_write_key == h(
        "cbe69cc51ead28bdfa026fa7b1aef50c04aeb17da8df922c5a1d76c32a092a89"
    )
    assert keys.server_write_key == h(
        "5a1bbba2948df0064178b1aeb3005b03b266ce4c84fa0e5a730f244c5ec4e4c0"
    )
    assert keys.client_write_iv == h("1abc9b7177a507bd15c460ca")
    assert keys.server_write_iv == h("695feaa8fe36373e436eef53")


def test_key_block_rejects_bad_inputs() -> None:
    suite = CipherSuite.TLS_PSK_WITH_AES_128_CCM_8
    with pytest.raises(ValueError):
        keyschedule.key_block(MASTER[:47], CLIENT_RANDOM, SERVER_RANDOM, suite)
    with pytest.raises(ValueError):
        keyschedule.key_block(MASTER, CLIENT_RANDOM, SERVER_RANDOM, 0x002F)  # type: ignore[arg-type]


def test_traffic_keys_repr_hides_secrets() -> None:
    keys = keyschedule.key_block(
        MASTER, CLIENT_RANDOM, SERVER_RANDOM, CipherSuite.TLS_PSK_WITH_AES_128_CCM_8
    )
    for text in (repr(keys), str(keys), f"{keys}"):
        for secret in (
            keys.client_write_key,
            keys.server_write_key,
            keys.client_write_iv,
            keys.server_write_iv,
        ):
            assert secret.hex() not in text
            assert repr(secret) not in text
    with pytest.raises(AttributeError):
        keys.client_write_key = b""  # type: ignore[misc]


def test_verify_data_known_answer() -> None:
    """CF=$(K 12 $MS $(hx 'client finished')$TH); SF likewise (RFC 5246 §7.4.9)."""
    cf = keyschedule.verify_data(MASTER, b"client finished", TRANSCRIPT_HASH)
    sf = keyschedule.verify_data(MASTER, b"server finished", TRANSCRIPT_HASH)
    assert cf == h("1171920f779a0227cb5aa1aa")
    assert sf == h("2e22d0726931d60fa2ab9d2e")
    with pytest.raises(ValueError):
        keyschedule.verify_data(MASTER, b"finished", TRANSCRIPT_HASH)


def test_transcript_hash() -> None:
    """`printf abc | openssl dgst -sha256` (also FIPS 180-2 example)."""
    assert keyschedule.transcript_hash(b"abc") == h(
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert len(keyschedule.transcript_hash(b"")) == 32


def _openssl_prf(secret: bytes, label: bytes, seed: bytes, length: int) -> bytes:
    openssl = shutil.which("openssl")
    assert openssl is not None, "the openssl command-line tool is required"
    result = subprocess.run(
        [
            openssl,
            "kdf",
            "-binary",
            "-keylen",
            str(length),
            "-kdfopt",
            "digest:SHA256",
            "-kdfopt",
            f"hexsecret:{secret.hex()}",
            "-kdfopt",
            f"hexseed:{(label + seed).hex()}",
            "TLS1-PRF",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return result.stdout


def test_prf_matches_openssl_live() -> None:
    """Random inputs through `openssl kdf ... TLS1-PRF` and through our PRF."""
    for _ in range(12):
        secret = secrets.token_bytes(1 + secrets.randbelow(80))
        label = secrets.token_bytes(1 + secrets.randbelow(24))
        seed = secrets.token_bytes(secrets.randbelow(80))
        length = 1 + secrets.randbelow(160)
        assert keyschedule.prf(secret, label, seed, length) == _openssl_prf(
            secret, label, seed, length
        ), (secret.hex(), label.hex(), seed.hex(), length)


# --------------------------------------------------------------------------- ECDHE
# openssl ecparam -name prime256v1 -genkey -noout -out a.pem   (likewise b.pem)
# openssl ec -in b.pem -pubout -out bpub.pem
# openssl pkeyutl -derive -inkey a.pem -peerkey bpub.pem | xxd -p
# (private scalar of a.pem and public point of b.pem from `openssl ec -in X.pem -text -noout`)
ECDH_PRIVATE = 0x73DBFA6ED12D6B8B58B96755C2F72A45C679EF9E385B2C1DA3F048456BC7A042
ECDH_PEER_POINT = h(
    "04d4da1c2d6ef7868f8aa17a3af2274ecef9c38e0e5fc1db6069fa8176207d4347"
    "aa75708cb23bd0960b0508e96a96afb8e3800dfb03cf0958d74428302910311a"
)
ECDH_SHARED = h("987d28fb31c5217b04d0f9b8f22683aa8a8d07b535387eeff25e74140884b79c")


def test_ecdhe_known_answer() -> None:
    private = ec.derive_private_key(ECDH_PRIVATE, ec.SECP256R1())
    assert keyschedule.ecdhe_pre_master_secret(private, ECDH_PEER_POINT) == ECDH_SHARED


def test_ecdhe_agrees_both_ways() -> None:
    a = ec.generate_private_key(ec.SECP256R1())
    b = ec.generate_private_key(ec.SECP256R1())
    pa = a.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    pb = b.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    shared = keyschedule.ecdhe_pre_master_secret(a, pb)
    assert shared == keyschedule.ecdhe_pre_master_secret(b, pa)
    assert len(shared) == 32


def _off_curve() -> bytes:
    point = bytearray(ECDH_PEER_POINT)
    point[-1] ^= 1
    return bytes(point)


@pytest.mark.parametrize(
    "point",
    [
        b"",
        b"\x04",
        b"\x00",  # point at infinity encoding
        ECDH_PEER_POINT[:-1],
        ECDH_PEER_POINT + b"\x00",
        b"\x02" + ECDH_PEER_POINT[1:33],  # compressed form: not negotiated (RFC 8422 §5.1.2)
        b"\x03" + ECDH_PEER_POINT[1:],
        b"\x04" + bytes(64),
        b"\x04" + b"\xff" * 64,
        _off_curve(),
    ],
)
def test_ecdhe_invalid_point_is_illegal_parameter(point: bytes) -> None:
    private = ec.derive_private_key(ECDH_PRIVATE, ec.SECP256R1())
    with pytest.raises(IllegalParameter):
        keyschedule.ecdhe_pre_master_secret(private, point)


# --------------------------------------------------------------------------- key log
def test_keylog_line_format() -> None:
    line = keylog_line(CLIENT_RANDOM, MASTER)
    assert line == f"CLIENT_RANDOM {CLIENT_RANDOM.hex()} {MASTER.hex()}"
    label, cr, ms = line.split(" ")
    assert (label, len(cr), len(ms)) == ("CLIENT_RANDOM", 64, 96)
    with pytest.raises(ValueError):
        keylog_line(CLIENT_RANDOM[:16], MASTER)
    with pytest.raises(ValueError):
        keylog_line(CLIENT_RANDOM, MASTER[:32])


def test_keylog_file_appends_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "keys.log"
    line = keylog_line(CLIENT_RANDOM, MASTER)
    with KeyLogFile(path) as log:
        log(line)
        log(line + "\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with KeyLogFile(str(path)) as log:  # append, never truncate
        log("CLIENT_RANDOM x y")
    assert path.read_text() == f"{line}\n{line}\nCLIENT_RANDOM x y\n"
    assert log.closed
    log("ignored after close")
    assert path.read_text().count("\n") == 3


def test_keylog_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSLKEYLOGFILE", raising=False)
    assert keylog_from_environment() is None
    monkeypatch.setenv("SSLKEYLOGFILE", "")
    assert keylog_from_environment() is None
    path = tmp_path / "env.log"
    monkeypatch.setenv("SSLKEYLOGFILE", str(path))
    log = keylog_from_environment()
    assert log is not None
    try:
        log(keylog_line(CLIENT_RANDOM, MASTER))
    finally:
        log.close()
    assert path.read_text().startswith("CLIENT_RANDOM ")
    monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / "missing-dir" / "k.log"))
    with pytest.raises(ConfigurationError):
        keylog_from_environment()
