"""A deterministic simulated network for sans-IO endpoints.

Clients and one server exchange datagrams through a seeded impairment model (loss,
duplication, reordering, latency) under a virtual clock. Tests, attacker models and benchmarks
use it to run handshakes reproducibly without sockets. ``tap`` sees every datagram and may
replace it with any list of datagrams (an adversary that drops, alters or injects).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from d2tls.dtls.client import DTLSClient
from d2tls.dtls.events import Event
from d2tls.dtls.server import DTLSServer

Address = tuple[str, int]
SERVER_ADDRESS: Address = ("192.0.2.1", 4433)  # documentation address; never on a real socket
#: An adversary hook: (source, destination, datagram) -> datagrams actually delivered.
Tap = Callable[[Address, Address, bytes], list[bytes]]


@dataclass
class Impairments:
    """Per-datagram impairment probabilities and latency (seconds)."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    latency: float = 0.01
    jitter: float = 0.0


@dataclass(order=True)
class _InFlight:
    at: float
    order: int
    source: Address = field(compare=False)
    destination: Address = field(compare=False)
    data: bytes = field(compare=False)


class Simulation:
    """Runs clients against one server on a virtual clock."""

    def __init__(
        self,
        server: DTLSServer,
        *,
        seed: int = 0,
        impairments: Impairments | None = None,
        tap: Tap | None = None,
    ) -> None:
        self.server = server
        self.now = 0.0
        self.rng = random.Random(seed)
        self.impairments = impairments or Impairments()
        self.tap = tap
        self.clients: dict[Address, DTLSClient] = {}
        self.events: dict[Address, list[Event]] = {}
        self.server_events: list[Event] = []
        self.delivered: list[tuple[Address, Address, bytes]] = []
        self._queue: list[_InFlight] = []
        self._order = itertools.count()

    def add_client(self, client: DTLSClient, address: Address) -> None:
        self.clients[address] = client
        self.events[address] = []

    def connect(self, address: Address) -> None:
        self.clients[address].connect(self.now)
        self._flush()

    def _send(self, source: Address, destination: Address, data: bytes) -> None:
        datagrams = [data] if self.tap is None else self.tap(source, destination, data)
        imp = self.impairments
        for datagram in datagrams:
            if self.rng.random() < imp.loss:
                continue
            copies = 2 if self.rng.random() < imp.duplicate else 1
            for _ in range(copies):
                delay = imp.latency + self.rng.random() * imp.jitter
                if self.rng.random() < imp.reorder:
                    delay += imp.latency * 3 * self.rng.random()
                heapq.heappush(
                    self._queue,
                    _InFlight(self.now + delay, next(self._order), source, destination, datagram),
                )

    def _flush(self) -> None:
        for address, client in self.clients.items():
            for datagram in client.datagrams_to_send(self.now):
                self._send(address, SERVER_ADDRESS, datagram)
            while (event := client.next_event()) is not None:
                self.events[address].append(event)
        for datagram, peer in self.server.datagrams_to_send(self.now):
            self._send(SERVER_ADDRESS, peer, datagram)
        while (event := self.server.next_event()) is not None:
            self.server_events.append(event)

    def _next_timer(self) -> float | None:
        deadlines = [d for c in self.clients.values() if (d := c.next_timer()) is not None]
        server_deadline = self.server.next_timer()
        if server_deadline is not None:
            deadlines.append(server_deadline)
        return min(deadlines) if deadlines else None

    def step(self) -> bool:
        """Advance to the next delivery or timer; False when nothing is left to do."""
        timer = self._next_timer()
        packet_at = self._queue[0].at if self._queue else None
        if timer is None and packet_at is None:
            return False
        if packet_at is not None and (timer is None or packet_at <= timer):
            packet = heapq.heappop(self._queue)
            self.now = max(self.now, packet.at)
            self.delivered.append((packet.source, packet.destination, packet.data))
            if packet.destination == SERVER_ADDRESS:
                self.server.receive_datagram(packet.data, packet.source, self.now)
            elif packet.destination in self.clients:
                self.clients[packet.destination].receive_datagram(packet.data, self.now)
        else:
            assert timer is not None
            self.now = max(self.now, timer)
            for client in self.clients.values():
                deadline = client.next_timer()
                if deadline is not None and deadline <= self.now:
                    client.handle_timer(self.now)
            self.server.handle_timer(self.now)
        self._flush()
        return True

    def run(self, until: Callable[[], bool] | None = None, max_time: float = 600.0) -> None:
        """Step until ``until()`` holds, nothing is pending, or ``max_time`` passes.

        Nothing due after ``max_time`` is processed (the clock never passes it).
        """
        self._flush()
        while True:
            if until is not None and until():
                return
            timer = self._next_timer()
            due = [t for t in (timer, self._queue[0].at if self._queue else None) if t is not None]
            if not due or min(due) > max_time:
                return
            self.step()

    def inject(self, source: Address, destination: Address, data: bytes) -> None:
        """Deliver an adversary-built datagram as if it came from ``source``."""
        heapq.heappush(
            self._queue, _InFlight(self.now, next(self._order), source, destination, data)
        )
