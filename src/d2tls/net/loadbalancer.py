"""A small UDP load balancer for loopback fleets (tests and ``d2tls demo --fleet``).

Each new client address (a *flow*) is assigned one backend and keeps it until the flow has
been idle for ``idle_timeout`` seconds, like the 5-tuple affinity of a cloud UDP load balancer.
The balancer relays through one upstream socket per flow, so a backend sees the flow as one
peer address (its DTLS cookie and connection state stay consistent) and replies reach the
right client.

How new flows are assigned:

* ``Policy.ROUND_ROBIN`` (default): backends in turn, one step per new flow;
* ``Policy.SOURCE_HASH``: a stable hash of the client address;
* ``force(i, j, …)``: the next new flows go to backends ``i``, ``j``, … whatever the policy
  (tests use it to make the device resume at another instance than the one its agent used);
* ``pin(i)``: every new flow goes to backend ``i`` until ``pin(None)``.

``BackgroundLoadBalancer`` runs one in a thread with its own event loop, for synchronous
callers (the fleet demo). ``python -m d2tls.net.loadbalancer --listen H:P --backend H:P …``
runs one in the foreground.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

Address = tuple[str, int]


class Policy(enum.Enum):
    ROUND_ROBIN = "round-robin"
    SOURCE_HASH = "source-hash"


@dataclass
class Flow:
    """One client address and the backend it was assigned."""

    client: Address
    backend: int
    upstream: asyncio.DatagramTransport | None = None
    local: Address | None = None
    last_seen: float = field(default_factory=time.monotonic)
    datagrams_in: int = 0
    datagrams_out: int = 0


@dataclass(frozen=True)
class FlowRecord:
    """What the balancer tells about an assignment (``history``)."""

    client: Address
    backend: int
    backend_address: Address
    #: The balancer's upstream address: the peer address the backend sees for this flow.
    upstream: Address | None


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, balancer: UDPLoadBalancer, flow: Flow) -> None:
        self._balancer = balancer
        self._flow = flow

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._balancer._from_backend(self._flow, data)

    def error_received(self, exc: Exception) -> None:  # backend down: the client retransmits
        pass


class _Frontend(asyncio.DatagramProtocol):
    def __init__(self, balancer: UDPLoadBalancer) -> None:
        self._balancer = balancer

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._balancer._from_client(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        pass


class UDPLoadBalancer:
    """The balancer (see module docstring). Use from its event loop's thread."""

    def __init__(
        self,
        backends: Sequence[Address],
        *,
        policy: Policy = Policy.ROUND_ROBIN,
        idle_timeout: float = 60.0,
        on_flow: Callable[[FlowRecord], None] | None = None,
    ) -> None:
        if not backends:
            raise ValueError("a load balancer needs at least one backend")
        self.backends = list(backends)
        self.policy = policy
        self.idle_timeout = idle_timeout
        self._on_flow = on_flow
        self._flows: dict[Address, Flow] = {}
        self._forced: deque[int] = deque()
        self._pinned: int | None = None
        self._next = 0
        self._frontend: asyncio.DatagramTransport | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._pending: dict[Address, list[bytes]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.history: list[FlowRecord] = []
        self.address: Address | None = None

    # ------------------------------------------------------------------ control
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Address:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Frontend(self), local_addr=(host, port)
        )
        self._frontend = transport
        sockname = self._frontend.get_extra_info("sockname")
        self.address = (sockname[0], int(sockname[1]))
        self._schedule_sweep()
        return self.address

    def force(self, *backends: int) -> None:
        """The next ``len(backends)`` new flows go to these backends, in order."""
        for index in backends:
            self._check(index)
        self._forced.extend(backends)

    def pin(self, backend: int | None) -> None:
        """Send every new flow to ``backend`` (``None``: back to the policy)."""
        if backend is not None:
            self._check(backend)
        self._pinned = backend

    def _check(self, index: int) -> None:
        if not 0 <= index < len(self.backends):
            raise ValueError(f"no backend {index} (have {len(self.backends)})")

    def flows(self) -> dict[Address, int]:
        """Current client address -> backend index."""
        return {address: flow.backend for address, flow in self._flows.items()}

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for flow in self._flows.values():
            if flow.upstream is not None:
                flow.upstream.close()
        self._flows.clear()
        if self._frontend is not None:
            self._frontend.close()

    # ------------------------------------------------------------------ assignment
    def _choose(self, client: Address) -> int:
        if self._forced:
            return self._forced.popleft()
        if self._pinned is not None:
            return self._pinned
        if self.policy is Policy.SOURCE_HASH:
            digest = hashlib.sha256(f"{client[0]}|{client[1]}".encode()).digest()
            return int.from_bytes(digest[:4], "big") % len(self.backends)
        index = self._next % len(self.backends)
        self._next += 1
        return index

    # ------------------------------------------------------------------ relaying
    def _from_client(self, data: bytes, client: Address) -> None:
        flow = self._flows.get(client)
        if flow is None:
            if client in self._pending:  # upstream socket still opening
                self._pending[client].append(data)
                return
            flow = Flow(client, self._choose(client))
            self._pending[client] = [data]
            task = asyncio.get_running_loop().create_task(self._open(flow))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        flow.last_seen = time.monotonic()
        flow.datagrams_in += 1
        if flow.upstream is not None:
            flow.upstream.sendto(data)

    async def _open(self, flow: Flow) -> None:
        loop = asyncio.get_running_loop()
        backend = self.backends[flow.backend]
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Upstream(self, flow), remote_addr=backend
            )
        except OSError:
            self._pending.pop(flow.client, None)
            return
        flow.upstream = transport
        sockname = flow.upstream.get_extra_info("sockname")
        flow.local = (sockname[0], int(sockname[1])) if sockname else None
        self._flows[flow.client] = flow
        record = FlowRecord(flow.client, flow.backend, backend, flow.local)
        self.history.append(record)
        if self._on_flow is not None:
            self._on_flow(record)
        for data in self._pending.pop(flow.client, []):
            flow.datagrams_in += 1
            flow.upstream.sendto(data)

    def _from_backend(self, flow: Flow, data: bytes) -> None:
        flow.last_seen = time.monotonic()
        flow.datagrams_out += 1
        if self._frontend is not None and not self._frontend.is_closing():
            self._frontend.sendto(data, flow.client)

    def _schedule_sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(min(self.idle_timeout, 5.0), self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        for client, flow in list(self._flows.items()):
            if now - flow.last_seen >= self.idle_timeout:
                if flow.upstream is not None:
                    flow.upstream.close()
                del self._flows[client]
        self._schedule_sweep()


class BackgroundLoadBalancer:
    """A ``UDPLoadBalancer`` in a daemon thread with its own loop (for synchronous code)."""

    def __init__(self, backends: Sequence[Address], **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.balancer = UDPLoadBalancer(backends, **options)
        self.address: Address | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> Address:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self.balancer.start(host, port), self._loop)
        self.address = future.result(timeout=10)
        return self.address

    def _call(self, function: Callable[[], Any]) -> Any:
        result: Future[Any] = Future()

        def run() -> None:
            try:
                result.set_result(function())
            except BaseException as exc:
                result.set_exception(exc)

        self._loop.call_soon_threadsafe(run)
        return result.result(timeout=10)

    def force(self, *backends: int) -> None:
        self._call(lambda: self.balancer.force(*backends))

    def pin(self, backend: int | None) -> None:
        self._call(lambda: self.balancer.pin(backend))

    def history(self) -> list[FlowRecord]:
        records: list[FlowRecord] = self._call(lambda: list(self.balancer.history))
        return records

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self.balancer.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m d2tls.net.loadbalancer", description="UDP load balancer (loopback)"
    )
    parser.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    parser.add_argument(
        "--backend", type=_address, action="append", required=True, metavar="HOST:PORT"
    )
    parser.add_argument("--policy", choices=[p.value for p in Policy], default="round-robin")
    parser.add_argument("--idle-timeout", type=float, default=60.0, metavar="S")
    args = parser.parse_args(argv)

    async def run() -> None:
        def report(record: FlowRecord) -> None:
            print(
                f"flow {record.client[0]}:{record.client[1]} -> backend {record.backend} "
                f"{record.backend_address[0]}:{record.backend_address[1]}",
                flush=True,
            )

        balancer = UDPLoadBalancer(
            args.backend,
            policy=Policy(args.policy),
            idle_timeout=args.idle_timeout,
            on_flow=report,
        )
        host, port = await balancer.start(*args.listen)
        print(f"load balancer listening on {host}:{port}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            balancer.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
