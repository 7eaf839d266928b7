"""TwinPeaks CL-PKC (spec/twinpeaks.md §3-§6): known answers, cross-checks against
``cryptography``'s own P-256 arithmetic, the certificateless security properties as hypothesis
properties, and hostile input to every decoder."""

from __future__ import annotations

import ast
import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from d2tls.core.errors import D2TLSError
from d2tls.core.twinpeaks import clpkc, curve
from d2tls.core.twinpeaks.clpkc import (
    FullPrivateKey,
    MasterKey,
    Params,
    PartialKeyRequest,
    PartialPrivateKey,
    PublicKey,
    SecretValue,
)
from d2tls.core.twinpeaks.errors import (
    EncodingError,
    InvalidIdentity,
    InvalidPoint,
    InvalidScalar,
    KeyValidationError,
    SignatureError,
    TwinPeaksError,
)
from d2tls.core.twinpeaks.hashing import expand_message_xmd, hash_to_scalar
from d2tls.core.twinpeaks.identity import Identity, normalize_name

ROOT = Path(__file__).resolve().parents[1]
N = curve.ORDER
P256 = ec.SECP256R1()
PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def scalars(*values: int) -> Callable[[int], bytes]:
    """A random source that makes ``curve.random_scalar`` return exactly these scalars."""
    it: Iterator[int] = iter(values)
    return lambda size: (next(it) - 1).to_bytes(size, "big")


def q_by_cryptography(k: int) -> bytes:
    """[k]G computed by ``cryptography`` (OpenSSL), independently of the ecdsa package."""
    public = ec.derive_private_key(k % N, P256).public_key()
    return public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


def enrol(
    master: MasterKey, name: str, address: str, x: int | None = None, w: int | None = None
) -> tuple[SecretValue, PartialPrivateKey, FullPrivateKey]:
    identity = master.params.identity(name, address)
    secret = clpkc.set_secret_value(
        master.params, identity, scalars(x) if x else curve.system_random
    )
    partial = clpkc.extract_partial_private_key(
        master, secret.request(), scalars(w) if w else curve.system_random
    )
    return secret, partial, clpkc.set_private_key(master.params, secret, partial)


# --------------------------------------------------------------------------- known answers
KAT_S = 0xCE364988B1EEB0BC98A4F489C6C93A5299C6B6BCB6968C4BB7078EC5863819E6
KAT_X = 0x4CCAC073128B7BDD2331729E9E79037CE8D3FA091A9D6F4D68912FD623A6A972
KAT_W = 0xA1FEF36ADC3CEC885CF09BAA366B9B35C80F33759567C1E683074F9667EFF62C
KAT = {
    "params": "a40001017754502d434c4b47412d503235362d5348413235362d7631026c6578616d706c652e7465"
    "737403584104"
    "4f56fecf4568deaebe3c860175e7d530b6e24b12b1696b81cea8663489c8c308"
    "33edf5323847c41953a5deca132dc67519a49fb8f7703e7c7f308b703163986e",
    "h": "9e435aa7915745087c1fd6b75c17a66d4f278de0606cef4473a5c65ada9bdb8c",
    "id": "107777772e6578616d706c652e7465737404c000020a20"
    "9e435aa7915745087c1fd6b75c17a66d4f278de0606cef4473a5c65ada9bdb8c",
    "lambda": 0x1E087D1305725DBB376BF53609D713AFDB64769565C156A24016D53C755EB013,
    "X": "04"
    "11f61c49e84f75f23c894c4fa25ac0b146dbf3a16bca2a777cd7a1d188b6272d"
    "7987582a9c2833b635bd9c203cb633f8ccf552bca0ae3cad38d0a2156b539476",
    "d": 0xA36C1A27A1945A2F148A67B279A2359202A790FDBD6AF06CE4354B4B9DC7ED13,
    "sk": 0xF036DA9AB41FD60C37BBDA51181B390EEB7B8B06D8085FBA4CC67B21C16E9685,
    "Q": "04"
    "1eab8cdf7f62b1c4082b874c3836db294c1f2f401bf0f0cf8e5162dfb2c0abcb"
    "5a55ba50e5e2bf46e672451807f67c59bc47bb7cf9e07aa80385cbf315dbb19a",
    "signature": "5a7d6ebf0124be9b18d2d0d61352397c1321f8c498a43992ce8a255ad6b14c9f"
    "bbe8ac458c7b2a008ddfb0000620bb6929a757f8d7b063baa373de5dc4c0f893",
}
KAT_MESSAGE = b"TwinPeaks KAT message"


