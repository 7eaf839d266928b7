"""A sans-IO "D2TLS world": device, security agent and cloud server on the simulator.

The roles are the very objects the real hosts run: :class:`~d2tls.core.roles.device.DeviceProtocol`
and :class:`~d2tls.core.roles.agent.AgentProtocol`, each at one address of a
:class:`~d2tls.sim.Network` (the agent's handshakes with servers on child addresses of their
own, as separate sockets would be). This module only adds what an application does around
them: a :class:`DeviceApp` that starts attempts, retries and records what happened, the
agent's answers to OCSP questions, and a cloud server that echoes.

- the device<->agent channel is a ``DTLSClient``/``DTLSServer`` pair with
  TLS_PSK_WITH_AES_128_CCM_8, carrying one CBOR delegation message per record;
- the agent's connection to the server is a ``DTLSClient`` with an external signer
  (``SignatureRequested`` -> SignRequest -> SignResponse -> ``provide_signature``);
- the device resumes with a resume-only ``DTLSClient``.

Timeouts (device waiting for the agent, agent waiting for the server) are the roles' own
timers on the virtual clock, so a whole delegation under loss runs in milliseconds and
reproducibly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography import x509

from d2tls.adversary.credentials import (
    OTHER_SERVER_NAME,
    SERVER_NAME,
    Credentials,
    credentials,
)
from d2tls.adversary.observer import Observer
from d2tls.core.delegation.messages import DelegationMessage, DelegationMode
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientAuth, ServerConfig, TimerConfig
from d2tls.core.dtls.events import ApplicationDataReceived, Event, HandshakeCompleted
from d2tls.core.dtls.server import DTLSServer
from d2tls.core.dtls.session import Session
from d2tls.core.roles.agent import (
    AgentConfig,
    AgentEvent,
    AgentProtocol,
    AgentSession,
    SessionFactory,
    StatusCheckRequested,
)
from d2tls.core.roles.device import (
    AttemptFailed,
    Connected,
    DataReceived,
    DeviceConfig,
    DeviceEvent,
    DeviceProtocol,
    MessageSent,
    ResumptionFailed,
)
from d2tls.core.roles.signer import DeviceSigner
from d2tls.sim import Address, Impairments, InterceptRule, Network

#: Fictitious addresses from the documentation ranges (RFC 5737); never used on a socket.
SERVER: Address = ("203.0.113.10", 4433)
OTHER_SERVER: Address = ("203.0.113.20", 4433)
AGENT: Address = ("198.51.100.1", 5684)
DEVICE: Address = ("198.51.100.7", 40000)
DEVICE_HOST = DEVICE[0]
AGENT_HOST = AGENT[0]


class ServerApp:
    """The cloud server: an unmodified DTLS server that records (and optionally echoes) data."""

    def __init__(
        self, net: Network, config: ServerConfig, address: Address, *, echo: bool = False
    ) -> None:
        self.net = net
        self.engine = DTLSServer(config)
        self.address = address
        self.echo = echo
        net.add(self.engine, address, self._on_event)
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


class DeviceApp:
    """The application on a simulated device: a :class:`DeviceProtocol` at one address,
    attempts started (and retried) on the virtual clock, and a record of what happened."""

    def __init__(
        self,
        net: Network,
        config: DeviceConfig,
        *,
        address: Address = DEVICE,
        first_request_id: int = 1,
        context: Session | None = None,
    ) -> None:
        self.net = net
        self.config = config
        self.address = address
        self.protocol = DeviceProtocol(config, context=context, first_request_id=first_request_id)
        net.add(self.protocol, address, self._on_event)
        self.received: list[bytes] = []
        #: (state, error) of every attempt that ended.
        self.outcomes: list[tuple[str, str | None]] = []
        self.sent_messages: list[DelegationMessage] = []
        #: Why each refused resumption ended.
        self.resumption_failures: list[str] = []
        self._retry: Callable[[], None] | None = None

    # ------------------------------------------------------------------ attempts
    def start(self) -> None:
        """Start one attempt (``Device.connect``)."""
        self.protocol.connect(self.net.now)
        self.net.flush()

    def keep_trying(self, max_attempts: int, pause: float = 1.0) -> None:
        """Start again after each failed attempt (an application retrying ``connect``)."""

        def retry() -> None:
            if self.protocol.attempts < max_attempts:
                self.net.call_at(self.net.now + pause, self.start)

        self._retry = retry
        self.start()

    def _on_event(self, event: DeviceEvent) -> None:
        if isinstance(event, MessageSent):
            self.sent_messages.append(event.message)
        elif isinstance(event, DataReceived):
            self.received.append(event.data)
        elif isinstance(event, ResumptionFailed):
            self.resumption_failures.append(event.reason)
        elif isinstance(event, Connected | AttemptFailed):
            attempt = self.protocol.attempt
            self.outcomes.append((self.protocol.state, attempt.error if attempt else None))
            if isinstance(event, AttemptFailed) and self._retry is not None:
                self._retry()

    # ------------------------------------------------------------------ views
    @property
    def attempts(self) -> int:
        return self.protocol.attempts

    @property
    def context(self) -> Session | None:
        return self.protocol.context

    @context.setter
    def context(self, value: Session | None) -> None:
        self.protocol.context = value

    @property
    def connection(self) -> DTLSClient | None:
        return self.protocol.connection

    @property
    def connection_address(self) -> Address | None:
        """Where the device's end-to-end connection comes from (its child endpoint)."""
        key = self.protocol.key_of(self.protocol.connection)
        return self.net.child_address(self.address, key) if key is not None else None

    @property
    def state(self) -> str:
        return self.protocol.state

    @property
    def connected(self) -> bool:
        return self.protocol.connected

    @property
    def finished(self) -> bool:
        """The current attempt ended (connected, or failed with no retry left)."""
        return self.protocol.finished

    def send(self, data: bytes) -> None:
        """Application data to the server over the resumed connection."""
        self.protocol.send(data)
        self.net.flush()


class AgentApp:
    """The agent's host in the simulator: an :class:`AgentProtocol` at one address whose
    OCSP questions ``status`` answers after 5 ms of virtual time (default: good)."""

    def __init__(
        self,
        net: Network,
        config: AgentConfig,
        *,
        address: Address = AGENT,
        session_factory: SessionFactory = AgentSession,
        status: Callable[[x509.Certificate], tuple[bool, str]] | None = None,
    ) -> None:
        self.net = net
        self.config = config
        self.address = address
        self.status = status
        self.protocol = AgentProtocol(config, session_factory=session_factory, keep_history=True)
        net.add(self.protocol, address, self._on_event)

    @property
    def history(self) -> list[AgentSession]:
        return self.protocol.history

    def _on_event(self, event: AgentEvent) -> None:
        if isinstance(event, StatusCheckRequested):

            def answer() -> None:
                status = self.status
                good, reason = status(event.certificate) if status is not None else (True, "good")
                self.protocol.status_checked(event.ticket, good, reason, self.net.now)

            self.net.call_at(self.net.now + 0.005, answer)


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
        self.net = Network(
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
        self.agent = AgentApp(
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
        self.device = DeviceApp(self.net, self.device_config())

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
    "AgentApp",
    "D2TLSWorld",
    "DeviceApp",
    "ServerApp",
    "WorldOptions",
]
