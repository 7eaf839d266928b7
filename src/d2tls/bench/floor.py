"""Crypto floors: the ``cryptography`` work a party cannot avoid, timed on this machine.

Each floor performs exactly the primitive operations one role needs for one handshake (or one
record), with the same library our engines call, and nothing else: no parsing, no state
machine, no sockets. Our measured CPU divided by the floor is how far the implementation is from
the physical minimum for this machine and library.

* device floor (D2TLS): one ECDSA P-256 signature + the symmetric work of one resumption;
* server full handshake (mutual auth, ECDHE_ECDSA, CCM_8, EMS, cookie);
* server resumption (abbreviated handshake, cookie);
* AEAD: seal + open of one record payload.
"""

from __future__ import annotations

import hashlib
import hmac as std_hmac
import os
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from d2tls.bench.common import Materials, time_op
from d2tls.core.dtls import keyschedule
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.pki.verify import verify_client_chain, verify_server_chain

#: Typical sizes in our handshakes (bytes): full-handshake transcript at CertificateVerify,
#: resumption transcript (ClientHello + ServerHello), Finished record plaintext.
FULL_TRANSCRIPT = 1900
RESUMPTION_TRANSCRIPT = 330
FINISHED_PLAINTEXT = 24
AAD = bytes(13)

Op = Callable[[], object]


def _measure(ops: dict[str, tuple[Op, int]], repeat: int) -> dict[str, Any]:
    """Time each op (median seconds); total = sum of time x count."""
    per_op: dict[str, float] = {}
    total = 0.0
    for name, (op, count) in ops.items():
        seconds = time_op(op, repeat)
        per_op[name] = seconds
        total += seconds * count
    return {
        "total_s": total,
        "ops": {name: {"count": ops[name][1], "seconds": per_op[name]} for name in ops},
    }


def _prf_ops(master: bytes, random: bytes) -> dict[str, Op]:
    digest = hashlib.sha256(b"t").digest()
    return {
        "prf_key_block": lambda: keyschedule.key_block(
            master, random, random, CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
        ),
        "prf_verify_data": lambda: keyschedule.verify_data(master, b"client finished", digest),
        "prf_master_secret": lambda: keyschedule.extended_master_secret(master[:32], digest),
    }


def _aead_ops(ccm: bool = True) -> dict[str, Op]:
    key, nonce = os.urandom(16), os.urandom(12)
    plain = os.urandom(FINISHED_PLAINTEXT)
    aead: AESCCM | AESGCM = AESCCM(key, tag_length=8) if ccm else AESGCM(key)
    sealed = aead.encrypt(nonce, plain, AAD)
    return {
        "aead_init": lambda: AESCCM(key, tag_length=8) if ccm else AESGCM(key),
        "aead_seal": lambda: aead.encrypt(nonce, plain, AAD),
        "aead_open": lambda: aead.decrypt(nonce, sealed, AAD),
    }


def device_floor(materials: Materials, repeat: int = 15) -> dict[str, Any]:
    """One P-256 signature (over a full-handshake transcript) + one resumption's symmetric work."""
    key = materials.device_key
    transcript = os.urandom(FULL_TRANSCRIPT)
    resumption = os.urandom(RESUMPTION_TRANSCRIPT)
    master, random = os.urandom(48), os.urandom(32)
    prf = _prf_ops(master, random)
    aead = _aead_ops()
    ops: dict[str, tuple[Op, int]] = {
        "ecdsa_sign": (lambda: key.sign(transcript, ec.ECDSA(hashes.SHA256())), 1),
        "transcript_hash": (lambda: keyschedule.transcript_hash(resumption), 2),
        "prf_key_block": (prf["prf_key_block"], 1),
        "prf_verify_data": (prf["prf_verify_data"], 2),
        "aead_init": (aead["aead_init"], 2),
        "aead_seal": (aead["aead_seal"], 1),
        "aead_open": (aead["aead_open"], 1),
    }
    result = _measure(ops, repeat)
    result["sign_s"] = result["ops"]["ecdsa_sign"]["seconds"]
    result["symmetric_s"] = result["total_s"] - result["sign_s"]
    return result


