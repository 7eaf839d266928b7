"""Tests of d2tls.core.dtls.messages: known encodings from real peers, round trips, hostile
input."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d2tls.core.dtls.constants import (
    DTLS_1_0,
    DTLS_1_2,
    ECDSA_SECP256R1_SHA256,
    EMPTY_RENEGOTIATION_INFO_SCSV,
    SECP256R1,
    AlertDescription,
    AlertLevel,
    CipherSuite,
    ExtensionType,
    HandshakeType,
)
from d2tls.core.dtls.messages import (
    CHANGE_CIPHER_SPEC_BODY,
    Alert,
    Certificate,
    CertificateRequest,
    CertificateVerify,
    ClientHello,
    ClientKeyExchangeECDHE,
    ClientKeyExchangePSK,
    Extension,
    Finished,
    HelloRequest,
    HelloVerifyRequest,
    ServerHello,
    ServerHelloDone,
    ServerKeyExchangeECDHE,
    ServerKeyExchangePSK,
    decode_alert,
    decode_change_cipher_spec,
    decode_extensions,
    decode_handshake_body,
    ec_point_formats_extension,
    encode_alert,
    encode_extensions,
    encode_handshake,
    encode_server_name,
    extended_master_secret_extension,
    message_name,
    parse_ec_point_formats,
    parse_extended_master_secret,
    parse_renegotiation_info,
    parse_server_name,
    parse_signature_algorithms,
    parse_supported_groups,
    renegotiation_info_extension,
    server_name_extension,
    signature_algorithms_extension,
    supported_groups_extension,
)
from d2tls.core.errors import DecodeError, IllegalParameter, UnexpectedMessage

#: What a hostile-input decoder may raise; anything else is a bug.
DECODER_ERRORS = (DecodeError, IllegalParameter, UnexpectedMessage)

# ---------------------------------------------------------------------------------------------
# Captured from real peers (OpenSSL 3.0.19), all over loopback:
#
# * OPENSSL_CLIENT_HELLO: a throwaway Python UDP socket bound to 127.0.0.1:PORT received the
#   first datagram of `openssl s_client -dtls1_2 -connect 127.0.0.1:PORT`; we dropped the
#   13-byte record header and kept the 12-byte handshake header separately.
# * ECDHE_*: a logging UDP proxy on 127.0.0.1 between
#   `openssl s_server -dtls1_2 -cert srv.pem -key srv.key -Verify 1 -CAfile cli.pem
#    -cipher ECDHE-ECDSA-AES128-GCM-SHA256 -groups P-256` and
#   `openssl s_client -dtls1_2 -cert cli.pem -key cli.key -CAfile srv.pem -servername server.test`
#   (throwaway self-signed P-256 certificates CN=server.test / CN=client.test). The bodies are
#   the reassembled epoch-0 handshake messages, headers stripped.
# * PSK_*: the same proxy between `s_server -nocert -psk 0102...10 -psk_hint hint-for-d2tls
#   -cipher PSK-AES128-CCM8` and `s_client -psk 0102...10 -psk_identity device-42
#   -cipher PSK-AES128-CCM8`.
# ---------------------------------------------------------------------------------------------

OPENSSL_CLIENT_HELLO = bytes.fromhex(
    "fefd23fee6241c3b72620a908b6e691120367add7b793055b2684b6d97716c341d5a00000038c02cc030009f"
    "cca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c"
    "0035002f00ff01000052000b000403000102000a000c000a001d0017001e0019001800230000001600000017"
    "0000000d002a0028040305030603080708080809080a080b0804080508060401050106010303030103020402"
    "05020602"
)

OPENSSL_CLIENT_HELLO_HEADER = bytes.fromhex("010000b400000000000000b4")

ECDHE_CLIENT_HELLO_1 = bytes.fromhex(
    "fefd26e97d07cd4b442ed3e2e4cc0868114ad72b639275446046d9286f71252c2e6400000038c02cc030009f"
    "cca9cca8ccaac02bc02f009ec024c028006bc023c0270067c00ac0140039c009c0130033009d009c003d003c"
    "0035002f00ff0100006600000010000e00000b7365727665722e74657374000b000403000102000a000c000a"
    "001d0017001e00190018002300000016000000170000000d002a0028040305030603080708080809080a080b"
    "080408050806040105010601030303010302040205020602"
)

ECDHE_HELLO_VERIFY_REQUEST = bytes.fromhex("feff145243cfca9d90829db5e800c96cad9e0f9aee55fc")

ECDHE_CLIENT_HELLO_2 = bytes.fromhex(
    "fefd26e97d07cd4b442ed3e2e4cc0868114ad72b639275446046d9286f71252c2e6400145243cfca9d90829d"
    "b5e800c96cad9e0f9aee55fc0038c02cc030009fcca9cca8ccaac02bc02f009ec024c028006bc023c0270067"
    "c00ac0140039c009c0130033009d009c003d003c0035002f00ff0100006600000010000e00000b7365727665"
    "722e74657374000b000403000102000a000c000a001d0017001e00190018002300000016000000170000000d"
    "002a0028040305030603080708080809080a080b080408050806040105010601030303010302040205020602"
)

ECDHE_SERVER_HELLO = bytes.fromhex(
    "fefd092dcabad0e2235259cc7ebd51a1da9c10a5efd27108a564c672efd8c28b442700c02b000015ff010001"
    "00000b0004030001020023000000170000"
)

ECDHE_SERVER_CERTIFICATE = bytes.fromhex(
    "0001870001843082018030820127a0030201020214725bba67589860f464a14c6f31a64fbb20653823300a06"
    "082a8648ce3d04030230163114301206035504030c0b7365727665722e74657374301e170d32363131323331"
    "32333332395a170d3336313132303132333332395a30163114301206035504030c0b7365727665722e746573"
    "743059301306072a8648ce3d020106082a8648ce3d03010703420004d7bb57fcd83988c088b308e9619a36be"
    "dd2736bb929a1bc5bf85bd84398e46678174aa8f9ac7268f156ee637e4720a5157e2ebedca1bffc0790ca70e"
    "1ae04242a3533051301d0603551d0e0416041478d89ab620b10b0261b218fd5362318cd42ca630301f060355"
    "1d2304183016801478d89ab620b10b0261b218fd5362318cd42ca630300f0603551d130101ff040530030101"
    "ff300a06082a8648ce3d040302034700304402204edea5f8016503f9c42787d5196f5e7547ec319e863820b5"
    "0a25719fd43bc6b002204ddccb7225b09ac51c14d8d6e1e1b2758af3b4fe42558b35802f9c78648204ea"
)

ECDHE_SERVER_KEY_EXCHANGE = bytes.fromhex(
    "0300174104f5f1c894001ae4fcde01351b8bced1a5196eb0f84cbc8a724dd3434bf1937e24d4d7d7da07f729"
    "8f4853a893205e9c08924f02e4482f89f552fd6b0f52ca2bfd04030047304502202409bcda40a0d6c261c93b"
    "77b85547056f57d05b521d1b4e07b59d30f0e4f347022100cc2dc0f65ec6023799ddd843f98033aab8c8f76c"
    "2412d782c9013052c960393b"
)

ECDHE_CERTIFICATE_REQUEST = bytes.fromhex(
    "030102400028040305030603080708080809080a080b08040805080604010501060103030301030204020502"
    "0602001a001830163114301206035504030c0b636c69656e742e74657374"
)

ECDHE_CLIENT_CERTIFICATE = bytes.fromhex(
    "0001870001843082018030820127a003020102021413def54a449582227391a51ff2e508fc903d8a45300a06"
    "082a8648ce3d04030230163114301206035504030c0b636c69656e742e74657374301e170d32363131323331"
    "32333332395a170d3336313132303132333332395a30163114301206035504030c0b636c69656e742e746573"
    "743059301306072a8648ce3d020106082a8648ce3d0301070342000460a6920f9ba0597db13bc361c12a317e"
    "05032a013a1f7dd0c7be66a9abbbabca9f81c60c97ffe743da3de25bf0ab917cb8b09f450743ae81aacbcebe"
    "38b7e60ba3533051301d0603551d0e04160414406ca74f3dc73c8003ea2e221b73aca0b3aeb56a301f060355"
    "1d23041830168014406ca74f3dc73c8003ea2e221b73aca0b3aeb56a300f0603551d130101ff040530030101"
    "ff300a06082a8648ce3d040302034700304402206d857b31f4e22e9fdcf72bec57f28aa8752fbf37fa72d3fa"
    "d8ec26bf14bcee08022065b314fb0bc9111a75e85f3cbb6daca619ccf190767b403b2dd52151d02a49a6"
)

ECDHE_CLIENT_KEY_EXCHANGE = bytes.fromhex(
    "41043f0135a67ad66d4faa196a2cd8fbb114ee2700b71f2b063da8a255e3fe713f1704fc72673f4caffdc603"
    "ba3060e712dde69bf53c6cdd2794dbd94caeafab0a91"
)

ECDHE_CERTIFICATE_VERIFY = bytes.fromhex(
    "0403004730450220712d67e5832478b472a19d4a04d197e9f9858b846426e9040ee1894cc0aab893022100f5"
    "6074231a877fc4adaefd5ebc4602bdc4fc7f636adf92b5b3ecf0f266db58e4"
)

PSK_CLIENT_HELLO_2 = bytes.fromhex(
    "fefde26f87c5e3e59be77195bbc15c88f1a54274f4929378899bbd9db45f50f950c400145d56d5689f7a36e4"
    "2862e735f803870a179783b40004c0a800ff0100003a002300000016000000170000000d002a002804030503"
    "0603080708080809080a080b080408050806040105010601030303010302040205020602"
)

PSK_SERVER_HELLO = bytes.fromhex(
    "fefd538d096c132253ffa48881fc1f397a49abec4a7a56db54df864306aa30d9f65100c0a800000dff010001"
    "000023000000170000"
)

PSK_SERVER_KEY_EXCHANGE = bytes.fromhex("000e68696e742d666f722d6432746c73")

PSK_CLIENT_KEY_EXCHANGE = bytes.fromhex("00096465766963652d3432")

OPENSSL_CIPHER_SUITES = (
    0xC02C, 0xC030, 0x009F, 0xCCA9, 0xCCA8, 0xCCAA, 0xC02B, 0xC02F, 0x009E, 0xC024,
    0xC028, 0x006B, 0xC023, 0xC027, 0x0067, 0xC00A, 0xC014, 0x0039, 0xC009, 0xC013,
    0x0033, 0x009D, 0x009C, 0x003D, 0x003C, 0x0035, 0x002F, 0x00FF,
)  # fmt: skip
OPENSSL_SIGNATURE_ALGORITHMS = (
    0x0403, 0x0503, 0x0603, 0x0807, 0x0808, 0x0809, 0x080A, 0x080B, 0x0804, 0x0805,
    0x0806, 0x0401, 0x0501, 0x0601, 0x0303, 0x0301, 0x0302, 0x0402, 0x0502, 0x0602,
)  # fmt: skip

#: (msg_type, psk, body) of every captured handshake message.
CAPTURED: list[tuple[int, bool, bytes]] = [
    (HandshakeType.CLIENT_HELLO, False, OPENSSL_CLIENT_HELLO),
    (HandshakeType.CLIENT_HELLO, False, ECDHE_CLIENT_HELLO_1),
    (HandshakeType.HELLO_VERIFY_REQUEST, False, ECDHE_HELLO_VERIFY_REQUEST),
    (HandshakeType.CLIENT_HELLO, False, ECDHE_CLIENT_HELLO_2),
    (HandshakeType.SERVER_HELLO, False, ECDHE_SERVER_HELLO),
    (HandshakeType.CERTIFICATE, False, ECDHE_SERVER_CERTIFICATE),
    (HandshakeType.SERVER_KEY_EXCHANGE, False, ECDHE_SERVER_KEY_EXCHANGE),
    (HandshakeType.CERTIFICATE_REQUEST, False, ECDHE_CERTIFICATE_REQUEST),
    (HandshakeType.SERVER_HELLO_DONE, False, b""),
    (HandshakeType.CERTIFICATE, False, ECDHE_CLIENT_CERTIFICATE),
    (HandshakeType.CLIENT_KEY_EXCHANGE, False, ECDHE_CLIENT_KEY_EXCHANGE),
    (HandshakeType.CERTIFICATE_VERIFY, False, ECDHE_CERTIFICATE_VERIFY),
    (HandshakeType.CLIENT_HELLO, True, PSK_CLIENT_HELLO_2),
    (HandshakeType.SERVER_HELLO, True, PSK_SERVER_HELLO),
    (HandshakeType.SERVER_KEY_EXCHANGE, True, PSK_SERVER_KEY_EXCHANGE),
    (HandshakeType.SERVER_HELLO_DONE, True, b""),
    (HandshakeType.CLIENT_KEY_EXCHANGE, True, PSK_CLIENT_KEY_EXCHANGE),
]


# ============================================================================ known encodings


def test_openssl_client_hello_fields() -> None:
    ch = ClientHello.decode(OPENSSL_CLIENT_HELLO)
    assert ch.client_version == DTLS_1_2
    assert ch.random == OPENSSL_CLIENT_HELLO[2:34]
    assert ch.session_id == b""
    assert ch.cookie == b""
    assert ch.cipher_suites == OPENSSL_CIPHER_SUITES
    assert CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 in ch.cipher_suites
    assert ch.cipher_suites[-1] == EMPTY_RENEGOTIATION_INFO_SCSV
    assert ch.compression_methods == (0,)
    assert [e.type for e in ch.extensions] == [11, 10, 35, 22, 23, 13]
    assert ch.extension(ExtensionType.EC_POINT_FORMATS) == b"\x03\x00\x01\x02"
    assert ch.extension(35) == b""  # session_ticket, unknown to us but kept
    assert ch.extension(ExtensionType.SERVER_NAME) is None
    assert ch.ec_point_formats == (0, 1, 2)
    assert ch.supported_groups == (29, SECP256R1, 30, 25, 24)
    assert ch.signature_algorithms == OPENSSL_SIGNATURE_ALGORITHMS
    assert ch.has_extended_master_secret
    assert ch.renegotiation_info is None  # OpenSSL signals RFC 5746 with the SCSV instead
    assert ch.server_name is None


def test_openssl_client_hello_reencodes_byte_exact() -> None:
    ch = ClientHello.decode(OPENSSL_CLIENT_HELLO)
    assert ch.encode() == OPENSSL_CLIENT_HELLO
    # The captured header was unfragmented, message_seq 0: exactly the transcript form.
    assert encode_handshake(HandshakeType.CLIENT_HELLO, 0, ch.encode()) == (
        OPENSSL_CLIENT_HELLO_HEADER + OPENSSL_CLIENT_HELLO
    )


@pytest.mark.parametrize(("msg_type", "psk", "body"), CAPTURED)
def test_captured_messages_reencode_byte_exact(msg_type: int, psk: bool, body: bytes) -> None:
    message = decode_handshake_body(msg_type, body, psk=psk)
    assert message.msg_type == msg_type
    assert message.encode() == body
    assert type(message).decode(body) == message


def test_cookie_exchange() -> None:
    hvr = HelloVerifyRequest.decode(ECDHE_HELLO_VERIFY_REQUEST)
    assert hvr.server_version == DTLS_1_0  # RFC 6347 §4.2.1 recommends DTLS 1.0 here
    assert len(hvr.cookie) == 20
    first = ClientHello.decode(ECDHE_CLIENT_HELLO_1)
    second = ClientHello.decode(ECDHE_CLIENT_HELLO_2)
    assert first.cookie == b""
    assert second.cookie == hvr.cookie
    # RFC 6347 §4.2.1: the second ClientHello repeats the first apart from the cookie.
    assert dataclasses.replace(second, cookie=b"") == first
    assert second.server_name == "server.test"
    assert second.extension(ExtensionType.SERVER_NAME) == encode_server_name("server.test")


def test_server_hello_fields() -> None:
    sh = ServerHello.decode(ECDHE_SERVER_HELLO)
    assert sh.server_version == DTLS_1_2
    assert sh.session_id == b""
    assert sh.cipher_suite == CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    assert sh.compression_method == 0
    assert sh.renegotiation_info == b""
    assert sh.has_extended_master_secret
    assert sh.ec_point_formats == (0, 1, 2)
    assert not sh.server_name_acknowledged
    assert sh.supported_groups is None
    assert sh.signature_algorithms is None
    psk = ServerHello.decode(PSK_SERVER_HELLO)
    assert psk.cipher_suite == CipherSuite.TLS_PSK_WITH_AES_128_CCM_8
    assert psk.ec_point_formats is None
    assert [e.type for e in psk.extensions] == [ExtensionType.RENEGOTIATION_INFO, 35, 23]


def _load(der: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(der)


def test_certificates_and_request() -> None:
    server = Certificate.decode(ECDHE_SERVER_CERTIFICATE)
    client = Certificate.decode(ECDHE_CLIENT_CERTIFICATE)
    assert len(server.certificates) == 1 and len(client.certificates) == 1
    cn = _load(server.certificates[0]).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert cn[0].value == "server.test"
    req = CertificateRequest.decode(ECDHE_CERTIFICATE_REQUEST)
    assert req.certificate_types == (1, 2, 64)
    assert req.signature_algorithms == OPENSSL_SIGNATURE_ALGORITHMS
    # The CA list names the client's (self-signed) certificate, DER-encoded.
    assert req.certificate_authorities == (_load(client.certificates[0]).subject.public_bytes(),)


def test_server_key_exchange_signature_covers_params_bytes() -> None:
    ch = ClientHello.decode(ECDHE_CLIENT_HELLO_2)
    sh = ServerHello.decode(ECDHE_SERVER_HELLO)
    ske = ServerKeyExchangeECDHE.decode(ECDHE_SERVER_KEY_EXCHANGE)
    assert ske.named_curve == SECP256R1
    assert len(ske.public_point) == 65 and ske.public_point[0] == 4
    assert ske.signature_algorithm == ECDSA_SECP256R1_SHA256
    assert ske.params_bytes() == ECDHE_SERVER_KEY_EXCHANGE[: 4 + 65]
    key = _load(Certificate.decode(ECDHE_SERVER_CERTIFICATE).certificates[0]).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    # RFC 8422 §5.4: signed over client_random + server_random + ServerECDHParams.
    key.verify(ske.signature, ch.random + sh.random + ske.params_bytes(), ec.ECDSA(hashes.SHA256()))


def test_certificate_verify_over_transcript_built_with_encode_handshake() -> None:
    # RFC 6347 §4.2.6: the transcript starts at the ClientHello with the cookie and hashes each
    # message as if unfragmented; OpenSSL's CertificateVerify must verify over our rebuild.
    flight = [
        (HandshakeType.CLIENT_HELLO, 1, ECDHE_CLIENT_HELLO_2),
        (HandshakeType.SERVER_HELLO, 1, ECDHE_SERVER_HELLO),
        (HandshakeType.CERTIFICATE, 2, ECDHE_SERVER_CERTIFICATE),
        (HandshakeType.SERVER_KEY_EXCHANGE, 3, ECDHE_SERVER_KEY_EXCHANGE),
        (HandshakeType.CERTIFICATE_REQUEST, 4, ECDHE_CERTIFICATE_REQUEST),
        (HandshakeType.SERVER_HELLO_DONE, 5, b""),
        (HandshakeType.CERTIFICATE, 2, ECDHE_CLIENT_CERTIFICATE),
        (HandshakeType.CLIENT_KEY_EXCHANGE, 3, ECDHE_CLIENT_KEY_EXCHANGE),
    ]
    transcript = b"".join(encode_handshake(t, seq, body) for t, seq, body in flight)
    cv = CertificateVerify.decode(ECDHE_CERTIFICATE_VERIFY)
    assert cv.signature_algorithm == ECDSA_SECP256R1_SHA256
    key = _load(Certificate.decode(ECDHE_CLIENT_CERTIFICATE).certificates[0]).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(cv.signature, transcript, ec.ECDSA(hashes.SHA256()))
    cke = ClientKeyExchangeECDHE.decode(ECDHE_CLIENT_KEY_EXCHANGE)
    assert len(cke.public_point) == 65 and cke.public_point[0] == 4


def test_psk_messages() -> None:
    ch = ClientHello.decode(PSK_CLIENT_HELLO_2)
    assert ch.cipher_suites == (CipherSuite.TLS_PSK_WITH_AES_128_CCM_8, 0x00FF)
    assert ch.supported_groups is None and ch.ec_point_formats is None
    ske = decode_handshake_body(
        HandshakeType.SERVER_KEY_EXCHANGE, PSK_SERVER_KEY_EXCHANGE, psk=True
    )
    assert ske == ServerKeyExchangePSK(b"hint-for-d2tls")
    cke = decode_handshake_body(
        HandshakeType.CLIENT_KEY_EXCHANGE, PSK_CLIENT_KEY_EXCHANGE, psk=True
    )
    assert cke == ClientKeyExchangePSK(b"device-42")
    # The same bytes under the ECDHE interpretation are not a valid ServerKeyExchange.
    with pytest.raises(IllegalParameter):  # curve_type 0
        decode_handshake_body(HandshakeType.SERVER_KEY_EXCHANGE, PSK_SERVER_KEY_EXCHANGE, psk=False)
    with pytest.raises(DecodeError):  # a 0-length point, then trailing bytes
        decode_handshake_body(HandshakeType.CLIENT_KEY_EXCHANGE, PSK_CLIENT_KEY_EXCHANGE, psk=False)


def test_hand_computed_encodings() -> None:
    assert HelloVerifyRequest(DTLS_1_2, b"\xaa\xbb").encode() == bytes.fromhex("fefd02aabb")
    assert ServerKeyExchangePSK(b"").encode() == b"\x00\x00"
    assert ClientKeyExchangePSK(b"id").encode() == b"\x00\x02id"
    assert ClientKeyExchangeECDHE(b"\x04\x01").encode() == b"\x02\x04\x01"
    assert Certificate(()).encode() == b"\x00\x00\x00"
    assert Certificate((b"ab", b"c")).encode() == bytes.fromhex("000009 000002 6162 000001 63")
    assert CertificateVerify(0x0403, b"sig").encode() == bytes.fromhex("0403 0003") + b"sig"
    assert Finished(bytes(range(12))).encode() == bytes(range(12))
    assert ServerHelloDone().encode() == b""
    assert CertificateRequest((64,), (0x0403,), (b"dn",)).encode() == bytes.fromhex(
        "01 40 0002 0403 0004 0002 646e"
    )
    ske = ServerKeyExchangeECDHE(SECP256R1, b"\x04" + b"\x11" * 64, 0x0403, b"\x30\x00")
    assert ske.params_bytes() == bytes.fromhex("03 0017 41 04") + b"\x11" * 64
    assert ske.encode() == ske.params_bytes() + bytes.fromhex("0403 0002 3000")
    assert (
        encode_handshake(HandshakeType.FINISHED, 0x0102, b"xyz")
        == bytes.fromhex("14 000003 0102 000000 000003") + b"xyz"
    )
    assert encode_server_name("a.b") == bytes.fromhex("0006 00 0003 612e62")
    assert supported_groups_extension([23]) == Extension(10, bytes.fromhex("0002 0017"))
    assert ec_point_formats_extension() == Extension(11, b"\x01\x00")
    assert signature_algorithms_extension([0x0403]) == Extension(13, bytes.fromhex("0002 0403"))
    assert extended_master_secret_extension() == Extension(23, b"")
    assert renegotiation_info_extension() == Extension(0xFF01, b"\x00")
    assert renegotiation_info_extension(b"\x01\x02") == Extension(0xFF01, b"\x02\x01\x02")
    assert encode_extensions([Extension(0xFF01, b"\x00")]) == bytes.fromhex("0005 ff01 0001 00")


def test_hello_without_extensions() -> None:
    ch = ClientHello(DTLS_1_2, bytes(32), b"", b"", (0xC0A8,), (0,), ())
    body = ch.encode()
    assert body == bytes.fromhex("fefd") + bytes(32) + bytes.fromhex("00 00 0002 c0a8 01 00")
    assert ClientHello.decode(body) == ch
    # An explicitly empty extensions block is accepted too (RFC 5246 §7.4.1.2).
    assert ClientHello.decode(body + b"\x00\x00") == ch
    assert ch.server_name is None and ch.supported_groups is None
    assert ch.signature_algorithms is None and ch.ec_point_formats is None
    assert not ch.has_extended_master_secret and ch.renegotiation_info is None
    sh = ServerHello(DTLS_1_2, bytes(32), b"\x01" * 32, 0xC0A8, 0, ())
    assert ServerHello.decode(sh.encode()) == sh
    assert ServerHello.decode(sh.encode() + b"\x00\x00") == sh


def test_typed_accessors() -> None:
    ch = ClientHello(
        DTLS_1_2,
        bytes(32),
        b"",
        b"c" * 255,
        (0xC0AE, 0x00FF),
        (1, 0),
        (
            server_name_extension("device.example"),
            supported_groups_extension([SECP256R1]),
            ec_point_formats_extension(),
            signature_algorithms_extension([ECDSA_SECP256R1_SHA256]),
            extended_master_secret_extension(),
            renegotiation_info_extension(b"\x07" * 12),
            Extension(0x1234, b"opaque"),
        ),
    )
    decoded = ClientHello.decode(ch.encode())
    assert decoded == ch
    assert decoded.server_name == "device.example"
    assert decoded.supported_groups == (SECP256R1,)
    assert decoded.ec_point_formats == (0,)
    assert decoded.signature_algorithms == (ECDSA_SECP256R1_SHA256,)
    assert decoded.has_extended_master_secret
    assert decoded.renegotiation_info == b"\x07" * 12
    assert decoded.extension(0x1234) == b"opaque"
    assert decoded.extension(0x4321) is None
    sh = ServerHello(DTLS_1_2, bytes(32), b"", 0xC0AE, 0, (Extension(0, b""),))
    assert ServerHello.decode(sh.encode()).server_name_acknowledged


def test_message_names_and_dispatch() -> None:
    expected = {
        HandshakeType.HELLO_REQUEST: "HelloRequest",
        HandshakeType.CLIENT_HELLO: "ClientHello",
        HandshakeType.SERVER_HELLO: "ServerHello",
        HandshakeType.HELLO_VERIFY_REQUEST: "HelloVerifyRequest",
        HandshakeType.CERTIFICATE: "Certificate",
        HandshakeType.SERVER_KEY_EXCHANGE: "ServerKeyExchange",
        HandshakeType.CERTIFICATE_REQUEST: "CertificateRequest",
        HandshakeType.SERVER_HELLO_DONE: "ServerHelloDone",
        HandshakeType.CERTIFICATE_VERIFY: "CertificateVerify",
        HandshakeType.CLIENT_KEY_EXCHANGE: "ClientKeyExchange",
        HandshakeType.FINISHED: "Finished",
    }
    for msg_type, name in expected.items():
        assert message_name(msg_type) == name
        assert message_name(int(msg_type)) == name
    assert message_name(4) == "Unknown4"
    assert decode_handshake_body(HandshakeType.HELLO_REQUEST, b"", psk=False) == HelloRequest()
    assert decode_handshake_body(20, bytes(12), psk=True) == Finished(bytes(12))
    for unknown in (4, 5, 21, 22, 99, 255):  # NewSessionTicket, CertificateStatus, ...
        with pytest.raises(UnexpectedMessage) as info:
            decode_handshake_body(unknown, b"", psk=False)
        assert info.value.alert == AlertDescription.UNEXPECTED_MESSAGE


def test_alerts() -> None:
    assert encode_alert(AlertLevel.FATAL, AlertDescription.HANDSHAKE_FAILURE) == b"\x02\x28"
    assert decode_alert(b"\x02\x28") == Alert(2, 40)
    assert decode_alert(b"\x02\x28").fatal
    assert decode_alert(b"\x01\x00") == Alert(AlertLevel.WARNING, AlertDescription.CLOSE_NOTIFY)
    assert not decode_alert(b"\x01\x00").fatal
    assert decode_alert(b"\x01\xfe") == Alert(1, 254)  # unknown description is kept
    for bad in (b"", b"\x02", b"\x02\x28\x00", b"\x00\x28", b"\x03\x28", b"\xff\x00"):
        with pytest.raises(DecodeError):
            decode_alert(bad)


def test_change_cipher_spec() -> None:
    assert CHANGE_CIPHER_SPEC_BODY == b"\x01"
    decode_change_cipher_spec(b"\x01")
    for bad in (b"", b"\x00", b"\x02", b"\x01\x01", b"\x01\x00"):
        with pytest.raises(DecodeError):
            decode_change_cipher_spec(bad)


# ============================================================================ rejected input


def _client_hello(**changes: Any) -> ClientHello:
    base = ClientHello(DTLS_1_2, bytes(32), b"", b"", (0xC0AE,), (0,), ())
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        # compression_methods must contain null (RFC 5246 §7.4.1.2)
        (_client_hello(compression_methods=(1,)).encode(), IllegalParameter),
        (_client_hello(compression_methods=(1, 2, 255)).encode(), IllegalParameter),
        # duplicate extension types (RFC 5246 §7.4.1.4)
        (
            _client_hello(extensions=(Extension(99, b""), Extension(99, b""))).encode(),
            IllegalParameter,
        ),
        (
            _client_hello(
                extensions=(extended_master_secret_extension(), extended_master_secret_extension())
            ).encode(),
            IllegalParameter,
        ),
        # known extensions with malformed or forbidden bodies
        (_client_hello(extensions=(Extension(23, b"\x00"),)).encode(), DecodeError),
        (_client_hello(extensions=(Extension(11, b"\x01\x01"),)).encode(), IllegalParameter),
        (_client_hello(extensions=(Extension(10, b"\x00\x01\x17"),)).encode(), DecodeError),
        (_client_hello(extensions=(Extension(13, b"\x00\x00"),)).encode(), DecodeError),
        (_client_hello(extensions=(Extension(0xFF01, b"\x01"),)).encode(), DecodeError),
        (_client_hello(extensions=(Extension(0, b"\x00\x00"),)).encode(), DecodeError),
        (
            _client_hello(extensions=(Extension(0, bytes.fromhex("0004 01 0001 61")),)).encode(),
            IllegalParameter,
        ),
        # odd cipher_suites length, empty cipher_suites, empty compression_methods
        (bytes.fromhex("fefd") + bytes(32) + bytes.fromhex("00 00 0003 c0aec0 01 00"), DecodeError),
        (bytes.fromhex("fefd") + bytes(32) + bytes.fromhex("00 00 0000 01 00"), DecodeError),
        (bytes.fromhex("fefd") + bytes(32) + bytes.fromhex("00 00 0002 c0ae 00"), DecodeError),
        # session_id longer than 32
        (
            bytes.fromhex("fefd")
            + bytes(32)
            + b"\x21"
            + bytes(33)
            + bytes.fromhex("00 0002 c0ae 01 00"),
            DecodeError,
        ),
        # a lone byte where the extensions length belongs; extensions block length mismatch
        (_client_hello().encode() + b"\x00", DecodeError),
        (_client_hello().encode() + bytes.fromhex("0005 0017 0000"), DecodeError),
        (_client_hello().encode() + bytes.fromhex("0004 0017 0000 00"), DecodeError),
        (_client_hello().encode() + bytes.fromhex("0003 0017 00"), DecodeError),
        # truncated random
        (bytes.fromhex("fefd") + bytes(31), DecodeError),
    ],
)
def test_bad_client_hellos(body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        ClientHello.decode(body)


def test_server_name_rules() -> None:
    assert parse_server_name(encode_server_name("x")) == "x"
    two = bytes.fromhex("000a 00 0001 61 00 0003 626262")
    with pytest.raises(IllegalParameter):  # RFC 6066 §3: one name per name_type
        parse_server_name(two)
    with pytest.raises(IllegalParameter):  # only host_name is defined
        parse_server_name(bytes.fromhex("0004 01 0001 61"))
    with pytest.raises(IllegalParameter):  # HostName is ASCII
        parse_server_name(bytes.fromhex("0004 00 0001 ff"))
    with pytest.raises(DecodeError):  # empty list
        parse_server_name(b"\x00\x00")
    with pytest.raises(DecodeError):  # empty HostName
        parse_server_name(bytes.fromhex("0003 00 0000"))
    with pytest.raises(DecodeError):  # trailing byte after the list
        parse_server_name(encode_server_name("x") + b"\x00")
    with pytest.raises(ValueError):
        encode_server_name("bücher.example")
    # The server's acknowledgement must be empty (RFC 6066 §3).
    sh = ServerHello(DTLS_1_2, bytes(32), b"", 0xC0AE, 0, (server_name_extension("x"),))
    with pytest.raises(DecodeError):
        ServerHello.decode(sh.encode())


def test_extension_body_parsers_reject_malformed() -> None:
    assert parse_supported_groups(b"\x00\x02\x00\x17") == (23,)
    assert parse_signature_algorithms(b"\x00\x02\x04\x03") == (0x0403,)
    assert parse_ec_point_formats(b"\x02\x01\x00") == (1, 0)
    assert parse_renegotiation_info(b"\x00") == b""
    parse_extended_master_secret(b"")
    for bad in (b"", b"\x00", b"\x00\x00", b"\x00\x01\x17", b"\x00\x02\x00\x17\x00"):
        with pytest.raises(DecodeError):
            parse_supported_groups(bad)
        with pytest.raises(DecodeError):
            parse_signature_algorithms(bad)
    for bad in (b"", b"\x00", b"\x02\x00", b"\x01\x00\x00"):
        with pytest.raises(DecodeError):
            parse_ec_point_formats(bad)
    with pytest.raises(IllegalParameter):  # RFC 8422 §5.1.2: must offer uncompressed
        parse_ec_point_formats(b"\x02\x01\x02")
    for bad in (b"", b"\x01", b"\x00\x00", b"\x02\x00"):
        with pytest.raises(DecodeError):
            parse_renegotiation_info(bad)
    with pytest.raises(DecodeError):
        parse_extended_master_secret(b"\x00")
    with pytest.raises(IllegalParameter):
        decode_extensions(bytes.fromhex("0017 0000 0017 0000"))
    with pytest.raises(DecodeError):
        decode_extensions(bytes.fromhex("0017 0001"))


@pytest.mark.parametrize(
    ("decoder", "body", "error"),
    [
        (HelloVerifyRequest.decode, bytes.fromhex("fefd 02 aa"), DecodeError),
        (HelloVerifyRequest.decode, bytes.fromhex("fefd 01 aa bb"), DecodeError),
        (HelloVerifyRequest.decode, bytes.fromhex("fe"), DecodeError),
        (ServerHello.decode, ECDHE_SERVER_HELLO[:-1], DecodeError),
        (ServerHello.decode, ECDHE_SERVER_HELLO + b"\x00", DecodeError),
        (ServerHello.decode, bytes.fromhex("fefd") + bytes(32) + b"\x21" + bytes(36), DecodeError),
        (Certificate.decode, b"", DecodeError),
        (Certificate.decode, bytes.fromhex("000003 000000"), DecodeError),  # empty ASN.1Cert
        (Certificate.decode, bytes.fromhex("000004 000002 61"), DecodeError),
        (Certificate.decode, bytes.fromhex("000004 000001 61 00"), DecodeError),
        (Certificate.decode, bytes.fromhex("000000 00"), DecodeError),
        (ServerKeyExchangeECDHE.decode, bytes.fromhex("01 0017 01 04 0403 0000"), IllegalParameter),
        (ServerKeyExchangeECDHE.decode, bytes.fromhex("02"), IllegalParameter),
        (ServerKeyExchangeECDHE.decode, bytes.fromhex("03 0017 00 0403 0000"), DecodeError),
        (ServerKeyExchangeECDHE.decode, bytes.fromhex("03 0017 01 04 0403 0001"), DecodeError),
        (ServerKeyExchangeECDHE.decode, bytes.fromhex("03 0017 01 04 0403 0000 00"), DecodeError),
        (ServerKeyExchangePSK.decode, b"\x00", DecodeError),
        (ServerKeyExchangePSK.decode, b"\x00\x00\x00", DecodeError),
        (CertificateRequest.decode, bytes.fromhex("00 0002 0403 0000"), DecodeError),
        (CertificateRequest.decode, bytes.fromhex("01 40 0000 0000"), DecodeError),
        (CertificateRequest.decode, bytes.fromhex("01 40 0003 040304 0000"), DecodeError),
        (CertificateRequest.decode, bytes.fromhex("01 40 0002 0403 0002 0000"), DecodeError),
        (CertificateRequest.decode, bytes.fromhex("01 40 0002 0403 0000 00"), DecodeError),
        (ServerHelloDone.decode, b"\x00", DecodeError),
        (HelloRequest.decode, b"\x00", DecodeError),
        (ClientKeyExchangeECDHE.decode, b"\x00", DecodeError),
        (ClientKeyExchangeECDHE.decode, b"", DecodeError),
        (ClientKeyExchangeECDHE.decode, b"\x02\x04", DecodeError),
        (ClientKeyExchangePSK.decode, b"\x00\x02a", DecodeError),
        (CertificateVerify.decode, b"\x04\x03\x00", DecodeError),
        (CertificateVerify.decode, b"\x04\x03\x00\x00\x00", DecodeError),
        (Finished.decode, bytes(11), DecodeError),
        (Finished.decode, bytes(13), DecodeError),
        (Finished.decode, b"", DecodeError),
    ],
)
def test_bad_bodies(
    decoder: Callable[[bytes], object], body: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        decoder(body)


def test_encoders_refuse_unencodable_values() -> None:
    bad: list[Callable[[], bytes]] = [
        lambda: _client_hello(random=bytes(31)).encode(),
        lambda: _client_hello(session_id=bytes(33)).encode(),
        lambda: _client_hello(cookie=bytes(256)).encode(),
        lambda: _client_hello(cipher_suites=()).encode(),
        lambda: _client_hello(cipher_suites=(0x10000,)).encode(),
        lambda: _client_hello(compression_methods=()).encode(),
        lambda: _client_hello(extensions=(Extension(0x10000, b""),)).encode(),
        lambda: ServerHello(DTLS_1_2, bytes(32), b"", 0xC0AE, 256, ()).encode(),
        lambda: HelloVerifyRequest(DTLS_1_2, bytes(256)).encode(),
        lambda: Certificate((b"",)).encode(),
        lambda: ServerKeyExchangeECDHE(23, b"", 0x0403, b"").encode(),
        lambda: ServerKeyExchangeECDHE(23, b"\x04" * 256, 0x0403, b"").encode(),
        lambda: CertificateRequest((), (0x0403,), ()).encode(),
        lambda: CertificateRequest((64,), (), ()).encode(),
        lambda: CertificateRequest((64,), (0x0403,), (b"",)).encode(),
        lambda: ClientKeyExchangeECDHE(b"").encode(),
        lambda: ClientKeyExchangePSK(bytes(0x10000)).encode(),
        lambda: Finished(bytes(11)).encode(),
        lambda: Alert(2, 256).encode(),
        lambda: encode_handshake(256, 0, b""),
        lambda: encode_handshake(1, 0x10000, b""),
    ]
    for thunk in bad:
        with pytest.raises(ValueError):
            thunk()


# ============================================================================ round trips

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
KNOWN_EXTENSIONS = frozenset(int(t) for t in ExtensionType)
host_names = st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z0-9-]{1,20}){0,3}", fullmatch=True)


def extensions(*, client: bool) -> st.SearchStrategy[tuple[Extension, ...]]:
    """Valid extension lists: every known type with a well-formed body, plus opaque others."""
    one = st.one_of(
        st.builds(
            Extension,
            u16.filter(lambda t: t not in KNOWN_EXTENSIONS),
            st.binary(max_size=40),
        ),
        host_names.map(server_name_extension) if client else st.just(Extension(0, b"")),
        st.lists(u16, min_size=1, max_size=10).map(supported_groups_extension),
        st.tuples(st.lists(u8, max_size=3), st.lists(u8, max_size=3)).map(
            lambda ab: ec_point_formats_extension([*ab[0], 0, *ab[1]])
        ),
        st.lists(u16, min_size=1, max_size=10).map(signature_algorithms_extension),
        st.just(extended_master_secret_extension()),
        st.binary(max_size=255).map(renegotiation_info_extension),
    )
    return st.lists(one, max_size=8, unique_by=lambda e: e.type).map(tuple)


randoms = st.binary(min_size=32, max_size=32)
session_ids = st.binary(max_size=32)
compression_lists = st.tuples(st.lists(u8, max_size=4), st.lists(u8, max_size=4)).map(
    lambda ab: (*ab[0], 0, *ab[1])
)

client_hellos = st.builds(
    ClientHello,
    u16,
    randoms,
    session_ids,
    st.binary(max_size=255),
    st.lists(u16, min_size=1, max_size=40).map(tuple),
    compression_lists,
    extensions(client=True),
)
server_hellos = st.builds(ServerHello, u16, randoms, session_ids, u16, u8, extensions(client=False))
certificates = st.builds(
    Certificate, st.lists(st.binary(min_size=1, max_size=300), max_size=4).map(tuple)
)
ske_ecdhe = st.builds(
    ServerKeyExchangeECDHE,
    u16,
    st.binary(min_size=1, max_size=255),
    u16,
    st.binary(max_size=200),
)
certificate_requests = st.builds(
    CertificateRequest,
    st.lists(u8, min_size=1, max_size=5).map(tuple),
    st.lists(u16, min_size=1, max_size=10).map(tuple),
    st.lists(st.binary(min_size=1, max_size=50), max_size=4).map(tuple),
)
all_messages = st.one_of(
    st.just(HelloRequest()),
    client_hellos,
    st.builds(HelloVerifyRequest, u16, st.binary(max_size=255)),
    server_hellos,
    certificates,
    ske_ecdhe,
    st.builds(ServerKeyExchangePSK, st.binary(max_size=300)),
    certificate_requests,
    st.just(ServerHelloDone()),
    st.builds(ClientKeyExchangeECDHE, st.binary(min_size=1, max_size=255)),
    st.builds(ClientKeyExchangePSK, st.binary(max_size=300)),
    st.builds(CertificateVerify, u16, st.binary(max_size=200)),
    st.builds(Finished, st.binary(min_size=12, max_size=12)),
)

PSK_VARIANTS = (ServerKeyExchangePSK, ClientKeyExchangePSK)


@given(all_messages)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip(message: Any) -> None:
    body = message.encode()
    assert type(message).decode(body) == message
    decoded = decode_handshake_body(message.msg_type, body, psk=isinstance(message, PSK_VARIANTS))
    assert decoded == message
    assert decoded.encode() == body
    framed = encode_handshake(message.msg_type, 7, body)
    assert framed[0] == message.msg_type
    assert int.from_bytes(framed[1:4], "big") == len(body)
    assert framed[4:6] == b"\x00\x07" and framed[6:9] == b"\x00\x00\x00"
    assert framed[9:12] == framed[1:4] and framed[12:] == body


@given(client_hellos)
def test_client_hello_accessors_match_extensions(ch: ClientHello) -> None:
    decoded = ClientHello.decode(ch.encode())
    by_type = {e.type: e.data for e in ch.extensions}
    assert decoded.has_extended_master_secret == (ExtensionType.EXTENDED_MASTER_SECRET in by_type)
    for ext_type, accessor in (
        (ExtensionType.SERVER_NAME, lambda: decoded.server_name),
        (ExtensionType.SUPPORTED_GROUPS, lambda: decoded.supported_groups),
        (ExtensionType.SIGNATURE_ALGORITHMS, lambda: decoded.signature_algorithms),
        (ExtensionType.EC_POINT_FORMATS, lambda: decoded.ec_point_formats),
        (ExtensionType.RENEGOTIATION_INFO, lambda: decoded.renegotiation_info),
    ):
        assert (accessor() is None) == (ext_type not in by_type)


@given(st.sampled_from([AlertLevel.WARNING, AlertLevel.FATAL]), u8)
def test_alert_round_trip(level: int, description: int) -> None:
    alert = Alert(level, description)
    assert decode_alert(alert.encode()) == alert
    assert encode_alert(level, description) == bytes((level, description))


# ============================================================================ hostile input

SIMPLE_DECODERS: list[Callable[[bytes], object]] = [
    HelloRequest.decode,
    ClientHello.decode,
    HelloVerifyRequest.decode,
    ServerHello.decode,
    Certificate.decode,
    ServerKeyExchangeECDHE.decode,
    ServerKeyExchangePSK.decode,
    CertificateRequest.decode,
    ServerHelloDone.decode,
    ClientKeyExchangeECDHE.decode,
    ClientKeyExchangePSK.decode,
    CertificateVerify.decode,
    Finished.decode,
    decode_alert,
    decode_change_cipher_spec,
    decode_extensions,
    parse_server_name,
    parse_supported_groups,
    parse_ec_point_formats,
    parse_signature_algorithms,
    parse_extended_master_secret,
    parse_renegotiation_info,
]


def _only_protocol_errors(decode: Callable[[bytes], object], data: bytes) -> object | None:
    try:
        return decode(data)
    except DECODER_ERRORS:
        return None


@given(st.sampled_from(SIMPLE_DECODERS), st.binary(max_size=400))
@settings(max_examples=1500)
def test_arbitrary_bytes_raise_only_protocol_errors(
    decode: Callable[[bytes], object], data: bytes
) -> None:
    _only_protocol_errors(decode, data)


@given(u8, st.booleans(), st.binary(max_size=400))
@settings(max_examples=1000)
def test_dispatch_arbitrary_bytes(msg_type: int, psk: bool, data: bytes) -> None:
    _only_protocol_errors(lambda b: decode_handshake_body(msg_type, b, psk=psk), data)


def _structured_client_hello_bytes() -> st.SearchStrategy[bytes]:
    """Bytes shaped like a ClientHello whose extension block is arbitrary (deeper fuzzing)."""
    return st.tuples(client_hellos, st.binary(max_size=200)).map(
        lambda t: (
            dataclasses.replace(t[0], extensions=()).encode() + len(t[1]).to_bytes(2, "big") + t[1]
        )
    )


@given(_structured_client_hello_bytes())
def test_client_hello_with_arbitrary_extension_block(data: bytes) -> None:
    _only_protocol_errors(ClientHello.decode, data)


def _mutate(data: bytes, draw: st.DataObject) -> bytes:
    kind = draw.draw(st.sampled_from(["truncate", "flip", "insert", "delete", "extend"]))
    if kind == "extend" or not data:
        return data + draw.draw(st.binary(min_size=1, max_size=8))
    pos = draw.draw(st.integers(0, len(data) - 1))
    if kind == "truncate":
        return data[:pos]
    if kind == "flip":
        mask = draw.draw(st.integers(1, 255))
        return data[:pos] + bytes([data[pos] ^ mask]) + data[pos + 1 :]
    if kind == "insert":
        return data[:pos] + draw.draw(st.binary(min_size=1, max_size=4)) + data[pos:]
    end = draw.draw(st.integers(pos + 1, len(data)))
    return data[:pos] + data[end:]


def _check_mutant(msg_type: int, psk: bool, mutant: bytes) -> None:
    decoded = _only_protocol_errors(lambda b: decode_handshake_body(msg_type, b, psk=psk), mutant)
    if decoded is None:
        return
    # Whatever is accepted must be the canonical encoding of what was decoded: decoders
    # ignore no bytes. The one non-canonical form is an explicitly empty extensions block.
    assert isinstance(decoded, (*PSK_VARIANTS, *SIMPLE_MESSAGE_TYPES))
    encoded = decoded.encode()
    if isinstance(decoded, (ClientHello, ServerHello)) and encoded != mutant:
        assert decoded.extensions == () and mutant == encoded + b"\x00\x00"
    else:
        assert encoded == mutant


SIMPLE_MESSAGE_TYPES = (
    HelloRequest,
    ClientHello,
    HelloVerifyRequest,
    ServerHello,
    Certificate,
    ServerKeyExchangeECDHE,
    CertificateRequest,
    ServerHelloDone,
    ClientKeyExchangeECDHE,
    CertificateVerify,
    Finished,
)


@given(st.sampled_from(CAPTURED), st.data())
@settings(max_examples=1500)
def test_mutated_captures(capture: tuple[int, bool, bytes], data: st.DataObject) -> None:
    msg_type, psk, body = capture
    mutant = body
    for _ in range(data.draw(st.integers(1, 3))):
        mutant = _mutate(mutant, data)
    _check_mutant(msg_type, psk, mutant)


@given(all_messages, st.data())
@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_generated_messages(message: Any, data: st.DataObject) -> None:
    mutant = _mutate(message.encode(), data)
    _check_mutant(message.msg_type, isinstance(message, PSK_VARIANTS), mutant)


@given(st.data())
def test_mutated_alerts_and_ccs(data: st.DataObject) -> None:
    alert = _mutate(b"\x02\x28", data)
    if len(alert) == 2 and alert[0] in (1, 2):
        assert decode_alert(alert) == Alert(alert[0], alert[1])
    else:
        with pytest.raises(DecodeError):
            decode_alert(alert)
    ccs = _mutate(CHANGE_CIPHER_SPEC_BODY, data)
    with pytest.raises(DecodeError):  # every mutation of the 1-byte body is invalid
        decode_change_cipher_spec(ccs)