@pytest.fixture(scope="module")
def kat() -> tuple[MasterKey, SecretValue, PartialPrivateKey, FullPrivateKey]:
    master = clpkc.setup("example.test", scalars(KAT_S))
    secret, partial, key = enrol(master, "www.example.test", "192.0.2.10", KAT_X, KAT_W)
    return master, secret, partial, key


def test_known_answers(
    kat: tuple[MasterKey, SecretValue, PartialPrivateKey, FullPrivateKey],
) -> None:
    master, _secret, partial, key = kat
    assert master.params.encode().hex() == KAT["params"]
    assert master.params.digest().hex() == KAT["h"]
    assert key.identity.encode().hex() == KAT["id"]
    assert clpkc._lambda(partial.x_point, key.identity) == KAT["lambda"]
    assert partial.x_point.encode().hex() == KAT["X"]
    assert partial.d == KAT["d"]
    assert key.scalar == KAT["sk"]
    assert key.q.encode().hex() == KAT["Q"]
    assert clpkc.sign(key, KAT_MESSAGE).hex() == KAT["signature"]


def test_known_answers_recomputed_with_cryptography(
    kat: tuple[MasterKey, SecretValue, PartialPrivateKey, FullPrivateKey],
) -> None:
    """The algebra, redone from the scalars with OpenSSL's scalar multiplication only:
    P_pub = [s]G, X = [x + w]G, d = w + λs, sk = x + d, Q = [sk]G = X + [λ]P_pub."""
    master, secret, partial, key = kat
    lam = KAT["lambda"]
    assert isinstance(lam, int)
    assert master.params.p_pub.encode() == q_by_cryptography(KAT_S)
    assert secret.u.encode() == q_by_cryptography(KAT_X)
    assert partial.x_point.encode() == q_by_cryptography(KAT_X + KAT_W)
    assert partial.d == (KAT_W + lam * KAT_S) % N
    assert key.scalar == (KAT_X + KAT_W + lam * KAT_S) % N
    assert key.q.encode() == q_by_cryptography(key.scalar)
    assert key.to_cryptography().private_numbers().private_value == key.scalar
    # λ itself, from its definition: hash_to_field(X || ID) with the suite's DST.
    assert lam == hash_to_scalar(
        bytes.fromhex(str(KAT["X"])) + key.identity.encode(), clpkc.LAMBDA_DST
    )


def test_known_signature_verifies_with_cryptography() -> None:
    """The KAT signature checks with OpenSSL alone, over the key-prefixed input."""
    signature = bytes.fromhex(str(KAT["signature"]))
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    public = ec.EllipticCurvePublicKey.from_encoded_point(P256, bytes.fromhex(str(KAT["Q"])))
    public.verify(
        encode_dss_signature(r, s),
        clpkc.SIGN_CONTEXT
        + public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        + bytes.fromhex(str(KAT["id"]))
        + KAT_MESSAGE,
        ec.ECDSA(hashes.SHA256()),
    )


def test_expand_message_xmd_rfc9380_vectors() -> None:
    """RFC 9380 Appendix K.1 (expand_message_xmd, SHA-256)."""
    dst = b"QUUX-V01-CS02-with-expander-SHA256-128"
    assert expand_message_xmd(b"", dst, 0x20).hex() == (
        "68a985b87eb6b46952128911f2a4412bbc302a9d759667f87f7a21d803f07235"
    )
    assert expand_message_xmd(b"abc", dst, 0x20).hex() == (
        "d8ccab23b5985ccea865c6c97b6e5b8350e794e603b4b97902f53a8a0d605615"
    )
    with pytest.raises(TwinPeaksError):
        expand_message_xmd(b"", b"", 32)
    with pytest.raises(TwinPeaksError):
        expand_message_xmd(b"", dst, 256 * 32)


