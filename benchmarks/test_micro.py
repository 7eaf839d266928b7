"""pytest-benchmark micro-benchmarks of the sans-IO engines (not part of the default suite).

Run: ``.venv/bin/python -m pytest benchmarks --benchmark-only`` (add ``--benchmark-json F``).
Each group puts one operation of ours beside the ``cryptography`` primitive it is built on,
measured in the same run, so the report reads as ratios. Nothing here asserts a speed: the
assertions only check that the measured operation really happened.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from d2tls.bench.common import Materials
from d2tls.bench.record import CLIENT, established_pair
from d2tls.core.dtls import keyschedule
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientAuth, ClientConfig, ServerConfig
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.dtls.events import ApplicationDataReceived, HandshakeCompleted
from d2tls.core.dtls.server import DTLSServer
from d2tls.sim import Simulation

SUITE = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8


@pytest.fixture(scope="module")
def materials() -> Materials:
    return Materials.create()


def _server(m: Materials) -> DTLSServer:
    return DTLSServer(
        ServerConfig(
            cipher_suites=(SUITE,),
            certificate_chain=m.server_chain,
            private_key=m.server_key,
            trust_store=m.store,
            client_auth=ClientAuth.REQUIRED,
        )
    )


def _client(m: Materials, **extra: Any) -> DTLSClient:
    return DTLSClient(
        ClientConfig(
            cipher_suites=(SUITE,),
            trust_store=m.store,
            server_name="localhost",
            certificate_chain=m.device_chain,
            private_key=m.device_key,
            **extra,
        )
    )


def _handshake(server: DTLSServer, client: DTLSClient, port: int) -> HandshakeCompleted:
    address = ("198.51.100.20", port)
    sim = Simulation(server)
    sim.add_client(client, address)
    sim.connect(address)
    sim.run(lambda: client.is_established or client.is_closed, max_time=60)
    done = [e for e in sim.events[address] if isinstance(e, HandshakeCompleted)]
    assert done, f"handshake failed in state {client.state}"
    return done[0]


@pytest.mark.benchmark(group="record")
def test_record_through_both_engines(benchmark: Any, materials: Materials) -> None:
    client, server = established_pair(materials, SUITE)
    payload = os.urandom(256)

    def one_record() -> None:
        client.send_application_data(payload)
        for datagram, _ in client.datagrams_to_send(0.0):
            server.receive_datagram(datagram, CLIENT, 0.0)
        event = server.next_event()
        assert isinstance(event, ApplicationDataReceived) and event.data == payload

    benchmark(one_record)


@pytest.mark.benchmark(group="record")
def test_raw_aes_ccm8_seal_and_open(benchmark: Any) -> None:
    aead = AESCCM(os.urandom(16), tag_length=8)
    nonce, payload, aad = os.urandom(12), os.urandom(256), os.urandom(13)

    def seal_open() -> None:
        assert aead.decrypt(nonce, aead.encrypt(nonce, payload, aad), aad) == payload

    benchmark(seal_open)


@pytest.mark.benchmark(group="handshake")
def test_full_mutual_auth_handshake_both_sides(benchmark: Any, materials: Materials) -> None:
    server = _server(materials)
    ports = iter(range(20000, 60000))
    benchmark(lambda: _handshake(server, _client(materials), next(ports)))


@pytest.mark.benchmark(group="handshake")
def test_resumption_both_sides(benchmark: Any, materials: Materials) -> None:
    server = _server(materials)
    session = _handshake(server, _client(materials), 10000).session
    ports = iter(range(20000, 60000))

    def resume() -> None:
        done = _handshake(server, _client(materials, session=session), next(ports))
        assert done.resumed

    benchmark(resume)


@pytest.mark.benchmark(group="handshake")
def test_raw_public_key_work_of_a_full_handshake(benchmark: Any, materials: Materials) -> None:
    """Both sides' public-key operations: 2 signatures, 4 verifications, 2 keygens, 2 ECDH."""
    data = os.urandom(200)
    signature = materials.server_key.sign(data, ec.ECDSA(hashes.SHA256()))
    public = materials.server_key.public_key()

    def public_key_work() -> None:
        for _ in range(2):
            materials.device_key.sign(data, ec.ECDSA(hashes.SHA256()))
        for _ in range(4):
            public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        a, b = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        assert a.exchange(ec.ECDH(), b.public_key()) == b.exchange(ec.ECDH(), a.public_key())

    benchmark(public_key_work)


@pytest.mark.benchmark(group="prf")
def test_key_block(benchmark: Any) -> None:
    master, randoms = os.urandom(48), os.urandom(64)
    block = benchmark(lambda: keyschedule.prf(master, b"key expansion", randoms, 40))
    assert len(block) == 40
