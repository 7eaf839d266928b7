"""D2TLS readiness: can this DTLS 1.2 server serve delegating devices?

A D2TLS device never runs the certificate handshake itself: its security agent does, with
the device's certificate and a CertificateVerify the device signs (D2TLS paper §4), then the
device resumes that session by session ID from its own address. A server is *ready* when it

* accepts the D2TLS cipher suite (TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8, RFC 7251), and reports
  the others (GCM, RFC 5289; PSK with CCM-8, RFC 6655);
* requests, requires and verifies a client certificate (RFC 5246 §7.4.4, §7.4.6, §7.4.8);
* resumes a client-authenticated session by session ID (RFC 5246 §7.4.1.2), also from a
  different client port (the device is not the agent; RFC 6347 §4.2.8 keys associations by
  address, sessions are not);
* negotiates the extended master secret and keeps RFC 7627 §5.3 when resuming;
* uses the cookie exchange (RFC 6347 §4.2.1) and reassembles fragmented handshake messages
  from a small-MTU client (RFC 6347 §4.2.3);
* completes the real D2TLS flow: an in-process :class:`~d2tls.core.roles.agent.Agent` and
  :class:`~d2tls.core.roles.device.Device` (echo checked when the server echoes).

Every check is a handful of correct (or deliberately wrong) messages sent by a
:class:`~.probe.Prober`; each result says what the server did. The probes behave like a real
client, so that a server serving one association at a time is judged fairly: ClientHello
flights are retransmitted on RFC 6347 §4.2.4 timers (1 s, doubling, bounded), every
association a check completes is closed with close_notify (RFC 5246 §7.2.1; nothing is sent
after the server ended one), and the suite waits a settle delay between checks. A check whose
ClientHello is never answered is *inconclusive* ("server busy"), never "refused".
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import Store

from d2tls.conformance.probe import (
    DEFAULT_TIMER,
    ClientCredentials,
    Observation,
    Prober,
    ResumableSession,
    RetransmissionTimer,
    Transport,
    full_handshake,
)
from d2tls.core.dtls.constants import CipherSuite
from d2tls.core.pki.generate import create_ca, issue_certificate

Address = tuple[str, int]
#: A transport to the server under test from client ``port`` (None: a fresh one).
TransportFactory = Callable[[int | None], Transport]

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"
#: No verdict could be reached: the server never answered the check's ClientHello.
INCONCLUSIVE = "inconclusive"

CCM8 = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8
GCM = CipherSuite.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
PSK_CCM8 = CipherSuite.TLS_PSK_WITH_AES_128_CCM_8
ECHO_PROBE = b"d2tls conformance echo\n"


@dataclass
class Check:
    """One readiness check; ``required`` checks decide the verdict."""

    id: str
    title: str
    rfc: str
    status: str = SKIP
    detail: str = ""
    required: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "rfc": self.rfc,
            "status": self.status,
            "detail": self.detail,
            "required": self.required,
        }


@dataclass
class ReadinessResult:
    """All checks, the verdict and the facts learned on the way (echo, suites)."""

    checks: list[Check] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """Every required check passed (a warning — allowed, but not what the RFC asks
        for — does not block)."""
        return all(c.status in (PASS, WARN) for c in self.checks if c.required)

    @property
    def verdict(self) -> str:
        """``ready``; ``not ready`` when a required check failed (or could not run);
        ``inconclusive`` when the only gaps are checks the busy server never answered."""
        if self.ready:
            return "ready"
        gaps = {c.status for c in self.checks if c.required and c.status not in (PASS, WARN)}
        return "inconclusive" if gaps == {INCONCLUSIVE} else "not ready"

    @property
    def reason(self) -> str:
        failed = [c for c in self.checks if c.required and c.status not in (PASS, WARN)]
        warned = [c for c in self.checks if c.status == WARN]
        text = "; ".join(f"{c.title}: {c.detail or c.status}" for c in failed)
        if not failed:
            text = "every required check passed"
        if warned:
            text += " (warnings: " + "; ".join(f"{c.title}: {c.detail}" for c in warned) + ")"
        return text

    def check(self, check_id: str) -> Check:
        return next(c for c in self.checks if c.id == check_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "checks": [c.to_dict() for c in self.checks],
            "facts": self.facts,
        }


def foreign_credentials(server_name: str | None) -> ClientCredentials:
    """A client certificate from a freshly made CA the server cannot know."""
    ca_cert, ca_key = create_ca("d2tls conformance: unknown CA")
    cert, key = issue_certificate(
        ca_cert, ca_key, "unknown-device", server_names=("unknown-device",), client=True
    )
    return ClientCredentials(
        chain=(cert.public_bytes(Encoding.DER),), key=key, server_name=server_name
    )


class ReadinessSuite:
    """Runs the readiness checks against one server.

    ``d2tls_target`` is the server's UDP address for the agent + device flow (None: that
    check is skipped, e.g. for an in-process server); ``trust_store`` verifies the server
    certificate there.
    """

    def __init__(
        self,
        transport_factory: TransportFactory,
        credentials: ClientCredentials,
        *,
        psk: tuple[bytes, bytes] | None = None,
        d2tls_target: Address | None = None,
        trust_store: Store | None = None,
        mtu: int = 256,
        wait: float = 0.5,
        progress: Callable[[str], None] | None = None,
        reset: Callable[[], None] | None = None,
        timer: RetransmissionTimer | None = DEFAULT_TIMER,
        settle: float = 0.3,
    ) -> None:
        self.transport_factory = transport_factory
        self.reset = reset
        self.credentials = credentials
        self.psk = psk
        self.d2tls_target = d2tls_target
        self.trust_store = trust_store
        self.mtu = mtu
        self.wait = wait
        self.progress = progress
        self.timer = timer
        self.settle = settle
        self.result = ReadinessResult()

    # ------------------------------------------------------------------ plumbing
    def _prober(
        self,
        suite: CipherSuite = CCM8,
        credentials: ClientCredentials | None = None,
        port: int | None = None,
    ) -> Prober:
        return Prober(
            self.transport_factory(port),
            credentials or self.credentials,
            suite=suite,
            wait=self.wait,
        )

    def _add(self, check: Check) -> Check:
        answered = [c for c in self.result.checks if c.status != INCONCLUSIVE]
        busy = check.status == INCONCLUSIVE and "server busy" in check.detail
        if busy and answered and "stopped_answering_after" not in self.result.facts:
            # The server answered until that check: it is what left it busy.
            self.result.facts["stopped_answering_after"] = answered[-1].id
        if busy and "stopped_answering_after" in self.result.facts:
            check.detail += (
                f"; no answer since check {self.result.facts['stopped_answering_after']}"
            )
        self.result.checks.append(check)
        if self.progress is not None:
            self.progress(f"  {check.id}: {check.status} ({check.detail})")
        return check

    def _close(self, prober: Prober, answer: Observation | None = None) -> None:
        """End the check's association as a client would, then let the server settle.

        A completed (or still running) association gets close_notify (RFC 5246 §7.2.1), so
        that a server serving one client at a time moves on at once. Nothing is sent when
        the server ended it (its alert) or went silent after our last flight (it refused,
        or gave up): a record then is a stray datagram to a server that has moved on."""
        silent = answer is not None and answer.timeout and not prober.handshake_complete
        if not silent:
            prober.close_association()
        prober.close()
        if self.settle > 0:
            time.sleep(self.settle)

    def _handshake(
        self, prober: Prober, **options: Any
    ) -> tuple[Observation, ResumableSession | None]:
        answer = full_handshake(prober, timer=self.timer, **options)
        session = prober.session() if prober.handshake_complete else None
        return answer, session

    def _busy(self, prober: Prober) -> str | None:
        """``inconclusive: server busy (...)`` when the server never answered this
        association's ClientHello (all retransmissions included), else None."""
        if prober.server_hello is not None or prober.cookie or prober.server_closed:
            return None
        sent = max(1, prober.transmissions)
        budget = self.timer.budget if self.timer is not None else prober.wait
        return (
            f"inconclusive: server busy (no answer to {sent} ClientHello transmission"
            f"{'s' if sent > 1 else ''} in {budget:.0f} s)"
        )

    # ------------------------------------------------------------------ the checks
    def run(self) -> ReadinessResult:
        """All checks, one association each, against the server as it runs: the server is
        not restarted between checks (``reset``, when given, only starts from a fresh
        server), so the verdict is what a client meets."""
        self._reset()
        self._cookie()
        session, port = self._suites()
        self._resumption(session, port)
        self._ems_resume_without(session)
        self._ems_upgrade()
        self._client_auth_required()
        self._client_auth_verified()
        self._fragmentation()
        self._d2tls_flow()
        return self.result

    def _reset(self) -> None:
        if self.reset is not None:
            self.reset()

    def _cookie(self) -> None:
        check = Check("cookie", "cookie exchange", "RFC 6347 §4.2.1")
        prober = self._prober()
        prober.send_client_hello()
        first = prober.await_answer(self.timer)
        # The handshake is then completed (and closed), never abandoned half-way.
        answer = full_handshake(prober, timer=self.timer) if not first.timeout else first
        if (busy := self._busy(prober)) is not None:
            check.status, check.detail = INCONCLUSIVE, busy
        elif first.has("HelloVerifyRequest"):
            cookie = len(prober.cookie)
            if prober.server_hello is not None:
                check.status, check.detail = PASS, f"HelloVerifyRequest ({cookie}-byte cookie)"
            else:
                check.status = FAIL
                check.detail = f"no ServerHello after the cookie ({answer.label})"
        elif first.has("ServerHello"):
            check.status, check.detail = FAIL, "ServerHello without a cookie exchange"
        else:
            check.status, check.detail = FAIL, f"answered {first.label}"
        self._close(prober, answer)
        self._add(check)

    def _suites(self) -> tuple[ResumableSession | None, int | None]:
        """One client-authenticated full handshake per suite; returns the CCM-8 session."""
        session: ResumableSession | None = None
        port: int | None = None
        requested = verified = False
        ems: bool | None = None
        for suite, check_id, title, rfc, required in (
            (CCM8, "suite-ccm8", "ECDHE-ECDSA-AES128-CCM-8", "RFC 7251 §2", True),
            (GCM, "suite-gcm", "ECDHE-ECDSA-AES128-GCM-SHA256", "RFC 5289 §3.2", False),
        ):
            prober = self._prober(suite)
            answer, got = self._handshake(prober)
            check = Check(check_id, title, rfc, required=required)
            if prober.handshake_complete and prober.cipher_suite == suite:
                check.status, check.detail = PASS, "client-authenticated handshake completed"
                if not prober.session_id:
                    check.detail += " (empty session ID: not resumable)"
                if suite == CCM8:
                    self.result.facts["ccm8_session_id_length"] = len(prober.session_id)
                    session, ems = got, prober.extended_master_secret
                    port = int(prober.transport.local_address[1])  # type: ignore[attr-defined]
                    requested = prober.certificate_requested
                    verified = True
                    self.result.facts["echo"] = self._echoes(prober)
                    self.result.facts["largest_server_datagram"] = prober.largest_datagram
            elif (busy := self._busy(prober)) is not None:
                check.status, check.detail = INCONCLUSIVE, busy
            else:
                check.status = FAIL if required else WARN
                check.detail = f"refused: {answer.label}"
            self._close(prober, answer)
            self._add(check)
        self.result.facts["ccm8_extended_master_secret"] = ems
        psk_check = Check("suite-psk-ccm8", "PSK-AES128-CCM-8", "RFC 6655 §4", required=False)
        if self.psk is None:
            psk_check.detail = "no --psk given"
        else:
            identity, key = self.psk
            credentials = ClientCredentials(
                psk_identity=identity, psk=key, server_name=self.credentials.server_name
            )
            prober = self._prober(PSK_CCM8, credentials)
            answer, _ = self._handshake(prober)
            if prober.handshake_complete and prober.cipher_suite == PSK_CCM8:
                psk_check.status, psk_check.detail = PASS, "PSK handshake completed"
                if not prober.session_id:
                    psk_check.detail += " (empty session ID: not resumable)"
            elif (busy := self._busy(prober)) is not None:
                psk_check.status, psk_check.detail = INCONCLUSIVE, busy
            else:
                psk_check.status, psk_check.detail = WARN, f"refused: {answer.label}"
            self._close(prober, answer)
        self._add(psk_check)
        auth = Check(
            "client-auth-requested",
            "client certificate requested",
            "RFC 5246 §7.4.4",
        )
        if verified:
            auth.status = PASS if requested else FAIL
            auth.detail = "CertificateRequest sent" if requested else "no CertificateRequest"
        else:
            auth.status = self._after_ccm8()
            auth.detail = "no full handshake to look at"
        self._add(auth)
        return session, port

    def _after_ccm8(self) -> str:
        """Status of a check that needs the CCM-8 handshake, which did not complete."""
        ccm8 = next((c for c in self.result.checks if c.id == "suite-ccm8"), None)
        return INCONCLUSIVE if ccm8 is not None and ccm8.status == INCONCLUSIVE else SKIP

    def _echoes(self, prober: Prober) -> bool:
        prober.send_records([prober.application_data(ECHO_PROBE)])
        answer = prober.receive(wait=max(self.wait, 0.5))
        return any(i.kind == "data" and ECHO_PROBE in i.body for i in answer.items)

    def _client_auth_required(self) -> None:
        check = Check("client-auth-required", "client certificate required", "RFC 5246 §7.4.6")
        prober = self._prober()
        answer, _ = self._handshake(prober, send_certificate=False)
        if prober.handshake_complete:
            check.status, check.detail = FAIL, "handshake completed with an empty Certificate"
        elif (busy := self._busy(prober)) is not None:
            check.status, check.detail = INCONCLUSIVE, busy
        elif prober.server_hello is None:
            check.status, check.detail = INCONCLUSIVE, f"no ServerHello ({answer.label})"
        else:
            check.status, check.detail = PASS, f"empty Certificate refused ({answer.label})"
        self._close(prober, answer)
        self._add(check)

    def _client_auth_verified(self) -> None:
        check = Check(
            "client-auth-verified",
            "client certificate verified (unknown CA refused)",
            "RFC 5246 §7.4.6, RFC 5280 §6",
        )
        prober = self._prober(credentials=foreign_credentials(self.credentials.server_name))
        answer, _ = self._handshake(prober)
        if prober.handshake_complete:
            check.status = FAIL
            check.detail = "handshake completed with a certificate from an unknown CA"
        elif (busy := self._busy(prober)) is not None:
            check.status, check.detail = INCONCLUSIVE, busy
        elif prober.server_hello is None:
            check.status, check.detail = INCONCLUSIVE, f"no ServerHello ({answer.label})"
        else:
            check.status, check.detail = PASS, f"unknown CA refused ({answer.label})"
        self._close(prober, answer)
        self._add(check)

    def _resume(
        self, session: ResumableSession, port: int | None, **options: Any
    ) -> tuple[Prober, Observation]:
        prober = self._prober(session.cipher_suite, port=port)
        answer = full_handshake(prober, session=session, timer=self.timer, **options)
        return prober, answer

    def _resumption(self, session: ResumableSession | None, port: int | None) -> None:
        for check_id, title, source in (
            ("resumption", "session-ID resumption (same client port)", port),
            ("resumption-new-port", "session-ID resumption from another client port", None),
        ):
            check = Check(check_id, title, "RFC 5246 §7.4.1.2, RFC 6347 §4.2.8")
            if session is None and self.result.facts.get("ccm8_session_id_length") == 0:
                check.status = FAIL
                check.detail = "the server issued no session ID: its sessions cannot be resumed"
                self._add(check)
                continue
            if session is None:
                check.status = self._after_ccm8()
                check.detail = "no client-authenticated session to resume"
                self._add(check)
                continue
            try:
                prober, answer = self._resume(session, source)
            except OSError as exc:  # the old port may be taken meanwhile
                prober, answer = self._resume(session, None)
                check.detail = f"(port {source} unavailable: {exc}) "
            if prober.resumed and prober.handshake_complete:
                check.status = PASS
                check.detail += f"abbreviated handshake from port {prober_port(prober)}"
            elif (busy := self._busy(prober)) is not None:
                check.status, check.detail = INCONCLUSIVE, check.detail + busy
            elif prober.resumed:
                check.status = FAIL
                check.detail += f"resumed, but the handshake did not complete ({answer.label})"
            else:
                check.status = FAIL
                check.detail += f"not resumed ({answer.label})"
            self._close(prober, answer)
            self._add(check)

    def _ems_resume_without(self, session: ResumableSession | None) -> None:
        ems = self.result.facts.get("ccm8_extended_master_secret")
        check = Check("ems", "extended master secret negotiated", "RFC 7627 §5.1")
        if ems is None:
            check.status, check.detail = self._after_ccm8(), "no full handshake"
        else:
            check.status = PASS if ems else FAIL
            check.detail = "in ServerHello" if ems else "ServerHello without extended_master_secret"
        self._add(check)
        # RFC 7627 §5.3: an EMS session offered without the extension MUST NOT resume.
        check = Check(
            "ems-resume-without",
            "EMS session offered without EMS: abbreviated handshake aborted",
            "RFC 7627 §5.3",
        )
        if session is None or not session.extended_master_secret:
            check.status = self._after_ccm8() if session is None else SKIP
            check.detail = "no EMS session"
        else:
            prober, answer = self._resume(session, None, extended_master_secret=False)
            if prober.resumed:
                check.status, check.detail = FAIL, "resumed without the extension"
            elif (busy := self._busy(prober)) is not None:
                check.status, check.detail = INCONCLUSIVE, busy
            elif answer.fatal_alert() is not None:
                check.status, check.detail = PASS, f"aborted ({answer.label})"
            elif prober.server_hello is not None:
                check.status = WARN
                check.detail = "not resumed, but a full handshake instead of aborting"
            else:
                check.status, check.detail = PASS, f"not resumed ({answer.label})"
            self._close(prober, answer)
        self._add(check)

    def _ems_upgrade(self) -> None:
        # RFC 7627 §5.3: a non-EMS session offered with EMS MUST NOT be resumed.
        check = Check(
            "ems-upgrade",
            "non-EMS session offered with EMS: not resumed",
            "RFC 7627 §5.3",
        )
        prober = self._prober()
        answer, plain = self._handshake(prober, extended_master_secret=False)
        self._close(prober, answer)
        if (busy := self._busy(prober)) is not None:
            check.status, check.detail = INCONCLUSIVE, busy
        elif plain is None and prober.handshake_complete:
            check.status = PASS
            check.detail = "the server issues no session ID: nothing to resume"
        elif plain is None:
            check.status, check.detail = (
                PASS,
                f"a handshake without EMS is refused ({answer.label})",
            )
        elif plain.extended_master_secret:
            check.status, check.detail = (
                FAIL,
                "EMS in ServerHello although the client did not offer it",
            )
        else:
            prober, answer = self._resume(replace(plain, extended_master_secret=True), None)
            if prober.resumed:
                check.status, check.detail = FAIL, "resumed a non-EMS session"
            elif (busy := self._busy(prober)) is not None:
                check.status, check.detail = INCONCLUSIVE, busy
            else:
                check.status, check.detail = PASS, f"not resumed ({answer.label})"
            self._close(prober, answer)
        self._add(check)

    def _fragmentation(self) -> None:
        check = Check(
            "fragmentation",
            f"handshake in fragments (client MTU {self.mtu})",
            "RFC 6347 §4.2.3",
        )
        fragment = max(16, self.mtu - 13 - 12 - 32)  # record + handshake headers, AEAD
        prober = self._prober()
        answer, _ = self._handshake(prober, fragment_size=fragment)
        largest = prober.largest_datagram
        if (busy := self._busy(prober)) is not None:
            check.status, check.detail = INCONCLUSIVE, busy
        elif not prober.handshake_complete:
            check.status = FAIL
            check.detail = f"{fragment}-byte fragments: {answer.label}"
        elif largest > self.mtu:
            check.status = PASS
            check.detail = (
                f"reassembled {fragment}-byte fragments; its own datagrams up to {largest} "
                f"bytes (set the server's MTU to test its fragmentation)"
            )
        else:
            check.status = PASS
            check.detail = f"reassembled {fragment}-byte fragments; its datagrams <= {largest} B"
        self.result.facts["fragmented_server_datagram"] = largest
        self._close(prober, answer)
        self._add(check)

    def _d2tls_flow(self) -> None:
        check = Check("d2tls", "D2TLS flow: agent handshake, device resumption", "D2TLS §4")
        if self.d2tls_target is None or self.trust_store is None:
            check.detail = "needs a UDP target and its CA"
            self._add(check)
            return
        if not self.credentials.chain or self.credentials.key is None:
            check.status, check.detail = FAIL, "needs the device certificate and key"
            self._add(check)
            return
        echo = bool(self.result.facts.get("echo"))
        try:
            outcome = asyncio.run(
                asyncio.wait_for(
                    d2tls_flow(
                        self.d2tls_target,
                        self.credentials,
                        self.trust_store,
                        echo=echo,
                    ),
                    timeout=60,
                )
            )
        except Exception as exc:  # every failure of the flow is a finding
            check.status, check.detail = FAIL, f"{type(exc).__name__}: {exc}"
            if "stopped_answering_after" in self.result.facts:
                check.status = INCONCLUSIVE
                check.detail = f"inconclusive: server busy ({check.detail})"
        else:
            check.status = PASS if outcome["ok"] else FAIL
            check.detail = outcome["detail"]
            self.result.facts["d2tls"] = outcome
        self._add(check)


