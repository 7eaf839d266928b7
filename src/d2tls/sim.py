"""The one simulator: any number of sans-IO protocols on a deterministic virtual network.

Every role (:class:`~d2tls.core.sansio.SansIOProtocol`: a DTLS client or server engine, a device, an
agent) sits at an address of one :class:`Network`, which is its host exactly as
:class:`d2tls.net.pump.Pump` is on a real socket: it delivers datagrams with
``receive_datagram``, collects ``datagrams_to_send``, fires ``handle_timer`` at ``next_timer``
and hands every ``next_event`` to the handler given for that address. Time is virtual
(``Network.now``), and the only randomness is the seeded ``random.Random`` of the
:class:`Impairments` model (loss, duplication, reordering, latency), so a run is reproducible
to the byte.

A role with child endpoints (:class:`~d2tls.core.sansio.HasChildEndpoints`: the agent's handshakes
with servers) gets one more address per child, on its own host, from port 50000 up.

The adversary has two hooks. ``tap`` sees every honest datagram and returns what is actually
sent instead (drop, alter, inject). ``intercept`` *holds* datagrams of the links it names;
the adversary then decides what happens to each one: deliver, drop, duplicate, delay, modify
(flip bytes, truncate), replay any datagram seen so far (from any connection and any epoch) to
any address, or inject datagrams it built itself. Every datagram ever sent is kept in
:attr:`Network.history`; honest records are remembered by link (source, destination) so that
observers can tell an authentic record from anything else.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.connection import Connection
from d2tls.core.dtls.events import Event
from d2tls.core.dtls.record import Record, parse_datagram
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.sansio import Address, HasChildEndpoints, SansIOProtocol

__all__ = [
    "SERVER_ADDRESS",
    "Address",
    "Datagram",
    "EventHandler",
    "Impairments",
    "InterceptRule",
    "Link",
    "Network",
    "Simulation",
    "Tap",
    "TimerHandle",
    "connections_of",
]
Link = tuple[Address, Address]
#: Called with every event a protocol emits.
EventHandler = Callable[[Any], None]
#: An adversary hook: (source, destination, datagram) -> datagrams actually sent.
Tap = Callable[[Address, Address, bytes], list[bytes]]
#: Decides whether the adversary holds datagrams sent from the first to the second address.
InterceptRule = Callable[[Address, Address], bool]
P = TypeVar("P", bound=SansIOProtocol[Any])
SERVER_ADDRESS: Address = ("192.0.2.1", 4433)  # documentation address; never on a real socket


@dataclass
class Impairments:
    """Per-datagram impairment probabilities and latency (seconds)."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    latency: float = 0.01
    jitter: float = 0.0


@dataclass(frozen=True)
class Datagram:
    """One datagram put on the wire (honest or not)."""

    id: int
    source: Address
    destination: Address
    data: bytes
    sent_at: float
    honest: bool


@dataclass(order=True)
class _Scheduled:
    at: float
    order: int
    datagram: Datagram = field(compare=False)


@dataclass(order=True)
class _Timer:
    at: float
    order: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: list[bool] = field(compare=False, default_factory=lambda: [False])


class TimerHandle:
    """Cancels a callback scheduled with :meth:`Network.call_at`."""

    def __init__(self, timer: _Timer) -> None:
        self._timer = timer

    def cancel(self) -> None:
        self._timer.cancelled[0] = True


def connections_of(protocol: object) -> list[tuple[Connection, Address, int | None]]:
    """The live DTLS connections of ``protocol``: (connection, remote address, child endpoint
    key or None for the protocol's own address), for observers.

    A DTLS engine is its own connection (client) or owns them (server); a role that owns
    engines lists them with a ``connections()`` method of that shape.
    """
    if isinstance(protocol, DTLSClient):
        return [(protocol, protocol.remote, None)] if protocol.remote is not None else []
    if isinstance(protocol, DTLSServer):
        return [(c, c.peer, None) for c in protocol.connections() if c.peer is not None]
    method = getattr(protocol, "connections", None)
    return list(method()) if callable(method) else []