# --------------------------------------------------------------------------- using the keys
def test_ecdsa_with_the_derived_key_through_cryptography() -> None:
    master = clpkc.setup("example.test")
    _secret, _partial, key = enrol(master, "device.example.test", "2001:db8::7")
    private = key.to_cryptography()
    assert isinstance(private.curve, ec.SECP256R1)
    signature = private.sign(b"ServerKeyExchange params", ec.ECDSA(hashes.SHA256()))
    key.q.to_public_key().verify(signature, b"ServerKeyExchange params", ec.ECDSA(hashes.SHA256()))
    # The CL signature of this module verifies, and only for its message and signer.
    public = PublicKey.decode(key.public_key.encode())
    clpkc.verify(master.params, public, b"hello", clpkc.sign(key, b"hello"))
    with pytest.raises(SignatureError):
        clpkc.verify(master.params, public, b"hullo", clpkc.sign(key, b"hello"))
    _s2, _p2, other = enrol(master, "other.example.test", "2001:db8::8")
    with pytest.raises(SignatureError):
        clpkc.verify(master.params, other.public_key, b"hello", clpkc.sign(key, b"hello"))


def test_ecdh_between_two_members_of_different_kgcs() -> None:
    kgc_a, kgc_b = clpkc.setup("a.test"), clpkc.setup("b.test")
    _sa, _pa, alice = enrol(kgc_a, "alice.a.test", "192.0.2.1")
    _sb, _pb, bob = enrol(kgc_b, "bob.b.test", "192.0.2.2")
    k_ab = clpkc.agree(alice, kgc_b.params, bob.public_key, info=b"session 1")
    k_ba = clpkc.agree(bob, kgc_a.params, alice.public_key, info=b"session 1")
    assert k_ab == k_ba and len(k_ab) == 32
    assert clpkc.agree(alice, kgc_b.params, bob.public_key, info=b"session 2") != k_ab
    # The raw ECDH secret through cryptography alone agrees too.
    raw_ab = alice.to_cryptography().exchange(ec.ECDH(), bob.q.to_public_key())
    raw_ba = bob.to_cryptography().exchange(ec.ECDH(), alice.q.to_public_key())
    assert raw_ab == raw_ba
    # A third member gets something else.
    _sc, _pc, carol = enrol(kgc_b, "carol.b.test", "192.0.2.3")
    assert clpkc.agree(carol, kgc_a.params, alice.public_key, info=b"session 1") != k_ab
    with pytest.raises(KeyValidationError):  # bob's key with a's params: h(params) differs
        clpkc.agree(alice, kgc_a.params, bob.public_key)
    with pytest.raises(TwinPeaksError):
        clpkc.agree(alice, kgc_b.params, bob.public_key, length=0)


# --------------------------------------------------------------------------- properties
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
NAMES = st.lists(LABEL, min_size=1, max_size=4).map(".".join)
IPV4 = st.ip_addresses(v=4)
IPV6 = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None)
ADDRESSES = st.one_of(IPV4, IPV6)
SCALARS = st.integers(min_value=1, max_value=N - 1)


@PROPERTY
@given(NAMES, ADDRESSES, NAMES, ADDRESSES, SCALARS, SCALARS, SCALARS)
def test_a_key_extracted_for_one_id_never_validates_for_another(
    name1: str,
    addr1: ipaddress.IPv4Address | ipaddress.IPv6Address,
    name2: str,
    addr2: ipaddress.IPv4Address | ipaddress.IPv6Address,
    s: int,
    x: int,
    w: int,
) -> None:
    master = clpkc.setup("example.test", scalars(s))
    id1, id2 = master.params.identity(name1, addr1), master.params.identity(name2, addr2)
    if id1 == id2:
        return
    assume((x + w) % N != 0)  # else X is the point at infinity (refused)
    secret = clpkc.set_secret_value(master.params, id1, scalars(x))
    partial = clpkc.extract_partial_private_key(master, secret.request(), scalars(w))
    key = clpkc.set_private_key(master.params, secret, partial)
    relabelled_secret = SecretValue(id2, secret.secret, secret.u)
    relabelled = PartialPrivateKey(id2, partial.x_point, partial.d)
    with pytest.raises(KeyValidationError):
        clpkc.set_private_key(master.params, relabelled_secret, relabelled)
    with pytest.raises(KeyValidationError):
        clpkc.set_private_key(master.params, relabelled_secret, partial)
    claimed = PublicKey(id2, partial.x_point)
    assert clpkc.public_point(master.params, claimed) != key.q
    with pytest.raises(KeyValidationError):
        clpkc.check_binding(master.params, claimed, key.q)
    with pytest.raises(SignatureError):
        clpkc.verify(master.params, claimed, b"m", clpkc.sign(key, b"m"))


