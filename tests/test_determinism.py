"""A whole delegated handshake in the simulator is a pure function of its seeds and clock.

Device, agent and cloud server run as the very sans-IO roles the real hosts run
(:class:`~d2tls.core.roles.device.DeviceProtocol`, :class:`~d2tls.core.roles.agent.AgentProtocol`, a
:class:`~d2tls.core.dtls.server.DTLSServer`) on one :class:`~d2tls.sim.Network` with lossy,
jittery links. With the same network seed, the same injected randomness
(:class:`~d2tls.core.randomness.SeededRandomness`: randoms, ephemeral keys, RFC 6979 signatures,
the device's signer too) and the same wall clock, every datagram of the run (the PSK channel,
the agent's full handshake with the server, the device's resumption, application data) is
the same to the byte, sent at the same virtual time, between the same addresses.
"""

from __future__ import annotations

from functools import cache

from d2tls.adversary.credentials import SERVER_NAME, Credentials, credentials
from d2tls.core.clock import FixedClock
from d2tls.core.delegation.messages import DelegationMode
from d2tls.core.dtls.config import ClientAuth, ServerConfig
from d2tls.core.dtls.events import ApplicationDataReceived
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.randomness import SeededRandomness
from d2tls.core.roles.agent import AgentConfig, AgentProtocol
from d2tls.core.roles.device import DataReceived, DeviceConfig, DeviceProtocol
from d2tls.core.roles.signer import DeviceSigner
from d2tls.sim import Address, Impairments, Network

SERVER: Address = ("203.0.113.10", 4433)
AGENT: Address = ("198.51.100.1", 5684)
DEVICE: Address = ("198.51.100.7", 40000)
Wire = list[tuple[Address, Address, float, bytes]]


@cache
def creds() -> Credentials:
    return credentials()


def delegated_run(seed: int, mode: DelegationMode) -> tuple[Wire, DeviceProtocol, int]:
    """Delegate, resume and echo one record; every datagram put on the wire, in order."""
    pki = creds()
    clock = FixedClock(pki_time())

    def rng(role: str) -> SeededRandomness:
        return SeededRandomness(f"{role}-{seed}")

    net = Network(seed=seed, impairments=Impairments(loss=0.05, latency=0.02))
    server = DTLSServer(
        ServerConfig(
            certificate_chain=pki.server.chain,
            private_key=pki.server.key,
            trust_store=pki.store,
            client_auth=ClientAuth.REQUIRED,
            wall_clock=clock,
            randomness=rng("server"),
        )
    )

    def echo(event: object) -> None:
        if isinstance(event, ApplicationDataReceived) and event.peer is not None:
            server.send_application_data(event.peer, event.data)

    net.add(server, SERVER, echo)
    agent = AgentProtocol(
        AgentConfig(
            psk_keys={pki.psk_identity: pki.psk},
            trust_store=pki.store,
            wall_clock=clock,
            randomness=rng("agent"),
        )
    )
    net.add(agent, AGENT)
    device = DeviceProtocol(
        DeviceConfig(
            agent=AGENT,
            psk_identity=pki.psk_identity,
            psk=pki.psk,
            server=SERVER,
            server_name=SERVER_NAME,
            certificate_chain=pki.device.chain,
            signer=DeviceSigner(pki.device.key, rng("signer")),
            mode=mode,
            wall_clock=clock,
            randomness=rng("device"),
        ),
        first_request_id=1,
    )
    echoed: list[bytes] = []
    net.add(
        device, DEVICE, lambda e: echoed.append(e.data) if isinstance(e, DataReceived) else None
    )
    device.connect(net.now)
    net.run(lambda: device.finished, max_time=600.0)
    assert device.connected, device.attempt.error if device.attempt else "no attempt"
    for _ in range(20):  # the application resends until echoed (the links lose datagrams)
        device.send(b"reading 42")
        net.flush()
        net.advance(2.0)
        if echoed:
            break
    assert echoed == [b"reading 42"] or echoed[:1] == [b"reading 42"]
    wire = [(d.source, d.destination, d.sent_at, d.data) for d in net.history]
    return wire, device, len(net.history) - len(net.delivered)


@cache
def pki_time() -> float:
    """One wall-clock reading for the whole module (inside the certificates' validity)."""
    import time

    return time.time()


def test_same_seed_same_bytes_for_a_whole_delegated_handshake() -> None:
    for mode in (DelegationMode.BOUND, DelegationMode.BLIND):
        first, device, lost = delegated_run(7, mode)
        again, _, _ = delegated_run(7, mode)
        assert lost > 0  # the seeded impairments took part (retransmissions on the wire)
        assert len(first) > 20  # channel, full handshake, resumption, data: all on the wire
        assert device.delegations == 1 and device.context is not None
        sources = {source for source, _, _, _ in first}
        # the channel and the resumption (device), the channel (agent), the handshake (agent's
        # child endpoint) and the server all sent something
        assert {AGENT, SERVER} <= sources and len(sources) >= 5, sources
        assert again == first, next(
            i for i, (a, b) in enumerate(zip(first, again, strict=False)) if a != b
        )


def test_another_seed_gives_other_bytes() -> None:
    """The comparison above can fail: a different seed changes the randoms on the wire."""
    first, _, _ = delegated_run(7, DelegationMode.BOUND)
    other, _, _ = delegated_run(8, DelegationMode.BOUND)
    assert [d for *_, d in first] != [d for *_, d in other]
