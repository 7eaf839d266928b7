"""The compromised security agent (DESIGN.md §3, spec/delegation.md "Security considerations").

A :class:`RogueSession` is an :class:`~d2tls.core.roles.agent.AgentSession` whose entire state leaks
to the adversary at a chosen point (before signing, after signing, after the handover without
wiping, after wiping) and which may then misbehave as a :class:`Plan` says. :func:`run_case`
plays one :class:`Case` in a :class:`~d2tls.adversary.world.D2TLSWorld` (real device, real
server, real DTLS engines) and reports what it *observed*: the attack was prevented, detected
(by whom, with the reason that party gave) or succeeded. Tests compare the observation with
the outcome the design claims; :mod:`d2tls.adversary.report` turns it into a table.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from d2tls.adversary.credentials import OTHER_SERVER_NAME
from d2tls.adversary.forge import (
    datagram,
    derive_keys,
    highest_sequence,
    observed_hellos,
    seal,
    write_keys,
)
from d2tls.adversary.world import (
    AGENT_HOST,
    OTHER_SERVER,
    SERVER,
    D2TLSWorld,
    ServerApp,
    WorldOptions,
)
from d2tls.core.delegation.messages import (
    DelegationMode,
    DelegationRequest,
    SessionContext,
    SignRequest,
    SignResponse,
)
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientConfig
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.dtls.events import Event, SignatureRequested
from d2tls.core.dtls.record import AEADProtection, Record, parse_datagram
from d2tls.core.dtls.session import MemorySessionStore, Session
from d2tls.core.errors import D2TLSError
from d2tls.core.model.states import ClientState, DeviceState
from d2tls.core.roles.agent import AgentConfig, AgentSession
from d2tls.sim import Address


class Leak(StrEnum):
    """When the agent's whole state reaches the adversary."""

    BEFORE_SIGNING = "before signing"
    AFTER_SIGNING = "after signing"
    AFTER_HANDOVER = "after handover, not wiped"
    AFTER_WIPING = "after wiping"
    #: The agent is the adversary's from the start (its own state matters less than its acts).
    FROM_START = "from the start"


class Verdict(StrEnum):
    PREVENTED = "prevented"
    DETECTED = "detected"
    SUCCEEDS = "succeeds"


@dataclass
class Plan:
    """What the rogue agent does (all off: an honest agent whose state leaks)."""

    leak: Leak = Leak.FROM_START
    wipe: bool = True
    keep_connection: bool = False
    extra_signature: str = ""  # "same request" | "unknown request"
    prestarted: bool = False  # sign a handshake begun before the device asked (paper §5)
    context: str = ""  # "wrong master secret" | "unknown session id" | "no ems" | "made up"
    other_server: bool = False


@dataclass
class Loot:
    """Everything the adversary learnt from the agent."""

    master_secrets: list[bytes] = field(default_factory=list)
    session_id: bytes = b""
    signatures: list[bytes] = field(default_factory=list)
    client: DTLSClient | None = None
    prestarted: DTLSClient | None = None
    prestarted_request: SignatureRequested | None = None
    made_up: Session | None = None
    old_context: SessionContext | None = None

    def take(self, session: AgentSession) -> None:
        """Copy the agent's whole state (its session, its engine's working secrets)."""
        self.client = session.client
        for source in (session.session, session.client.session if session.client else None):
            if source is not None and any(source.master_secret):
                self.master_secrets.append(bytes(source.master_secret))
                self.session_id = source.session_id
        if session.client is not None and any(session.client._master):
            self.master_secrets.append(bytes(session.client._master))