@PROPERTY
@given(NAMES, ADDRESSES, NAMES, ADDRESSES, SCALARS, SCALARS, SCALARS, SCALARS)
def test_changing_domain_ip_or_params_changes_id_and_key(
    name: str,
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
    other_name: str,
    other_addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
    s: int,
    other_s: int,
    x: int,
    w: int,
) -> None:
    """Same secret value and same KGC randomness: only the identity differs, yet ID and Q do."""
    masters = [clpkc.setup("example.test", scalars(s))]
    if other_s != s:
        masters.append(clpkc.setup("example.test", scalars(other_s)))
    masters.append(clpkc.setup("other.test", scalars(s)))
    base = masters[0]
    variants = [(base, name, addr)]
    if other_name != name:
        variants.append((base, other_name, addr))
    if other_addr != addr:
        variants.append((base, name, other_addr))
    variants += [(m, name, addr) for m in masters[1:]]
    ids, qs = set(), set()
    for master, n, a in variants:
        assume((x + w) % N != 0)  # else X is the point at infinity (refused)
        _secret, _partial, key = enrol(master, n, str(a), x, w)
        ids.add(key.identity.encode())
        qs.add(key.q)
        assert key.q.encode() == q_by_cryptography(key.scalar)
    assert len(ids) == len(variants) and len(qs) == len(variants)


@PROPERTY
@given(NAMES, ADDRESSES, SCALARS, SCALARS, SCALARS, SCALARS)
def test_a_replaced_public_key_fails_validation(
    name: str,
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
    s: int,
    x: int,
    w: int,
    forged: int,
) -> None:
    """Type I: the adversary publishes X' for which it knows a discrete log, without s."""
    master = clpkc.setup("example.test", scalars(s))
    assume((x + w) % N != 0)  # else X is the point at infinity (refused)
    _secret, partial, key = enrol(master, name, str(addr), x, w)
    params = master.params
    if forged in (key.scalar, (x + w) % N):
        return
    # 1. X' = [x']G: the bound key Q' = X' + [λ']P_pub is not [x']G.
    replaced = PublicKey(key.identity, curve.base_mul(forged))
    q_replaced = clpkc.public_point(params, replaced)
    assert q_replaced != curve.base_mul(forged)
    with pytest.raises(KeyValidationError):
        clpkc.check_binding(params, replaced, key.q)
    # 2. Cancelling λ·P_pub with the λ of the genuine X fails: λ hashes X' itself.
    lam = clpkc._lambda(partial.x_point, key.identity)
    cancel = curve.add(curve.base_mul(forged), curve.mul(params.p_pub, N - lam))
    assert clpkc.public_point(params, PublicKey(key.identity, cancel)) != curve.base_mul(forged)
    # 3. A signature made with x' for the replaced key does not verify.
    impostor = ec.derive_private_key(forged, P256)
    der = impostor.sign(
        clpkc.signing_input(curve.base_mul(forged), key.identity, b"m"),
        ec.ECDSA(hashes.SHA256()),
    )
    r, sig_s = decode_dss_signature(der)
    with pytest.raises(SignatureError):
        clpkc.verify(params, replaced, b"m", r.to_bytes(32, "big") + sig_s.to_bytes(32, "big"))


