"""Check the Tamarin theories against the spec, in both directions.

Every rule of a theory carries ``// spec:`` comment lines right above it, naming the spec
transitions it models::

    // spec: agent.awaiting_signature->finishing recv_SignResponse
    // spec: dtls_server.listen->wait_client_key_exchange recv_ClientHello if cookie_valid

``ROLE.SOURCE->DEST TRIGGER`` identifies a transition of ``spec/dtls.yaml`` or
``spec/d2tls.yaml``; ``if G1,G2`` and ``unless U1`` give its guards when several transitions share
role, source, destination and trigger. A rule that models no transition (key setup, the
adversary's abilities) says ``// spec: none (why)``. One rule may model several transitions: a
Tamarin rule usually consumes a whole flight of messages, e.g. the server's rule for the client's
Certificate .. Finished flight models five transitions.

The check (:func:`check_theories`) fails when

- a rule has no tag, or a tag that names no transition of the spec, or names several;
- a *security-relevant* transition (:func:`security_relevant`) is neither modelled by some rule
  nor listed in :data:`EXCLUDED` with the reason it is left out;
- an exclusion names no transition of the spec, or a transition that a rule models after all;
- a guard whose content the spec fixes is missing from the rule that models it
  (:data:`GUARD_CONTENT`): today the bound-mode signing policy's server binding
  (spec/delegation.md §6 rule 6, ``d2tls.core.roles.signer.check_server_certificate``): the
  ``Device_Sign_Bound`` rule must sign only a transcript whose server Certificate names the
  server of the request it answers;
- the message contents or the signing guards differ between spec/delegation.md, the theories
  and the roles (:mod:`d2tls.prove.contents`: the theories' ``// msg:``, ``// omit:``,
  ``// policy:`` and ``// abstraction:`` annotations, documented in proofs/ANNOTATIONS.md, and
  every §6 bound-mode rule checked on the bound signing rule's text;
  :mod:`d2tls.prove.roles_check`: the delegation message codec against the §5.2 field table,
  and ``roles/signer.py`` run against one violation of each §6 bound-mode rule).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from d2tls.core.model.spec import RoleSpec, TransitionSpec, load_spec
from d2tls.prove.contents import check_contents
from d2tls.prove.roles_check import check_message_schema, check_signer_policy
from d2tls.prove.runner import strip_comments
from d2tls.prove.spec_text import bound_signing_rules, delegation_md, message_fields

#: The roles the theories model, and the spec file (``spec/<name>.yaml``) of each.
ROLE_SPECS: dict[str, str] = {
    "dtls_client": "dtls",
    "dtls_server": "dtls",
    "device": "d2tls",
    "agent": "d2tls",
}

#: Messages whose sending or receipt makes a transition security-relevant: the delegation
#: messages that carry requests, signatures and secrets, and the handshake messages that carry
#: randoms, keys, certificates, signatures and Finished MACs.
SECURITY_MESSAGES: frozenset[str] = frozenset(
    {
        # spec/d2tls.yaml
        "DelegationRequest",
        "SignRequest",
        "SignResponse",
        "SessionContext",
        "Wiped",
        # spec/dtls.yaml
        "ClientHello",
        "ServerHello",
        "Certificate",
        "ServerKeyExchange",
        "CertificateRequest",
        "ServerHelloDone",
        "ClientKeyExchange",
        "CertificateVerify",
        "ChangeCipherSpec",
        "Finished",
    }
)

#: Theories of other systems than D2TLS, which model none of the roles above: their rules must
#: still be tagged (``// spec: none (why)``), but checked alone they are not required to cover
#: the D2TLS transitions. ``proofs/twinpeaks.spthy`` models the TwinPeaks key-server hierarchy
#: (spec/twinpeaks.md), whose roles are not in :data:`ROLE_SPECS`.
OTHER_SYSTEM_THEORIES: frozenset[str] = frozenset({"twinpeaks.spthy"})

#: Destinations that end a machine without a session: the theories model a refusal or an
#: error as the absence of a next step, so transitions into them are never security-relevant.
TERMINAL_FAILURE_STATES: frozenset[str] = frozenset({"failed", "closed"})

#: Security-relevant transitions deliberately not modelled, each with the reason.
EXCLUDED: dict[str, str] = {
    "dtls_client.wait_server_hello->wait_server_hello recv_HelloVerifyRequest": (
        "cookie exchange (RFC 6347 4.2.1): a denial-of-service measure that carries no secret; "
        "the model's server always has a valid cookie"
    ),
    "dtls_server.listen->listen recv_ClientHello unless cookie_valid": (
        "cookie exchange (RFC 6347 4.2.1): see the client's HelloVerifyRequest"
    ),
    "dtls_client.wait_server_hello->wait_psk_server_key_exchange recv_ServerHello"
    " if server_chose_psk": (
        "PSK suite: used only on the device<->agent channel, which the theory abstracts as a "
        "secure channel"
    ),
    "dtls_client.wait_psk_server_key_exchange->wait_psk_server_hello_done"
    " recv_ServerKeyExchange": "PSK suite (device<->agent channel, abstracted)",
    "dtls_client.wait_psk_server_key_exchange->wait_change_cipher_spec"
    " recv_ServerHelloDone": "PSK suite (device<->agent channel, abstracted)",
    "dtls_client.wait_psk_server_hello_done->wait_change_cipher_spec"
    " recv_ServerHelloDone": "PSK suite (device<->agent channel, abstracted)",
    "dtls_server.listen->wait_client_key_exchange recv_ClientHello"
    " if cookie_valid,psk_suite_chosen": "PSK suite (device<->agent channel, abstracted)",
    "dtls_client.wait_server_hello->wait_ecdhe_psk_server_key_exchange recv_ServerHello"
    " if server_chose_ecdhe_psk": (
        "ECDHE-PSK suite (RFC 5489): the device<->agent channel option, abstracted like PSK"
    ),
    "dtls_client.wait_ecdhe_psk_server_key_exchange->wait_psk_server_hello_done"
    " recv_ServerKeyExchange": "ECDHE-PSK suite (device<->agent channel, abstracted)",
    "dtls_server.listen->wait_client_key_exchange recv_ClientHello"
    " if cookie_valid,ecdhe_psk_suite_chosen": (
        "ECDHE-PSK suite (device<->agent channel, abstracted)"
    ),
    "dtls_client.wait_certificate_request->wait_change_cipher_spec recv_ServerHelloDone": (
        "server that asks for no client certificate: a D2TLS server always requires one "
        "(DESIGN.md 1)"
    ),
    "dtls_server.listen->wait_client_key_exchange recv_ClientHello if cookie_valid": (
        "server without client authentication: a D2TLS server always requires a certificate"
    ),
    "dtls_server.wait_client_key_exchange->wait_change_cipher_spec recv_ClientKeyExchange": (
        "unauthenticated client (no or empty client certificate): not a D2TLS session"
    ),
    "dtls_server.wait_certificate->wait_client_key_exchange recv_Certificate": (
        "empty client Certificate: not a D2TLS session (the device's chain is always sent)"
    ),
    "dtls_client.wait_server_hello_done->wait_change_cipher_spec recv_ServerHelloDone": (
        "client with no certificate (empty Certificate): not a D2TLS session"
    ),
    "dtls_client.wait_server_hello_done->wait_change_cipher_spec recv_ServerHelloDone"
    " if has_client_certificate": (
        "client that signs with a key it holds: the standalone baseline, not delegation "
        "(the agent always uses the device as an external signer)"
    ),
    "dtls_client.wait_certificate->wait_server_key_exchange recv_Certificate"
    " if server_sent_raw_public_key": (
        "RFC 7250 raw public key (TwinPeaks, issue 22): not yet in the theories"
    ),
    "dtls_server.wait_certificate->wait_client_key_exchange_certified recv_Certificate"
    " if client_certificate_present,client_sent_raw_public_key": (
        "RFC 7250 raw public key (TwinPeaks, issue 22): not yet in the theories"
    ),
    "dtls_server.established->established recv_ClientHello": (
        "renegotiation is refused with a warning alert and changes no state"
    ),
    "agent.checking_status->awaiting_signature status_good": (
        "OCSP: certificates are never revoked in the model, so a status check always ends "
        "good and this transition coincides with handshaking->awaiting_signature"
    ),
}

_TAG = re.compile(r"^\s*//\s*spec:\s*(?P<body>.*?)\s*$")
_REF = re.compile(
    r"^(?P<role>[a-z_]+)\.(?P<source>[a-z_]+)->(?P<dest>[a-z_]+)\s+(?P<trigger>[A-Za-z_]+)"
    r"(?:\s+if\s+(?P<guards>[a-z_]+(?:,[a-z_]+)*))?"
    r"(?:\s+unless\s+(?P<unless>[a-z_]+(?:,[a-z_]+)*))?$"
)
_NONE = re.compile(r"^none\s+\((?P<why>.+)\)$")
_RULE = re.compile(r"^\s*rule\s+(?P<name>[A-Za-z0-9_]+)\s*(?:\[[^\]]*\])?\s*:", re.MULTILINE)


_AWAIT_SIGN = re.compile(
    r"St_D_AwaitSign\(\s*\w+\s*,\s*\w+\s*,\s*\w+\s*,\s*(?P<server>\w+)\s*,\s*'bound'"
)
_SERVER_CERT = re.compile(r"<'ServerHello'[^>]*>\s*,\s*<'Certificate'\s*,\s*(?P<server>\w+)\s*>")


def bound_server_binding(rule_text: str) -> str | None:
    """The bound signing rule binds the server: the transcript's server Certificate (right
    after the ServerHello) names the server of the open request (``St_D_AwaitSign``)."""
    state = _AWAIT_SIGN.search(rule_text)
    cert = _SERVER_CERT.search(rule_text)
    if state is None or cert is None:
        return "no St_D_AwaitSign(.., S, 'bound', ..) premise or no server Certificate in the log"
    if state["server"] != cert["server"]:
        return (
            f"the transcript's server Certificate names {cert['server']!r}, not the requested "
            f"server {state['server']!r} (spec/delegation.md §6: the device signs only for the "
            "server it asked for)"
        )
    return None


#: Guards whose content, not only name, a theory must model: the spec transition, the rule that
#: models it, and a check on that rule's text (comments stripped) returning a problem or None.
GUARD_CONTENT: dict[str, tuple[str, Callable[[str], str | None]]] = {
    "device.awaiting_sign_request->awaiting_context recv_SignRequest if sign_request_acceptable": (
        "Device_Sign_Bound",
        bound_server_binding,
    ),
}


@dataclass(frozen=True, order=True)
class TransitionRef:
    """One transition of a role of the spec."""

    role: str
    source: str
    dest: str
    trigger: str
    guards: tuple[str, ...] = ()
    unless: tuple[str, ...] = ()

    @classmethod
    def of(cls, role: str, t: TransitionSpec) -> TransitionRef:
        return cls(role, t.source, t.dest, t.trigger, t.guards, t.unless)

    def label(self) -> str:
        """The tag text that names this transition exactly."""
        text = f"{self.role}.{self.source}->{self.dest} {self.trigger}"
        if self.guards:
            text += " if " + ",".join(self.guards)
        if self.unless:
            text += " unless " + ",".join(self.unless)
        return text


@dataclass(frozen=True)
class RuleTags:
    """The ``// spec:`` lines above one rule."""

    theory: str
    rule: str
    line: int
    tags: tuple[str, ...]


