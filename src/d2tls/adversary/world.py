"""A sans-IO "D2TLS world": device, security agent and cloud server on an adversary network.

The roles' own sans-IO machines do the protocol work: :class:`~d2tls.roles.device.DeviceProtocol`
for the device and :class:`~d2tls.roles.agent.AgentSession` for the agent. This module only
replaces their asyncio runners (``Device`` and ``Agent``) by drivers that connect the same DTLS
engines through an :class:`~d2tls.adversary.network.AdversaryNetwork`:

- the device<->agent channel is a ``DTLSClient``/``DTLSServer`` pair with
  TLS_PSK_WITH_AES_128_CCM_8, carrying one CBOR delegation message per record;
- the agent's connection to the server is a ``DTLSClient`` with an external signer
  (``SignatureRequested`` -> SignRequest -> SignResponse -> ``provide_signature``);
- the device resumes with a resume-only ``DTLSClient``.

Each engine gets its own (fictitious, documentation-range) address and port, as real sockets
would. Timeouts (device waiting for the agent, agent waiting for the server) are virtual-clock
timers, so a whole delegation under loss runs in milliseconds and reproducibly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509

from d2tls.adversary.credentials import (
    OTHER_SERVER_NAME,
    SERVER_NAME,
    Credentials,
    credentials,
)
from d2tls.adversary.network import (
    Address,
    AdversaryNetwork,
    InterceptRule,
    ServerNode,
    TimerHandle,
)
from d2tls.adversary.observer import Observer
from d2tls.delegation.messages import (
    DelegationMessage,
    DelegationMode,
    DelegationRequest,
    encode_message,
)
from d2tls.dtls.client import DTLSClient
from d2tls.dtls.config import ClientAuth, ClientConfig, ServerConfig, TimerConfig
from d2tls.dtls.constants import CipherSuite
from d2tls.dtls.events import (
    ApplicationDataReceived,
    ConnectionTerminated,
    Event,
    HandshakeCompleted,
)
from d2tls.dtls.server import DTLSServer
from d2tls.dtls.session import Session
from d2tls.model.states import AgentState, ClientState, DeviceState
from d2tls.roles.agent import AgentConfig, AgentSession
from d2tls.roles.device import CHANNEL_MTU, DeviceConfig, DeviceProtocol
from d2tls.roles.signer import DeviceSigner
from d2tls.sim import Impairments

#: Fictitious addresses from the documentation ranges (RFC 5737); never used on a socket.
SERVER: Address = ("203.0.113.10", 4433)
OTHER_SERVER: Address = ("203.0.113.20", 4433)
AGENT: Address = ("198.51.100.1", 5684)
DEVICE_HOST = "198.51.100.7"
AGENT_HOST = "198.51.100.1"

#: Device states in which it waits for the agent (its channel timer runs).
_CHANNEL_STATES = (
    DeviceState.CONNECTING_AGENT,
    DeviceState.AWAITING_SIGN_REQUEST,
    DeviceState.AWAITING_CONTEXT,
    DeviceState.AWAITING_WIPE,
)

SessionFactory = Callable[
    [
        AgentConfig,
        Callable[[DelegationMessage], None],
        Callable[[DelegationRequest, DTLSClient], None],
        Callable[[x509.Certificate, AgentSession], None],
    ],
    AgentSession,
]


class ServerApp:
    """The cloud server: an unmodified DTLS server that records (and optionally echoes) data."""

    def __init__(
        self, net: AdversaryNetwork, config: ServerConfig, address: Address, *, echo: bool = False
    ) -> None:
        self.net = net
        self.engine = DTLSServer(config)
        self.address = address
        self.echo = echo
        self.node: ServerNode = net.add_server(self.engine, address, self._on_event)
        self.events: list[Event] = []
        self.received: list[tuple[Address, bytes]] = []

    def _on_event(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, ApplicationDataReceived) and event.peer is not None:
            self.received.append((event.peer, event.data))
            if self.echo:
                conn = self.engine.connection(event.peer)
                if conn is not None and conn.is_established:
                    conn.send_application_data(event.data)

    def completed(self) -> list[HandshakeCompleted]:
        return [e for e in self.events if isinstance(e, HandshakeCompleted)]


class DeviceDriver:
    """Runs :class:`DeviceProtocol` attempts over the network (the sans-IO ``Device``)."""

    def __init__(
        self,
        net: AdversaryNetwork,
        config: DeviceConfig,
        *,
        host: str = DEVICE_HOST,
        first_request_id: int = 1,
        context: Session | None = None,
    ) -> None:
        self.net = net
        self.config = config
        self.host = host
        self.context = context
        self.protocol: DeviceProtocol | None = None
        self.channel: DTLSClient | None = None
        self.connection: DTLSClient | None = None
        self.connection_address: Address | None = None
        self.received: list[bytes] = []
        self.attempts = 0
        self.outcomes: list[tuple[str, str | None]] = []
        self.sent_messages: list[DelegationMessage] = []
        #: Why each refused resumption ended (the resumption engine's reason).
        self.resumption_failures: list[str] = []
        self._ports = itertools.count(40000)
        self._next_request_id = first_request_id
        self._deadline: TimerHandle | None = None
        self._retry: Callable[[], None] | None = None

    # ------------------------------------------------------------------ attempts
    def start(self) -> None:
        """Start one attempt (``Device.connect``)."""
        self.attempts += 1
        self.protocol = DeviceProtocol(self.config, self.context, self._next_request_id)
        self.protocol.start()
        self._pump()

    def keep_trying(self, max_attempts: int, pause: float = 1.0) -> None:
        """Start again after each failed attempt (an application retrying ``connect``)."""

        def retry() -> None:
            if self.attempts < max_attempts:
                self.net.call_at(self.net.now + pause, self.start)

        self._retry = retry
        self.start()

    @property
    def state(self) -> str:
        return self.protocol.state if self.protocol is not None else "idle"

    @property
    def connected(self) -> bool:
        return self.state == DeviceState.CONNECTED

    @property
    def finished(self) -> bool:
        """The current attempt ended (connected, or failed with no retry left)."""
        p = self.protocol
        return p is not None and (p.state == DeviceState.CONNECTED or p.is_final)

    # ------------------------------------------------------------------ protocol plumbing
    def _pump(self) -> None:
        p = self.protocol
        assert p is not None
        while p.outbox or p.commands:
            outbox, p.outbox = p.outbox, []
            for message in outbox:
                self.sent_messages.append(message)
                if self.channel is not None and self.channel.is_established:
                    self.channel.send_application_data(encode_message(message))
            while p.commands:
                command = p.commands.popleft()
                if command == "open_channel":
                    self._open_channel()
                elif command == "close_channel":
                    self._close_channel()
                elif command == "start_resumption":
                    self._start_resumption()
                elif command == "close_connection" and self.connection is not None:
                    self.connection.close()
        self._next_request_id = p._next_request_id
        self._arm_timer()
        if p.state == DeviceState.CONNECTED or p.is_final:
            self.context = p.context
            self.outcomes.append((p.state, p.error))
            if p.is_final and self._retry is not None:
                self._retry()

    def _arm_timer(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        p = self.protocol
        if p is not None and not p.is_final and p.state in (*_CHANNEL_STATES, DeviceState.RESUMING):
            self._deadline = self.net.call_at(self.net.now + self.config.timeout, self._timed_out)

    def _timed_out(self) -> None:
        p = self.protocol
        if p is None or p.is_final:
            return
        if p.state in _CHANNEL_STATES:
            p.channel_failed("agent channel: timed out")
        elif p.state == DeviceState.RESUMING:
            self.resumption_failures.append("timed out (no record of the server authenticated)")
            if self.connection is not None:
                self.connection.close()
            p.resumption_refused()
        self._pump()

    def _address(self) -> Address:
        return (self.host, next(self._ports))

    def _open_channel(self) -> None:
        engine = DTLSClient(
            ClientConfig(
                cipher_suites=(CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,),
                psk_identity=self.config.psk_identity,
                psk=self.config.psk,
                mtu=CHANNEL_MTU,
                timers=self.config.timers,
                require_extended_master_secret=True,
            )
        )
        self.channel = engine
        self.net.add_client(engine, self._address(), self.config.agent, self._channel_event(engine))
        engine.connect(self.net.now)

    def _close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def _start_resumption(self) -> None:
        p = self.protocol
        assert p is not None and p.context is not None
        context = p.context
        engine = DTLSClient(
            ClientConfig(
                cipher_suites=(context.cipher_suite,),
                server_name=self.config.server_name,
                session=context,
                resume_only=True,
                require_extended_master_secret=self.config.require_extended_master_secret,
                mtu=self.config.mtu,
                timers=self.config.timers,
            )
        )
        self.connection = engine
        self.connection_address = self._address()
        self.net.add_client(
            engine, self.connection_address, self.config.server, self._connection_event(engine)
        )
        engine.connect(self.net.now)

    def _channel_event(self, engine: DTLSClient) -> Callable[[Event], None]:
        def handle(event: Event) -> None:
            p = self.protocol
            if p is None or p.is_final or engine is not self.channel:
                return
            if isinstance(event, HandshakeCompleted) and p.state == DeviceState.CONNECTING_AGENT:
                p.channel_up()
            elif isinstance(event, ApplicationDataReceived):
                p.receive_bytes(event.data)
            elif isinstance(event, ConnectionTerminated) and p.state in _CHANNEL_STATES:
                self.channel = None
                p.channel_failed(f"agent channel: {event.reason}")
            else:
                return
            self._pump()

        return handle

    def _connection_event(self, engine: DTLSClient) -> Callable[[Event], None]:
        def handle(event: Event) -> None:
            p = self.protocol
            if isinstance(event, ApplicationDataReceived):
                self.received.append(event.data)
                return
            if p is None or engine is not self.connection or p.state != DeviceState.RESUMING:
                return
            if isinstance(event, HandshakeCompleted):
                p.resumed()
            elif isinstance(event, ConnectionTerminated):
                self.resumption_failures.append(event.reason)
                p.resumption_refused()
            else:
                return
            self._pump()

        return handle

    def send(self, data: bytes) -> None:
        """Application data to the server over the resumed connection."""
        assert self.connection is not None
        self.connection.send_application_data(data)
        self.net.flush()


class AgentDriver:
    """Serves delegations with :class:`AgentSession` machines (the sans-IO ``Agent``)."""

    def __init__(
        self,
        net: AdversaryNetwork,
        config: AgentConfig,
        *,
        address: Address = AGENT,
        session_factory: SessionFactory = AgentSession,
        status: Callable[[x509.Certificate], tuple[bool, str]] | None = None,
    ) -> None:
        self.net = net
        self.config = config
        self.address = address
        self.session_factory = session_factory
        self.status = status
        self.engine = DTLSServer(
            ServerConfig(
                cipher_suites=(CipherSuite.TLS_PSK_WITH_AES_128_CCM_8,),
                psk_keys=dict(config.psk_keys),
                mtu=CHANNEL_MTU,
                timers=config.timers or TimerConfig(),
            )
        )
        net.add_server(self.engine, address, self._on_channel_event)
        self.sessions: dict[Address, AgentSession] = {}
        self.history: list[AgentSession] = []
        self.client_addresses: dict[int, Address] = {}
        self.completed = 0
        self.failed = 0
        self._counted: set[int] = set()
        self._ports = itertools.count(50000)

    def _on_channel_event(self, event: Event) -> None:
        peer = event.peer
        if peer is None:
            return
        if isinstance(event, ApplicationDataReceived):
            session = self.sessions.get(peer)
            if session is None or session.is_final:
                session = self._new_session(peer)
            session.receive_bytes(event.data)
            self._after(session)
        elif isinstance(event, ConnectionTerminated):
            old = self.sessions.pop(peer, None)
            if old is not None and not old.is_final:
                old.channel_closed()
                self._after(old)

    def send_to(self, peer: Address, message: DelegationMessage) -> bool:
        """Send a delegation message on the channel with ``peer`` (if it is up)."""
        connection = self.engine.connection(peer)
        if connection is None or not connection.is_established:
            return False
        connection.send_application_data(encode_message(message))
        return True

    def _new_session(self, peer: Address) -> AgentSession:
        def send(message: DelegationMessage) -> None:
            self.send_to(peer, message)

        def start_handshake(request: DelegationRequest, client: DTLSClient) -> None:
            self._start_handshake(session, request, client)

        def check_status(certificate: x509.Certificate, owner: AgentSession) -> None:
            def answer() -> None:
                good, reason = (
                    self.status(certificate) if self.status is not None else (True, "good")
                )
                owner.status_result(good, reason)
                self._after(owner)

            self.net.call_at(self.net.now + 0.005, answer)

        session = self.session_factory(self.config, send, start_handshake, check_status)
        self.sessions[peer] = session
        self.history.append(session)
        return session

    def _start_handshake(
        self, session: AgentSession, request: DelegationRequest, client: DTLSClient
    ) -> None:
        address = (AGENT_HOST, next(self._ports))
        self.client_addresses[id(session)] = address
        remote = (request.server_host, request.server_port)
        done = [False]

        def forward(event: Event) -> None:
            if isinstance(event, HandshakeCompleted | ConnectionTerminated):
                done[0] = True
            session.on_engine_event(event)
            self._after(session)

        def timed_out() -> None:
            if not done[0] and not session.is_final:
                session.handshake_timed_out()
                self._after(session)

        self.net.add_client(client, address, remote, forward)
        client.connect(self.net.now)
        self.net.call_at(self.net.now + self.config.handshake_timeout, timed_out)

    def _after(self, session: AgentSession) -> None:
        signature = session.take_signature()
        client = session.client
        waiting = client is not None and client.state == ClientState.WAIT_SIGNATURE
        if signature is not None and client is not None and waiting:
            client.provide_signature(signature, self.net.now)
        if session.is_final and id(session) not in self._counted:
            self._counted.add(id(session))
            if session.state == AgentState.DONE:
                self.completed += 1
            else:
                self.failed += 1


@dataclass
class WorldOptions:
    mode: DelegationMode = DelegationMode.BOUND
    seed: int = 0
    impairments: Impairments | None = None
    intercept: InterceptRule | bool = False
    timers: TimerConfig = field(default_factory=TimerConfig)
    device_timeout: float = 30.0
    agent_handshake_timeout: float = 30.0
    session_factory: SessionFactory = AgentSession
    other_server: bool = False
    echo: bool = True
    observe: bool = True


class D2TLSWorld:
    """Device + agent + server (+ optionally a second server) on one adversary network."""

    def __init__(self, options: WorldOptions | None = None, creds: Credentials | None = None):
        self.options = options = options or WorldOptions()
        self.creds = creds = creds or credentials()
        self.net = AdversaryNetwork(
            seed=options.seed, impairments=options.impairments, intercept=options.intercept
        )
        self.observer = Observer(self.net) if options.observe else None
        self.server = ServerApp(
            self.net, self.server_config(creds.server.chain, creds), SERVER, echo=options.echo
        )
        self.other_server: ServerApp | None = None
        if options.other_server:
            self.other_server = ServerApp(
                self.net,
                self.server_config(creds.other_server.chain, creds, other=True),
                OTHER_SERVER,
                echo=options.echo,
            )
        self.agent = AgentDriver(
            self.net,
            AgentConfig(
                psk_keys={creds.psk_identity: creds.psk},
                trust_store=creds.store,
                timers=options.timers,
                handshake_timeout=options.agent_handshake_timeout,
            ),
            session_factory=options.session_factory,
        )
        self.signer = DeviceSigner(creds.device.key)
        self.device = DeviceDriver(self.net, self.device_config())

    def server_config(
        self, chain: tuple[bytes, ...], creds: Credentials, *, other: bool = False
    ) -> ServerConfig:
        identity = creds.other_server if other else creds.server
        return ServerConfig(
            certificate_chain=chain,
            private_key=identity.key,
            trust_store=creds.store,
            client_auth=ClientAuth.REQUIRED,
            timers=self.options.timers,
        )

    def device_config(self, **overrides: object) -> DeviceConfig:
        creds = self.creds
        config = DeviceConfig(
            agent=AGENT,
            psk_identity=creds.psk_identity,
            psk=creds.psk,
            server=SERVER,
            server_name=SERVER_NAME,
            certificate_chain=creds.device.chain,
            signer=self.signer,
            mode=self.options.mode,
            timers=self.options.timers,
            timeout=self.options.device_timeout,
        )
        for name, value in overrides.items():
            setattr(config, name, value)
        return config

    def run(self, until: Callable[[], bool] | None = None, max_time: float = 3600.0) -> bool:
        return self.net.run(until, max_time=max_time)

    def connect_device(self, max_time: float = 3600.0) -> str:
        """One device attempt, run until it is connected or failed; returns the state."""
        self.device.start()
        self.run(lambda: self.device.finished, max_time=self.net.now + max_time)
        return self.device.state


__all__ = [
    "AGENT",
    "OTHER_SERVER",
    "OTHER_SERVER_NAME",
    "SERVER",
    "SERVER_NAME",
    "AgentDriver",
    "D2TLSWorld",
    "DeviceDriver",
    "ServerApp",
    "WorldOptions",
]
