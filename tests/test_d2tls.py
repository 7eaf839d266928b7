"""D2TLS end to end (paper §4, Figure 8) with real UDP sockets on 127.0.0.1.

Device, agent and server run in one asyncio loop here (the demo tests below run them as
separate processes). Nothing is mocked: the agent runs a real DTLS handshake with a real
server, asks the real device for the CertificateVerify signature, and the device resumes.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.x509 import load_der_x509_certificate

from conftest import SERVER_NAME, LoadedPKI, server_config
from d2tls.core.delegation.messages import (
    DelegationErrorCode,
    DelegationMessage,
    DelegationMode,
    DelegationRequest,
)
from d2tls.core.delegation.policy import AgentPolicy, load_agent_psk_file
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.pki.verify import load_psk_file
from d2tls.core.roles.agent import AgentConfig, AgentSession
from d2tls.core.roles.device import DelegationFailed, DeviceConfig
from d2tls.core.roles.signer import DeviceSigner
from d2tls.net.agent_host import Agent
from d2tls.net.device_host import Device
from d2tls.net.ocsp import OCSPResponder, RevocationList
from d2tls.net.udp import ServerEndpoint

Address = tuple[str, int]


@dataclass
class Stack:
    """A running server and agent, and a factory for devices."""

    pki: LoadedPKI
    server: ServerEndpoint
    agent: Agent
    agent_address: Address
    received_by_agent: list[DelegationMessage]

    @property
    def server_address(self) -> Address:
        assert self.server.address is not None
        return self.server.address

    def device(self, **overrides: Any) -> Device:
        identity, psk = next(iter(load_psk_file(self.pki.paths.psk_file).items()))
        settings: dict[str, Any] = {
            "agent": self.agent_address,
            "psk_identity": identity,
            "psk": psk,
            "server": self.server_address,
            "server_name": SERVER_NAME,
            "certificate_chain": self.pki.device.chain,
            "signer": DeviceSigner(self.pki.device.key),
            "timeout": 10.0,
        }
        settings.update(overrides)
        return Device(DeviceConfig(**settings))


@asynccontextmanager
async def running_stack(
    pki: LoadedPKI,
    *,
    ocsp_url: str | None = None,
    server: DTLSServer | None = None,
    policy: AgentPolicy | None = None,
) -> AsyncIterator[Stack]:
    """Server and agent on loopback; the agent's policy (spec/delegation.md §9.1) is the
    bound PSK file of ``d2tls pki init`` and allows only this server, unless given."""
    server_endpoint = await ServerEndpoint.listen(
        "127.0.0.1", 0, server or DTLSServer(server_config(pki)), echo=True
    )
    assert server_endpoint.address is not None
    if policy is None:
        policy = AgentPolicy.build(
            load_agent_psk_file(pki.paths.agent_psk_file),
            allow=[f"127.0.0.1:{server_endpoint.address[1]}"],
        )
    received: list[DelegationMessage] = []
    original = AgentSession.receive

    def spy(self: AgentSession, message: DelegationMessage) -> None:
        received.append(message)
        original(self, message)

    AgentSession.receive = spy  # type: ignore[method-assign]
    agent = Agent(
        AgentConfig(
            psk_keys=policy.psk_keys,
            trust_store=pki.store,
            ocsp_url=ocsp_url,
            policy=policy,
        ),
        ocsp_issuer=pki.ca_cert,
    )
    address = await agent.start("127.0.0.1", 0)
    try:
        yield Stack(pki, server_endpoint, agent, address, received)
    finally:
        AgentSession.receive = original  # type: ignore[method-assign]
        agent.close()
        server_endpoint.close()
        await asyncio.sleep(0.05)


def run(coroutine_factory: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine_factory(), timeout=60))


@pytest.mark.parametrize("mode", [DelegationMode.BOUND, DelegationMode.BLIND])
def test_delegated_handshake_then_resumption_and_echo(pki: LoadedPKI, mode: DelegationMode) -> None:
    """Paper Figure 8: the agent runs the full handshake, the device resumes end to end."""

    async def scenario() -> None:
        async with running_stack(pki) as stack:
            device = stack.device(mode=mode)
            connection = await device.connect()
            connection.send(b"ping")
            assert await connection.receive() == b"ping"
            report = connection.report
            assert report.delegations == 1
            assert report.key_operations == {"sign": 1, "verify": 0, "ecdh": 0, "keygen": 0}
            assert report.server_link.round_trips >= 1
            await connection.close()
            # The server saw the device's certificate on both connections.
            assert stack.agent.completed == 1
            # A second connection reuses the context: no delegation, no key operation.
            again = await device.connect()
            assert again.report.delegations == 0
            assert again.report.resumed_from_cache
            assert again.report.key_operations["sign"] == 0
            assert again.session.session_id == connection.session.session_id
            again.send(b"pong")
            assert await again.receive() == b"pong"
            await again.close()

    run(scenario)


def test_device_private_key_never_reaches_the_agent(pki: LoadedPKI) -> None:
    """The agent only ever receives public data: no field of any message holds key material."""

    async def scenario() -> None:
        async with running_stack(pki) as stack:
            connection = await stack.device().connect()
            await connection.close()
            key = pki.device.key
            secrets = [
                key.private_numbers().private_value.to_bytes(32, "big"),
                key.private_bytes(
                    serialization.Encoding.DER,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            ]
            assert stack.received_by_agent, "the spy saw nothing"
            for message in stack.received_by_agent:
                for item in fields(message):
                    value = getattr(message, item.name)
                    blobs = value if isinstance(value, tuple) else (value,)
                    for blob in blobs:
                        if isinstance(blob, bytes | str):
                            data = blob.encode() if isinstance(blob, str) else blob
                            for secret in secrets:
                                assert secret not in data
                                assert secret.hex().encode() not in data
        # Structurally: neither the agent's configuration nor the request can carry a key.
        for holder in (AgentConfig, DelegationRequest):
            for item in fields(holder):
                assert "private" not in item.name
                assert "PrivateKey" not in str(item.type)

    run(scenario)


def test_refused_resumption_after_server_restart_delegates_again(pki: LoadedPKI) -> None:
    """Paper §4.2: a new session ID from the server means: abandon and delegate again."""

    async def scenario() -> None:
        async with running_stack(pki) as stack:
            device = stack.device()
            first = await device.connect()
            await first.close()
            port = stack.server_address[1]
            stack.server.close()  # restart: a new server process has an empty session cache
            await asyncio.sleep(0.05)
            stack.server = await ServerEndpoint.listen(
                "127.0.0.1", port, DTLSServer(server_config(pki)), echo=True
            )
            second = await device.connect()
            assert second.report.delegations == 1
            assert not second.report.resumed_from_cache
            assert second.session.session_id != first.session.session_id
            second.send(b"after restart")
            assert await second.receive() == b"after restart"
            await second.close()

    run(scenario)


def test_expired_session_delegates_again(pki: LoadedPKI) -> None:
    """A session the server expired is refused like an unknown one (RFC 5246 §7.4.1.2)."""

    async def scenario() -> None:
        server = DTLSServer(server_config(pki, session_lifetime=0.3))
        async with running_stack(pki, server=server) as stack:
            device = stack.device()
            first = await device.connect()
            await first.close()
            await asyncio.sleep(0.5)
            second = await device.connect()
            assert second.report.delegations == 1
            await second.close()

    run(scenario)


def test_wrong_psk_is_refused_on_the_channel(
    pki: LoadedPKI, caplog: pytest.LogCaptureFixture
) -> None:
    """The channel is DTLS PSK: a wrong key never gets a delegation, and both sides say why
    at once: the agent answers the unauthenticated Finished with decrypt_error (RFC 4279 §2)
    instead of letting the device retransmit until its timeout."""

    async def scenario() -> float:
        async with running_stack(pki) as stack:
            device = stack.device(psk=os.urandom(32), timeout=20.0)
            started = asyncio.get_running_loop().time()
            with pytest.raises(DelegationFailed, match="the agent refused the PSK") as failure:
                await device.connect()
            assert "decrypt_error" in str(failure.value)
            assert stack.agent.completed == 0
            return asyncio.get_running_loop().time() - started

    elapsed = run(scenario)
    assert elapsed < 10.0, f"took {elapsed:.1f} s: the device waited for its timeout"
    logged = [r.getMessage() for r in caplog.records if r.name == "d2tls.agent"]
    assert any("failed" in m and "decrypt_error" in m and "PSK key" in m for m in logged), logged


def test_unknown_psk_identity_is_named(pki: LoadedPKI) -> None:
    async def scenario() -> None:
        async with running_stack(pki) as stack:
            device = stack.device(psk_identity=b"nobody")
            with pytest.raises(DelegationFailed, match="does not know identity 'nobody'"):
                await device.connect()

    run(scenario)


def test_revoked_server_certificate_fails_the_delegation(pki: LoadedPKI, tmp_path: Path) -> None:
    """With --ocsp the agent checks the server certificate before asking for a signature."""

    async def scenario() -> None:
        revocations = tmp_path / "revoked.json"
        responder = OCSPResponder(pki.ca_cert, pki.ca_key, revocations)
        http = await responder.serve("127.0.0.1", 0)
        port = http.sockets[0].getsockname()[1]
        try:
            async with running_stack(pki, ocsp_url=f"http://127.0.0.1:{port}") as stack:
                good = await stack.device().connect()  # status good: works
                await good.close()
                revoked = RevocationList.load(revocations)
                revoked.revoke(load_der_x509_certificate(pki.server.chain[0]))
                revoked.save(revocations)
                device = stack.device()
                with pytest.raises(DelegationFailed, match="revoked") as failure:
                    await device.connect()
                assert "server_certificate_revoked" in str(failure.value)
                assert device.config.signer.signatures == 0  # never asked to sign
        finally:
            http.close()
            await http.wait_closed()

    run(scenario)


def test_fifty_devices_delegate_concurrently(pki: LoadedPKI) -> None:
    """The agent serves many devices at once; every delegation succeeds."""

    async def scenario() -> None:
        async with running_stack(pki) as stack:
            devices = [stack.device(timeout=30.0) for _ in range(50)]
            connections = await asyncio.gather(*(d.connect() for d in devices))
            assert len({c.session.session_id for c in connections}) == 50
            for connection in connections:
                assert connection.report.key_operations["sign"] == 1
                await connection.close()
            assert stack.agent.completed == 50
            assert stack.agent.failed == 0

    run(scenario)


def test_agent_answers_garbage_with_a_delegation_error(pki: LoadedPKI) -> None:
    """Malformed input on the channel gives DelegationError MALFORMED, never a crash."""
    session = AgentSession(AgentConfig(psk_keys={}, trust_store=pki.store))
    sent: list[DelegationMessage] = session.outbox
    session.receive_bytes(b"\xff\x00garbage")
    assert session.state == "failed"
    assert len(sent) == 1
    assert sent[0].code is DelegationErrorCode.MALFORMED  # type: ignore[union-attr]


def test_agent_refuses_a_request_without_a_usable_suite(pki: LoadedPKI) -> None:
    session = AgentSession(AgentConfig(psk_keys={}, trust_store=pki.store))
    sent: list[DelegationMessage] = session.outbox
    session.receive(
        DelegationRequest(
            request_id=7,
            server_host="127.0.0.1",
            server_port=4433,
            server_name="localhost",
            cipher_suites=(int(CipherSuite.TLS_PSK_WITH_AES_128_CCM_8),),
            certificate_chain=pki.device.chain,
            mode=DelegationMode.BLIND,
            client_random=None,
        )
    )
    assert session.state == "failed" and not session.needs  # no handshake started
    assert sent[0].code is DelegationErrorCode.UNSUPPORTED  # type: ignore[union-attr]
    assert sent[0].request_id == 7


def test_device_key_log_decrypts_the_resumed_session(pki: LoadedPKI) -> None:
    """SSLKEYLOGFILE lines (NSS format) carry the resumed session's master secret."""
    lines: list[str] = []

    async def scenario() -> None:
        async with running_stack(pki) as stack:
            connection = await stack.device(keylog=lines.append).connect()
            master = bytes(connection.session.master_secret).hex()
            await connection.close()
            assert len(lines) == 1
            label, client_random, secret = lines[0].split()
            assert label == "CLIENT_RANDOM" and len(client_random) == 64
            assert secret == master

    run(scenario)