@dataclass
class ConsistencyReport:
    """Everything :func:`check_theories` found; ``ok`` when no list has an entry."""

    modelled: dict[TransitionRef, list[str]] = field(default_factory=dict)
    untagged: list[str] = field(default_factory=list)
    bad_tags: list[str] = field(default_factory=list)
    missing: list[TransitionRef] = field(default_factory=list)
    excluded_but_modelled: list[TransitionRef] = field(default_factory=list)
    stale_exclusions: list[str] = field(default_factory=list)
    guard_content: list[str] = field(default_factory=list)
    contents: list[str] = field(default_factory=list)  # spec <-> theory: contents and guards
    roles: list[str] = field(default_factory=list)  # spec <-> roles: fields and guards
    annotated: list[str] = field(default_factory=list)  # theories checked with annotations

    @property
    def ok(self) -> bool:
        return not (
            self.contents
            or self.roles
            or self.untagged
            or self.bad_tags
            or self.missing
            or self.excluded_but_modelled
            or self.stale_exclusions
            or self.guard_content
        )

    def problems(self) -> list[str]:
        """One line per problem, for humans."""
        lines = [f"rule without a '// spec:' tag: {r}" for r in self.untagged]
        lines += self.bad_tags
        lines += [
            f"security-relevant spec transition not modelled by any rule: {t.label()}"
            for t in self.missing
        ]
        lines += [
            f"transition listed in EXCLUDED but modelled by {', '.join(self.modelled[t])}: "
            f"{t.label()}"
            for t in self.excluded_but_modelled
        ]
        lines += [f"EXCLUDED entry names no spec transition: {s}" for s in self.stale_exclusions]
        lines += self.guard_content
        lines += self.contents
        lines += self.roles
        return lines


