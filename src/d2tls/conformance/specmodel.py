"""The Mealy machine a DTLS server *should* have over the learning alphabet, derived from
``spec/dtls.yaml``.

The spec's ``dtls_server`` role says which message is acceptable in which state, what each
transition emits and which guards choose between transitions, and its ``record_layer`` rules
say which record each state takes. To compare it with a machine learned over abstract inputs
(see :mod:`.learning`), the spec is interpreted abstractly here:

* **Guard and action outcomes** follow from what the abstract client knows: a ClientHello's
  cookie is valid only when it was issued (HelloVerifyRequest) for that same kind of
  ClientHello; a CertificateVerify or Finished verifies only while both transcripts agree; the
  ClientHello with a session ID resumes the session the learner established beforehand. An
  action that fails sends the fatal alert of its error class (the spec's ``abort``).
* **The record layer** (RFC 6347 §4.1), read from the state's ``record`` rules in the spec:
  a record of the current read epoch is processed if its content type is in ``accept``
  (``epoch0`` in epoch 0); one of the next epoch is kept when ``next_epoch`` is ``buffer``;
  a handshake record of an older epoch only counts as a retransmission (``old_epoch``);
  anything else — a bad MAC, an unknown epoch, a content type the state does not accept — is
  dropped silently (RFC 6347 §4.1.2.7). Handshake messages are processed in message_seq order
  (§4.2.2): once a message was dropped, later ones wait forever for it. A ChangeCipherSpec the
  machine cannot take yet is held when ``early_change_cipher_spec`` is ``hold`` and applied once
  it can (DTLS may reorder it ahead of the handshake messages it follows, RFC 6347 §4.1).
* **The endpoint**: nothing is kept while the machine is in a ``stateless`` state (§4.2.1:
  before the cookie proves the address); after a final state, only a new ClientHello starts a
  new association.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from d2tls.conformance.mealy import Mealy, explore
from d2tls.core.model.spec import RecordRules, RoleSpec, TransitionSpec, load_spec
from d2tls.core.model.states import ServerState

#: The abstract inputs (DTLS-Fuzzer style), in a fixed order.
INPUTS: tuple[str, ...] = (
    "ClientHello",
    "ClientHelloResume",
    "Certificate",
    "EmptyCertificate",
    "ClientKeyExchange",
    "CertificateVerify",
    "ChangeCipherSpec",
    "Finished",
    "ApplicationData",
    "Alert",
)
#: A reduced alphabet that still covers the full and the abbreviated handshake.
SMALL_INPUTS: tuple[str, ...] = (
    "ClientHello",
    "ClientHelloResume",
    "Certificate",
    "ClientKeyExchange",
    "CertificateVerify",
    "ChangeCipherSpec",
    "Finished",
)

#: Spec trigger of each abstract handshake input.
TRIGGER = {
    "ClientHello": "recv_ClientHello",
    "ClientHelloResume": "recv_ClientHello",
    "Certificate": "recv_Certificate",
    "EmptyCertificate": "recv_Certificate",
    "ClientKeyExchange": "recv_ClientKeyExchange",
    "CertificateVerify": "recv_CertificateVerify",
    "Finished": "recv_Finished",
}
HELLOS = ("ClientHello", "ClientHelloResume")
#: The record content type (spec ``accept`` name) of each abstract input.
CONTENT = {
    **dict.fromkeys(TRIGGER, "handshake"),
    "ChangeCipherSpec": "change_cipher_spec",
    "ApplicationData": "application_data",
    "Alert": "alert",
}
#: Output label of each message the spec's ``emits`` name.
EMIT_LABEL = {"CloseNotify": "Alert(warning,close_notify)"}

UNEXPECTED = "Alert(fatal,unexpected_message)"
HANDSHAKE_FAILURE = "Alert(fatal,handshake_failure)"
DECRYPT_ERROR = "Alert(fatal,decrypt_error)"
NO_RENEGOTIATION = "Alert(warning,no_renegotiation)"
MAX_EPOCH = 2  # client epochs 2 and above are all "an epoch the server never reads"


@dataclass(frozen=True)
class Config:
    """One abstract configuration of (server association, abstract client)."""

    state: ServerState | None = None  # spec state of the association; None: no association
    read_epoch: int = 0  # server read epoch
    held_ccs: bool = False
    in_sync: bool = False  # both transcripts agree
    gap: bool = False  # a handshake message was lost: later ones are never processed
    resumed: bool = False
    # abstract client
    cookie: str | None = None  # which ClientHello kind the cookie was issued for
    clean: bool = False  # the client transcript is empty since the last HelloVerifyRequest
    write_epoch: int = 0
    write_keys_good: bool = False  # the client's write keys are the server's read keys
    pending: str | None = None  # client's next-epoch keys: None, "good" or "bad"


@dataclass(frozen=True)
class ServerOptions:
    """How the server under test is configured (what the guards depend on)."""

    client_auth: str = "required"  # "required" | "optional" | "none"
    echo: bool = False
    cookie_exchange: bool = True


class _Abort(Exception):
    def __init__(self, label: str) -> None:
        self.label = label


class SpecModel:
    """The abstract interpretation of the spec's ``dtls_server`` role."""

    def __init__(self, role: RoleSpec, options: ServerOptions) -> None:
        self.role = role
        self.options = options
        #: States in which the server derives its keys from a ClientKeyExchange.
        self.key_exchange_states = frozenset(
            ServerState(t.source)
            for t in role.transitions
            if "process_client_key_exchange" in t.actions
        )

    def _rules(self, config: Config) -> RecordRules:
        assert config.state is not None
        return self.role.states[config.state].rules

    def _gone(self, state: ServerState | None) -> bool:
        """True when the endpoint keeps no association in ``state``: none, a stateless state
        (RFC 6347 §4.2.1) or a final one."""
        return state is None or self.role.states[state].stateless or self.role.states[state].final

    # ------------------------------------------------------------------ guards
    def _guard(self, name: str, config: Config, letter: str) -> bool:
        if name == "cookie_valid":
            return not self.options.cookie_exchange or config.cookie == letter
        if name == "session_resumable":
            return letter == "ClientHelloResume"
        if name in ("psk_suite_chosen", "ecdhe_psk_suite_chosen"):
            return False  # the learner offers one ECDHE_ECDSA suite
        if name == "client_certificate_wanted":
            return self.options.client_auth != "none"
        if name == "client_certificate_present":
            return letter == "Certificate"
        if name == "association_available":
            return True  # the learner is one client address: the table is never full
        if name in ("twinpeaks_hello_mismatch", "client_sent_raw_public_key"):
            return False  # the learner sends neither the TwinPeaks extension nor raw keys
        if name == "resume_without_cookie":
            return False  # the servers under test keep the default (cookie before resuming)
        raise KeyError(f"guard {name} has no abstract meaning")

    def _choose(self, config: Config, trigger: str, letter: str) -> TransitionSpec | None:
        assert config.state is not None
        for t in self.role.transitions:
            if t.trigger != trigger or t.source != config.state:
                continue
            if all(self._guard(g, config, letter) for g in t.guards) and not any(
                self._guard(u, config, letter) for u in t.unless
            ):
                return t
        return None

    # ------------------------------------------------------------------ actions
    def _act(self, action: str, config: Config, letter: str) -> Config:
        """Abstract effect of a spec action; raises _Abort(alert) where the action fails."""
        if action == "process_empty_client_certificate":
            if self.options.client_auth == "required":
                raise _Abort(HANDSHAKE_FAILURE)
        elif action == "verify_certificate_verify" or action == "verify_peer_finished":
            if not config.in_sync:
                raise _Abort(DECRYPT_ERROR)
        elif action == "activate_read_epoch":
            config = replace(config, read_epoch=config.read_epoch + 1)
        elif action == "resume_session":
            config = replace(config, resumed=True)
        return config

    # ------------------------------------------------------------------ one message
    def _handshake(self, config: Config, letter: str, out: list[str]) -> Config:
        """A handshake message reaching the association's machine, in order."""
        trigger = TRIGGER[letter]
        transition = self._choose(config, trigger, letter)
        if transition is None:
            out.append(UNEXPECTED)
            return replace(config, state=ServerState.FAILED)
        return self._fire(config, transition, letter, out)

    def _fire(self, config: Config, t: TransitionSpec, letter: str, out: list[str]) -> Config:
        config = replace(config, state=ServerState(t.dest))
        try:
            for action in t.actions:
                if action == "refuse_renegotiation":
                    out.append(NO_RENEGOTIATION)
                config = self._act(action, config, letter)
        except _Abort as failure:
            out.append(failure.label)
            return replace(config, state=ServerState.FAILED)
        out.extend(EMIT_LABEL.get(m, m) for m in t.emits)
        if config.held_ccs and self._choose(config, "recv_ChangeCipherSpec", "") is not None:
            # connection.py: a held ChangeCipherSpec is applied as soon as it is acceptable.
            config = replace(config, held_ccs=False)
            config = self._ccs(config, out)
        return config

    def _ccs(self, config: Config, out: list[str]) -> Config:
        transition = self._choose(config, "recv_ChangeCipherSpec", "")
        if transition is None:
            if self._rules(config).early_change_cipher_spec == "hold":
                return replace(config, held_ccs=True)  # RFC 6347 §4.1: may be reordered
            out.append(UNEXPECTED)
            return replace(config, state=ServerState.FAILED)
        # No record of the next epoch can be waiting here: the client switches epochs only
        # after its own ChangeCipherSpec, which is this one (or one held, see _fire).
        return self._fire(config, transition, "ChangeCipherSpec", out)

    def _record(
        self, config: Config, letter: str, epoch: int, decryptable: bool, out: list[str]
    ) -> Config:
        """One client record reaching the association (RFC 6347 §4.1 record processing)."""
        handshake = letter in TRIGGER
        rules = self._rules(config)
        if epoch == config.read_epoch:
            if epoch > 0 and not decryptable:
                return replace(config, gap=config.gap or handshake)  # bad MAC: dropped
            if not rules.accepts(CONTENT[letter], epoch):
                return replace(config, gap=config.gap or handshake)  # not accepted: dropped
            if handshake:
                if config.gap:
                    return config  # waits forever for the lost message_seq (§4.2.2)
                return self._handshake(config, letter, out)
            if letter == "ChangeCipherSpec":
                return self._ccs(config, out)
            if letter == "Alert":  # close_notify (RFC 5246 §7.2.1): answered, association closed
                transition = self._choose(config, "peer_closed", "")
                assert transition is not None
                return self._fire(config, transition, letter, out)
            if letter == "ApplicationData":
                if self.options.echo:
                    out.append("ApplicationData")
                return config
        if epoch == config.read_epoch + 1 and rules.next_epoch == "buffer":
            # Buffered until the server's read epoch advances (RFC 6347 §4.1). It never does:
            # that takes a ChangeCipherSpec of the current epoch, and the client has left it.
            return config
        return replace(config, gap=config.gap or handshake)  # old or unknown epoch: dropped

    # ------------------------------------------------------------------ the step
    def step(self, config: Config, letter: str) -> tuple[Config, str]:
        out: list[str] = []
        before = config.state
        epoch = config.write_epoch
        decryptable = epoch == 0 or config.write_keys_good
        # The endpoint: no association (or a finished one) -> only an epoch-0 ClientHello counts.
        if self._gone(config.state):
            config = replace(
                config,
                state=None,
                read_epoch=0,
                held_ccs=False,
                gap=False,
                resumed=False,
            )
            if letter in HELLOS and epoch == 0:
                config = self._new_association(config, letter, out)
        else:
            config = self._record(config, letter, epoch, decryptable, out)
        config = self._client_after(config, letter, out, before)
        return config, "+".join(out) if out else "TIMEOUT"

    def _new_association(self, config: Config, letter: str, out: list[str]) -> Config:
        candidate = replace(config, state=ServerState(self.role.initial), in_sync=config.clean)
        result = self._handshake(candidate, letter, out)
        if self._gone(result.state):
            return replace(result, state=None)  # stateless answer (RFC 6347 §4.2.1)
        return result

    def _client_after(
        self, config: Config, letter: str, out: list[str], before: ServerState | None
    ) -> Config:
        """What the abstract client learns or changes after sending ``letter``."""
        if letter in TRIGGER:
            config = replace(config, clean=False)
        if letter == "ClientKeyExchange":
            # The server derived its keys from this very message, over the same transcript.
            good = (
                before in self.key_exchange_states
                and config.in_sync
                and not config.gap
                and config.write_epoch == 0
                and not any(o.startswith("Alert(fatal") for o in out)
            )
            config = replace(config, pending="good" if good else "bad")
        if letter == "ChangeCipherSpec" and config.pending is not None:
            config = replace(
                config,
                write_epoch=min(config.write_epoch + 1, MAX_EPOCH),
                write_keys_good=config.pending == "good" and config.write_epoch == 0,
                pending=None,
            )
        if "HelloVerifyRequest" in out:
            config = replace(config, cookie=letter, clean=True)
        if out and out[0] == "ServerHello" and config.resumed:
            config = replace(config, pending="good")
        elif out and out[0] == "ServerHello":
            config = replace(config, pending=None)
        return config


def spec_machine(inputs: tuple[str, ...] = INPUTS, options: ServerOptions | None = None) -> Mealy:
    """The minimal Mealy machine the spec prescribes over ``inputs``."""
    model = SpecModel(load_spec().role("dtls_server"), options or ServerOptions())

    def name(config: Config) -> str:
        return config.state or "no association"

    return explore(inputs, Config(), model.step, name=name)
