"""The server endpoint with many associations: only touched connections are polled, timers
come from a heap, and retransmission (RFC 6347 §4.2.4) still works for each association."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from conftest import LoadedPKI, client_config, server_config
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.events import HandshakeCompleted
from d2tls.core.dtls.server import DTLSServer
from d2tls.sim import SERVER_ADDRESS, Impairments, Simulation

CLIENTS = 30


def _addresses(n: int) -> list[tuple[str, int]]:
    return [("198.51.100.9", 41000 + i) for i in range(n)]


def _established(sim: Simulation) -> bool:
    return all(c.is_established for c in sim.clients.values())


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_thirty_concurrent_handshakes_complete_under_10_percent_loss(
    pki: LoadedPKI, seed: int
) -> None:
    server = DTLSServer(server_config(pki))
    sim = Simulation(server, seed=seed, impairments=Impairments(loss=0.1, reorder=0.1))
    for address in _addresses(CLIENTS):
        sim.add_client(DTLSClient(client_config(pki)), address)
        sim.connect(address)
    sim.run(lambda: _established(sim), max_time=600)
    assert _established(sim)
    completed = [e for e in sim.server_events if isinstance(e, HandshakeCompleted)]
    assert len({e.peer for e in completed}) == CLIENTS
    assert server.connection_count == CLIENTS


def test_only_touched_connections_are_polled(
    pki: LoadedPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = DTLSServer(server_config(pki))
    sim = Simulation(server, seed=0)
    addresses = _addresses(10)
    for address in addresses:
        sim.add_client(DTLSClient(client_config(pki)), address)
        sim.connect(address)
    sim.run(lambda: _established(sim), max_time=60)
    assert _established(sim)
    sim.run(max_time=sim.now + 5)  # let every flight settle

    polled: Counter[tuple[str, int]] = Counter()
    for address in addresses:
        connection = server._connections[address]
        original = connection.datagrams_to_send

        def spy(now: float, _a: Any = address, _o: Any = original) -> list[bytes]:
            polled[_a] += 1
            result: list[bytes] = _o(now)
            return result

        monkeypatch.setattr(connection, "datagrams_to_send", spy)

    assert server.datagrams_to_send(sim.now) == []
    assert sum(polled.values()) == 0  # nothing touched, nothing polled

    sim.clients[addresses[3]].send_application_data(b"only this one")
    sim.run(max_time=sim.now + 1)
    assert set(polled) == {addresses[3]}
    assert server.next_timer() is None  # established and idle: no timer pending


def test_a_lost_flight_is_retransmitted_to_its_client_only(pki: LoadedPKI) -> None:
    """RFC 6347 §4.2.4: the server's timer fires for the association whose flight was lost."""
    server = DTLSServer(server_config(pki))
    victim = ("198.51.100.9", 42000)
    dropped: list[bytes] = []
    sent_to: Counter[tuple[str, int]] = Counter()

    def tap(source: Any, destination: Any, data: bytes) -> list[bytes]:
        if source == SERVER_ADDRESS:
            sent_to[destination] += 1
            # Drop the victim's first ServerHello flight (after the HelloVerifyRequest).
            if destination == victim and sent_to[destination] in (2, 3, 4, 5) and not dropped:
                dropped.append(data)
                return []
        return [data]

    sim = Simulation(server, seed=0, tap=tap)
    for address in [*_addresses(5), victim]:
        sim.add_client(DTLSClient(client_config(pki)), address)
        sim.connect(address)
    sim.run(lambda: _established(sim), max_time=120)
    assert dropped, "the tap dropped nothing: the test did not exercise a loss"
    assert _established(sim)
    assert server._connections[victim].stats["retransmissions"] >= 1 or (
        sim.clients[victim].stats["retransmissions"] >= 1
    )
    for address in _addresses(5):
        assert server._connections[address].stats["retransmissions"] == 0