@PROPERTY
@given(NAMES, ADDRESSES, SCALARS, SCALARS, SCALARS, SCALARS)
def test_the_kgc_does_not_learn_the_private_key(
    name: str,
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
    s: int,
    x: int,
    w: int,
    guess: int,
) -> None:
    """Type II: the KGC knows s, w and d but not x. Its partial key alone is not the key, and
    the missing part is exactly the discrete log of U (which the member keeps)."""
    master = clpkc.setup("example.test", scalars(s))
    assume((x + w) % N != 0)  # else X is the point at infinity (refused)
    secret, partial, key = enrol(master, name, str(addr), x, w)
    assert curve.base_mul(partial.d) != key.q
    assert curve.base_mul((key.scalar - partial.d) % N) == secret.u
    if guess != x:
        kgc_secret = SecretValue(secret.identity, guess, secret.u)
        with pytest.raises(KeyValidationError):
            clpkc.set_private_key(master.params, kgc_secret, partial)


@PROPERTY
@given(NAMES, ADDRESSES, SCALARS, SCALARS, SCALARS)
def test_encodings_round_trip(
    name: str, addr: ipaddress.IPv4Address | ipaddress.IPv6Address, s: int, x: int, w: int
) -> None:
    master = clpkc.setup("example.test", scalars(s))
    assume((x + w) % N != 0)  # else X is the point at infinity (refused)
    secret, partial, key = enrol(master, name, str(addr), x, w)
    assert Params.decode(master.params.encode()) == master.params
    assert Identity.decode(key.identity.encode()) == key.identity
    assert PartialKeyRequest.decode(secret.request().encode()) == secret.request()
    assert PartialPrivateKey.decode(partial.encode()) == partial
    assert PublicKey.decode(key.public_key.encode()) == key.public_key
    assert curve.decode_point(key.q.encode()) == key.q
    assert curve.decode_scalar(curve.encode_scalar(key.scalar)) == key.scalar


def test_the_kgc_refuses_an_identity_naming_other_params() -> None:
    kgc, other = clpkc.setup("example.test"), clpkc.setup("example.test")
    identity = other.params.identity("www.example.test", "192.0.2.10")
    with pytest.raises(KeyValidationError):
        clpkc.set_secret_value(kgc.params, identity)
    secret = clpkc.set_secret_value(other.params, identity)
    with pytest.raises(KeyValidationError):
        clpkc.extract_partial_private_key(kgc, secret.request())
    partial = clpkc.extract_partial_private_key(other, secret.request())
    with pytest.raises(KeyValidationError):
        clpkc.set_private_key(kgc.params, secret, partial)
    with pytest.raises(KeyValidationError):
        clpkc.public_point(kgc.params, PublicKey(identity, partial.x_point))


# --------------------------------------------------------------------------- identity
def test_identity_normalisation_and_encoding() -> None:
    h = bytes(range(32))
    a = Identity.of("WWW.Example.TEST.", "2001:DB8:0:0::1", h)
    b = Identity.of("www.example.test", ipaddress.ip_address("2001:db8::1").packed, h)
    assert a == b and a.encode() == b.encode()
    assert a.encode() == (
        bytes([16]) + b"www.example.test" + bytes([16]) + a.address.packed + bytes([32]) + h
    )
    v4 = Identity.of("host.test", "192.0.2.1", h)
    assert v4.encode()[10:15] == b"\x04\xc0\x00\x02\x01"
    assert normalize_name("xn--bcher-kva.example") == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "a..b",
        "-a.test",
        "a-.test",
        "a_b.test",
        "bücher.test",
        "a" * 64 + ".test",
        ".".join(["a" * 63] * 4),
        "a b.test",
    ],
)
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidIdentity):
        Identity.of(name, "192.0.2.1", bytes(32))


@pytest.mark.parametrize(
    "address", ["::ffff:192.0.2.1", "fe80::1%eth0", "192.0.2", "example.test", b"\x01\x02\x03"]
)
def test_bad_addresses_are_refused(address: str | bytes) -> None:
    with pytest.raises(InvalidIdentity):
        Identity.of("host.test", address, bytes(32))


