"""Scripted RFC scenarios, tlsfuzzer-style: send exactly these messages, expect that answer.

Each :class:`Scenario` is data: the RFC rule it checks (quoted section), a script of
:class:`Hello`, :class:`Send` and :class:`Expect` steps, and nothing else. The vocabulary of
``Send`` is small (see :data:`VOCABULARY`) so that a reader can check a script against the RFC
without reading the runner. ``Expect`` names what MUST NOT appear and which alternatives are
acceptable (``either``); a step that cannot even be reached (the server refused the correct
messages before it) makes the scenario *inconclusive* rather than failed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from d2tls.conformance.probe import (
    ClientCredentials,
    Observation,
    Prober,
    ResumableSession,
    Transport,
    full_handshake,
)
from d2tls.core.dtls.constants import (
    MAX_PLAINTEXT,
    AlertDescription,
    AlertLevel,
    CipherSuite,
    ContentType,
    ExtensionType,
)
from d2tls.core.dtls.record import Record, encode_record

#: What ``Send`` understands (``NAME`` or ``NAME:variant``).
VOCABULARY = {
    "Certificate": "the client's certificate chain",
    "EmptyCertificate": "a Certificate with an empty list",
    "ClientKeyExchange": "an ECDHE key share (derives the next epoch's keys)",
    "CertificateVerify": "a signature over the transcript; :bad signs other data",
    "ChangeCipherSpec": "ChangeCipherSpec; the client then writes the next epoch",
    "Finished": "Finished over the transcript; :bad flips a byte of verify_data",
    "ApplicationData": "data in the current epoch; :epoch0 plaintext in epoch 0, :epoch5 "
    "an unknown epoch, :badmac a corrupted tag, :oversized 2^14+1 bytes of plaintext",
    "ClientHello": "a ClientHello; :renegotiation in the current epoch with the RFC 5746 "
    "renegotiation_info, :forged-cookie with a random cookie",
    "Replay": "the last datagram again, byte for byte",
    "Alert": "a close_notify warning alert",
}

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"


@dataclass(frozen=True)
class Hello:
    """ClientHello (answering a HelloVerifyRequest with the cookie) until ServerHello.

    ``session``: ``None`` (new session), ``"saved"`` (the session of a previous
    :class:`Handshake` in this scenario) or ``"unknown"`` (32 random bytes).
    ``suites``: cipher suites to offer (default: the configured one).
    """

    session: str | None = None
    suites: tuple[CipherSuite, ...] | None = None


@dataclass(frozen=True)
class Handshake:
    """A complete, correct handshake; its session is saved for ``Hello(session="saved")``.
    ``close`` ends the association with close_notify afterwards (to start a new one)."""

    close: bool = False
    suites: tuple[CipherSuite, ...] | None = None


@dataclass(frozen=True)
class Send:
    """Send these messages in one datagram (see :data:`VOCABULARY`)."""

    items: tuple[str, ...]

    def __init__(self, *items: str) -> None:
        object.__setattr__(self, "items", tuple(items))


@dataclass(frozen=True)
class Expect:
    """Receive the answer. Labels in ``never`` MUST NOT appear; at least one of ``either`` must
    hold: a label (``Finished``, ``HelloVerifyRequest``...), ``fatal_alert``, ``silent`` (no
    answer) or ``alive`` (no fatal alert and the association still answers a close_notify or
    echoes data afterwards)."""

    either: tuple[str, ...] = ()
    never: tuple[str, ...] = ()


Step = Hello | Handshake | Send | Expect


@dataclass(frozen=True)
class Scenario:
    """One scripted check of one RFC rule."""

    id: str
    title: str
    rfc: str
    rule: str
    script: tuple[Step, ...]
    level: str = "MUST"


# --------------------------------------------------------------------------- the scripts

CCM8 = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
GCM = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
REFUSED = ("fatal_alert", "silent")

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "out-of-order",
        "ClientKeyExchange before Certificate",
        "RFC 5246 §7.3, §7.4.6",
        "The client's Certificate is the first message after ServerHelloDone; handshake "
        "messages out of the prescribed order are a fatal unexpected_message.",
        (
            Hello(),
            Send(
                "ClientKeyExchange",
                "Certificate",
                "CertificateVerify",
                "ChangeCipherSpec",
                "Finished",
            ),
            Expect(either=REFUSED, never=("Finished",)),
        ),
    ),
    Scenario(
        "skipped-certificate-verify",
        "Certificate without CertificateVerify",
        "RFC 5246 §7.4.8",
        "A client that sent a certificate with signing ability MUST prove possession of its "
        "key with CertificateVerify; without it the handshake must not complete.",
        (
            Hello(),
            Send("Certificate", "ClientKeyExchange", "ChangeCipherSpec", "Finished"),
            Expect(either=REFUSED, never=("Finished",)),
        ),
    ),
    Scenario(
        "skipped-client-key-exchange",
        "Finished without ClientKeyExchange",
        "RFC 5246 §7.4.7, §7.3",
        "ClientKeyExchange is always sent; a ChangeCipherSpec and Finished before it cannot "
        "complete the handshake.",
        (
            Hello(),
            Send("Certificate", "ChangeCipherSpec", "Finished"),
            Expect(either=REFUSED, never=("Finished",)),
        ),
    ),
    Scenario(
        "duplicated-client-hello",
        "ClientHello retransmitted after the server's flight",
        "RFC 6347 §4.2.4",
        "A repeated ClientHello is a retransmission: the server retransmits its flight (or "
        "ignores it) and the handshake then completes normally.",
        (
            Hello(),
            Send("Replay"),
            Expect(never=("Alert(fatal",)),
            Send(
                "Certificate",
                "ClientKeyExchange",
                "CertificateVerify",
                "ChangeCipherSpec",
                "Finished",
            ),
            Expect(either=("Finished",)),
        ),
        level="MUST",
    ),
    Scenario(
        "early-change-cipher-spec",
        "ChangeCipherSpec before ClientKeyExchange",
        "RFC 5246 §7.1, §7.4.9 (CVE-2014-0224)",
        "A ChangeCipherSpec before the keys exist must not switch epochs: the server refuses it "
        "(unexpected_message) or holds it, and the handshake completes only with correct keys.",
        (
            Hello(),
            Send("ChangeCipherSpec"),
            Expect(either=("fatal_alert", "silent")),
            Send(
                "Certificate",
                "ClientKeyExchange",
                "CertificateVerify",
                "ChangeCipherSpec",
                "Finished",
            ),
            Expect(either=("fatal_alert", "silent", "Finished")),
        ),
    ),
    Scenario(
        "ccs-before-hello",
        "ChangeCipherSpec as the first message",
        "RFC 6347 §4.2.1, §4.1.2.7",
        "Before a ClientHello with a valid cookie the server keeps no state; anything else is "
        "discarded, and a normal handshake still works afterwards.",
        (
            Send("ChangeCipherSpec"),
            Expect(either=("silent", "fatal_alert"), never=("ServerHello",)),
            Handshake(),
        ),
    ),
    Scenario(
        "bad-finished",
        "Finished with bad verify_data",
        "RFC 5246 §7.4.9",
        "Recipients of Finished messages MUST verify that the contents are correct; a wrong "
        "verify_data is fatal (decrypt_error, RFC 5246 §7.2.2).",
        (
            Hello(),
            Send(
                "Certificate",
                "ClientKeyExchange",
                "CertificateVerify",
                "ChangeCipherSpec",
                "Finished:bad",
            ),
            Expect(either=REFUSED, never=("Finished",)),
        ),
    ),
    Scenario(
        "application-data-before-finished",
        "ApplicationData in the new epoch before Finished",
        "RFC 5246 §7.4.9, RFC 6347 §4.1.2.7",
        "Application data is not accepted before the handshake completes: it is discarded (or "
        "the association fails), never delivered or echoed.",
        (
            Hello(),
            Send(
                "Certificate",
                "ClientKeyExchange",
                "CertificateVerify",
                "ChangeCipherSpec",
                "ApplicationData",
            ),
            Expect(either=("silent", "fatal_alert"), never=("ApplicationData",)),
        ),
    ),
    Scenario(
        "plaintext-application-data",
        "ApplicationData in epoch 0 after the handshake",
        "RFC 6347 §4.1, §4.1.2.7",
        "Records of an old epoch other than handshake retransmissions are discarded; epoch-0 "
        "data is unauthenticated and must never be delivered.",
        (
            Handshake(),
            Send("ApplicationData:epoch0"),
            Expect(either=("alive", "fatal_alert"), never=("ApplicationData",)),
        ),
    ),
    Scenario(
        "unknown-epoch",
        "ApplicationData in an epoch that does not exist",
        "RFC 6347 §4.1",
        "A record of an epoch the receiver has no keys for is discarded (or fatal).",
        (
            Handshake(),
            Send("ApplicationData:epoch5"),
            Expect(either=("alive", "fatal_alert"), never=("ApplicationData",)),
        ),
    ),
    Scenario(
        "replayed-record",
        "The same application record twice",
        "RFC 6347 §4.1.2.6",
        "Replay detection SHOULD discard a duplicate record: an echo server echoes it once. "
        "Without an echo the delivery is not observable (inconclusive).",
        (
            Handshake(),
            Send("ApplicationData"),
            Expect(either=("ApplicationData",)),
            Send("Replay"),
            Expect(either=("silent", "fatal_alert"), never=("ApplicationData",)),
        ),
        level="SHOULD",
    ),
    Scenario(
        "bad-record-mac",
        "ApplicationData with a corrupted authentication tag",
        "RFC 6347 §4.1.2.7",
        "Invalid records SHOULD be silently discarded; an implementation that alerts instead "
        "MUST send a fatal alert (bad_record_mac).",
        (
            Handshake(),
            Send("ApplicationData:badmac"),
            Expect(either=("alive", "fatal_alert"), never=("ApplicationData",)),
        ),
    ),
    Scenario(
        "oversized-record",
        "A record with 2^14 + 1 bytes of plaintext",
        "RFC 5246 §6.2.1, §6.2.3; RFC 6347 §4.1.2.7",
        "The plaintext of a record MUST NOT exceed 2^14 bytes; such a record is discarded or "
        "fatal (record_overflow), never delivered.",
        (
            Handshake(),
            Send("ApplicationData:oversized"),
            Expect(either=("alive", "fatal_alert"), never=("ApplicationData",)),
        ),
    ),
    Scenario(
        "renegotiation",
        "ClientHello on an established association",
        "RFC 5746 §3.7, §4.4; RFC 5246 §7.4.1.2",
        "A server may refuse renegotiation (no_renegotiation warning, or ignore it); if it "
        "renegotiates, its ServerHello MUST carry renegotiation_info with both verify_data.",
        (
            Handshake(),
            Send("ClientHello:renegotiation"),
            Expect(
                either=(
                    "Alert(warning,no_renegotiation)",
                    "silent",
                    "secure_renegotiation",
                    "fatal_alert",
                ),
                never=("insecure_renegotiation",),
            ),
        ),
    ),
    Scenario(
        "unknown-session-id",
        "Resumption with a session ID the server never issued",
        "RFC 5246 §7.4.1.2, §7.4.1.3",
        "If the session ID is not found the server performs a full handshake with a new "
        "session ID.",
        (
            Hello(session="unknown"),
            Expect(either=("full_handshake",), never=("resumed",)),
        ),
    ),
    Scenario(
        "resumption-changed-suite",
        "Resumption offering only another cipher suite",
        "RFC 5246 §7.4.1.2, §7.4.1.3",
        "A resumed session keeps its cipher suite, which the ClientHello MUST offer; when it "
        "is not offered the server must not resume (full handshake or refusal).",
        (
            Handshake(close=True, suites=(CCM8,)),
            Hello(session="saved", suites=(GCM,)),
            Expect(either=("full_handshake", "fatal_alert", "silent"), never=("resumed",)),
        ),
    ),
    Scenario(
        "empty-certificate",
        "Empty Certificate when a client certificate is required",
        "RFC 5246 §7.4.6",
        "A server that requires client authentication MAY respond with a fatal "
        "handshake_failure to an empty Certificate; it must not complete the handshake.",
        (
            Hello(),
            Send("EmptyCertificate", "ClientKeyExchange", "ChangeCipherSpec", "Finished"),
            Expect(either=REFUSED, never=("Finished",)),
        ),
    ),
    Scenario(
        "bad-certificate-verify",
        "CertificateVerify with a wrong signature",
        "RFC 5246 §7.4.8",
        "The server verifies the CertificateVerify signature over the handshake messages; a "
        "wrong one is fatal (decrypt_error) and the handshake must not complete.",
        (
            Hello(),
            Send(
                "Certificate",
                "ClientKeyExchange",
                "CertificateVerify:bad",
                "ChangeCipherSpec",
                "Finished",
            ),
            Expect(either=REFUSED, never=("Finished",)),
        ),
    ),
    Scenario(
        "forged-cookie",
        "ClientHello with a cookie the server never issued",
        "RFC 6347 §4.2.1",
        "The server MUST NOT commit state for a ClientHello whose cookie it cannot verify: it "
        "answers with a (new) HelloVerifyRequest or drops it, never with ServerHello.",
        (
            Send("ClientHello:forged-cookie"),
            Expect(either=("HelloVerifyRequest", "silent", "fatal_alert"), never=("ServerHello",)),
        ),
    ),
)


# --------------------------------------------------------------------------- running


@dataclass
class ScenarioResult:
    """Outcome of one scenario with what the server actually did."""

    scenario: Scenario
    verdict: str
    observed: list[str] = field(default_factory=list)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        s = self.scenario
        return {
            "id": s.id,
            "title": s.title,
            "rfc": s.rfc,
            "rule": s.rule,
            "level": s.level,
            "script": [_describe(step) for step in s.script],
            "verdict": self.verdict,
            "observed": self.observed,
            "reason": self.reason,
        }


def _describe(step: Step) -> str:
    if isinstance(step, Hello):
        parts = []
        if step.session:
            parts.append(f"session={step.session}")
        if step.suites:
            parts.append("suites=" + ",".join(s.name for s in step.suites))
        return "Hello(" + ", ".join(parts) + ")"
    if isinstance(step, Handshake):
        return "Handshake(close)" if step.close else "Handshake()"
    if isinstance(step, Send):
        return "Send(" + ", ".join(step.items) + ")"
    return (
        f"Expect(either={list(step.either)}, never={list(step.never)})"
        if step.never
        else f"Expect(either={list(step.either)})"
    )


class _Inconclusive(Exception):
    pass


class ScenarioRunner:
    """Runs scenarios against one server; ``reset`` (if given) restarts it between them."""

    def __init__(
        self,
        transport_factory: Callable[[], Transport],
        credentials: ClientCredentials,
        *,
        suite: CipherSuite = CCM8,
        reset: Callable[[], None] | None = None,
        wait: float = 0.4,
    ) -> None:
        self.transport_factory = transport_factory
        self.credentials = credentials
        self.suite = suite
        self.reset = reset
        self.wait = wait

    def run_all(
        self,
        scenarios: Sequence[Scenario] = SCENARIOS,
        progress: Callable[[str], None] | None = None,
    ) -> list[ScenarioResult]:
        results = []
        for scenario in scenarios:
            result = self.run(scenario)
            if progress is not None:
                progress(f"  {scenario.id}: {result.verdict} ({'; '.join(result.observed)})")
            results.append(result)
        return results

    def run(self, scenario: Scenario) -> ScenarioResult:
        if self.reset is not None:
            self.reset()
        state = _RunState(self._prober())
        result = ScenarioResult(scenario, PASS)
        try:
            for step in scenario.script:
                self._step(step, state, result)
                if result.verdict != PASS:
                    break
        except _Inconclusive as exc:
            result.verdict, result.reason = INCONCLUSIVE, str(exc)
        finally:
            self._release(state.prober)
        return result

    def _prober(self) -> Prober:
        return Prober(self.transport_factory(), self.credentials, suite=self.suite, wait=self.wait)

    def _release(self, prober: Prober) -> None:
        """End the association (for servers that serve one client at a time)."""
        prober.send_records([prober.alert_record(AlertLevel.FATAL, AlertDescription.USER_CANCELED)])
        prober.close()

    # ------------------------------------------------------------------ steps
    def _step(self, step: Step, state: _RunState, result: ScenarioResult) -> None:
        prober = state.prober
        if isinstance(step, Handshake):
            if step.close and state.used:
                state.prober = prober = self._prober()
            prober.suite = step.suites[0] if step.suites else self.suite
            answer = full_handshake(prober)
            result.observed.append(f"handshake: {answer.label}")
            if not prober.handshake_complete:
                raise _Inconclusive("the server did not complete a correct handshake")
            state.session = prober.session()
            state.used = True
            if step.close:
                prober.send_records([prober.alert_record()])
                prober.receive()
                state.prober = self._prober()
            return
        if isinstance(step, Hello):
            self._hello(step, state, result)
            return
        if isinstance(step, Send):
            state.unconsumed = None
            state.pending = self._send(step, state)
            return
        self._expect(step, state, result)

    def _hello(self, step: Hello, state: _RunState, result: ScenarioResult) -> None:
        prober = state.prober
        state.used = True
        session: ResumableSession | None = None
        if step.session == "saved":
            session = state.session
            if session is None:
                raise _Inconclusive("no session to resume")
        elif step.session == "unknown":
            session = ResumableSession(os.urandom(32), os.urandom(48), self.suite, True)
        suites = step.suites or (self.suite,)
        answer = Observation()
        for _ in range(3):
            prober.send_client_hello(session=session, suites=suites)
            answer = prober.receive()
            if not answer.has("HelloVerifyRequest"):
                break
        if answer.has("ServerHello") and not prober.resumed and not answer.has("ServerHelloDone"):
            answer.items += prober.receive().items
        result.observed.append(f"hello: {answer.label}")
        state.last = answer
        state.unconsumed = answer
        if not answer.has("ServerHello"):
            if step.session is None:
                raise _Inconclusive(f"no ServerHello for a correct ClientHello ({answer.label})")
            return

    def _send(self, step: Send, state: _RunState) -> list[str]:
        prober = state.prober
        state.used = True
        records: list[bytes] = []
        for item in step.items:
            name, _, variant = item.partition(":")
            if name == "Replay":
                if records:
                    prober.send_records(records)
                records = []
                prober.replay_last()
                continue
            records += self._records(prober, name, variant)
        if records:
            prober.send_records(records)
        return list(step.items)

    def _records(self, prober: Prober, name: str, variant: str) -> list[bytes]:
        if name == "Certificate":
            return prober.handshake_records(prober.certificate())
        if name == "EmptyCertificate":
            return prober.handshake_records(prober.certificate(()))
        if name == "ClientKeyExchange":
            pending = prober.client_key_exchange()
            records = prober.handshake_records(pending.message)
            prober.derive_master(pending.pre_master, pending.known)
            return records
        if name == "CertificateVerify":
            return prober.handshake_records(prober.certificate_verify(bad=variant == "bad"))
        if name == "ChangeCipherSpec":
            return [prober.ccs_record()]
        if name == "Finished":
            return prober.handshake_records(prober.finished(bad=variant == "bad"))
        if name == "Alert":
            return [prober.alert_record()]
        if name == "ClientHello":
            if variant == "forged-cookie":
                return prober.handshake_records(prober.client_hello(cookie=os.urandom(20)))
            if variant == "renegotiation":
                # RFC 5746 §3.5: renegotiation_info carries the client's verify_data.
                hello = prober.client_hello(renegotiation_info=prober.client_verify_data)
                return prober.handshake_records(hello, hash_it=False)
            return prober.handshake_records(prober.client_hello())
        if name == "ApplicationData":
            return [self._application_record(prober, variant)]
        raise ValueError(f"unknown message {name!r} in a scenario script")

    @staticmethod
    def _application_record(prober: Prober, variant: str) -> bytes:
        data = b"d2tls conformance\n"
        if variant == "epoch0":
            return prober.record(ContentType.APPLICATION_DATA, data, epoch=0)
        if variant == "epoch5":
            return prober.record(ContentType.APPLICATION_DATA, data, epoch=5)
        if variant == "oversized":
            data = b"x" * (MAX_PLAINTEXT + 1)
            state = prober.write
            seq = state.next_sequence()
            assert state.protection is not None
            fragment = state.protection.seal(
                ContentType.APPLICATION_DATA, 0xFEFD, state.epoch, seq, b""
            )
            # seal() refuses oversized plaintext; build it with the raw AEAD on purpose.
            aead = state.protection._aead
            explicit = fragment[:8]
            aad = (
                state.epoch.to_bytes(2, "big")
                + seq.to_bytes(6, "big")
                + bytes([ContentType.APPLICATION_DATA])
                + (0xFEFD).to_bytes(2, "big")
                + len(data).to_bytes(2, "big")
            )
            sealed = explicit + aead.encrypt(state.protection._salt + explicit, data, aad)
            return encode_record(
                Record(ContentType.APPLICATION_DATA, 0xFEFD, state.epoch, seq, sealed)
            )
        record = prober.application_data(data)
        if variant == "badmac":
            record = record[:-1] + bytes([record[-1] ^ 0x01])
        return record

    def _expect(self, step: Expect, state: _RunState, result: ScenarioResult) -> None:
        prober = state.prober
        if state.unconsumed is not None:
            answer, state.unconsumed = state.unconsumed, None
            result.observed.pop()  # reported below instead
        else:
            answer = prober.receive()
        if (
            state.pending
            and "Finished" in state.pending
            and answer.has("ChangeCipherSpec")
            and not answer.has("Finished")
        ):
            answer.items += prober.receive().items
        labels = answer.names()
        facts = set(labels)
        facts.update(label.split("(")[0] for label in labels)
        if answer.timeout:
            facts.add("silent")
        fatal = answer.fatal_alert()
        if fatal is not None:
            facts.add("fatal_alert")
        if "Finished" in facts and prober.server_finished_ok is False:
            facts.discard("Finished")
            facts.add("bad_server_finished")
        hello = prober.server_hello
        if hello is not None and answer.has("ServerHello"):
            if prober.resumed:
                facts.add("resumed")
            else:
                facts.add("full_handshake")
            info = hello.extension(ExtensionType.RENEGOTIATION_INFO)
            if prober.handshake_complete and answer.has("ServerHello"):
                expected = prober.client_verify_data + prober.server_verify_data
                if info is not None and info == expected and expected:
                    facts.add("secure_renegotiation")
                else:
                    facts.add("insecure_renegotiation")
        observed = answer.label
        if answer.timeout and answer.retransmitted:
            observed = "retransmitted its last flight"
        if hello is not None and answer.has("ServerHello"):
            suite = prober.cipher_suite.name if prober.cipher_suite else hex(hello.cipher_suite)
            observed += f" [{suite}{', resumed' if prober.resumed else ''}]"
        if "alive" in step.either and fatal is None:
            alive = self._alive(prober)
            observed += f"; then {'alive' if alive else 'no answer to close_notify or data'}"
            if alive:
                facts.add("alive")
        result.observed.append(observed)
        state.last = answer
        forbidden = [n for n in step.never if any(f.startswith(n) for f in facts)]
        if forbidden:
            result.verdict = FAIL
            result.reason = f"the server sent {', '.join(forbidden)} ({answer.label})"
            return
        if step.either and not any(e in facts for e in step.either):
            if state.scenario_needs_echo(step):
                result.verdict = INCONCLUSIVE
                result.reason = "not observable: the server does not echo application data"
                return
            result.verdict = FAIL
            result.reason = f"expected one of {', '.join(step.either)}; got {observed}"

    @staticmethod
    def _alive(prober: Prober) -> bool:
        """Does the association still answer? Data echo first, else close_notify's answer."""
        prober.send_records([prober.application_data(b"alive?\n")])
        if prober.receive().has("ApplicationData"):
            return True
        prober.send_records([prober.alert_record()])
        return not prober.receive().timeout


@dataclass
class _RunState:
    prober: Prober
    session: ResumableSession | None = None
    pending: list[str] = field(default_factory=list)
    last: Observation | None = None
    unconsumed: Observation | None = None
    used: bool = False

    def scenario_needs_echo(self, step: Expect) -> bool:
        return step.either == ("ApplicationData",)


def summarize(results: Sequence[ScenarioResult]) -> dict[str, int]:
    counts = {PASS: 0, FAIL: 0, INCONCLUSIVE: 0}
    for r in results:
        counts[r.verdict] += 1
    return counts


__all__ = [
    "FAIL",
    "INCONCLUSIVE",
    "PASS",
    "SCENARIOS",
    "VOCABULARY",
    "Expect",
    "Handshake",
    "Hello",
    "Scenario",
    "ScenarioResult",
    "ScenarioRunner",
    "Send",
    "summarize",
]
