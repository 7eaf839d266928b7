"""D2TLS over TwinPeaks keys (issue 22 item 3, spec/delegation.md §5.1, spec/twinpeaks.md §9.5).

The device's identity is its TwinPeaks member key, presented by the agent as an RFC 7250 raw
public key; the device signs the CertificateVerify (bound mode checks that the transcript
carries its own raw key); the server accepts the key only if TwinPeaks serves it for the
device's name. Wire format with hostile input, the agent's binding, the signer's checks,
then real processes: the server option against a real hierarchy and Knot DNS, and the demo.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from conftest import SERVER_NAME, LoadedPKI, Run, client_config, server_config
from d2tls.core.delegation.messages import (
    MAX_RAW_PUBLIC_KEY_SIZE,
    DelegationError,
    DelegationErrorCode,
    DelegationMode,
    DelegationProtocolError,
    DelegationRequest,
    SignRequest,
    SignResponse,
    decode_message,
    encode_message,
)
from d2tls.core.delegation.policy import AgentPolicy, parse_psk_line
from d2tls.core.dtls.events import SignatureRequested
from d2tls.core.dtls.messages import TwinPeaksHello
from d2tls.core.dtls.rawpk import spki_of
from d2tls.core.errors import ConfigurationError
from d2tls.core.pki.generate import init_pki
from d2tls.core.roles.device import DelegationAttempt, DeviceConfig
from d2tls.core.roles.signer import DeviceSigner
from d2tls.core.twinpeaks.resolver import dump_anchors
from d2tls.lab import dns as dnslab
from d2tls.lab.peers import free_udp_port
from d2tls.lab.twinpeaks_d2tls import DEVICE, DEVICE_NAME, demo_zones
from d2tls.lab.twinpeaks_live import LiveHierarchy

MALFORMED = DelegationErrorCode.MALFORMED
RID = 0x01020304
KEY = ec.generate_private_key(ec.SECP256R1())
SPKI = spki_of(KEY)


def request(**overrides: Any) -> DelegationRequest:
    fields: dict[str, Any] = {
        "request_id": RID,
        "server_host": "127.0.0.1",
        "server_port": 5684,
        "server_name": "localhost",
        "cipher_suites": (0xC0AE,),
        "certificate_chain": (),
        "mode": DelegationMode.BLIND,
        "raw_public_key": SPKI,
    }
    fields.update(overrides)
    return DelegationRequest(**fields)


def wire(**overrides: object) -> bytes:
    """A hand-built DelegationRequest map (to craft invalid ones)."""
    items: dict[int, object] = {
        0: 1,
        1: RID,
        2: "127.0.0.1",
        3: 5684,
        4: "localhost",
        5: [0xC0AE],
        7: 1,
        21: SPKI,
    }
    for key, value in overrides.items():
        number = int(key.removeprefix("k"))
        if value is None:
            items.pop(number, None)
        else:
            items[number] = value
    data: bytes = cbor2.dumps(items, canonical=True)
    return data


def reject(data: bytes) -> DelegationProtocolError:
    with pytest.raises(DelegationProtocolError) as info:
        decode_message(data)
    assert info.value.code is MALFORMED
    assert info.value.request_id == RID  # the reply can name the request
    return info.value


# --------------------------------------------------------------------------- wire format
@pytest.mark.parametrize("mode", list(DelegationMode))
def test_raw_key_request_round_trips_without_a_chain(mode: DelegationMode) -> None:
    random = bytes(range(32)) if mode is DelegationMode.BOUND else None
    message = request(mode=mode, client_random=random)
    data = encode_message(message)
    assert decode_message(data) == message
    items = cbor2.loads(data)
    assert items[21] == SPKI and 6 not in items  # no empty certificate_chain on the wire


def test_a_certificate_request_is_unchanged_on_the_wire() -> None:
    message = request(certificate_chain=(b"\x30\x03\x02\x01\x01",), raw_public_key=None)
    items = cbor2.loads(encode_message(message))
    assert 21 not in items and items[6] == [b"\x30\x03\x02\x01\x01"]


def p384_spki() -> bytes:
    return spki_of_any(ec.generate_private_key(ec.SECP384R1()))


def spki_of_any(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def compressed_spki() -> bytes:
    """The same P-256 key with a compressed point: valid DER, but not the canonical form."""
    point = KEY.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    prefix = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200")
    return prefix + point


@pytest.mark.parametrize(
    ("overrides", "cause"),
    [
        ({"k6": [b"\x30\x00"]}, "mutually exclusive"),
        ({"k21": None}, "certificate_chain, certificate_chain_hash or raw_public_key is required"),
        ({"k21": b"\x30\x03\x02\x01\x01"}, "not a DER SubjectPublicKeyInfo"),
        ({"k21": b"\x00" * 91}, "not a DER SubjectPublicKeyInfo"),
        ({"k21": "a key"}, "must be a byte string"),
        ({"k21": b""}, "length must be in 1.."),
        ({"k21": b"\x30" * (MAX_RAW_PUBLIC_KEY_SIZE + 1)}, "length must be in 1..256"),
        ({"k21": [SPKI]}, "must be a byte string"),
        ({"k6": [], "k21": SPKI}, "must have 1..4 entries"),
    ],
)
def test_hostile_raw_key_fields_are_malformed(overrides: dict[str, object], cause: str) -> None:
    assert cause in reject(wire(**overrides)).reason


def test_a_key_that_is_not_p256_is_malformed() -> None:
    assert "not ECDSA P-256" in reject(wire(k21=p384_spki())).reason


def test_a_non_canonical_encoding_of_the_key_is_malformed() -> None:
    """The agent's Certificate and the device's check both use the canonical DER: a request
    must carry exactly those bytes (else bound mode could never match)."""
    error = reject(wire(k21=compressed_spki()))
    assert "canonical" in error.reason or "SubjectPublicKeyInfo" in error.reason


def test_encoding_refuses_a_request_without_a_credential() -> None:
    with pytest.raises(ValueError, match="required"):
        encode_message(request(raw_public_key=None))
    with pytest.raises(ValueError, match="mutually exclusive"):
        encode_message(request(certificate_chain=(b"\x30\x00",)))


def test_spec_cddl_has_the_raw_key_credential() -> None:
    """spec/delegation.md's CDDL accepts our raw-key requests and refuses a request without
    a credential (that both are refused is the codec's test above: pycddl's type choices of
    maps let a key of one alternative through in another)."""
    import pycddl

    spec = (Path(__file__).parent.parent / "spec" / "delegation.md").read_text()
    schema = pycddl.Schema(spec.split("```cddl\n", 1)[1].split("```", 1)[0])
    for mode, random in ((DelegationMode.BOUND, bytes(32)), (DelegationMode.BLIND, None)):
        schema.validate_cbor(encode_message(request(mode=mode, client_random=random)))
    with pytest.raises(pycddl.ValidationError):
        schema.validate_cbor(wire(k21=None))


# --------------------------------------------------------------------------- agent policy
def test_the_agent_binds_an_identity_to_a_raw_key() -> None:
    entry = parse_psk_line(f"dev:{'11' * 32} rpk-sha256={hashlib.sha256(SPKI).hexdigest()}")
    policy = AgentPolicy.build({entry.identity: entry}, ["127.0.0.1:5684"])
    assert entry.bound
    assert policy.refusal(b"dev", request()) is None
    other = spki_of(ec.generate_private_key(ec.SECP256R1()))
    refusal = policy.refusal(b"dev", request(raw_public_key=other))
    assert refusal is not None and "not bound to this raw public key" in refusal
    # A raw-key binding does not let the identity delegate for a certificate, nor the reverse.
    chain_request = request(certificate_chain=(b"\x30\x03\x02\x01\x01",), raw_public_key=None)
    assert policy.refusal(b"dev", chain_request) is not None
    cert_bound = parse_psk_line(f"dev:{'11' * 32} cert-sha256={'ab' * 32}")
    refusal = AgentPolicy.build({b"dev": cert_bound}, ["127.0.0.1:5684"]).refusal(b"dev", request())
    assert refusal is not None and "rpk-sha256" in refusal


def test_a_bad_raw_key_fingerprint_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="rpk-sha256"):
        parse_psk_line(f"dev:{'11' * 32} rpk-sha256=abcd")


# --------------------------------------------------------------------------- device signer
def device_protocol(key: ec.EllipticCurvePrivateKey, mode: DelegationMode) -> DelegationAttempt:
    config = DeviceConfig(
        agent=("127.0.0.1", 1),
        psk_identity=b"device-1",
        psk=bytes(32),
        server=("127.0.0.1", 2),
        server_name=SERVER_NAME,
        certificate_chain=(),
        signer=DeviceSigner(key),
        mode=mode,
        raw_public_key=spki_of(key),
    )
    protocol = DelegationAttempt(config, None, 7)
    protocol.start()
    protocol.channel_up()
    return protocol


def agent_handshake(
    pki: LoadedPKI, key: ec.EllipticCurvePrivateKey, client_random: bytes | None
) -> SignatureRequested:
    """The agent's real handshake (in memory) presenting ``key`` as the client's raw key,
    with a server that trusts it, up to the CertificateVerify."""
    run = Run(
        server_config(pki, trusted_client_keys=frozenset({spki_of(key)})),
        client_config(
            pki,
            certificate_chain=(),
            private_key=None,
            client_raw_public_key=spki_of(key),
            client_random=client_random,
        ),
    )
    run.handshake(max_time=30)
    [asked] = [e for e in run.client_events if isinstance(e, SignatureRequested)]
    return asked


@pytest.mark.parametrize("mode", list(DelegationMode))
def test_the_device_signs_a_handshake_that_presents_its_raw_key(
    pki: LoadedPKI, mode: DelegationMode
) -> None:
    protocol = device_protocol(KEY, mode)
    [sent] = protocol.outbox
    protocol.outbox.clear()
    assert isinstance(sent, DelegationRequest)
    assert sent.raw_public_key == SPKI and sent.certificate_chain == ()
    asked = agent_handshake(pki, KEY, sent.client_random)
    bound = mode is DelegationMode.BOUND
    protocol.receive(
        SignRequest(sent.request_id, asked.digest, asked.transcript if bound else None)
    )
    [response] = protocol.outbox
    assert isinstance(response, SignResponse)
    KEY.public_key().verify(response.signature, asked.transcript, ec.ECDSA(hashes.SHA256()))
    assert protocol.config.signer.signatures == 1


def test_bound_mode_refuses_a_transcript_presenting_another_raw_key(pki: LoadedPKI) -> None:
    """A compromised agent cannot have the device sign a handshake made for another key."""
    protocol = device_protocol(KEY, DelegationMode.BOUND)
    [sent] = protocol.outbox
    protocol.outbox.clear()
    assert isinstance(sent, DelegationRequest)
    other = ec.generate_private_key(ec.SECP256R1())
    asked = agent_handshake(pki, other, sent.client_random)
    protocol.receive(SignRequest(sent.request_id, asked.digest, asked.transcript))
    [error] = protocol.outbox
    assert isinstance(error, DelegationError)
    assert error.code is DelegationErrorCode.SIGNING_REFUSED
    assert "raw public key" in error.reason
    assert protocol.config.signer.signatures == 0


def test_bound_mode_refuses_a_transcript_presenting_a_certificate(pki: LoadedPKI) -> None:
    protocol = device_protocol(KEY, DelegationMode.BOUND)
    [sent] = protocol.outbox
    protocol.outbox.clear()
    assert isinstance(sent, DelegationRequest)
    run = Run(
        server_config(pki), client_config(pki, private_key=None, client_random=sent.client_random)
    )
    run.handshake(max_time=30)
    [asked] = [e for e in run.client_events if isinstance(e, SignatureRequested)]
    protocol.receive(SignRequest(sent.request_id, asked.digest, asked.transcript))
    [error] = protocol.outbox
    assert isinstance(error, DelegationError)
    assert error.code is DelegationErrorCode.SIGNING_REFUSED
    assert protocol.config.signer.signatures == 0


SERVER_KEY = ec.generate_private_key(ec.SECP256R1())


def raw_server_transcript(
    pki: LoadedPKI, client_random: bytes | None, twinpeaks: TwinPeaksHello | None
) -> SignatureRequested:
    """The agent's handshake with a server that authenticates by a raw key (a TwinPeaks
    server, spec/twinpeaks.md §9.5), the device presenting its raw key too."""
    run = Run(
        server_config(pki, raw_private_key=SERVER_KEY, trusted_client_keys=frozenset({SPKI})),
        client_config(
            pki,
            certificate_chain=(),
            private_key=None,
            client_raw_public_key=SPKI,
            client_random=client_random,
            trusted_server_keys=frozenset({spki_of(SERVER_KEY)}),
            twinpeaks=twinpeaks,
        ),
    )
    run.handshake(max_time=30)
    [asked] = [e for e in run.client_events if isinstance(e, SignatureRequested)]
    return asked


@pytest.mark.parametrize(
    ("host_name", "signed"), [(SERVER_NAME, True), ("other.example.test", False), (None, False)]
)
def test_bound_mode_with_a_raw_key_server_checks_the_twinpeaks_name(
    pki: LoadedPKI, host_name: str | None, signed: bool
) -> None:
    """Rule 6 for a raw-key server: the ClientHello's TwinPeaks extension names the server
    the device asked for (an honest TwinPeaks server refuses another name, §9.3)."""
    protocol = device_protocol(KEY, DelegationMode.BOUND)
    [sent] = protocol.outbox
    protocol.outbox.clear()
    assert isinstance(sent, DelegationRequest)
    hello = TwinPeaksHello(host_name, bytes([127, 0, 0, 1]), bytes(32)) if host_name else None
    asked = raw_server_transcript(pki, sent.client_random, hello)
    protocol.receive(SignRequest(sent.request_id, asked.digest, asked.transcript))
    [answer] = protocol.outbox
    if signed:
        assert isinstance(answer, SignResponse)
        assert protocol.config.signer.signatures == 1
    else:
        assert isinstance(answer, DelegationError)
        assert answer.code is DelegationErrorCode.SIGNING_REFUSED
        assert "TwinPeaks extension" in answer.reason
        assert protocol.config.signer.signatures == 0


def test_bound_mode_with_a_raw_key_server_checks_the_pin(pki: LoadedPKI) -> None:
    protocol = device_protocol(KEY, DelegationMode.BOUND)
    protocol.config.server_pin = hashlib.sha256(SPKI).digest()  # not the server's key
    [sent] = protocol.outbox
    protocol.outbox.clear()
    assert isinstance(sent, DelegationRequest)
    hello = TwinPeaksHello(SERVER_NAME, bytes([127, 0, 0, 1]), bytes(32))
    asked = raw_server_transcript(pki, sent.client_random, hello)
    protocol.receive(SignRequest(sent.request_id, asked.digest, asked.transcript))
    [answer] = protocol.outbox
    assert isinstance(answer, DelegationError) and "pinned" in answer.reason


# --------------------------------------------------------------------------- real processes
def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "d2tls.cli", *args]


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    path.chmod(0o600)
    return path


def start_server(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if b"listening on" in log.read_bytes():
            return process
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.terminate()
    process.wait(timeout=10)
    raise AssertionError(f"server did not start: {log.read_text(errors='replace')}")


def client(address: str, key: Path, ca: Path) -> dict[str, Any]:
    completed = subprocess.run(
        [
            *cli("client", address, "--rawpk-key", str(key), "--ca", str(ca)),
            *("--server-name", "localhost", "--send", "ping", "--json", "--timeout", "20"),
        ],
        capture_output=True,
        timeout=90,
        check=False,
    )
    result: dict[str, Any] = json.loads(completed.stdout.decode().strip().splitlines()[-1])
    return result


async def server_checks(tmp_path: Path, knot: dnslab.KnotServer) -> dict[str, Any]:
    """The hierarchy runs in this loop; the server and clients are processes (threads wait)."""
    async with LiveHierarchy(members=(DEVICE,)) as live:
        registered = live.registered[DEVICE]
        root = tmp_path / "root.anchors"
        root.write_bytes(dump_anchors(live.anchors()))
        right = write_key(tmp_path / "device.key", registered.key.to_cryptography())
        wrong = write_key(tmp_path / "wrong.key", ec.generate_private_key(ec.SECP256R1()))
        pki = init_pki(tmp_path / "pki", server_name="localhost", devices=1)
        port = free_udp_port()
        log = tmp_path / "server.log"
        argv = cli(
            "server",
            "--listen",
            f"127.0.0.1:{port}",
            "--cert",
            str(pki.server_cert),
            "--key",
            str(pki.server_key),
            "--require-client-cert",
            "--twinpeaks-client",
            DEVICE_NAME,
            "--twinpeaks-root",
            str(root),
            "--dns",
            f"127.0.0.1:{knot.port}",
            "--echo",
        )
        server = await asyncio.to_thread(start_server, argv, log)
        try:
            address = f"127.0.0.1:{port}"
            good = await asyncio.to_thread(client, address, right, pki.ca_cert)
            bad = await asyncio.to_thread(client, address, wrong, pki.ca_cert)
        finally:
            server.terminate()
            await asyncio.to_thread(server.wait, 10)
        return {
            "good": good,
            "bad": bad,
            "log": log.read_text(errors="replace"),
            "spki": spki_of(registered.key.to_cryptography()),
        }


def test_server_accepts_only_the_key_twinpeaks_serves_for_the_device(tmp_path: Path) -> None:
    with dnslab.running(demo_zones(), tmp_path / "knot") as knot:
        out = asyncio.run(server_checks(tmp_path, knot))
    good, bad = out["good"], out["bad"]
    assert good["ok"] is True, good
    assert good["received"] == "ping"
    assert bad["ok"] is False, bad
    assert bad["alert"] == "certificate_unknown" and bad["alert_from_peer"] is True
    assert f"{DEVICE_NAME} at 127.0.0.1: raw public key" in out["log"]
    assert "is not trusted (alert certificate_unknown)" in out["log"]


def test_server_without_any_resolvable_device_refuses_to_start(tmp_path: Path) -> None:
    """A name TwinPeaks does not know: the server names the cause and exits 2."""
    with dnslab.running(demo_zones(), tmp_path / "knot") as knot:

        async def attempt() -> subprocess.CompletedProcess[bytes]:
            async with LiveHierarchy(members=(DEVICE,)) as live:
                root = tmp_path / "root.anchors"
                root.write_bytes(dump_anchors(live.anchors()))
                pki = init_pki(tmp_path / "pki", server_name="localhost", devices=1)
                argv = cli(
                    "server",
                    "--listen",
                    "127.0.0.1:0",
                    "--cert",
                    str(pki.server_cert),
                    "--key",
                    str(pki.server_key),
                    "--twinpeaks-client",
                    "nobody.example.test",
                    "--twinpeaks-root",
                    str(root),
                    "--dns",
                    f"127.0.0.1:{knot.port}",
                )
                return await asyncio.to_thread(
                    subprocess.run, argv, capture_output=True, timeout=90, check=False
                )

        completed = asyncio.run(attempt())
    assert completed.returncode == 2
    assert b"nobody.example.test" in completed.stderr
    assert b"no client name could be resolved" in completed.stderr


@pytest.mark.parametrize(
    ("argv", "cause"),
    [
        (["server", "--listen", "127.0.0.1:0", "--twinpeaks-client", "a.test"], "come together"),
        (["server", "--listen", "127.0.0.1:0", "--twinpeaks-client", "a.test@x"], "IP address"),
        (["device", "--server", "127.0.0.1:1", "--server-name", "s", "--key", "k"], "exactly one"),
        (["demo", "--keys", "twinpeaks", "--server", "openssl"], "--keys twinpeaks"),
    ],
)
def test_bad_command_lines_exit_2_with_the_cause(argv: list[str], cause: str) -> None:
    completed = subprocess.run(cli(*argv), capture_output=True, text=True, timeout=60, check=False)
    assert completed.returncode == 2
    assert cause in completed.stderr


def test_demo_with_twinpeaks_keys() -> None:
    completed = subprocess.run(
        cli("demo", "--keys", "twinpeaks", "--json"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["ok"] is True
    bound, blind, standalone = result["bound"], result["blind"], result["standalone"]
    # One device signature per new session, none for the reused context.
    for row in (bound[0], blind[0]):
        assert row["delegations"] == 1
        assert row["key_operations"] == {"sign": 1, "verify": 0, "ecdh": 0, "keygen": 0}
        assert row["received"] == "hello from the device"
    assert bound[1]["resumed_from_cache"] is True and bound[1]["public_key_operations"] == 0
    assert bound[1]["received"] == "hello from the device"
    assert standalone[0]["key_operations"]["sign"] == 1
    messages = [(r["from"], r["to"], r["message"]) for r in result["timeline"]]
    assert ("agent", "device", "SignRequest") in messages
    assert ("device", "server", "Finished") in messages
    impostor = result["impostor"]
    assert impostor["ok"] is False and impostor["server_refused"] is True
    assert "alert certificate_unknown from the server" in impostor["error"]
    fingerprint = result["device"]["raw_public_key"]
    assert any(fingerprint in line for line in result["server_resolution"])
    # The agent authenticated the server by the key TwinPeaks serves for its name; the
    # standalone device, which has no TwinPeaks resolver, by its X.509 certificate.
    server_key = result["server"]["raw_public_key"]
    assert any(server_key in line for line in result["agent_resolution"])
    for row in (bound[0], bound[1], blind[0]):
        assert row["server_raw_public_key"] == server_key
    assert standalone[0].get("server_raw_public_key") is None


def test_demo_text_output_shows_one_signature_per_new_session() -> None:
    completed = subprocess.run(
        cli("demo", "--keys", "twinpeaks"), capture_output=True, text=True, timeout=300, check=False
    )
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    signatures = {}
    for label in ("D2TLS bound (new)", "D2TLS bound (reuse)", "D2TLS blind (new)"):
        [line] = [ln for ln in out.splitlines() if ln.strip().startswith(label)]
        signatures[label] = int(line.strip().removeprefix(label).split()[0])
    assert signatures == {"D2TLS bound (new)": 1, "D2TLS bound (reuse)": 0, "D2TLS blind (new)": 1}
    assert f"Device {DEVICE_NAME} registered" in out
    assert "alert certificate_unknown from the server" in out
    assert out.rstrip().endswith("result: OK")


async def key_set_follows_twinpeaks(tmp_path: Path, knot: dnslab.KnotServer) -> list[object]:
    from d2tls.core.dtls.config import ServerConfig
    from d2tls.lab.twinpeaks_keys import ClientName, TwinPeaksClientKeys
    from d2tls.lab.twinpeaks_live import static_dns

    seen: list[object] = []
    async with LiveHierarchy(members=(DEVICE,)) as live:
        root = tmp_path / "root.anchors"
        root.write_bytes(dump_anchors(live.anchors()))
        static = spki_of(ec.generate_private_key(ec.SECP256R1()))  # a --trust-rawpk key
        config = ServerConfig(trusted_client_keys=frozenset({static}))
        keys = await TwinPeaksClientKeys.start(
            config, root, ("127.0.0.1", knot.port), [ClientName(DEVICE_NAME)], refresh=3600
        )
        try:
            first = spki_of(live.registered[DEVICE].key.to_cryptography())
            seen.append(config.trusted_client_keys == {static, first})
            # A key update reaches the server once the resolver's cached answer is gone.
            updated = await live.update_key(DEVICE)
            second = spki_of(updated.key.to_cryptography())
            keys.resolver.invalidate(DEVICE_NAME, "127.0.0.1")
            seen.append(await keys.resolve_all() == [])
            seen.append(config.trusted_client_keys == {static, second})
            # A failed lookup (here: the DNS has no address for the name) fails closed.
            keys.dns = static_dns({})
            keys.resolver.invalidate(DEVICE_NAME, "127.0.0.1")
            failures = await keys.resolve_all()
            seen.append(len(failures) == 1 and "NXDOMAIN" in failures[0])
            seen.append(config.trusted_client_keys == {static})
        finally:
            await keys.aclose()
    return seen


def test_the_key_set_follows_key_updates_and_fails_closed(tmp_path: Path) -> None:
    with dnslab.running(demo_zones(), tmp_path / "knot") as knot:
        seen = asyncio.run(key_set_follows_twinpeaks(tmp_path, knot))
    assert seen == [True] * 5
