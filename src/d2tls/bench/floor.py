"""Crypto floors: the ``cryptography`` work a party cannot avoid, timed on this machine.

Each floor performs exactly the primitive operations one role needs for one handshake (or one
record), with the same library our engines call, and nothing else: no parsing beyond the
certificates' DER, no policy code, no state machine, no sockets. Our measured CPU divided by
the floor is how far the implementation is from the physical minimum for this machine and
library.

* device floor (D2TLS): one ECDSA P-256 signature + the symmetric work of one resumption;
* server full handshake (mutual auth, ECDHE_ECDSA, CCM_8, EMS, cookie, close_notify), see
  :data:`SERVER_FULL_OPERATIONS`;
* server resumption (abbreviated handshake, cookie, close_notify), see
  :data:`SERVER_RESUMPTION_OPERATIONS`;
* AEAD: seal + open of one record payload.

The server floors count what ``bench server`` makes the server do per handshake: the load
generator closes every connection, so the server also opens the client's close_notify and
seals its own (RFC 5246 §7.2.1). The client chain is checked as its signatures: one ECDSA
verification per certificate of the chain by its issuer's (pre-loaded) key, after decoding
the DER; the path-building and policy code of ``cryptography.x509.verification`` and our
extension checks (:mod:`d2tls.core.pki.verify`) are implementation, not floor.
"""

from __future__ import annotations

import hashlib
import hmac as std_hmac
import os
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from d2tls.bench.common import Materials, time_op
from d2tls.core.dtls import keyschedule
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.pki.verdict_cache import chain_digest
from d2tls.core.pki.verify import verify_server_chain

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


#: What our server does per full mutual-auth handshake in ``bench server`` (operation: count).
#: ``ecdsa_verify_client_chain`` counts one verification per certificate of the client chain.
SERVER_FULL_OPERATIONS: dict[str, str] = {
    "cookie_hmac": "2: HelloVerifyRequest cookie made, then checked (RFC 6347 §4.2.1)",
    "random_32_bytes": "2: server random and session ID",
    "ecdhe_keygen_and_exchange": "1: ephemeral P-256 key, client point decoded, ECDH",
    "ecdsa_sign_server_key_exchange": "1: ServerKeyExchange signature (RFC 8422 §5.4)",
    "decode_client_certificates": "1 per certificate: DER decode and public key load",
    "ecdsa_verify_client_chain": "1 per certificate: its issuer's signature on it",
    "ecdsa_verify_certificate_verify": "1: the client's CertificateVerify (RFC 5246 §7.4.8)",
    "transcript_hash": "3: EMS session hash, client and server Finished",
    "prf_master_secret": "1: extended master secret (RFC 7627 §4)",
    "prf_key_block": "1: key expansion",
    "prf_verify_data": "2: both Finished messages",
    "aead_init": "2: read and write keys",
    "aead_seal": "2: our Finished, our close_notify",
    "aead_open": "2: the client's Finished and close_notify",
}
#: The same for one abbreviated handshake (session resumption).
SERVER_RESUMPTION_OPERATIONS: dict[str, str] = {
    "cookie_hmac": "2: HelloVerifyRequest cookie made, then checked",
    "random_32_bytes": "1: server random",
    "chain_digest": "1: SHA-256 of the stored client chain, the verdict-cache key",
    "transcript_hash": "2: both Finished messages",
    "prf_key_block": "1: key expansion",
    "prf_verify_data": "2: both Finished messages",
    "aead_init": "2: read and write keys",
    "aead_seal": "2: our Finished, our close_notify",
    "aead_open": "2: the client's Finished and close_notify",
}


def _chain_ops(materials: Materials) -> tuple[Op, Op, int]:
    """Decode the client chain, and verify each certificate's signature by its issuer."""
    chain = materials.device_chain
    ca = x509.load_pem_x509_certificate(materials.paths.ca_cert.read_bytes())
    certs = [x509.load_der_x509_certificate(der) for der in chain]
    issuer_keys = [c.public_key() for c in certs[1:]] + [ca.public_key()]
    pairs = []
    for cert, key in zip(certs, issuer_keys, strict=True):
        assert isinstance(key, ec.EllipticCurvePublicKey)
        hash_algorithm = cert.signature_hash_algorithm
        assert hash_algorithm is not None
        pairs.append((cert, key, ec.ECDSA(hash_algorithm)))
    position = [0]

    def decode_one() -> object:
        der = chain[position[0] % len(chain)]
        position[0] += 1
        return x509.load_der_x509_certificate(der).public_key()

    def verify_one() -> None:
        cert, key, algorithm = pairs[position[0] % len(pairs)]
        position[0] += 1
        key.verify(cert.signature, cert.tbs_certificate_bytes, algorithm)

    return decode_one, verify_one, len(chain)


def server_full_floor(materials: Materials, repeat: int = 15) -> dict[str, Any]:
    """The primitives our server needs for one mutual-auth ECDHE_ECDSA full handshake
    (:data:`SERVER_FULL_OPERATIONS`)."""
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
    decode_certificate, verify_certificate, links = _chain_ops(materials)

    def ecdh() -> bytes:
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), client_point)
        return ephemeral.exchange(ec.ECDH(), peer)

    ops: dict[str, tuple[Op, int]] = {
        "cookie_hmac": (_cookie_op(), 2),
        "random_32_bytes": (lambda: os.urandom(32), 2),
        "ecdhe_keygen_and_exchange": (ecdh, 1),
        "ecdsa_sign_server_key_exchange": (
            lambda: server_key.sign(signed_params, ec.ECDSA(hashes.SHA256())),
            1,
        ),
        "decode_client_certificates": (decode_certificate, links),
        "ecdsa_verify_client_chain": (verify_certificate, links),
        "ecdsa_verify_certificate_verify": (
            lambda: device_public.verify(cert_verify, transcript, ec.ECDSA(hashes.SHA256())),
            1,
        ),
        "transcript_hash": (lambda: keyschedule.transcript_hash(transcript), 3),
        "prf_master_secret": (prf["prf_master_secret"], 1),
        "prf_key_block": (prf["prf_key_block"], 1),
        "prf_verify_data": (prf["prf_verify_data"], 2),
        "aead_init": (aead["aead_init"], 2),
        "aead_seal": (aead["aead_seal"], 2),
        "aead_open": (aead["aead_open"], 2),
    }
    assert set(ops) == set(SERVER_FULL_OPERATIONS)
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


def server_resumption_floor(materials: Materials, repeat: int = 15) -> dict[str, Any]:
    """The primitives our server needs for one abbreviated handshake
    (:data:`SERVER_RESUMPTION_OPERATIONS`)."""
    resumption = os.urandom(RESUMPTION_TRANSCRIPT)
    master, random = os.urandom(48), os.urandom(32)
    prf = _prf_ops(master, random)
    aead = _aead_ops()
    chain = materials.device_chain
    ops: dict[str, tuple[Op, int]] = {
        "cookie_hmac": (_cookie_op(), 2),
        "random_32_bytes": (lambda: os.urandom(32), 1),
        "chain_digest": (lambda: chain_digest(chain), 1),
        "transcript_hash": (lambda: keyschedule.transcript_hash(resumption), 2),
        "prf_key_block": (prf["prf_key_block"], 1),
        "prf_verify_data": (prf["prf_verify_data"], 2),
        "aead_init": (aead["aead_init"], 2),
        "aead_seal": (aead["aead_seal"], 2),
        "aead_open": (aead["aead_open"], 2),
    }
    assert set(ops) == set(SERVER_RESUMPTION_OPERATIONS)
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