# --------------------------------------------------------------------------- hostile input
G_BYTES = curve.GENERATOR.encode()
P = curve.FIELD_PRIME


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",  # the SEC 1 encoding of the point at infinity
        b"\x04" + bytes(64),  # (0, 0) is not on the curve
        G_BYTES[:-1] + bytes([G_BYTES[-1] ^ 1]),  # not on the curve
        b"\x04" + P.to_bytes(32, "big") + G_BYTES[33:],  # x >= p
        b"\x02" + G_BYTES[1:33],  # compressed: one encoding per point
        b"\x06" + G_BYTES[1:],  # hybrid
        G_BYTES + b"\x00",
        G_BYTES[:64],
    ],
)
def test_bad_points_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidPoint):
        curve.decode_point(data)


@pytest.mark.parametrize(
    "data", [bytes(32), N.to_bytes(32, "big"), (2**256 - 1).to_bytes(32, "big"), b"\x01", b""]
)
def test_bad_scalars_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidScalar):
        curve.decode_scalar(data)


def test_identity_point_results_are_refused() -> None:
    with pytest.raises(InvalidPoint):
        curve.add(curve.GENERATOR, curve.base_mul(N - 1))
    with pytest.raises(InvalidScalar):
        curve.base_mul(0)
    with pytest.raises(InvalidScalar):
        curve.mul(curve.GENERATOR, N)


def test_bad_signatures_are_refused(
    kat: tuple[MasterKey, SecretValue, PartialPrivateKey, FullPrivateKey],
) -> None:
    master, _secret, _partial, key = kat
    good = clpkc.sign(key, b"m")
    for bad in (b"", good[:63], good + b"\x00", bytes(64), N.to_bytes(32, "big") + good[32:]):
        with pytest.raises(EncodingError):
            clpkc.verify(master.params, key.public_key, b"m", bad)


def _valid_encodings() -> dict[str, tuple[Callable[[bytes], object], bytes]]:
    master = clpkc.setup("example.test", scalars(KAT_S))
    secret, partial, key = enrol(master, "www.example.test", "192.0.2.10", KAT_X, KAT_W)
    return {
        "params": (Params.decode, master.params.encode()),
        "request": (PartialKeyRequest.decode, secret.request().encode()),
        "partial": (PartialPrivateKey.decode, partial.encode()),
        "public": (PublicKey.decode, key.public_key.encode()),
        "identity": (Identity.decode, key.identity.encode()),
    }


VALID = _valid_encodings()


def _structure_mutations(data: bytes) -> list[bytes]:
    items = cbor2.loads(data)
    out = [
        data + b"\x00",  # trailing byte
        data[:-1],  # truncated
        cbor2.dumps(list(items.values())),  # an array, not a map
        cbor2.dumps({**items, 9: b""}, canonical=True),  # unknown key
        cbor2.dumps({k: v for k, v in items.items() if k != max(items)}, canonical=True),
        cbor2.dumps({**items, 0: 99}, canonical=True),  # wrong kind
        cbor2.dumps(dict(reversed(list(items.items())))),  # not deterministic (key order)
        cbor2.dumps({str(k): v for k, v in items.items()}, canonical=True),  # text keys
        b"\xff" * 10,
        b"\x5b" + (2**63).to_bytes(8, "big"),  # a byte string claiming 2^63 bytes
        b"\x81" * 2000,  # deep nesting, over the size bound
        b"\x81" * 900 + b"\x00",  # deep nesting, under it
    ]
    for key, value in items.items():
        if isinstance(value, bytes):
            out.append(cbor2.dumps({**items, key: value[:-1]}, canonical=True))
            out.append(cbor2.dumps({**items, key: "text"}, canonical=True))
            if len(value) == 65:  # a point: identity, off-curve
                out.append(cbor2.dumps({**items, key: b"\x04" + bytes(64)}, canonical=True))
            if len(value) == 32:  # a scalar: 0 and n
                out.append(cbor2.dumps({**items, key: bytes(32)}, canonical=True))
                out.append(cbor2.dumps({**items, key: N.to_bytes(32, "big")}, canonical=True))
        if isinstance(value, str):
            out.append(cbor2.dumps({**items, key: value.upper()}, canonical=True))
    return out