class RogueSession(AgentSession):
    """An agent session that leaks at ``plan.leak`` and misbehaves as ``plan`` says."""

    plan: Plan
    loot: Loot

    def _leak_at(self, point: Leak) -> None:
        if self.plan.leak is point:
            self.loot.take(self)

    def _start_server_handshake(self, request: DelegationRequest) -> None:
        if self.plan.other_server:
            request = replace(
                request,
                server_host=OTHER_SERVER[0],
                server_port=OTHER_SERVER[1],
                server_name=OTHER_SERVER_NAME,
            )
        super()._start_server_handshake(request)

    def _build_sign_request(self) -> None:
        self._leak_at(Leak.BEFORE_SIGNING)
        asked = self.loot.prestarted_request
        if self.plan.prestarted and asked is not None and self.request is not None:
            transcript = asked.transcript if self.request.mode is DelegationMode.BOUND else None
            self._send(SignRequest(self.request.request_id, asked.digest, transcript))
            return
        super()._build_sign_request()

    def _provide_signature(self, response: SignResponse) -> None:
        super()._provide_signature(response)
        signature = self._pending_signature
        assert signature is not None and self.request is not None
        self.loot.signatures.append(signature)
        if self.plan.prestarted and self.loot.prestarted is not None:
            self._pending_signature = None  # the signature goes to the other handshake
            self._prestarted_signature = signature
        self._leak_at(Leak.AFTER_SIGNING)
        if self.plan.extra_signature and self._signature_request is not None:
            rid = self.request.request_id + (self.plan.extra_signature == "unknown request")
            asked = self._signature_request
            self._send(SignRequest(rid, asked.digest, asked.transcript))

    def _close_server_connection(self) -> None:
        if self.plan.keep_connection and self.client is not None:
            self.session = self.client.session  # hand it over, but keep the connection open
            return
        super()._close_server_connection()

    def _build_session_context(self) -> None:
        kind, session = self.plan.context, self.session
        if not kind or session is None or self.request is None:
            super()._build_session_context()
        else:
            master = bytes(session.master_secret)
            session_id = session.session_id
            ems = session.extended_master_secret
            if kind == "wrong master secret":
                master = os.urandom(48)
            elif kind == "unknown session id":
                session_id = os.urandom(32)
            elif kind == "no ems":
                ems = False
            elif kind == "made up":
                master, session_id = os.urandom(48), os.urandom(32)
                self.loot.made_up = Session(
                    session_id=session_id,
                    master_secret=bytearray(master),
                    cipher_suite=session.cipher_suite,
                    extended_master_secret=ems,
                    server_name=self.request.server_name,
                    peer_certificates=self.request.certificate_chain,
                )
            context = SessionContext(
                request_id=self.request.request_id,
                session_id=session_id,
                master_secret=master,
                cipher_suite=int(session.cipher_suite),
                extended_master_secret=ems,
                server_certificates=tuple(session.peer_certificates),
                lifetime=self.config.context_lifetime,
                ocsp_status=0,
            )
            if kind == "previous request":  # the first delegation's context, replayed later
                if self.loot.old_context is None:
                    self.loot.old_context = context
                else:
                    context = self.loot.old_context
            self._send(context)
        self._leak_at(Leak.AFTER_HANDOVER)

    def _wipe_context(self) -> None:
        if self.plan.wipe:
            super()._wipe_context()
        self._leak_at(Leak.AFTER_WIPING)


def rogue_factory(plan: Plan, loot: Loot, rogue_sessions: int = 1) -> Callable[..., AgentSession]:
    """The first ``rogue_sessions`` delegations are rogue; later ones honest (recovery)."""
    made = [0]

    def make(config: AgentConfig, identity: bytes | None, used: set[int]) -> AgentSession:
        made[0] += 1
        if made[0] > rogue_sessions:
            return AgentSession(config, identity, used)
        session = RogueSession(config, identity, used)
        session.plan, session.loot = plan, loot
        return session

    return make


@dataclass(frozen=True)
class Case:
    """One row of the outcome table."""

    id: str
    attack: str
    plan: Plan
    then: str = ""  # "inject known seq" | "inject guessed seq" | "send on kept connection"
    mode: DelegationMode = DelegationMode.BOUND
    lemmas: tuple[str, ...] = ()
    rogue_sessions: int = 1
    #: How the lemmas relate to the row when that is not obvious from their verdicts.
    lemma_note: str = ""


@dataclass(frozen=True)
class Outcome:
    """What one case did, as observed."""

    case: Case
    verdict: Verdict
    by: str
    how: str


