"""The device-agent channel as plain PSK or ECDHE-PSK (issue 23 item 1), end to end on
127.0.0.1 with a real server, agent and device (as in tests/test_d2tls.py)."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from conftest import SERVER_NAME, LoadedPKI, server_config
from d2tls.core.delegation.channel_security import (
    CHANNELS,
    Channel,
    agent_channel_suites,
    device_channel_suites,
)
from d2tls.core.delegation.policy import AgentPolicy, load_agent_psk_file
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.errors import ConfigurationError
from d2tls.core.pki.verify import load_psk_file
from d2tls.core.roles.agent import AgentConfig
from d2tls.core.roles.device import DelegationFailed, DeviceConfig
from d2tls.core.roles.signer import DeviceSigner
from d2tls.lab.peers import OutputCapture
from d2tls.net.agent_host import Agent
from d2tls.net.device_host import Device
from d2tls.net.udp import ServerEndpoint
from test_interop import CLIServer

ECDHE_PSK = CipherSuite.TLS_ECDHE_PSK_WITH_CHACHA20_POLY1305_SHA256
PSK = CipherSuite.TLS_PSK_WITH_AES_128_CCM_8


def test_channel_suites() -> None:
    assert CHANNELS == ("psk", "ecdhe-psk")
    assert device_channel_suites("psk") == (PSK,)
    assert device_channel_suites("ecdhe-psk") == (ECDHE_PSK,)
    assert agent_channel_suites("psk") == (ECDHE_PSK, PSK)
    assert agent_channel_suites("ecdhe-psk") == (ECDHE_PSK,)
    with pytest.raises(ConfigurationError, match="unknown channel 'tls'"):
        device_channel_suites("tls")  # type: ignore[arg-type]


@asynccontextmanager
async def stack(pki: LoadedPKI, agent_channel: Channel) -> AsyncIterator[tuple[Agent, Any]]:
    """Server and agent on loopback; yields the agent and a device factory."""
    server = await ServerEndpoint.listen("127.0.0.1", 0, DTLSServer(server_config(pki)), echo=True)
    assert server.address is not None
    server_address = server.address
    policy = AgentPolicy.build(
        load_agent_psk_file(pki.paths.agent_psk_file), allow=[f"127.0.0.1:{server_address[1]}"]
    )
    agent = Agent(
        AgentConfig(
            psk_keys=policy.psk_keys, trust_store=pki.store, policy=policy, channel=agent_channel
        )
    )
    agent_address = await agent.start("127.0.0.1", 0)

    def device(channel: Channel, events: list[dict[str, Any]]) -> Device:
        identity, psk = next(iter(load_psk_file(pki.paths.psk_file).items()))
        return Device(
            DeviceConfig(
                agent=agent_address,
                psk_identity=identity,
                psk=psk,
                server=server_address,
                server_name=SERVER_NAME,
                certificate_chain=pki.device.chain,
                signer=DeviceSigner(pki.device.key),
                timeout=10.0,
                tracer=events.append,
                channel=channel,
            )
        )

    try:
        yield agent, device
    finally:
        agent.close()
        server.close()
        await asyncio.sleep(0.05)


def channel_messages(events: list[dict[str, Any]]) -> list[str]:
    """Handshake messages the device received from the agent."""
    return [
        str(e["message"])
        for e in events
        if e.get("link") == "device-agent" and e.get("event") == "message_received"
    ]


@pytest.mark.parametrize(
    ("agent_channel", "device_channel"),
    [("psk", "psk"), ("psk", "ecdhe-psk"), ("ecdhe-psk", "ecdhe-psk")],
)
def test_delegation_over_each_channel(
    pki: LoadedPKI, agent_channel: Channel, device_channel: Channel
) -> None:
    """The agent's default accepts both; ECDHE-PSK shows as the agent's ServerKeyExchange."""

    async def scenario() -> list[dict[str, Any]]:
        async with stack(pki, agent_channel) as (agent, device):
            events: list[dict[str, Any]] = []
            connection = await device(device_channel, events).connect()
            connection.send(b"over-" + device_channel.encode())
            assert await connection.receive() == b"over-" + device_channel.encode()
            assert connection.report.delegations == 1
            await connection.close()
            assert agent.completed == 1
            return events

    events = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    received = channel_messages(events)
    assert "ServerHello" in received and "SignRequest" in received, received
    assert ("ServerKeyExchange" in received) == (device_channel == "ecdhe-psk"), received


def test_an_agent_requiring_ecdhe_psk_refuses_a_plain_psk_device(pki: LoadedPKI) -> None:
    async def scenario() -> None:
        async with stack(pki, "ecdhe-psk") as (agent, device):
            with pytest.raises(DelegationFailed, match="handshake_failure"):
                await device("psk", []).connect()
            assert agent.completed == 0

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))


def test_command_line_channel_option(pki: LoadedPKI) -> None:
    """``d2tls agent --channel ecdhe-psk`` and ``d2tls device --channel ...`` as processes: the
    option reaches both engines (a plain-PSK device is refused, an ECDHE-PSK one delegates)."""
    paths = pki.paths
    with CLIServer(
        "--cert", str(paths.server_cert), "--key", str(paths.server_key),
        "--ca", str(paths.ca_cert), "--require-client-cert", "--echo",
    ) as server:  # fmt: skip
        agent_argv = [sys.executable, "-m", "d2tls.cli", "agent", "--listen", "127.0.0.1:0"]
        agent_argv += ["--psk-file", str(paths.agent_psk_file), "--ca", str(paths.ca_cert)]
        agent_argv += ["--allow-server", f"127.0.0.1:{server.port}", "--channel", "ecdhe-psk"]
        agent = subprocess.Popen(
            agent_argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert agent.stdout is not None
        capture = OutputCapture(agent.stdout)
        try:
            ready = re.compile(rb"agent listening on 127\.0\.0\.1:(\d+)")
            assert capture.wait_for(ready, 15), capture.text()
            match = ready.search(capture.data())
            assert match is not None
            identity, key = next(iter(load_psk_file(paths.psk_file).items()))
            device = paths.devices[0]
            argv = [sys.executable, "-m", "d2tls.cli", "device", "--json", "--send", "fs"]
            argv += ["--agent", f"127.0.0.1:{int(match.group(1))}"]
            argv += ["--psk", f"{identity.decode()}:{key.hex()}", "--timeout", "15"]
            argv += ["--server", f"127.0.0.1:{server.port}", "--server-name", SERVER_NAME]
            argv += ["--cert", str(device.cert), "--key", str(device.key)]
            results = {}
            for channel in ("psk", "ecdhe-psk"):
                proc = subprocess.run(
                    [*argv, "--channel", channel],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=False,
                )
                assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
                results[channel] = json.loads(proc.stdout.strip().splitlines()[-1])
        finally:
            agent.terminate()
            agent.wait(timeout=10)
            capture.join()
    assert results["psk"]["ok"] is False and "handshake_failure" in results["psk"]["error"]
    assert results["ecdhe-psk"]["ok"] is True, results["ecdhe-psk"]
    assert results["ecdhe-psk"]["connections"][0]["received"] == "fs"