# --------------------------------------------------------------------------- the spec side


def spec_transitions(roles: Iterable[str] = ROLE_SPECS) -> list[TransitionRef]:
    """Every transition of the modelled roles (``*`` sources expanded)."""
    refs: list[TransitionRef] = []
    for role_name in roles:
        role: RoleSpec = load_spec(ROLE_SPECS[role_name]).role(role_name)
        refs.extend(TransitionRef.of(role_name, t) for t in role.transitions)
    return refs


def _messages(role: str, ref: TransitionRef) -> set[str]:
    spec_role = load_spec(ROLE_SPECS[role]).role(role)
    for t in spec_role.transitions:
        if TransitionRef.of(role, t) == ref:
            received = {t.received_message} if t.received_message else set()
            return set(t.emits) | received
    return set()


def security_relevant(refs: Iterable[TransitionRef] | None = None) -> list[TransitionRef]:
    """Transitions that send or receive a message of :data:`SECURITY_MESSAGES` and do not end
    in a terminal failure state: the ones a theory must model or explicitly exclude."""
    chosen = spec_transitions() if refs is None else list(refs)
    return sorted(
        ref
        for ref in chosen
        if ref.dest not in TERMINAL_FAILURE_STATES and _messages(ref.role, ref) & SECURITY_MESSAGES
    )