CASES: tuple[Case, ...] = (
    Case(
        "inject-before-signing",
        "inject into the device's resumed connection (sequence numbers seen on the path)",
        Plan(leak=Leak.BEFORE_SIGNING),
        "inject known seq",
        lemmas=("resumed_key_secrecy",),
        lemma_note="its hypothesis excludes agent compromise; this row shows why",
    ),
    Case(
        "inject-after-signing",
        "inject into the device's resumed connection (sequence numbers seen on the path)",
        Plan(leak=Leak.AFTER_SIGNING),
        "inject known seq",
        lemmas=("resumed_key_secrecy",),
        lemma_note="its hypothesis excludes agent compromise; this row shows why",
    ),
    Case(
        "inject-after-handover",
        "inject into the device's resumed connection (sequence numbers seen on the path)",
        Plan(leak=Leak.AFTER_HANDOVER, wipe=False),
        "inject known seq",
        lemmas=(
            "resumed_key_secrecy_compromise_after_handover",
            "injective_agreement_resumed_compromised_agent",
        ),
    ),
    Case(
        "inject-guessed-seq",
        "inject into the resumed connection without knowing its sequence numbers",
        Plan(leak=Leak.AFTER_HANDOVER, wipe=False),
        "inject guessed seq",
        lemmas=("resumed_key_secrecy_compromise_after_handover",),
    ),
    Case(
        "inject-after-wiping",
        "inject into the device's resumed connection",
        Plan(leak=Leak.AFTER_WIPING),
        "inject known seq",
        lemmas=(
            "resumed_key_secrecy_wipe_before_compromise",
            "resumed_key_secrecy_received_and_wiped_ecdhe_psk",
        ),
        lemma_note="this agent recorded no channel traffic; one that did reads the context "
        "of a plain-PSK channel, so only the ECDHE-PSK channel keeps the wipe meaningful",
    ),
    Case(
        "keep-server-connection",
        "keep its own server connection open and send data as the device",
        Plan(leak=Leak.AFTER_HANDOVER, keep_connection=True),
        "send on kept connection",
        lemmas=("injective_agreement_full_bound",),
        lemma_note="agreement covers the handshake, not who uses its keys afterwards",
    ),
    Case(
        "second-signature",
        "ask the device for a second signature for the same request",
        Plan(leak=Leak.AFTER_SIGNING, extra_signature="same request"),
        lemmas=("one_signature_per_request",),
    ),
    Case(
        "signature-unknown-request",
        "ask the device to sign for a request it never sent",
        Plan(leak=Leak.AFTER_SIGNING, extra_signature="unknown request"),
        lemmas=("one_signature_per_request",),
    ),
    Case(
        "prestarted-bound",
        "have the device sign a handshake the agent began before the request (bound mode)",
        Plan(leak=Leak.BEFORE_SIGNING, prestarted=True),
        lemmas=("injective_agreement_full_bound",),
    ),
    Case(
        "prestarted-blind",
        "have the device sign a handshake the agent began before the request (blind mode)",
        Plan(leak=Leak.BEFORE_SIGNING, prestarted=True),
        mode=DelegationMode.BLIND,
        lemmas=("injective_agreement_full_blind", "injective_agreement_full_blind_honest_agent"),
    ),
    Case(
        "wrong-master-secret",
        "hand the device a context with a wrong master secret",
        Plan(context="wrong master secret"),
        lemmas=(),
    ),
    Case(
        "stale-session-id",
        "hand the device a stale context (a session ID the server does not resume)",
        Plan(context="unknown session id"),
        lemmas=(),
    ),
    Case(
        "context-without-ems",
        "hand the device a context without the extended master secret",
        Plan(context="no ems"),
        lemmas=(),
    ),
    Case(
        "replayed-context",
        "hand the device the context of its previous request again (a stale context)",
        Plan(context="previous request"),
        rogue_sessions=2,
    ),
    Case(
        "made-up-context",
        "hand the device a made-up context and answer its resumption as the server (on path)",
        Plan(context="made up"),
        lemmas=("server_authentication_compromised_agent", "server_authentication_resumed"),
    ),
    Case(
        "other-server",
        "run the handshake with a different server than the device asked for",
        Plan(other_server=True),
        lemmas=("injective_agreement_full_bound",),
        lemma_note="the server that accepts is the one the request named",
    ),
    Case(
        "other-server-blind",
        "run the handshake with a different server than the device asked for",
        Plan(other_server=True),
        mode=DelegationMode.BLIND,
        lemmas=("same_server_blind",),
        lemma_note="a blind device cannot see which server it signs for",
    ),
)

FORGED = b"forged by the compromised agent"


def _world(case: Case, loot: Loot) -> D2TLSWorld:
    return D2TLSWorld(
        WorldOptions(
            mode=case.mode,
            session_factory=rogue_factory(case.plan, loot, case.rogue_sessions),
            other_server=True,
            observe=False,
            device_timeout=10.0,
            agent_handshake_timeout=10.0,
        )
    )


def _prestart(world: D2TLSWorld, loot: Loot) -> None:
    """A handshake with the server as the device, begun before any request (its own random)."""
    creds = world.creds
    client = DTLSClient(
        ClientConfig(
            cipher_suites=(CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8,),
            trust_store=creds.store,
            server_name=world.device.config.server_name,
            certificate_chain=creds.device.chain,
            private_key=None,
        )
    )

    def on_event(event: Event) -> None:
        if isinstance(event, SignatureRequested):
            loot.prestarted_request = event

    loot.prestarted = client
    client.remote = SERVER
    world.net.add(client, (AGENT_HOST, 59999), on_event)
    client.connect(world.net.now)
    world.run(lambda: loot.prestarted_request is not None, max_time=10.0)


