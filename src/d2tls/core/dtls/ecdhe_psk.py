"""ECDHE-PSK key exchange (RFC 5489 §2) for the DTLS 1.2 client and server engines.

The server sends an unsigned ServerKeyExchange with its PSK identity hint and an ephemeral
secp256r1 point; the client answers with its PSK identity and its own ephemeral point. Both
mix the ECDH result with the PSK: ``premaster = uint16 len, ECDH shared, uint16 len, psk``.
A PSK recorded later no longer opens a recorded handshake: the ECDH secrets were forgotten
(forward secrecy, RFC 5489 §1).
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from d2tls.core.dtls import keyschedule
from d2tls.core.dtls.constants import SECP256R1, AlertDescription
from d2tls.core.dtls.messages import ClientKeyExchangeECDHEPSK, ServerKeyExchangeECDHEPSK
from d2tls.core.errors import IllegalParameter, ProtocolError
from d2tls.core.randomness import Randomness


def _point(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Our uncompressed public point (RFC 8422 §5.1.2)."""
    return key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def server_key_exchange(
    randomness: Randomness, identity_hint: bytes
) -> tuple[ec.EllipticCurvePrivateKey, ServerKeyExchangeECDHEPSK]:
    """A fresh ephemeral key and the ServerKeyExchange that carries it (RFC 5489 §2)."""
    ephemeral = randomness.ec_private_key()
    return ephemeral, ServerKeyExchangeECDHEPSK(identity_hint, SECP256R1, _point(ephemeral))


def server_point(exchange: object) -> bytes:
    """The server's point from its ServerKeyExchange; only secp256r1, the group we offer
    (RFC 8422 §5.4), is accepted. The point itself is checked when it is used."""
    if not isinstance(exchange, ServerKeyExchangeECDHEPSK):
        raise IllegalParameter("expected an ECDHE_PSK ServerKeyExchange")
    if exchange.named_curve != SECP256R1:
        raise IllegalParameter("server chose a curve we did not offer")
    return exchange.public_point


def client_key_exchange(
    randomness: Randomness, identity: bytes, psk: bytes, peer_point: bytes
) -> tuple[ClientKeyExchangeECDHEPSK, bytes]:
    """Our ClientKeyExchange and the premaster secret (RFC 5489 §2). A point off the curve
    or not uncompressed raises :class:`IllegalParameter` (RFC 8422 §5.11)."""
    ephemeral = randomness.ec_private_key()
    pre_master = _pre_master(ephemeral, peer_point, psk)
    return ClientKeyExchangeECDHEPSK(identity, _point(ephemeral)), pre_master


def server_pre_master(
    ephemeral: ec.EllipticCurvePrivateKey, exchange: object, psk_keys: Mapping[bytes, bytes]
) -> tuple[bytes, bytes]:
    """``(identity, premaster)`` from the client's ClientKeyExchange (RFC 5489 §2).

    An identity we do not know (empty included) is refused with unknown_psk_identity
    (RFC 4279 §2) before any ECDH work; a bad point with illegal_parameter.
    """
    if not isinstance(exchange, ClientKeyExchangeECDHEPSK):
        raise IllegalParameter("expected an ECDHE_PSK ClientKeyExchange")
    psk = psk_keys.get(exchange.identity)
    if psk is None:
        raise ProtocolError("unknown PSK identity", AlertDescription.UNKNOWN_PSK_IDENTITY)
    return exchange.identity, _pre_master(ephemeral, exchange.public_point, psk)


def _pre_master(ephemeral: ec.EllipticCurvePrivateKey, peer_point: bytes, psk: bytes) -> bytes:
    shared = keyschedule.ecdhe_pre_master_secret(ephemeral, peer_point)
    return keyschedule.ecdhe_psk_pre_master_secret(shared, psk)
