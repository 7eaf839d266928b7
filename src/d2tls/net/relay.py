"""A user-space UDP impairment relay for loopback benchmarks and tests (a small ``netem``).

The test machines' kernels have no ``netem`` qdisc, so latency, jitter and loss between two
parties are emulated here: a :class:`Relay` listens on ``127.0.0.1``, and every client that sends
to it gets its own upstream socket towards ``target`` (so the target sees one peer address per
client, as it would through a router). Each direction has its own :class:`LinkProfile`:

* ``delay`` – one-way delay in seconds, added to every datagram;
* ``jitter`` – a uniformly distributed extra delay in ``[0, jitter]`` seconds;
* ``loss`` – probability of dropping a datagram.

Random choices come from one seeded generator per direction, so a run that sends the same
datagrams in the same order drops the same ones. Datagrams leave in arrival order (no
reordering: a jittered datagram waits for the one before it), like a FIFO queue.

Timing: the relay runs in its own thread and waits with ``select()``, whose timeout has
microsecond resolution (``epoll`` and therefore asyncio round up to whole milliseconds, which
would turn the paper's 0.683 ms LAN one-way delay into 1 ms), and spins for the last 0.3 ms
before a deadline because wake-ups come 50-150 µs late. On an idle machine a datagram leaves
within ~20 µs of its deadline; :attr:`DirectionStats.lateness` records how late.

Run one from the shell::

    python -m d2tls.net.relay --listen 127.0.0.1:5684 --target 127.0.0.1:5683 --rtt 0.1678
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import itertools
import random
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

Address = tuple[str, int]

#: DTLS record content types (RFC 6347 §4.1), for the per-type byte counters.
_CONTENT_TYPES = {20: "change_cipher_spec", 21: "alert", 22: "handshake", 23: "application_data"}
_MAX_DATAGRAM = 65535
#: The last part of a wait is spent spinning: select() wakes up 50-150 µs late.
_SPIN = 0.0003


@dataclass(frozen=True)
class LinkProfile:
    """Impairment of one direction. Times in seconds."""

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        if self.delay < 0 or self.jitter < 0:
            raise ValueError("delay and jitter must be non-negative")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError("loss must be a probability in [0, 1]")

    @classmethod
    def symmetric(
        cls, rtt: float, jitter: float = 0.0, loss: float = 0.0
    ) -> tuple[LinkProfile, LinkProfile]:
        """Two directions that add ``rtt`` to a round trip (half each way)."""
        one = cls(delay=rtt / 2, jitter=jitter, loss=loss)
        return one, one


@dataclass
class DirectionStats:
    """Counters of one direction (``up``: client -> target, ``down``: target -> client)."""

    received: int = 0
    forwarded: int = 0
    dropped: int = 0
    bytes_received: int = 0
    bytes_forwarded: int = 0
    #: Bytes forwarded per DTLS record content type (records are parsed from their headers).
    bytes_by_content: dict[str, int] = field(default_factory=dict)
    #: Seconds each forwarded datagram spent in the relay (deadline lateness included).
    delays: list[float] = field(default_factory=list)
    #: Seconds each forwarded datagram left after its deadline.
    lateness: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        delays = sorted(self.delays)
        late = sorted(self.lateness)
        return {
            "received": self.received,
            "forwarded": self.forwarded,
            "dropped": self.dropped,
            "bytes_received": self.bytes_received,
            "bytes_forwarded": self.bytes_forwarded,
            "bytes_by_content": dict(self.bytes_by_content),
            "delay_median_ms": round(1000 * delays[len(delays) // 2], 4) if delays else None,
            "lateness_median_ms": round(1000 * late[len(late) // 2], 4) if late else None,
            "lateness_max_ms": round(1000 * late[-1], 4) if late else None,
        }


def count_records(datagram: bytes, into: dict[str, int]) -> None:
    """Add the bytes of each DTLS record of ``datagram`` to ``into`` by content type."""
    pos = 0
    while pos + 13 <= len(datagram):
        kind = _CONTENT_TYPES.get(datagram[pos], "other")
        length = int.from_bytes(datagram[pos + 11 : pos + 13], "big")
        size = min(13 + length, len(datagram) - pos)
        into[kind] = into.get(kind, 0) + size
        pos += 13 + length
    if pos < len(datagram):
        into["other"] = into.get("other", 0) + len(datagram) - pos


@dataclass(order=True)
class _Pending:
    deadline: float
    order: int
    queued_at: float = field(compare=False)
    sock: socket.socket = field(compare=False)
    destination: Address | None = field(compare=False)  # None: the socket is connected
    data: bytes = field(compare=False)
    stats: DirectionStats = field(compare=False)
    client: str = field(compare=False, default="")


class Relay:
    """Forward UDP between clients and ``target`` with per-direction delay, jitter and loss.

    Use as a context manager (or ``start``/``stop``); ``address`` is where clients send.
    Thread-safe to construct and stop from any thread, asyncio loop or not.
    """

    def __init__(
        self,
        target: Address,
        *,
        up: LinkProfile | None = None,
        down: LinkProfile | None = None,
        seed: int = 0,
        listen: Address = ("127.0.0.1", 0),
        record_delays: bool = True,
    ) -> None:
        self.target = target
        self.up_profile = up or LinkProfile()
        self.down_profile = down or LinkProfile()
        self.up = DirectionStats()
        self.down = DirectionStats()
        self._record = record_delays
        self._rng_up = random.Random(f"{seed}:up")
        self._rng_down = random.Random(f"{seed}:down")
        self._listen = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._listen.bind(listen)
        self._listen.setblocking(False)
        self.address: Address = self._listen.getsockname()[:2]
        #: Bytes per DTLS content type of each client, both directions ("host:port" keys).
        self.by_client: dict[str, dict[str, int]] = {}
        self._upstream: dict[Address, socket.socket] = {}
        self._client_of: dict[socket.socket, Address] = {}
        self._queue: list[_Pending] = []
        self._order = itertools.count()
        self._last_deadline: dict[int, float] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="d2tls-relay", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for sock in [self._listen, self._wake_r, self._wake_w, *self._upstream.values()]:
            sock.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def clients(self) -> int:
        """How many distinct client addresses have used the relay."""
        return len(self._upstream)

    def reset_stats(self) -> None:
        with self._lock:
            self.up = DirectionStats()
            self.down = DirectionStats()
            self.by_client = {}

    def stats(self) -> dict[str, object]:
        with self._lock:
            return {
                "up": self.up.to_dict(),
                "down": self.down.to_dict(),
                "clients": {k: dict(v) for k, v in self.by_client.items()},
                "profile": {
                    "up": self.up_profile.__dict__.copy(),
                    "down": self.down_profile.__dict__.copy(),
                },
            }

    # ------------------------------------------------------------------ the relay thread
    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.perf_counter()
            timeout = 0.2
            if self._queue:
                # Sleep until shortly before the deadline, then spin (wake-ups are late).
                timeout = max(0.0, self._queue[0].deadline - now - _SPIN)
            sockets = [self._listen, self._wake_r, *self._client_of]
            try:
                readable, _, _ = select.select(sockets, [], [], timeout)
            except (OSError, ValueError):
                if self._stop.is_set():
                    return
                raise
            for sock in readable:
                if sock is self._wake_r:
                    with contextlib.suppress(OSError):
                        sock.recv(64)
                elif sock is self._listen:
                    self._drain_listen()
                else:
                    self._drain_upstream(sock)
            self._spin_until_due()
            self._send_due()

    def _spin_until_due(self) -> None:
        if not self._queue:
            return
        deadline = self._queue[0].deadline
        if deadline - time.perf_counter() > _SPIN:
            return
        while time.perf_counter() < deadline:
            pass

    def _drain_listen(self) -> None:
        while True:
            try:
                data, addr = self._listen.recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. ICMP port unreachable reported on the socket
                continue
            client = (addr[0], addr[1])
            upstream = self._upstream.get(client)
            if upstream is None:
                upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                upstream.bind((self.address[0], 0))
                upstream.connect(self.target)
                upstream.setblocking(False)
                self._upstream[client] = upstream
                self._client_of[upstream] = client
            self._enqueue(data, upstream, None, self.up, self.up_profile, self._rng_up, 0, client)

    def _drain_upstream(self, sock: socket.socket) -> None:
        client = self._client_of[sock]
        while True:
            try:
                data = sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            self._enqueue(
                data, self._listen, client, self.down, self.down_profile, self._rng_down, 1, client
            )

    def _enqueue(
        self,
        data: bytes,
        sock: socket.socket,
        destination: Address | None,
        stats: DirectionStats,
        profile: LinkProfile,
        rng: random.Random,
        direction: int,
        client: Address,
    ) -> None:
        now = time.perf_counter()
        with self._lock:
            stats.received += 1
            stats.bytes_received += len(data)
        # Always draw both numbers, so that the loss pattern does not depend on the jitter.
        lose = rng.random() < profile.loss
        extra = rng.random() * profile.jitter
        if lose:
            with self._lock:
                stats.dropped += 1
            return
        deadline = now + profile.delay + extra
        deadline = max(deadline, self._last_deadline.get(direction, 0.0))  # FIFO per direction
        self._last_deadline[direction] = deadline
        heapq.heappush(
            self._queue,
            _Pending(
                deadline,
                next(self._order),
                now,
                sock,
                destination,
                data,
                stats,
                f"{client[0]}:{client[1]}",
            ),
        )

    def _send_due(self) -> None:
        now = time.perf_counter()
        while self._queue and self._queue[0].deadline <= now:
            item = heapq.heappop(self._queue)
            try:
                if item.destination is None:
                    item.sock.send(item.data)
                else:
                    item.sock.sendto(item.data, item.destination)
            except OSError:
                continue
            sent = time.perf_counter()
            with self._lock:
                stats = item.stats
                stats.forwarded += 1
                stats.bytes_forwarded += len(item.data)
                count_records(item.data, stats.bytes_by_content)
                count_records(item.data, self.by_client.setdefault(item.client, {}))
                if self._record:
                    stats.delays.append(sent - item.queued_at)
                    stats.lateness.append(sent - item.deadline)
            now = sent


@contextlib.contextmanager
def relayed(
    target: Address,
    *,
    rtt: float = 0.0,
    jitter: float = 0.0,
    loss: float = 0.0,
    seed: int = 0,
) -> Iterator[Relay]:
    """A started relay with a symmetric profile (``rtt`` split evenly), stopped on exit."""
    up, down = LinkProfile.symmetric(rtt, jitter, loss)
    with Relay(target, up=up, down=down, seed=seed) as relay:
        yield relay


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m d2tls.net.relay", description="UDP impairment relay (loopback)"
    )
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 0))
    parser.add_argument("--target", type=_address, required=True)
    parser.add_argument("--rtt", type=float, default=0.0, help="added round-trip time (s)")
    parser.add_argument("--jitter", type=float, default=0.0, help="per direction (s)")
    parser.add_argument("--loss", type=float, default=0.0, help="per direction, 0..1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    up, down = LinkProfile.symmetric(args.rtt, args.jitter, args.loss)
    relay = Relay(args.target, up=up, down=down, seed=args.seed, listen=args.listen)
    relay.start()
    print(f"relay listening on {relay.address[0]}:{relay.address[1]}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        relay.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