def _install_rogue_server(world: D2TLSWorld, loot: Loot) -> ServerApp:
    """The agent, on the path, answers at the server's address with its made-up session."""
    assert loot.made_up is not None
    store = MemorySessionStore()
    store.put(loot.made_up)
    config = replace(world.server_config(world.creds.mallory.chain, world.creds))
    config = replace(config, private_key=world.creds.mallory.key, session_store=store)
    world.net.remove(SERVER)
    return ServerApp(world.net, config, SERVER)


def _keys_for(
    world: D2TLSWorld, loot: Loot
) -> tuple[AEADProtection, AEADProtection, Address] | None:
    """Resumed-connection keys from leaked master secrets and the public randoms."""
    device = world.device
    address = device.connection_address
    if address is None:
        return None
    hellos = observed_hellos(world.net, address, SERVER)
    if hellos is None:
        return None
    probe = _first_record(world, address, SERVER, epoch=1)
    for master in loot.master_secrets:
        try:
            client_w, server_w = derive_keys(
                master, hellos.client_random, hellos.server_random, CipherSuite(hellos.cipher_suite)
            )
        except (ValueError, D2TLSError):
            continue
        if probe is not None:
            try:
                client_w.open(probe)
            except D2TLSError:
                continue
        return client_w, server_w, address
    return None


def _first_record(world: D2TLSWorld, source: Address, dest: Address, epoch: int) -> Record | None:
    for sent in world.net.datagrams(source, dest):
        for record in parse_datagram(sent.data)[0]:
            if record.epoch == epoch:
                return record
    return None


def _resumption_error(world: D2TLSWorld) -> str:
    failures = world.device.resumption_failures
    return f"resumption failed: {failures[0]}" if failures else "resumption refused"


def _device_error(world: D2TLSWorld) -> str:
    errors = [error for state, error in world.device.outcomes if error]
    return errors[0] if errors else ""


def run_case(case: Case) -> Outcome:
    """Play ``case`` and report what was observed."""
    loot = Loot()
    world = _world(case, loot)
    if case.plan.prestarted:
        _prestart(world, loot)
    signed_before = world.signer.signatures
    if case.plan.context == "made up":
        world.device.start()
        world.run(lambda: loot.made_up is not None, max_time=world.net.now + 30)
        rogue = _install_rogue_server(world, loot)
        world.run(lambda: world.device.finished, max_time=world.net.now + 60)
        if world.device.connected:
            world.device.send(b"secret reading for the server")
            world.net.advance(1.0)
        resumed = [e for e in rogue.completed() if e.resumed]
        if resumed and rogue.received and not world.server.completed()[1:]:
            return Outcome(
                case,
                Verdict.SUCCEEDS,
                "nobody",
                "the device resumed a session with the agent and sent it data; "
                "the real server took no part",
            )
        return Outcome(case, Verdict.DETECTED, "device", _device_error(world))
    if case.plan.context == "previous request":
        world.connect_device(max_time=120)
        world.device.context = None  # the application needs a new session
        signed_before = world.signer.signatures
    world.connect_device(max_time=120)
    if case.plan.prestarted and world.signer.signatures > signed_before:
        return _prestarted_outcome(world, case, loot)
    if world.device.state == DeviceState.FAILED:
        return _failed_delegation(world, case, loot, signed_before)
    # ------------------------------------------------ the device connected
    if case.plan.other_server:
        other = world.other_server
        assert other is not None
        if other.completed() and world.device.protocol is not None:
            delegations = world.device.protocol.delegations
            return Outcome(
                case,
                Verdict.SUCCEEDS,
                "device (afterwards)",
                f"{OTHER_SERVER_NAME} accepted the device's signature; the resumption at the "
                f"requested server was refused and the device delegated again "
                f"({delegations} delegations)",
            )
    if case.then == "send on kept connection":
        return _kept_connection(world, case, loot)
    if case.then.startswith("inject"):
        return _inject(world, case, loot)
    if case.plan.context and world.device.protocol is not None:
        delegations = world.device.protocol.delegations
        return Outcome(
            case,
            Verdict.DETECTED,
            "device",
            f"{_device_error(world) or _resumption_error(world)}; delegated again "
            f"({delegations} delegations)",
        )
    signatures = world.signer.signatures - signed_before
    return Outcome(
        case,
        Verdict.SUCCEEDS,
        "nobody",
        f"the delegation completed normally ({signatures} signatures)",
    )


