"""A TwinPeaks member: registration with its parent key server and key updates (sans-IO).

Section 2.4.2 of the dissertation (spec/twinpeaks.md §8.2, §8.6): a member (a named host, or
the member half of a TLK/SLK key server) draws a secret value, sends its (ID, U) to its parent
over a DTLS-PSK association bound to its name, receives the partial private key (X, d), checks
``[sk]G = X + [λ]P_pub`` and sets its private key. A key update (section 2.4.3) does the same
with a fresh secret value and the serial of the key it replaces. The ``member`` machine of
``spec/twinpeaks.yaml`` drives it.

The association is this project's DTLS 1.2 engine (:class:`~d2tls.core.dtls.client.DTLSClient`, the
PSK suite TLS_PSK_WITH_AES_128_CCM_8 of RFC 6655), owned as a child engine: a host drives a
:class:`Member` with the five calls of :mod:`d2tls.core.sansio` and the member forwards them to its
DTLS client. Every message travels in one DTLS record (one application-data write).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from d2tls.core.clock import Clock, wall_time
from d2tls.core.dtls.client import DTLSClient
from d2tls.core.dtls.config import ClientConfig, TimerConfig
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.dtls.events import ApplicationDataReceived, ConnectionTerminated, HandshakeCompleted
from d2tls.core.errors import TwinPeaksError, UnexpectedMessage
from d2tls.core.model.machine import Handlers, SpecMachine, expecting, ignoring
from d2tls.core.model.spec import load_spec
from d2tls.core.model.states import TwinPeaksMemberState
from d2tls.core.randomness import SYSTEM, Randomness
from d2tls.core.sansio import Address, Datagram
from d2tls.core.twinpeaks import clpkc
from d2tls.core.twinpeaks.clpkc import FullPrivateKey, Params
from d2tls.core.twinpeaks.errors import RegistrationFailed
from d2tls.core.twinpeaks.identity import normalize_name, parse_address
from d2tls.core.twinpeaks.messages import (
    KeyUpdate,
    RegistrationRequest,
    RegistrationResponse,
    Status,
    StatusCode,
    UpdateReason,
    decode_message,
    new_request_id,
)

#: What the member machine's handlers receive: the parent's answer, or None (local event).
Payload: TypeAlias = RegistrationResponse | Status | None

PSK_SUITE: Final = CipherSuite.TLS_PSK_WITH_AES_128_CCM_8
#: Seconds between two sends of a registration or update request, and how many sends.
RETRANSMIT_INTERVAL: Final = 1.0
MAX_SENDS: Final = 4


@dataclass(frozen=True)
class ParentLink:
    """How a member reaches its parent key server (its KGC): the parent's key-service address,
    its params (``h(params)`` goes into the member's ID) and the PSK of the association, whose
    identity the parent has bound to the member's name (§8.2)."""

    address: Address
    params: Params
    psk_identity: bytes
    psk: bytes = field(repr=False)


@dataclass
class MemberConfig:
    """A member: its name and address, its parent, and for a key server (the member half of
    a TLK/SLK server) its own params and key-service port (§8.1, child key server)."""

    name: str
    address: str
    parent: ParentLink
    zone_params: Params | None = None
    port: int | None = None
    wall_clock: Clock = wall_time
    #: Secret values, request IDs and the DTLS engine's randoms; a seeded one only in tests.
    randomness: Randomness = SYSTEM
    timers: TimerConfig = field(default_factory=TimerConfig)

    def __post_init__(self) -> None:
        self.name = normalize_name(self.name)
        self.address = str(parse_address(self.address))


# --------------------------------------------------------------------------- events
@dataclass(frozen=True)
class Registered:
    """The member holds a checked key: after its registration, or after a key update."""

    key: FullPrivateKey
    serial: int
    not_before: int
    not_after: int
    update: bool


@dataclass(frozen=True)
class RegistrationError:
    """Registration or key update failed (``final``: the member can no longer register;
    otherwise an update was refused and the previous key stays in force)."""

    error: RegistrationFailed
    final: bool


MemberEvent: TypeAlias = Registered | RegistrationError


class Member:
    """The ``member`` role of spec/twinpeaks.yaml (see the module docstring).

    Use: ``start(now)``, then the five :mod:`d2tls.core.sansio` calls; :attr:`key` is the current
    key once a :class:`Registered` event came out; ``update_key(now, reason, address=...)``
    replaces it (section 2.4.3 of the dissertation)."""

    ROLE = "member"

    def __init__(self, config: MemberConfig) -> None:
        self.config = config
        self.key: FullPrivateKey | None = None
        self.serial: int | None = None
        self._address = config.address
        self._events: deque[MemberEvent] = deque()
        self._dtls: DTLSClient | None = None
        self._secret: clpkc.SecretValue | None = None
        self._request: RegistrationRequest | KeyUpdate | None = None
        self._request_bytes = b""
        self._sends = 0
        self._deadline: float | None = None
        self._reason = UpdateReason.ROLLOVER
        self._failure = ""
        self._now = 0.0
        self._table = self._handlers()
        self._driver: SpecMachine[TwinPeaksMemberState, Payload] = SpecMachine(
            load_spec("twinpeaks").role(self.ROLE), TwinPeaksMemberState, self._table
        )

    @property
    def state(self) -> TwinPeaksMemberState:
        """The current state (``spec/twinpeaks.yaml``, role ``member``)."""
        return self._driver.state

    # ------------------------------------------------------------------ inputs
    def start(self, now: float) -> None:
        """Open the association with the parent and register."""
        self._now = now
        self._driver.fire_local("start", None)

    def update_key(
        self, now: float, reason: UpdateReason = UpdateReason.ROLLOVER, address: str | None = None
    ) -> None:
        """Replace the key (dissertation 2.4.3): a fresh secret value, with ``address`` as
        the new address when it changed. Only while registered."""
        if self.state != TwinPeaksMemberState.REGISTERED:
            raise RegistrationFailed(f"a key update needs a registered member (state {self.state})")
        self._now = now
        self._reason = UpdateReason(reason)
        if address is not None:
            self._address = str(parse_address(address))
        self._driver.fire_local("update_key", None)

    def stop(self, now: float) -> None:
        self._now = now
        if not self._driver.is_final():
            self._driver.fire_local("stop", None)

    @property
    def address(self) -> str:
        """The address in the member's current (or requested) ID."""
        return self._address

    # ------------------------------------------------------------------ sans-IO
    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """A datagram from the parent (anything else is dropped). Never raises."""
        self._now = now
        if self._dtls is None or addr != self.config.parent.address:
            return
        self._dtls.receive_datagram(bytes(data), addr, now)
        self._pump_dtls()

    def datagrams_to_send(self, now: float) -> list[Datagram]:
        self._now = now
        if self._dtls is None:
            return []
        return self._dtls.datagrams_to_send(now)

    def next_timer(self) -> float | None:
        timers = [t for t in (self._deadline, self._dtls and self._dtls.next_timer()) if t]
        return min(timers) if timers else None

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self._dtls is not None:
            self._dtls.handle_timer(now)
            self._pump_dtls()
        if self._deadline is not None and now >= self._deadline and not self._driver.is_final():
            self._deadline = None
            self._fire("retransmit" if self._sends < MAX_SENDS else "timeout")

    def next_event(self) -> MemberEvent | None:
        return self._events.popleft() if self._events else None

    # ------------------------------------------------------------------ plumbing
    def _pump_dtls(self) -> None:
        assert self._dtls is not None
        while (event := self._dtls.next_event()) is not None:
            if (
                isinstance(event, HandshakeCompleted)
                and self.state == TwinPeaksMemberState.CONNECTING
            ):
                self._fire("channel_up")
            elif isinstance(event, ApplicationDataReceived):
                self._receive_message(event.data)
            elif isinstance(event, ConnectionTerminated) and not self._driver.is_final():
                self._failure = f"association with the parent ended: {event.reason}"
                self._fire("channel_failed")

    def _receive_message(self, data: bytes) -> None:
        try:
            message = decode_message(data)
        except TwinPeaksError:
            return  # authenticated channel, but still not trusted to be well-formed
        if not isinstance(message, RegistrationResponse | Status):
            return
        if self._request is None or message.request_id != self._request.request_id:
            return  # §8.1: not the outstanding request
        kind = "RegistrationResponse" if isinstance(message, RegistrationResponse) else "Status"
        try:
            self._driver.fire(f"recv_{kind}", message)
        except UnexpectedMessage:
            return

    def _fire(self, trigger: str) -> None:
        if self._driver.accepts(trigger):
            self._driver.fire_local(trigger, None)

    def _send(self) -> None:
        assert self._dtls is not None
        self._dtls.send_application_data(self._request_bytes)
        self._sends += 1
        self._deadline = self._now + RETRANSMIT_INTERVAL * (2 ** (self._sends - 1))

    def _identity_params(self) -> Params:
        return self.config.parent.params

    # ------------------------------------------------------------------ the spec's handlers
    def _handlers(self) -> Handlers[Payload]:
        return Handlers(
            guards={
                "partial_key_valid": self._partial_key_valid,
            },
            actions={
                "open_channel": ignoring(self._open_channel),
                "draw_secret_value": ignoring(self._draw_secret_value),
                "set_private_key": expecting(RegistrationResponse, self._set_private_key),
                "report_bad_partial_key": ignoring(self._report_bad_partial_key),
                "report_refusal": expecting(Status, self._report_refusal),
                "resend_request": ignoring(self._resend_request),
                "report_timeout": ignoring(self._report_timeout),
                "report_channel_failure": ignoring(self._report_channel_failure),
                "close_channel": ignoring(self._close_channel),
            },
            builders={
                "RegistrationRequest": self._build_registration_request,
                "KeyUpdate": self._build_key_update,
            },
            hold=self._hold,
            emit=self._emit_flight,
        )

    def _hold(self, messages: tuple[str, ...]) -> None:
        raise TwinPeaksError(f"member: nothing is built ahead of a flight ({messages})")

    # ------------------------------------------------------------------ actions and guards
    def _open_channel(self) -> None:
        link = self.config.parent
        randomness = self.config.randomness
        self._dtls = DTLSClient(
            ClientConfig(
                cipher_suites=(PSK_SUITE,),
                psk_identity=link.psk_identity,
                psk=link.psk,
                timers=self.config.timers,
                wall_clock=self.config.wall_clock,
                randomness=randomness,
            ),
            remote=link.address,
        )
        self._dtls.connect(self._now)

    def _draw_secret_value(self) -> None:
        params = self._identity_params()
        identity = params.identity(self.config.name, self._address)
        self._secret = clpkc.set_secret_value(params, identity, self.config.randomness.random_bytes)

    def _emit_flight(self, messages: tuple[str, ...]) -> None:
        for name in messages:
            self._table.builders[name]()

    def _build_registration_request(self) -> None:
        assert self._secret is not None
        rid = new_request_id(self.config.randomness.random_bytes)
        self._request = RegistrationRequest.for_secret(
            rid, self._secret, self.config.zone_params, self.config.port
        )
        self._request_bytes = self._request.encode()
        self._sends = 0
        self._send()

    def _build_key_update(self) -> None:
        assert self._secret is not None and self.serial is not None
        rid = new_request_id(self.config.randomness.random_bytes)
        self._request = KeyUpdate(
            rid,
            self._secret.identity,
            self._secret.u,
            self.serial,
            self._reason,
            self.config.zone_params,
            self.config.port,
        )
        self._request_bytes = self._request.encode()
        self._sends = 0
        self._send()

    def _resend_request(self) -> None:
        self._send()

    def _partial_key_valid(self, message: Payload) -> bool:
        """Set-Private-Key's check (spec §4.3): the partial key fits our ID, U and params."""
        if not isinstance(message, RegistrationResponse) or self._secret is None:
            return False
        try:
            clpkc.set_private_key(
                self._identity_params(), self._secret, message.partial_private_key()
            )
        except TwinPeaksError as exc:
            self._failure = f"the partial private key does not check: {exc}"
            return False
        return True

    def _set_private_key(self, message: RegistrationResponse) -> None:
        assert self._secret is not None
        update = self.key is not None
        self.key = clpkc.set_private_key(
            self._identity_params(), self._secret, message.partial_private_key()
        )
        self.serial = message.serial
        self._secret = None
        self._deadline = None
        self._events.append(
            Registered(self.key, message.serial, message.not_before, message.not_after, update)
        )

    def _report_bad_partial_key(self) -> None:
        self._deadline = None
        self._report(self._failure or "the parent's answer is not a partial key", final=True)

    def _report_refusal(self, message: Status) -> None:
        self._deadline = None
        if self.key is not None:  # a refused update: back to the old key and address
            self._address = self.key.identity.address.compressed
        detail = f": {message.detail}" if message.detail else ""
        self._report(
            f"the parent refused ({StatusCode(message.code).name.lower()}{detail})",
            final=self.key is None,
        )

    def _report_timeout(self) -> None:
        if self.key is not None:
            self._address = self.key.identity.address.compressed
        self._report(f"no answer from the parent after {MAX_SENDS} sends", final=self.key is None)

    def _report_channel_failure(self) -> None:
        self._deadline = None
        self._report(self._failure or "no association with the parent", final=True)

    def _close_channel(self) -> None:
        self._deadline = None
        if self._dtls is not None:
            self._dtls.close()

    def _report(self, text: str, final: bool) -> None:
        error = RegistrationFailed(f"{self.config.name}: {text}")
        self._events.append(RegistrationError(error, final))


__all__ = [
    "MAX_SENDS",
    "Member",
    "MemberConfig",
    "MemberEvent",
    "ParentLink",
    "Registered",
    "RegistrationError",
]
