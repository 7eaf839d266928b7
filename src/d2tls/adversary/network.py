"""An adversarial network for sans-IO DTLS endpoints on a deterministic virtual clock.

Unlike :class:`d2tls.sim.Simulation` (clients and one server), any number of client engines and
server engines, each at its own address, talk through one :class:`AdversaryNetwork`. Every
datagram ever sent is kept in :attr:`AdversaryNetwork.history`; datagrams on intercepted links
are *held* instead of delivered, and the adversary decides what happens to each one: deliver,
drop, duplicate, delay, modify (flip bytes, truncate), replay any datagram seen so far (from any
connection and any epoch) to any address, or inject datagrams it built itself.

Honest records are remembered by link (source, destination), so that observers can tell an
authentic record (the exact bytes an honest endpoint sent on that link) from anything else.
Everything is deterministic: the only randomness is the seeded ``random.Random`` of the
:class:`~d2tls.sim.Impairments` model.
"""

from __future__ import annotations

import heapq
import itertools
import random
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from d2tls.dtls.client import DTLSClient
from d2tls.dtls.connection import Connection
from d2tls.dtls.events import Event
from d2tls.dtls.record import Record, parse_datagram
from d2tls.dtls.server import DTLSServer
from d2tls.sim import Impairments

Address = tuple[str, int]
Link = tuple[Address, Address]
EventHandler = Callable[[Event], None]
#: Decides whether the adversary holds datagrams sent from the first to the second address.
InterceptRule = Callable[[Address, Address], bool]


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
    """Cancels a callback scheduled with :meth:`AdversaryNetwork.call_at`."""

    def __init__(self, timer: _Timer) -> None:
        self._timer = timer

    def cancel(self) -> None:
        self._timer.cancelled[0] = True


class Node(ABC):
    """An endpoint at one address: wraps a sans-IO engine."""

    address: Address

    @abstractmethod
    def receive(self, data: bytes, source: Address, now: float) -> None: ...

    @abstractmethod
    def outgoing(self, now: float) -> list[tuple[Address, bytes]]: ...

    @abstractmethod
    def events(self) -> list[Event]: ...

    @abstractmethod
    def next_timer(self) -> float | None: ...

    @abstractmethod
    def handle_timer(self, now: float) -> None: ...

    @abstractmethod
    def connections(self) -> list[tuple[Connection, Address]]:
        """Live connections of this node with their remote address (for observers)."""
        ...


class ClientNode(Node):
    """A :class:`DTLSClient` on a connected UDP socket: it hears only its server's address."""

    def __init__(self, engine: DTLSClient, address: Address, remote: Address) -> None:
        self.engine = engine
        self.address = address
        self.remote = remote

    def receive(self, data: bytes, source: Address, now: float) -> None:
        if source == self.remote:
            self.engine.receive_datagram(data, now)

    def outgoing(self, now: float) -> list[tuple[Address, bytes]]:
        return [(self.remote, d) for d in self.engine.datagrams_to_send(now)]

    def events(self) -> list[Event]:
        out: list[Event] = []
        while (event := self.engine.next_event()) is not None:
            out.append(event)
        return out

    def next_timer(self) -> float | None:
        return self.engine.next_timer()

    def handle_timer(self, now: float) -> None:
        deadline = self.engine.next_timer()
        if deadline is not None and deadline <= now:
            self.engine.handle_timer(now)

    def connections(self) -> list[tuple[Connection, Address]]:
        return [(self.engine, self.remote)]


class ServerNode(Node):
    """A :class:`DTLSServer` listening at one address."""

    def __init__(self, engine: DTLSServer, address: Address) -> None:
        self.engine = engine
        self.address = address
        self._peers: set[Address] = set()

    def receive(self, data: bytes, source: Address, now: float) -> None:
        self._peers.add(source)
        self.engine.receive_datagram(data, source, now)

    def outgoing(self, now: float) -> list[tuple[Address, bytes]]:
        return [(peer, d) for d, peer in self.engine.datagrams_to_send(now)]

    def events(self) -> list[Event]:
        out: list[Event] = []
        while (event := self.engine.next_event()) is not None:
            out.append(event)
        return out

    def next_timer(self) -> float | None:
        return self.engine.next_timer()

    def handle_timer(self, now: float) -> None:
        deadline = self.engine.next_timer()
        if deadline is not None and deadline <= now:
            self.engine.handle_timer(now)

    def connections(self) -> list[tuple[Connection, Address]]:
        out: list[tuple[Connection, Address]] = []
        for peer in sorted(self._peers):
            conn = self.engine.connection(peer)
            if conn is not None:
                out.append((conn, peer))
        return out


