"""A fleet behind a UDP load balancer sharing a real Redis store (issue 8, points 3 and 4).

* The agent's full handshake lands on instance A, the device resumes at instance B.
* Redis outage (redis-server killed): the servers keep serving full handshakes — the device's
  resumption of its old session falls back to a new delegation, which succeeds — and when Redis
  is restarted on the same port, resumption across instances works again.
* ``d2tls demo --fleet 3`` end to end, as real processes.

In-process tests run three real ``DTLSServer`` endpoints (each with its own Redis client, as
separate processes would have), the load balancer, the agent and the device on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from conftest import SERVER_NAME, LoadedPKI, server_config
from d2tls.core.dtls.events import Event, HandshakeCompleted
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.pki.verify import load_psk_file
from d2tls.core.roles.agent import AgentConfig
from d2tls.core.roles.signer import DeviceSigner
from d2tls.core.store import open_store
from d2tls.core.store.redis_store import RedisSessionStore
from d2tls.lab.redis_server import RedisServer
from d2tls.net.agent_host import Agent
from d2tls.net.device_host import Device, DeviceConfig
from d2tls.net.loadbalancer import BackgroundLoadBalancer, Policy, UDPLoadBalancer
from d2tls.net.udp import ServerEndpoint
from test_store import KEYS, start_redis

Address = tuple[str, int]


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.close()


@dataclass
class Fleet:
    pki: LoadedPKI
    endpoints: list[ServerEndpoint]
    stores: list[RedisSessionStore]
    balancer: UDPLoadBalancer
    agent_address: Address
    handshakes: list[list[HandshakeCompleted]] = field(default_factory=list)

    @property
    def address(self) -> Address:
        assert self.balancer.address is not None
        return self.balancer.address

    def device(self) -> Device:
        identity, psk = next(iter(load_psk_file(self.pki.paths.psk_file).items()))
        return Device(
            DeviceConfig(
                agent=self.agent_address,
                psk_identity=identity,
                psk=psk,
                server=self.address,
                server_name=SERVER_NAME,
                certificate_chain=self.pki.device.chain,
                signer=DeviceSigner(self.pki.device.key),
                timeout=10.0,
            )
        )

    def seen(self) -> list[list[bool]]:
        """Per instance: the ``resumed`` flag of each handshake it completed, in order."""
        return [[h.resumed for h in instance] for instance in self.handshakes]

    def clear(self) -> None:
        for instance in self.handshakes:
            instance.clear()


@asynccontextmanager
async def running_fleet(pki: LoadedPKI, redis_url: str, n: int = 3) -> AsyncIterator[Fleet]:
    handshakes: list[list[HandshakeCompleted]] = [[] for _ in range(n)]
    endpoints, stores = [], []
    for index in range(n):
        store = open_store(f"{redis_url}?retry_interval=0.1&socket_timeout=0.2", None, keys=KEYS)
        assert isinstance(store, RedisSessionStore)
        stores.append(store)

        def record(event: Event, into: list[HandshakeCompleted] = handshakes[index]) -> None:
            if isinstance(event, HandshakeCompleted):
                into.append(event)

        endpoints.append(
            await ServerEndpoint.listen(
                "127.0.0.1",
                0,
                DTLSServer(server_config(pki, session_store=store)),
                echo=True,
                on_event=record,
            )
        )
    backends = [e.address for e in endpoints if e.address is not None]
    balancer = UDPLoadBalancer(backends)
    await balancer.start("127.0.0.1", 0)
    agent = Agent(AgentConfig(psk_keys=load_psk_file(pki.paths.psk_file), trust_store=pki.store))
    agent_address = await agent.start("127.0.0.1", 0)
    try:
        yield Fleet(pki, endpoints, stores, balancer, agent_address, handshakes)
    finally:
        agent.close()
        balancer.close()
        for endpoint in endpoints:
            endpoint.close()
        for store in stores:
            store.close()
        await asyncio.sleep(0.05)


def run(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout=60))


async def connect_and_echo(device: Device, text: bytes) -> Any:
    connection = await device.connect()
    connection.send(text)
    assert await connection.receive() == text
    await connection.close()
    return connection


A, B, C = 0, 1, 2


def test_agent_on_instance_a_device_resumes_on_instance_b(
    pki: LoadedPKI, redis_server: RedisServer
) -> None:
    async def scenario() -> None:
        async with running_fleet(pki, redis_server.url()) as fleet:
            device = fleet.device()
            fleet.balancer.force(A, B)  # the agent's flow, then the device's
            first = await connect_and_echo(device, b"via B")
            assert first.report.delegations == 1
            assert fleet.seen() == [[False], [True], []]
            resumed = fleet.handshakes[B][0]
            assert resumed.session.session_id == first.session.session_id
            # The identity bound to the session is the device's certificate, on B too.
            assert resumed.session.peer_certificates == pki.device.chain
            fleet.clear()
            fleet.balancer.force(C)
            second = await connect_and_echo(device, b"via C")
            assert second.report.delegations == 0
            assert fleet.seen() == [[], [], [True]]
            assert fleet.stores[A].count() == 1
            flows = fleet.balancer.history
            assert [f.backend for f in flows] == [A, B, C]

    run(scenario())


def test_redis_outage_falls_back_to_delegation_and_recovers(
    pki: LoadedPKI, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with running_fleet(pki, redis_server.url()) as fleet:
            device = fleet.device()
            fleet.balancer.force(A, B)
            before = await connect_and_echo(device, b"before the outage")
            assert before.report.delegations == 1
            fleet.clear()

            await asyncio.to_thread(redis_server.stop, True)  # kill -9 redis-server
            fleet.balancer.pin(B)
            during = await connect_and_echo(device, b"during the outage")
            # B could not find the session (Redis down): the device's resumption was refused,
            # it delegated again, the agent's full handshake succeeded on B, and the device
            # resumed that new session on B (kept in B's local fallback).
            assert during.report.delegations == 1
            assert during.session.session_id != before.session.session_id
            assert fleet.seen() == [[], [False, True], []]
            assert not fleet.stores[B].available
            # Another instance cannot resume it while Redis is down (no shared state).
            assert fleet.stores[C].get(during.session.session_id) is None
            fleet.clear()

            await asyncio.to_thread(redis_server.start)  # same port, empty
            await asyncio.sleep(0.2)  # > retry_interval
            fleet.balancer.pin(None)
            fleet.balancer.force(A, C)
            fresh = fleet.device()
            after = await connect_and_echo(fresh, b"after the outage")
            assert after.report.delegations == 1
            assert fleet.seen() == [[False], [], [True]]  # across instances again
            assert all(store.available for store in (fleet.stores[A], fleet.stores[C]))

    with caplog.at_level(logging.WARNING, logger="d2tls.core.store"):
        run(scenario())
    assert "unavailable" in caplog.text
    assert "reachable again" in caplog.text


# --------------------------------------------------------------------------- load balancer


class Echo(asyncio.DatagramProtocol):
    """A backend that answers ``<name>:<data>``."""

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.transport: asyncio.DatagramTransport | None = None
        self.peers: set[Address] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.peers.add(addr)
        assert self.transport is not None
        self.transport.sendto(self.name + b":" + data, addr)


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.queue.put_nowait(data)


async def ask(target: Address, payloads: list[bytes]) -> list[bytes]:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(Client, remote_addr=target)
    answers = []
    for payload in payloads:
        transport.sendto(payload)
        answers.append(await asyncio.wait_for(client.queue.get(), 5))
    transport.close()
    return answers


def test_load_balancer_policies() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        backends, protocols = [], []
        for name in (b"A", b"B", b"C"):
            transport, protocol = await loop.create_datagram_endpoint(
                lambda name=name: Echo(name), local_addr=("127.0.0.1", 0)
            )
            backends.append(transport.get_extra_info("sockname")[:2])
            protocols.append(protocol)
        balancer = UDPLoadBalancer(backends)
        address = await balancer.start()
        try:
            # Round robin per new client address; a flow keeps its backend.
            firsts = [(await ask(address, [b"1", b"2"])) for _ in range(4)]
            assert firsts == [
                [b"A:1", b"A:2"],
                [b"B:1", b"B:2"],
                [b"C:1", b"C:2"],
                [b"A:1", b"A:2"],
            ]
            # Each flow is one peer address for its backend.
            assert len(protocols[0].peers) == 2 and len(protocols[1].peers) == 1
            balancer.force(C, C, B)
            forced = [(await ask(address, [b"x"]))[0] for _ in range(4)]
            assert forced == [b"C:x", b"C:x", b"B:x", b"B:x"]  # then round robin goes on
            balancer.pin(B)
            assert [(await ask(address, [b"p"]))[0] for _ in range(3)] == [b"B:p"] * 3
            balancer.pin(None)
            with pytest.raises(ValueError):
                balancer.force(7)
            assert [r.backend for r in balancer.history][:4] == [A, B, C, A]
        finally:
            balancer.close()

        hashed = UDPLoadBalancer(backends, policy=Policy.SOURCE_HASH)
        address = await hashed.start()
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            sock.close()
            answers = set()
            for _ in range(3):  # the same client address always lands on the same backend
                transport, client = await loop.create_datagram_endpoint(
                    Client, remote_addr=address, local_addr=("127.0.0.1", port)
                )
                transport.sendto(b"h")
                answers.add(await asyncio.wait_for(client.queue.get(), 5))
                transport.close()
                await asyncio.sleep(0)
                hashed._flows.clear()  # forget the flow: the hash alone decides
            assert len(answers) == 1
        finally:
            hashed.close()
            for protocol in protocols:
                assert protocol.transport is not None
                protocol.transport.close()

    run(scenario())


def test_background_load_balancer_for_synchronous_callers() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as backend:
        backend.bind(("127.0.0.1", 0))
        backend.settimeout(5)
        balancer = BackgroundLoadBalancer([backend.getsockname()])
        address = balancer.start()
        try:
            balancer.force(0)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(5)
                client.sendto(b"ping", address)
                data, upstream = backend.recvfrom(100)
                assert data == b"ping"
                backend.sendto(b"pong", upstream)
                assert client.recvfrom(100)[0] == b"pong"
            (record,) = balancer.history()
            assert record.backend == 0 and record.upstream == upstream
        finally:
            balancer.close()


# --------------------------------------------------------------------------- the demo


@pytest.mark.parametrize(
    ("n", "device_instances", "rows"),
    [
        # Two instances: the second resumption wraps around to A, after B in time (this once
        # failed: resumptions were compared in instance order, A before B).
        (2, ["B", "A"], {"A": [False, True], "B": [True]}),
        (3, ["B", "C"], {"A": [False], "B": [True], "C": [True]}),
    ],
)
def test_fleet_demo_as_processes(
    n: int, device_instances: list[str], rows: dict[str, list[bool]]
) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "d2tls.cli", "demo", "--fleet", str(n), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["ok"] is True
    assert result["agent_instance"] == "A"
    assert result["device_instances"] == device_instances
    assert [c["delegations"] for c in result["device"]] == [1, 0]
    assert result["sessions_in_redis"] == 1
    seen = {i["name"]: [h["resumed"] for h in i["handshakes"]] for i in result["instances"]}
    assert seen == rows


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--fleet", "0"], "2 to 26"),
        (["--fleet", "1"], "2 to 26"),
        (["--fleet", "27"], "2 to 26"),
        (["--fleet", "x"], "2 to 26"),
        (["--fleet", "3", "--server", "openssl"], "--server openssl"),
        (["--fleet", "3", "--server", "gnutls"], "--server gnutls"),
    ],
)
def test_fleet_demo_bad_arguments_exit_2(args: list[str], fragment: str) -> None:
    """argparse's usual usage error (status 2) before anything starts; never a silent fallback."""
    completed = subprocess.run(
        [sys.executable, "-m", "d2tls.cli", "demo", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert "usage: d2tls demo" in completed.stderr
    assert fragment in completed.stderr
    assert "Traceback" not in completed.stderr
    assert completed.stdout == ""