def prober_port(prober: Prober) -> int:
    address = getattr(prober.transport, "local_address", ("", 0))
    return int(address[1])


async def d2tls_flow(
    server: Address,
    credentials: ClientCredentials,
    trust_store: Store,
    *,
    echo: bool,
) -> dict[str, Any]:
    """Agent + device on loopback: delegated handshake, handover, resumption, echo, then a
    second connection resumed from the device's cached context (no delegation)."""
    from d2tls.core.roles.agent import AgentConfig
    from d2tls.core.roles.device import DeviceConfig
    from d2tls.core.roles.signer import DeviceSigner
    from d2tls.net.agent_host import Agent
    from d2tls.net.device_host import Device

    assert credentials.key is not None
    identity, psk = b"conformance-device", os.urandom(32)
    agent = Agent(AgentConfig(psk_keys={identity: psk}, trust_store=trust_store))
    agent_address = await agent.start("127.0.0.1", 0)
    device = Device(
        DeviceConfig(
            agent=agent_address,
            psk_identity=identity,
            psk=psk,
            server=server,
            server_name=credentials.server_name or server[0],
            certificate_chain=credentials.chain,
            signer=DeviceSigner(credentials.key),
            timeout=15.0,
        )
    )
    outcome: dict[str, Any] = {"ok": False, "connections": []}
    try:
        for index in range(2):
            connection = await device.connect()
            entry = connection.report.to_dict()
            entry["echo"] = None
            if echo:
                connection.send(ECHO_PROBE)
                try:
                    entry["echo"] = (await connection.receive(timeout=3.0)) == ECHO_PROBE
                except TimeoutError:
                    entry["echo"] = False
            await connection.close()
            outcome["connections"].append(entry)
            if index == 0 and entry["delegations"] < 1:
                outcome["detail"] = "the first connection was not delegated"
                return outcome
    finally:
        agent.close()
    first, second = outcome["connections"]
    echoed = [c["echo"] for c in outcome["connections"]]
    if echo and not all(echoed):
        outcome["detail"] = "the device's data was not echoed"
        return outcome
    outcome["ok"] = True
    outcome["detail"] = (
        f"delegated handshake + device resumption (device: {first['public_key_operations']} "
        f"public-key operations), second connection "
        f"{'without delegation' if second['delegations'] == 0 else 'delegated again'}"
        + (", echo verified" if echo else ", server does not echo")
    )
    return outcome


__all__ = [
    "FAIL",
    "INCONCLUSIVE",
    "PASS",
    "SKIP",
    "WARN",
    "Check",
    "ReadinessResult",
    "ReadinessSuite",
    "d2tls_flow",
    "foreign_credentials",
]