class AdversaryNetwork:
    """Endpoints, a virtual clock, impairments, and an adversary that may hold any datagram."""

    def __init__(
        self,
        *,
        seed: int = 0,
        impairments: Impairments | None = None,
        intercept: InterceptRule | bool = False,
    ) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self.impairments = impairments or Impairments()
        self.intercept: InterceptRule | bool = intercept
        self.nodes: dict[Address, Node] = {}
        self.handlers: dict[Address, EventHandler] = {}
        #: Every datagram ever put on the wire, honest or injected, in order.
        self.history: list[Datagram] = []
        #: Datagrams the adversary intercepted and has not decided about yet.
        self.held: list[Datagram] = []
        #: Exact bytes of every record an honest endpoint sent, by link and (epoch, seq).
        self.honest_records: dict[Link, dict[tuple[int, int], Record]] = {}
        #: Adversary actions taken, by kind (reported by the soak profile).
        self.actions: Counter[str] = Counter()
        #: Observers called after every delivery or timer (see d2tls.adversary.observer).
        self.watchers: list[Callable[[], None]] = []
        #: Called with (address, event) for every engine event, before the node's handler.
        self.event_watchers: list[Callable[[Address, Event], None]] = []
        self._queue: list[_Scheduled] = []
        self._timers: list[_Timer] = []
        self._order = itertools.count()
        self._ids = itertools.count()
        self._node_added: list[Callable[[Node], None]] = []

    # ------------------------------------------------------------------ topology
    def add_node(self, node: Node, on_event: EventHandler | None = None) -> Node:
        if node.address in self.nodes:
            raise ValueError(f"address {node.address} already in use")
        self.nodes[node.address] = node
        if on_event is not None:
            self.handlers[node.address] = on_event
        for hook in self._node_added:
            hook(node)
        return node

    def add_client(
        self,
        engine: DTLSClient,
        address: Address,
        remote: Address,
        on_event: EventHandler | None = None,
    ) -> ClientNode:
        node = ClientNode(engine, address, remote)
        self.add_node(node, on_event)
        return node

    def add_server(
        self, engine: DTLSServer, address: Address, on_event: EventHandler | None = None
    ) -> ServerNode:
        node = ServerNode(engine, address)
        self.add_node(node, on_event)
        return node

    def on_node_added(self, hook: Callable[[Node], None]) -> None:
        self._node_added.append(hook)
        for node in self.nodes.values():
            hook(node)

    def remove_node(self, address: Address) -> None:
        self.nodes.pop(address, None)
        self.handlers.pop(address, None)

    # ------------------------------------------------------------------ timers for drivers
    def call_at(self, at: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` at virtual time ``at`` (drivers' application timeouts)."""
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
        self._remember_honest(source, destination, data)
        datagram = self._put(source, destination, data, honest=True)
        if self._intercepts(source, destination):
            self.held.append(datagram)
            return
        imp = self.impairments
        if self.rng.random() < imp.loss:
            return
        copies = 2 if self.rng.random() < imp.duplicate else 1
        for _ in range(copies):
            delay = imp.latency + self.rng.random() * imp.jitter
            if self.rng.random() < imp.reorder:
                delay += imp.latency * 3 * self.rng.random()
            self._schedule(datagram, self.now + delay)

    def _schedule(self, datagram: Datagram, at: float) -> None:
        heapq.heappush(self._queue, _Scheduled(at, next(self._order), datagram))

    def _deliver(self, datagram: Datagram) -> None:
        node = self.nodes.get(datagram.destination)
        if node is not None:
            node.receive(datagram.data, datagram.source, self.now)
        self.flush()

    def flush(self) -> None:
        """Collect every endpoint's output and events until nothing new appears."""
        for _ in range(10_000):
            progressed = False
            for address, node in list(self.nodes.items()):
                for destination, data in node.outgoing(self.now):
                    progressed = True
                    self._send_honest(address, destination, data)
                events = node.events()
                handler = self.handlers.get(address)
                for event in events:
                    progressed = True
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
        """Step until ``until()`` holds (True), or nothing is pending / ``max_time`` (False)."""
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
        for address, node in self.nodes.items():
            out.extend((address, conn, remote) for conn, remote in node.connections())
        return out

    def datagrams(self, source: Address, destination: Address) -> list[Datagram]:
        """History of one direction of one link."""
        return [d for d in self.history if d.source == source and d.destination == destination]