def resolve(tag: str, transitions: Sequence[TransitionRef]) -> list[TransitionRef]:
    """The transitions a tag names: exactly one when the tag is right.

    Without ``if``/``unless`` the tag names the only transition with that role, source,
    destination and trigger, or, when there are several, the one without guards; with them,
    the one with exactly those guards.
    """
    match = _REF.match(tag)
    if match is None:
        return []
    guards = tuple(match["guards"].split(",")) if match["guards"] else None
    unless = tuple(match["unless"].split(",")) if match["unless"] else None
    found = [
        t
        for t in transitions
        if (t.role, t.source, t.dest, t.trigger)
        == (match["role"], match["source"], match["dest"], match["trigger"])
    ]
    if guards is None and unless is None and len(found) <= 1:
        return found
    return [
        t
        for t in found
        if set(t.guards) == set(guards or ()) and set(t.unless) == set(unless or ())
    ]


# --------------------------------------------------------------------------- the theory side


def rule_tags(theory: Path) -> list[RuleTags]:
    """Each rule of a theory with the ``// spec:`` lines of the comment block right above it."""
    raw = theory.read_text(encoding="utf-8")
    raw_lines = raw.splitlines()
    code = strip_comments(raw)  # keeps line numbers; drops rules that are commented out
    found: list[RuleTags] = []
    for match in _RULE.finditer(code):
        line = code.count("\n", 0, match.start("name"))  # 0-based line of the rule keyword
        tags: list[str] = []
        above = line - 1
        while above >= 0 and raw_lines[above].lstrip().startswith("//"):
            tag = _TAG.match(raw_lines[above])
            if tag:
                tags.append(tag["body"])
            above -= 1
        found.append(RuleTags(theory.name, match["name"], line + 1, tuple(reversed(tags))))
    return found


