"""The standing delegation channel (issue 23 item 1, spec/delegation.md §3.1), in the simulator.

The device, the agent and the cloud server are the sans-IO roles the real hosts run; the
simulator's links are lossless here so that every handshake can be counted exactly.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from functools import cache
from typing import Any

import pytest

from conftest import LoadedPKI
from d2tls.adversary.credentials import SERVER_NAME, Credentials, credentials
from d2tls.core.clock import FixedClock
from d2tls.core.delegation.channel_security import Channel
from d2tls.core.delegation.messages import DelegationMode
from d2tls.core.dtls.config import ClientAuth, ServerConfig
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.randomness import SeededRandomness
from d2tls.core.roles.agent import AgentConfig, AgentProtocol
from d2tls.core.roles.device import AttemptFailed, DeviceConfig, DeviceProtocol
from d2tls.core.roles.signer import DeviceSigner
from d2tls.net.agent_host import Agent
from d2tls.sim import Address, Network
from test_channel_security import stack

SERVER: Address = ("203.0.113.10", 4433)
AGENT: Address = ("198.51.100.1", 5684)
DEVICE: Address = ("198.51.100.7", 40000)


@cache
def creds() -> Credentials:
    return credentials()


class World:
    def __init__(self, channel: Channel, **device_options: float) -> None:
        pki = creds()
        import time

        self.clock = FixedClock(time.time())
        self.net = Network(seed=1)
        self.server = DTLSServer(
            ServerConfig(
                certificate_chain=pki.server.chain,
                private_key=pki.server.key,
                trust_store=pki.store,
                client_auth=ClientAuth.REQUIRED,
                wall_clock=self.clock,
                randomness=SeededRandomness("server"),
            )
        )
        self.net.add(self.server, SERVER)
        self.channel = channel
        self.agent = self.new_agent()
        config = DeviceConfig(
            agent=AGENT,
            psk_identity=pki.psk_identity,
            psk=pki.psk,
            server=SERVER,
            server_name=SERVER_NAME,
            certificate_chain=pki.device.chain,
            signer=DeviceSigner(pki.device.key, SeededRandomness("signer")),
            mode=DelegationMode.BLIND,
            wall_clock=self.clock,
            randomness=SeededRandomness("device"),
            channel=channel,
        )
        self.device = DeviceProtocol(replace(config, **device_options), first_request_id=1)
        self.events: list[object] = []
        self.net.add(self.device, DEVICE, self.events.append)

    def new_agent(self) -> AgentProtocol:
        pki = creds()
        agent = AgentProtocol(
            AgentConfig(
                psk_keys={pki.psk_identity: pki.psk},
                trust_store=pki.store,
                wall_clock=self.clock,
                randomness=SeededRandomness(f"agent-{id(self)}-{len(self.net.history)}"),
                channel=self.channel,
            ),
            keep_history=True,
        )
        self.net.add(agent, AGENT)
        return agent

    def restart_agent(self) -> None:
        self.net.remove(AGENT)
        self.agent = self.new_agent()

    def delegate(self) -> DeviceProtocol:
        """One new delegated session (the cached context forgotten), then its connection closed."""
        device = self.device
        device.context = None
        device.connect(self.net.now)
        self.net.run(lambda: device.finished, max_time=120.0)
        self.net.flush()
        return device


@pytest.mark.parametrize("channel", ["psk", "ecdhe-psk"])
def test_second_delegation_reuses_the_standing_channel(channel: Channel) -> None:
    world = World(channel)
    device = world.delegate()
    assert device.connected and device.channel_standing
    first_id = device.attempt.next_request_id if device.attempt else 0
    device.close_connection(world.net.now)
    world.net.advance(1.0)
    device = world.delegate()
    assert device.connected, device.attempt.error if device.attempt else None
    assert device.channel_full_handshakes == 1  # no second channel handshake
    assert device.channel_abbreviated_handshakes == 0
    assert world.agent.completed == 2
    assert device.next_request_id == first_id + 1
    # only the delegation messages crossed the device-agent link the second time
    assert device.agent_link.datagrams_sent == 2  # DelegationRequest, SignResponse


def test_standing_channel_disabled_closes_after_each_delegation() -> None:
    world = World("psk", channel_idle_timeout=0.0)
    world.delegate()
    assert not world.device.channel_standing
    world.device.close_connection(world.net.now)
    world.delegate()
    assert world.device.connected
    # the closed channel is resumed, never kept
    assert world.device.channel_full_handshakes == 1
    assert world.device.channel_abbreviated_handshakes == 1


@pytest.mark.parametrize("channel", ["psk", "ecdhe-psk"])
def test_idle_close_then_abbreviated_channel_handshake(channel: Channel) -> None:
    world = World(channel, channel_idle_timeout=5.0)
    device = world.delegate()
    device.close_connection(world.net.now)
    world.net.advance(4.0)
    assert device.channel_standing
    world.net.advance(2.0)
    world.net.flush()
    assert device.channel is None  # idle timeout: closed (close_notify to the agent)
    device = world.delegate()
    assert device.connected, device.attempt.error if device.attempt else None
    assert device.channel_full_handshakes == 1
    assert device.channel_abbreviated_handshakes == 1
    assert world.agent.completed == 2


def test_agent_restart_falls_back_to_a_full_channel_handshake() -> None:
    world = World("ecdhe-psk", channel_idle_timeout=5.0)
    device = world.delegate()
    device.close_connection(world.net.now)
    world.net.advance(10.0)
    world.restart_agent()  # the new agent has forgotten the channel's session
    device = world.delegate()
    assert device.connected, device.attempt.error if device.attempt else None
    assert device.channel_full_handshakes == 2
    assert device.channel_abbreviated_handshakes == 0
    assert world.agent.completed == 1


def test_rekey_interval_forces_a_full_handshake() -> None:
    world = World("ecdhe-psk", channel_rekey_delegations=2)
    for _ in range(3):
        world.delegate()
        assert world.device.connected
        world.device.close_connection(world.net.now)
    assert world.device.channel_full_handshakes == 2  # delegations 1-2, then a rekey for 3


def test_agent_refuses_a_request_id_reused_on_a_resumed_channel() -> None:
    world = World("psk", channel_idle_timeout=5.0)
    device = world.delegate()
    used = device.next_request_id - 1
    device.close_connection(world.net.now)
    world.net.advance(10.0)
    assert device.channel is None
    device._request_ids = used  # a faulty device: the agent must still refuse it
    device = world.delegate()
    assert device.channel_abbreviated_handshakes == 1  # same channel identity, resumed
    failures = [e for e in world.events if isinstance(e, AttemptFailed)]
    assert failures and f"request_id {used} was already used on this channel" in (
        failures[-1].reason
    )
    # the device never reuses one by itself: the next delegation goes through
    device.close(world.net.now)
    world.net.advance(10.0)
    device = world.delegate()
    assert device.connected, device.attempt.error if device.attempt else None


# --------------------------------------------------------------------------- real sockets


def test_standing_channel_on_real_sockets(pki: LoadedPKI) -> None:
    """127.0.0.1, real server, agent and device: reuse, idle close, abbreviated handshake,
    then a restarted agent (forgotten session) and a full handshake."""

    async def scenario() -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        async with stack(pki, "psk") as (agent, make_device):
            device = make_device("psk", events)
            device.config = replace(device.config, channel_idle_timeout=0.5)

            async def delegated() -> None:
                device.context = None
                connection = await device.connect()
                connection.send(b"hello")
                assert await connection.receive() == b"hello"
                assert connection.report.delegations == 1
                await connection.close()

            await delegated()
            await delegated()  # reuses the channel
            protocol = device.protocol
            assert protocol is not None
            assert (protocol.channel_full_handshakes, protocol.channel_abbreviated_handshakes) == (
                1,
                0,
            )
            assert hellos(events) == 1
            await asyncio.sleep(1.0)  # idle timeout: the channel closes
            assert device.protocol is not None and device.protocol.channel is None
            await delegated()
            protocol = device.protocol
            assert (protocol.channel_full_handshakes, protocol.channel_abbreviated_handshakes) == (
                1,
                1,
            )
            assert agent.completed == 3
            await asyncio.sleep(1.0)
            # the agent restarts on the same port with an empty session cache
            address = agent.address
            assert address is not None
            agent.close()
            await asyncio.sleep(0.05)
            restarted = Agent(agent.config)
            await restarted.start(*address)
            try:
                await delegated()
            finally:
                restarted.close()
            protocol = device.protocol
            assert protocol is not None
            assert (protocol.channel_full_handshakes, protocol.channel_abbreviated_handshakes) == (
                2,
                1,
            )
            assert restarted.completed == 1
            device.close()
        return events

    events = asyncio.run(asyncio.wait_for(scenario(), timeout=90))
    assert hellos(events) == 3  # full, abbreviated, full (after the restart)


def hellos(events: list[dict[str, Any]]) -> int:
    """ClientHellos the device sent the agent that the agent answered (one per handshake)."""
    return sum(
        1
        for e in events
        if e.get("link") == "device-agent"
        and e.get("event") == "message_received"
        and e.get("message") == "ServerHello"
    )


def test_agent_restart_while_the_channel_stands(pki: LoadedPKI) -> None:
    """A stopping agent closes its channels (close_notify): the device drops the standing
    channel and its session, and its next delegation runs a full channel handshake."""

    async def scenario() -> None:
        async with stack(pki, "psk") as (agent, make_device):
            device = make_device("psk", [])
            first = await device.connect()
            await first.close()
            address = agent.address
            assert address is not None
            agent.close()
            await asyncio.sleep(0.1)
            protocol = device.protocol
            assert protocol is not None and protocol.channel is None
            restarted = Agent(agent.config)
            await restarted.start(*address)
            try:
                device.context = None
                again = await device.connect()
                assert again.report.delegations == 1
                await again.close()
            finally:
                restarted.close()
            protocol = device.protocol
            assert protocol is not None
            assert (protocol.channel_full_handshakes, protocol.channel_abbreviated_handshakes) == (
                2,
                0,
            )
            assert restarted.completed == 1
            device.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))


def test_agent_crash_while_the_channel_stands() -> None:
    """An agent that crashed (no close_notify) and came back drops the standing channel's
    records: that delegation ends with the device's timeout; the next one resumes or, as
    here (the new agent forgot the session), runs a full channel handshake."""
    world = World("psk", timeout=3.0)
    device = world.delegate()
    device.close_connection(world.net.now)
    world.net.advance(1.0)
    world.restart_agent()  # no close_notify reaches the device
    device = world.delegate()
    assert not device.connected
    failures = [e for e in world.events if isinstance(e, AttemptFailed)]
    assert failures and "agent channel" in failures[-1].reason
    device = world.delegate()
    assert device.connected, device.attempt.error if device.attempt else None
    assert device.channel_full_handshakes == 2
    assert world.agent.completed == 1