def _failed_delegation(world: D2TLSWorld, case: Case, loot: Loot, signed_before: int) -> Outcome:
    signatures = world.signer.signatures - signed_before
    error = _device_error(world)
    if error.startswith("signing refused") or case.plan.extra_signature:
        world.net.advance(1.0)  # the device's DelegationError reaches the agent
        told = _agent_told(world)
        return Outcome(
            case,
            Verdict.PREVENTED,
            "device",
            f"{error} ({signatures} signature for the request)" + (f"; {told}" if told else ""),
        )
    return Outcome(case, Verdict.DETECTED, "device", error)


def _agent_told(world: D2TLSWorld) -> str:
    """Whether the agent heard the device's refusal (a DelegationError SIGNING_REFUSED)."""
    for session in world.agent.history:
        if session.error.startswith("device: signing_refused"):
            return "the agent was told (DelegationError signing_refused)"
    return ""


def _prestarted_outcome(world: D2TLSWorld, case: Case, loot: Loot) -> Outcome:
    client = loot.prestarted
    assert client is not None
    signature = getattr(next(iter(world.agent.history), None), "_prestarted_signature", None)
    if signature is not None and client.state == ClientState.WAIT_SIGNATURE:
        client.provide_signature(signature, world.net.now)
        world.net.flush()
        world.net.advance(2.0)
    if client.is_established:
        client.send_application_data(FORGED)
        world.net.advance(1.0)
        if any(data == FORGED for _, data in world.server.received):
            return Outcome(
                case,
                Verdict.SUCCEEDS,
                "nobody",
                "the server accepted, as the device, a handshake begun before the request",
            )
    return Outcome(case, Verdict.PREVENTED, "device", _device_error(world))


def _kept_connection(world: D2TLSWorld, case: Case, loot: Loot) -> Outcome:
    session = next(iter(world.agent.history), None)
    client = session.client if session is not None else None
    if client is None or not client.is_established:
        return Outcome(case, Verdict.PREVENTED, "agent", "the agent's connection was closed")
    client.send_application_data(FORGED)
    world.net.advance(1.0)
    if any(data == FORGED for _, data in world.server.received):
        return Outcome(
            case,
            Verdict.SUCCEEDS,
            "nobody",
            "the server delivered the agent's data on the device-authenticated full session",
        )
    return Outcome(case, Verdict.PREVENTED, "server", "the server dropped the data")


def _inject(world: D2TLSWorld, case: Case, loot: Loot) -> Outcome:
    device = world.device
    device.send(b"honest data from the device")
    world.net.advance(1.0)
    keys = _keys_for(world, loot)
    address = device.connection_address
    assert address is not None
    if keys is None:
        # no master secret: the leaked keys of the agent's own (full) connection instead
        if loot.client is not None:
            own = write_keys(loot.client)
            for seq in (0, highest_sequence(world.net, address, SERVER, 1) + 1, 1 << 40):
                record = seal(own.protection, 1, seq, FORGED)
                world.net.inject(address, SERVER, datagram(record))
        world.net.advance(1.0)
        delivered = any(data == FORGED for _, data in world.server.received)
        return Outcome(
            case,
            Verdict.SUCCEEDS if delivered else Verdict.PREVENTED,
            "server" if not delivered else "nobody",
            "no master secret in the leaked state: forged records fail authentication "
            "(RFC 6347 §4.1.2.1) and are dropped",
        )
    client_w, server_w, _ = keys
    if case.then == "inject guessed seq":
        seq_up, seq_down = 1 << 40, 1 << 40
    else:
        seq_up = highest_sequence(world.net, address, SERVER, 1) + 1
        seq_down = highest_sequence(world.net, SERVER, address, 1) + 1
    world.net.inject(address, SERVER, datagram(seal(client_w, 1, seq_up, FORGED)))
    world.net.inject(SERVER, address, datagram(seal(server_w, 1, seq_down, FORGED)))
    world.net.advance(1.0)
    to_server = (address, FORGED) in world.server.received
    to_device = FORGED in device.received
    how = (
        f"keys derived from the leaked master secret and the public randoms (RFC 5246 §6.3); "
        f"forged record delivered to the server: {to_server}, to the device: {to_device}"
    )
    if case.then == "inject guessed seq":
        honest = b"honest data after the forgery"
        device.send(honest)
        world.net.advance(1.0)
        how += (
            "; the device's next record is then outside the server's window: delivered "
            f"{(address, honest) in world.server.received}"
        )
    verdict = Verdict.SUCCEEDS if to_server or to_device else Verdict.PREVENTED
    return Outcome(case, verdict, "nobody" if verdict is Verdict.SUCCEEDS else "server", how)


__all__ = [
    "CASES",
    "Case",
    "Leak",
    "Loot",
    "Outcome",
    "Plan",
    "RogueSession",
    "Verdict",
    "run_case",
]