class Network:
    """Protocols at addresses, a virtual clock, impairments, and an adversary."""

    def __init__(
        self,
        *,
        seed: int = 0,
        impairments: Impairments | None = None,
        intercept: InterceptRule | bool = False,
        tap: Tap | None = None,
        record_events: bool = False,
    ) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self.impairments = impairments or Impairments()
        self.intercept: InterceptRule | bool = intercept
        self.tap = tap
        self.nodes: dict[Address, SansIOProtocol[Any]] = {}
        self.handlers: dict[Address, EventHandler] = {}
        #: With ``record_events``: every event of every protocol, by address, in order.
        self.events: dict[Address, list[Any]] = {}
        self._record_events = record_events
        #: Every datagram ever put on the wire, honest or injected, in order.
        self.history: list[Datagram] = []
        #: (source, destination, data) of every datagram delivered, in order.
        self.delivered: list[tuple[Address, Address, bytes]] = []
        #: Datagrams the adversary intercepted and has not decided about yet.
        self.held: list[Datagram] = []
        #: Exact bytes of every record an honest endpoint sent, by link and (epoch, seq).
        self.honest_records: dict[Link, dict[tuple[int, int], Record]] = {}
        #: Adversary actions taken, by kind (reported by the soak profile).
        self.actions: Counter[str] = Counter()
        #: Observers called after every delivery or timer (see d2tls.adversary.observer).
        self.watchers: list[Callable[[], None]] = []
        #: Called with (address, event) for every event, before the address's handler.
        self.event_watchers: list[Callable[[Address, Any], None]] = []
        self._queue: list[_Scheduled] = []
        self._timers: list[_Timer] = []
        self._order = itertools.count()
        self._ids = itertools.count()
        self._node_added: list[Callable[[Address, SansIOProtocol[Any]], None]] = []
        #: Child endpoints (HasChildEndpoints): their address -> (owner's address, key).
        self._child_routes: dict[Address, tuple[Address, int]] = {}
        self._child_addresses: dict[tuple[Address, int], Address] = {}
        self._child_ports = itertools.count(50000)

    # ------------------------------------------------------------------ topology
    def add(self, protocol: P, address: Address, on_event: EventHandler | None = None) -> P:
        """Put ``protocol`` at ``address``; ``on_event`` gets each of its events."""
        if address in self.nodes:
            raise ValueError(f"address {address} already in use")
        self.nodes[address] = protocol
        if on_event is not None:
            self.handlers[address] = on_event
        self.events.setdefault(address, [])
        for hook in self._node_added:
            hook(address, protocol)
        return protocol

    def on_node_added(self, hook: Callable[[Address, SansIOProtocol[Any]], None]) -> None:
        """Call ``hook(address, protocol)`` for every protocol, present and future."""
        self._node_added.append(hook)
        for address, protocol in self.nodes.items():
            hook(address, protocol)

    def remove(self, address: Address) -> None:
        """Take the protocol at ``address`` (and its child endpoints) off the network."""
        self.nodes.pop(address, None)
        self.handlers.pop(address, None)
        for (owner, key), child in list(self._child_addresses.items()):
            if owner == address:
                del self._child_addresses[(owner, key)]
                self._child_routes.pop(child, None)

    # ------------------------------------------------------------------ timers for applications
    def call_at(self, at: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` at virtual time ``at`` (an application's own timeouts)."""
        timer = _Timer(at, next(self._order), callback)
        heapq.heappush(self._timers, timer)
        return TimerHandle(timer)

    # ------------------------------------------------------------------ the wire
    def _intercepts(self, source: Address, destination: Address) -> bool:
        rule = self.intercept
        return rule(source, destination) if callable(rule) else bool(rule)

    def _remember_honest(self, source: Address, destination: Address, data: bytes) -> None:
        records, _ = parse_datagram(data)
        book = self.honest_records.setdefault((source, destination), {})
        for record in records:
            book[(record.epoch, record.sequence_number)] = record

    def _put(self, source: Address, destination: Address, data: bytes, *, honest: bool) -> Datagram:
        datagram = Datagram(next(self._ids), source, destination, bytes(data), self.now, honest)
        self.history.append(datagram)
        return datagram

    def _send_honest(self, source: Address, destination: Address, data: bytes) -> None:
        sent = [data] if self.tap is None else self.tap(source, destination, data)
        for payload in sent:
            self._remember_honest(source, destination, payload)
            datagram = self._put(source, destination, payload, honest=True)
            if self._intercepts(source, destination):
                self.held.append(datagram)
                continue
            imp = self.impairments
            if self.rng.random() < imp.loss:
                continue
            copies = 2 if self.rng.random() < imp.duplicate else 1
            for _ in range(copies):
                delay = imp.latency + self.rng.random() * imp.jitter
                if self.rng.random() < imp.reorder:
                    delay += imp.latency * 3 * self.rng.random()
                self._schedule(datagram, self.now + delay)

    def _schedule(self, datagram: Datagram, at: float) -> None:
        heapq.heappush(self._queue, _Scheduled(at, next(self._order), datagram))

    def _deliver(self, datagram: Datagram) -> None:
        self.delivered.append((datagram.source, datagram.destination, datagram.data))
        node = self.nodes.get(datagram.destination)
        route = self._child_routes.get(datagram.destination)
        if node is not None:
            node.receive_datagram(datagram.data, datagram.source, self.now)
        elif route is not None:
            owner = self.nodes.get(route[0])
            if isinstance(owner, HasChildEndpoints):
                owner.child_receive_datagram(route[1], datagram.data, datagram.source, self.now)
        self.flush()

    def _drive_children(self, address: Address, node: HasChildEndpoints) -> bool:
        """Give each new child endpoint an address of its own and send from every child."""
        wanted = node.child_endpoints()
        for (owner, key), child in list(self._child_addresses.items()):
            if owner == address and key not in wanted:
                del self._child_addresses[(owner, key)]
                self._child_routes.pop(child, None)
        progressed = False
        for key in wanted:
            if (address, key) not in self._child_addresses:
                fresh = (address[0], next(self._child_ports))
                self._child_addresses[(address, key)] = fresh
                self._child_routes[fresh] = (address, key)
            child = self._child_addresses[(address, key)]
            for data, destination in node.child_datagrams_to_send(key, self.now):
                progressed = True
                self._send_honest(child, destination, data)
        return progressed

    def child_address(self, owner: Address, key: int) -> Address | None:
        """The address the simulator gave child endpoint ``key`` of the protocol at ``owner``."""
        return self._child_addresses.get((owner, key))

    def flush(self) -> None:
        """Collect every protocol's datagrams and events until nothing new appears."""
        for _ in range(10_000):
            progressed = False
            for address, node in list(self.nodes.items()):
                for data, destination in node.datagrams_to_send(self.now):
                    progressed = True
                    self._send_honest(address, destination, data)
                if isinstance(node, HasChildEndpoints):
                    progressed |= self._drive_children(address, node)
                handler = self.handlers.get(address)
                while (event := node.next_event()) is not None:
                    progressed = True
                    if self._record_events:
                        self.events[address].append(event)
                    for watch in self.event_watchers:
                        watch(address, event)
                    if handler is not None:
                        handler(event)
            if not progressed:
                break
        for watcher in self.watchers:
            watcher()

    # ------------------------------------------------------------------ running
    def next_deadline(self) -> float | None:
        deadlines = [d for n in self.nodes.values() if (d := n.next_timer()) is not None]
        while self._timers and self._timers[0].cancelled[0]:
            heapq.heappop(self._timers)
        if self._timers:
            deadlines.append(self._timers[0].at)
        if self._queue:
            deadlines.append(self._queue[0].at)
        return min(deadlines) if deadlines else None

    def step(self) -> bool:
        """Advance to the next delivery or timer; False when nothing is pending."""
        at = self.next_deadline()
        if at is None:
            return False
        self.now = max(self.now, at)
        if self._queue and self._queue[0].at <= self.now:
            self._deliver(heapq.heappop(self._queue).datagram)
            return True
        if self._timers and self._timers[0].at <= self.now:
            timer = heapq.heappop(self._timers)
            if not timer.cancelled[0]:
                timer.callback()
            self.flush()
            return True
        for node in list(self.nodes.values()):
            deadline = node.next_timer()
            if deadline is not None and deadline <= self.now:
                node.handle_timer(self.now)
        self.flush()
        return True

    def run(self, until: Callable[[], bool] | None = None, max_time: float = 600.0) -> bool:
        """Step until ``until()`` holds (True), or nothing is pending / ``max_time`` (False).

        Nothing due after ``max_time`` is processed (the clock never passes it).
        """
        self.flush()
        while True:
            if until is not None and until():
                return True
            at = self.next_deadline()
            if at is None or at > max_time:
                return until is not None and until()
            self.step()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` of virtual time pass, delivering and firing what falls due."""
        deadline = self.now + seconds
        self.run(max_time=deadline)
        self.now = max(self.now, deadline)

    # ------------------------------------------------------------------ adversary actions
    def _held(self, index: int) -> Datagram | None:
        if not self.held:
            return None
        return self.held.pop(index % len(self.held))

    def deliver(self, index: int, *, delay: float = 0.0) -> Datagram | None:
        """Let held datagram ``index`` (modulo) through, now or after ``delay``."""
        datagram = self._held(index)
        if datagram is None:
            return None
        self.actions["delay" if delay > 0 else "deliver"] += 1
        if delay > 0:
            self._schedule(datagram, self.now + delay)
        else:
            self._deliver(datagram)
        return datagram

    def deliver_all(self) -> None:
        """Release every held datagram in order (the adversary stops interfering)."""
        while self.held:
            self._deliver(self.held.pop(0))

    def drop(self, index: int) -> Datagram | None:
        datagram = self._held(index)
        if datagram is not None:
            self.actions["drop"] += 1
        return datagram

    def duplicate(self, index: int) -> Datagram | None:
        """Deliver a copy of held datagram ``index`` now and keep holding the original."""
        if not self.held:
            return None
        datagram = self.held[index % len(self.held)]
        self.actions["duplicate"] += 1
        self._deliver(datagram)
        return datagram

    def modify(self, index: int, mutate: Callable[[bytes], bytes], kind: str) -> Datagram | None:
        """Replace held datagram ``index`` by ``mutate(data)`` and deliver that now."""
        datagram = self._held(index)
        if datagram is None:
            return None
        self.actions[kind] += 1
        self.inject(datagram.source, datagram.destination, mutate(datagram.data), count=False)
        return datagram

    def flip(self, index: int, position: int, mask: int) -> Datagram | None:
        """Flip bits ``mask`` (non-zero) of byte ``position`` (modulo) of a held datagram."""

        def mutate(data: bytes) -> bytes:
            if not data:
                return data
            out = bytearray(data)
            out[position % len(out)] ^= (mask & 0xFF) or 1
            return bytes(out)

        return self.modify(index, mutate, "flip")

    def truncate(self, index: int, keep: int) -> Datagram | None:
        """Deliver only the first ``keep`` (modulo length) bytes of a held datagram."""
        return self.modify(index, lambda d: d[: keep % max(1, len(d))], "truncate")

    def replay(
        self, index: int, *, destination: Address | None = None, source: Address | None = None
    ) -> Datagram | None:
        """Deliver again any datagram of the history (modulo), to its or another address."""
        if not self.history:
            return None
        old = self.history[index % len(self.history)]
        self.actions["replay"] += 1
        self.inject(source or old.source, destination or old.destination, old.data, count=False)
        return old

    def inject(
        self, source: Address, destination: Address, data: bytes, *, count: bool = True
    ) -> Datagram:
        """Deliver an adversary-made datagram now, claiming to come from ``source``."""
        if count:
            self.actions["inject"] += 1
        datagram = self._put(source, destination, data, honest=False)
        self._deliver(datagram)
        return datagram

    def count(self, kind: str, n: int = 1) -> None:
        """Count an adversary action performed by a caller (e.g. a forged record)."""
        self.actions[kind] += n

    # ------------------------------------------------------------------ queries
    def connections(self) -> list[tuple[Address, Connection, Address]]:
        """(local address, connection, remote address) of every live connection."""
        out: list[tuple[Address, Connection, Address]] = []
        for address, node in list(self.nodes.items()):
            for conn, remote, key in connections_of(node):
                local = address if key is None else self._child_addresses.get((address, key))
                if local is not None:
                    out.append((local, conn, remote))
        return out

    def datagrams(self, source: Address, destination: Address) -> list[Datagram]:
        """History of one direction of one link."""
        return [d for d in self.history if d.source == source and d.destination == destination]


class Simulation(Network):
    """Clients against one DTLS server at ``SERVER_ADDRESS``, every event recorded."""

    def __init__(
        self,
        server: DTLSServer,
        *,
        seed: int = 0,
        impairments: Impairments | None = None,
        tap: Tap | None = None,
    ) -> None:
        super().__init__(seed=seed, impairments=impairments, tap=tap, record_events=True)
        self.server = server
        self.clients: dict[Address, DTLSClient] = {}
        self.add(server, SERVER_ADDRESS)

    def add_client(self, client: DTLSClient, address: Address) -> None:
        """Put ``client`` at ``address``, talking to the server."""
        client.remote = SERVER_ADDRESS
        self.clients[address] = client
        self.add(client, address)

    def connect(self, address: Address) -> None:
        """Start the handshake of the client at ``address``."""
        self.clients[address].connect(self.now)
        self.flush()

    @property
    def server_events(self) -> list[Event]:
        return self.events[SERVER_ADDRESS]