def rule_text(theory: Path, rule: str) -> str | None:
    """The text of ``rule`` (comments stripped), up to the next rule, lemma or restriction."""
    code = strip_comments(theory.read_text(encoding="utf-8"))
    match = re.search(rf"^\s*rule\s+{re.escape(rule)}\s*(?:\[[^\]]*\])?\s*:", code, re.MULTILINE)
    if match is None:
        return None
    end = re.compile(r"^\s*(?:rule|lemma|restriction|end)\b", re.MULTILINE).search(
        code, match.end()
    )
    return code[match.end() : end.start() if end else len(code)]


def _check_guard_content(theory: Path, report: ConsistencyReport) -> None:
    for transition, (rule, check) in GUARD_CONTENT.items():
        modelled_by = report.modelled.get(resolve(transition, spec_transitions())[0], [])
        if f"{theory.name}:{rule}" not in modelled_by:
            continue  # a theory without the rule (or not tagged with it) has nothing to check
        text = rule_text(theory, rule)
        problem = check(text) if text is not None else "rule not found"
        if problem is not None:
            report.guard_content.append(f"{theory.name} rule {rule} ({transition}): {problem}")


def check_theories(theories: Sequence[Path]) -> ConsistencyReport:
    """Check the union of the theories' tags against the spec (see the module docstring)."""
    transitions = spec_transitions()
    report = ConsistencyReport()
    for theory in theories:
        for entry in rule_tags(theory):
            where = f"{entry.theory}:{entry.line} rule {entry.rule}"
            if not entry.tags:
                report.untagged.append(where)
                continue
            nones = [t for t in entry.tags if t.startswith("none")]
            if nones:
                if len(entry.tags) > 1 or not _NONE.match(nones[0]):
                    report.bad_tags.append(
                        f"{where}: 'none (why)' must be the only tag and give a reason"
                    )
                continue
            for tag in entry.tags:
                refs = resolve(tag, transitions)
                if len(refs) == 1:
                    report.modelled.setdefault(refs[0], []).append(f"{entry.theory}:{entry.rule}")
                elif not refs:
                    report.bad_tags.append(f"{where}: tag names no spec transition: {tag!r}")
                else:
                    options = "; ".join(r.label() for r in refs)
                    report.bad_tags.append(
                        f"{where}: tag {tag!r} is ambiguous, add the guards: {options}"
                    )
    excluded: set[TransitionRef] = set()
    for key in EXCLUDED:
        refs = resolve(key, transitions)
        if len(refs) != 1:
            report.stale_exclusions.append(key)
        else:
            excluded.add(refs[0])
    for theory in theories:
        _check_guard_content(theory, report)
    contents = check_contents(list(theories))
    report.contents = contents.problems
    report.annotated = contents.strict
    text = delegation_md()
    report.roles = check_message_schema(message_fields(text))
    report.roles += check_signer_policy(bound_signing_rules(text))
    report.excluded_but_modelled = sorted(excluded & set(report.modelled))
    if all(theory.name in OTHER_SYSTEM_THEORIES for theory in theories):
        return report  # no D2TLS theory among them: nothing has to cover the D2TLS roles
    report.missing = [
        t for t in security_relevant(transitions) if t not in report.modelled and t not in excluded
    ]
    return report
