"""pytest-benchmark: the bound-mode device's signing step, with and without server binding.

Run: ``.venv/bin/python -m pytest benchmarks/test_bound_check.py --benchmark-only``. The group
puts the device's policy checks (spec/delegation.md §6) beside the ECDSA signature they guard:
the server binding (one certificate parse, plus a SHA-256 of the public key with a pin) is what
issue 24 item 2 added to the checks. Nothing here asserts a speed.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from d2tls.bench.common import Materials
from d2tls.bench.record import CLIENT
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientAuth, ClientConfig, ServerConfig
from d2tls.core.dtls.constants import CipherSuite, HandshakeType
from d2tls.core.dtls.events import SignatureRequested
from d2tls.core.dtls.fragments import parse_handshake_fragments
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.pki.names import spki_sha256
from d2tls.core.roles.signer import DeviceSigner, check_bound_transcript, check_server_certificate
from d2tls.sim import Simulation

SUITE = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
GROUP = "bound-mode signing step"


@pytest.fixture(scope="module")
def asked() -> tuple[Materials, bytes, SignatureRequested]:
    """A real transcript up to CertificateVerify, made with the device's random."""
    m = Materials.create()
    random = os.urandom(32)
    server = DTLSServer(
        ServerConfig(
            cipher_suites=(SUITE,),
            certificate_chain=m.server_chain,
            private_key=m.server_key,
            trust_store=m.store,
            client_auth=ClientAuth.REQUIRED,
        )
    )
    client = DTLSClient(
        ClientConfig(
            cipher_suites=(SUITE,),
            trust_store=m.store,
            server_name="localhost",
            certificate_chain=m.device_chain,
            private_key=None,
            client_random=random,
        )
    )
    sim = Simulation(server)
    sim.add_client(client, CLIENT)
    sim.connect(CLIENT)
    sim.run(lambda: any(isinstance(e, SignatureRequested) for e in sim.events[CLIENT]), 60)
    [request] = [e for e in sim.events[CLIENT] if isinstance(e, SignatureRequested)]
    return m, random, request


def _server_certificate_body(transcript: bytes) -> bytes:
    return next(
        m.body
        for m in parse_handshake_fragments(transcript)
        if m.msg_type == HandshakeType.CERTIFICATE
    )


@pytest.mark.benchmark(group=GROUP)
def test_ecdsa_sign_of_the_transcript(benchmark: Any, asked: Any) -> None:
    m, _, request = asked
    signer = DeviceSigner(m.device_key)
    assert benchmark(signer.sign_transcript, request.transcript)


@pytest.mark.benchmark(group=GROUP)
def test_all_bound_checks(benchmark: Any, asked: Any) -> None:
    m, random, request = asked
    args = (request.transcript, request.digest, random, m.device_chain, "localhost")
    benchmark(check_bound_transcript, *args)


@pytest.mark.benchmark(group=GROUP)
def test_all_bound_checks_with_a_pin(benchmark: Any, asked: Any) -> None:
    m, random, request = asked
    pin = spki_sha256(m.server_chain[0])
    args = (request.transcript, request.digest, random, m.device_chain, "localhost", pin)
    benchmark(check_bound_transcript, *args)


@pytest.mark.benchmark(group=GROUP)
def test_server_binding_alone(benchmark: Any, asked: Any) -> None:
    _, _, request = asked
    body = _server_certificate_body(request.transcript)
    benchmark(check_server_certificate, body, "localhost", None)