def public_key_op_times(materials: Materials, repeat: int = 15) -> dict[str, float]:
    """Seconds of one sign, verify, ECDH and key generation on P-256 (for calibrations)."""
    key = materials.device_key
    data = os.urandom(FULL_TRANSCRIPT)
    signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
    public = key.public_key()
    peer = ec.generate_private_key(ec.SECP256R1()).public_key()
    return {
        "sign": time_op(lambda: key.sign(data, ec.ECDSA(hashes.SHA256())), repeat),
        "verify": time_op(
            lambda: public.verify(signature, data, ec.ECDSA(hashes.SHA256())), repeat
        ),
        "ecdh": time_op(lambda: key.exchange(ec.ECDH(), peer), repeat),
        "keygen": time_op(lambda: ec.generate_private_key(ec.SECP256R1()), repeat),
    }


def _cookie_op() -> Op:
    secret, material = os.urandom(32), os.urandom(120)
    return lambda: std_hmac.new(secret, material, hashlib.sha256).digest()


def server_full_floor(materials: Materials, repeat: int = 15) -> dict[str, Any]:
    """The primitives our server needs for one mutual-auth ECDHE_ECDSA full handshake."""
    server_key, device_key = materials.server_key, materials.device_key
    signed_params = os.urandom(32 + 32 + 69)
    transcript = os.urandom(FULL_TRANSCRIPT)
    cert_verify = device_key.sign(transcript, ec.ECDSA(hashes.SHA256()))
    device_public = device_key.public_key()
    client_point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    master, random = os.urandom(48), os.urandom(32)
    prf = _prf_ops(master, random)
    aead = _aead_ops()

    def ecdh() -> bytes:
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), client_point)
        return ephemeral.exchange(ec.ECDH(), peer)

    ops: dict[str, tuple[Op, int]] = {
        "cookie_hmac": (_cookie_op(), 2),
        "ecdhe_keygen_and_exchange": (ecdh, 1),
        "ecdsa_sign_server_key_exchange": (
            lambda: server_key.sign(signed_params, ec.ECDSA(hashes.SHA256())),
            1,
        ),
        "verify_client_chain": (
            lambda: verify_client_chain(materials.device_chain, materials.store),
            1,
        ),
        "ecdsa_verify_certificate_verify": (
            lambda: device_public.verify(cert_verify, transcript, ec.ECDSA(hashes.SHA256())),
            1,
        ),
        "transcript_hash": (lambda: keyschedule.transcript_hash(transcript), 3),
        "prf_master_secret": (prf["prf_master_secret"], 1),
        "prf_key_block": (prf["prf_key_block"], 1),
        "prf_verify_data": (prf["prf_verify_data"], 2),
        "aead_init": (aead["aead_init"], 2),
        "aead_seal": (aead["aead_seal"], 1),
        "aead_open": (aead["aead_open"], 1),
    }
    return _measure(ops, repeat)


def client_full_floor(materials: Materials, repeat: int = 15) -> dict[str, Any]:
    """The primitives a standalone client needs for one full handshake (for reference)."""
    result = server_full_floor(materials, repeat)
    # The client verifies the server chain instead of the client chain; same order of cost.
    result["ops"]["verify_server_chain"] = {
        "count": 1,
        "seconds": time_op(
            lambda: verify_server_chain(materials.server_chain, materials.store, "localhost"),
            repeat,
        ),
    }
    return result


def server_resumption_floor(repeat: int = 15) -> dict[str, Any]:
    """The primitives our server needs for one abbreviated handshake (with cookie)."""
    resumption = os.urandom(RESUMPTION_TRANSCRIPT)
    master, random = os.urandom(48), os.urandom(32)
    prf = _prf_ops(master, random)
    aead = _aead_ops()
    ops: dict[str, tuple[Op, int]] = {
        "cookie_hmac": (_cookie_op(), 2),
        "transcript_hash": (lambda: keyschedule.transcript_hash(resumption), 2),
        "prf_key_block": (prf["prf_key_block"], 1),
        "prf_verify_data": (prf["prf_verify_data"], 2),
        "aead_init": (aead["aead_init"], 2),
        "aead_seal": (aead["aead_seal"], 1),
        "aead_open": (aead["aead_open"], 1),
    }
    return _measure(ops, repeat)


def aead_record_floor(suite: str, size: int, repeat: int = 15) -> float:
    """Seconds to seal and open one record of ``size`` bytes with the raw AEAD."""
    key, nonce = os.urandom(16), os.urandom(12)
    plain = os.urandom(size)
    aead: AESCCM | AESGCM = AESCCM(key, tag_length=8) if suite == "ccm8" else AESGCM(key)
    sealed = aead.encrypt(nonce, plain, AAD)
    seal = time_op(lambda: aead.encrypt(nonce, plain, AAD), repeat)
    opened = time_op(lambda: aead.decrypt(nonce, sealed, AAD), repeat)
    return seal + opened