@pytest.mark.parametrize("kind", sorted(k for k in VALID if k != "identity"))
def test_malformed_structures_raise_typed_errors(kind: str) -> None:
    decode, data = VALID[kind]
    for bad in _structure_mutations(data):
        with pytest.raises(EncodingError):
            decode(bad)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(VALID)), st.data())
def test_decoders_raise_only_typed_errors(kind: str, data: st.DataObject) -> None:
    """Random bytes and byte-level mutations of valid encodings: a decoder either returns a
    structure that encodes back to the same bytes or raises a TwinPeaksError."""
    decode, valid = VALID[kind]
    mutated = bytearray(valid)
    choice = data.draw(st.integers(0, 2))
    if choice == 0:
        mutated = bytearray(data.draw(st.binary(max_size=400)))
    elif choice == 1:
        i = data.draw(st.integers(0, len(mutated) - 1))
        mutated[i] = data.draw(st.integers(0, 255))
    else:
        i = data.draw(st.integers(0, len(mutated)))
        mutated[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    try:
        result = decode(bytes(mutated))
    except TwinPeaksError:
        return
    assert result.encode() == bytes(mutated)  # type: ignore[attr-defined]


def test_errors_are_d2tls_errors() -> None:
    for error in (
        EncodingError,
        InvalidPoint,
        InvalidScalar,
        InvalidIdentity,
        KeyValidationError,
        SignatureError,
    ):
        assert issubclass(error, TwinPeaksError) and issubclass(error, D2TLSError)


# --------------------------------------------------------------------------- spec and layering
def test_spec_cddl_accepts_our_encodings() -> None:
    """spec/twinpeaks.md's CDDL parses and matches every structure the codec produces."""
    import pycddl

    spec = (ROOT / "spec" / "twinpeaks.md").read_text(encoding="utf-8")
    cddl = spec.split("```cddl\n", 1)[1].split("```", 1)[0]
    for kind in ("params", "request", "partial", "public"):
        rule = {
            "params": "tp-params",
            "request": "tp-partial-key-request",
            "partial": "tp-partial-private-key",
            "public": "tp-public-key",
        }[kind]
        schema = pycddl.Schema(f"root = {rule}\n{cddl}")
        schema.validate_cbor(VALID[kind][1])
    public = pycddl.Schema(f"root = tp-public-key\n{cddl}")
    for kind in ("params", "request", "partial"):  # key 0 tells the structures apart
        with pytest.raises(pycddl.ValidationError):
            public.validate_cbor(VALID[kind][1])


def test_twinpeaks_core_imports_no_tooling_and_one_random_source() -> None:
    """The TwinPeaks package is protocol core: it imports only other core packages (the DTLS
    engine, the machines, the sans-IO contract, the injected clock and randomness), never
    tooling (net, lab, cli, adversary), sockets, asyncio, time or another random source."""
    package = ROOT / "src" / "d2tls" / "core" / "twinpeaks"
    allowed = (
        "d2tls.core.errors",
        "d2tls.core.twinpeaks",
        "d2tls.core.randomness",
        "d2tls.core.clock",
        "d2tls.core.sansio",
        "d2tls.core.dtls",
        "d2tls.core.model",
    )
    injected = {"SYSTEM", "Randomness", "RandomBytes", "system_random"}
    urandom = []
    for path in sorted(package.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("d2tls"):
                assert node.module.startswith(allowed), f"{path.name} imports {node.module}"
                if node.module == "d2tls.core.randomness":
                    names = {alias.name for alias in node.names}
                    assert names <= injected, f"{path.name} imports {names - injected}"
            if isinstance(node, ast.ImportFrom) and node.module in ("time", "os", "socket"):
                raise AssertionError(f"{path.name} imports from {node.module}")
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("d2tls") or alias.name.startswith(allowed), (
                        f"{path.name} imports {alias.name}"
                    )
                    assert alias.name not in (
                        "random",
                        "secrets",
                        "socket",
                        "asyncio",
                        "time",
                        "os",
                    ), f"{path.name} imports {alias.name}"
            if isinstance(node, ast.Attribute) and node.attr == "urandom":
                urandom.append(path.name)
    assert urandom == []
