"""Consistency that can fail: message contents and signing guards, spec <-> theory <-> roles.

The main theory carries the annotations of proofs/ANNOTATIONS.md (:data:`RULE_ANNOTATIONS`,
:data:`STRICT_MODE_ANNOTATIONS`, :data:`THEORY_ANNOTATIONS`) and is named in
``contents.REQUIRE_ANNOTATIONS``: it must pass the strict check as committed, losing its
annotations must fail, and each deliberate mismatch below (in a temp copy of the theory or the
spec, or a signer with a check taken out) must be reported.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from d2tls.core.resources import proofs_dir, spec_dir
from d2tls.prove import contents, roles_check, spec_text
from d2tls.prove.consistency import check_theories

MAIN_THEORY = proofs_dir() / "d2tls_dtls12.spthy"

#: Rule -> the annotation lines it carries (right above ``rule NAME:``).
RULE_ANNOTATIONS: dict[str, list[str]] = {
    "Compromised_Agent_Reads_Request_Bound": [
        "// msg: DelegationRequest(request_id, server_name, mode, client_random)"
    ],
    "Compromised_Agent_Reads_Request_Blind": [
        "// msg: DelegationRequest(request_id, server_name, mode)"
    ],
    "Compromised_Agent_Reads_SignResponse": [
        "// msg: SignResponse(request_id, +digest, signature)",
        "// msg: SignResponse(request_id, signature)",
    ],
    "Device_Delegate_Bound": [
        "// msg: DelegationRequest(request_id, server_name, mode, client_random)"
    ],
    "Device_Delegate_Blind": ["// msg: DelegationRequest(request_id, server_name, mode)"],
    "Device_Sign_Bound": [
        "// msg: SignRequest(request_id, digest, transcript)",
        "// msg: SignResponse(request_id, +digest, signature)",
        "// policy: bound-signing",
    ],
    "Device_Sign_Blind": [
        "// msg: SignRequest(request_id, digest, transcript)",
        "// msg: SignResponse(request_id, +digest, signature)",
    ],
    "Device_Recv_SessionContext": [
        "// msg: SessionContext(request_id, session_id, master_secret, server_certificates)"
    ],
    "Device_Recv_Wiped": ["// msg: Wiped(request_id)"],
    "Agent_Recv_DelegationRequest_Bound": [
        "// msg: DelegationRequest(request_id, server_name, mode, client_random)"
    ],
    "Agent_Recv_DelegationRequest_Blind": [
        "// msg: DelegationRequest(request_id, server_name, mode)"
    ],
    "Agent_Recv_ServerFlight": ["// msg: SignRequest(request_id, digest, transcript)"],
    "Agent_Recv_SignResponse": ["// msg: SignResponse(request_id, +digest, signature)"],
    "Agent_Recv_ServerFinished": [
        "// msg: SessionContext(request_id, session_id, master_secret, server_certificates)"
    ],
    "Agent_Wipe": ["// msg: Wiped(request_id)"],
}

#: The same for the rules of the strict device mode (issue 24 item 3).
STRICT_MODE_ANNOTATIONS: dict[str, list[str]] = {
    "Device_Delegate_Strict": [
        "// msg: DelegationRequest(request_id, server_name, mode, client_random)"
    ],
    "Device_Sign_Strict": [
        "// msg: SignRequest(request_id, digest, transcript)",
        "// msg: SignResponse(request_id, +digest, signature)",
        "// policy: bound-signing",
    ],
}

#: Lines anywhere in the theory (inserted after ``begin``).
THEORY_ANNOTATIONS = [
    "// omit: DelegationRequest.server_host (a server is named by one name, its identity S)",
    "// omit: DelegationRequest.server_port (as server_host)",
    "// omit: DelegationRequest.cipher_suites (one cipher suite in the model)",
    "// omit: DelegationRequest.certificate_chain (the device's certificate is its !Pk entry)",
    "// omit: DelegationRequest.raw_public_key (a raw key is the same !Pk entry without a chain)",
    "// omit: DelegationRequest.certificate_chain_hash (a reference to the chain: the same !Pk "
    "entry)",
    "// omit: DelegationRequest.server_certificate_hash (only shortens the transcript the "
    "device rebuilds)",
    "// omit: SignRequest.compact_transcript (an encoding of transcript: the device rebuilds the "
    "same bytes before the checks)",
    "// omit: SessionContext.cipher_suite (one cipher suite in the model)",
    "// omit: SessionContext.extended_master_secret (always on: the model derives the EMS)",
    "// omit: SessionContext.lifetime (time is not modelled)",
    "// omit: SessionContext.ocsp_status (no certificate is revoked in the model)",
    "// abstraction: bound-signing fixed-transcript (the model's server sends one flight in "
    "one order, so no other transcript reaches an honest device)",
]


def _is_annotation(line: str) -> bool:
    return line.lstrip().startswith(("// msg:", "// policy:", "// omit:", "// abstraction:"))


def strip_annotations(text: str) -> str:
    """The theory without any content annotation line."""
    return "\n".join(line for line in text.splitlines() if not _is_annotation(line)) + "\n"


def annotate(text: str) -> str:
    """The theory with the annotations of this module inserted."""
    lines = text.splitlines()
    out: list[str] = []
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("rule "):
            name = stripped[len("rule ") :].split(":")[0].split("[")[0].strip()
            out += RULE_ANNOTATIONS.get(name, []) + STRICT_MODE_ANNOTATIONS.get(name, [])
        out.append(line)
        if stripped == "begin":
            out += THEORY_ANNOTATIONS
    return "\n".join(out) + "\n"


@pytest.fixture
def annotated(tmp_path: Path) -> Path:
    """A copy of the main theory as committed (it carries its annotations)."""
    path = tmp_path / MAIN_THEORY.name
    shutil.copy(MAIN_THEORY, path)
    return path


def _problems(theory: Path) -> list[str]:
    report = check_theories([theory])
    return report.problems()


def _edit(theory: Path, old: str, new: str) -> Path:
    text = theory.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    theory.write_text(text.replace(old, new), encoding="utf-8")
    return theory


def test_the_annotated_theory_passes_the_strict_check(annotated: Path) -> None:
    report = check_theories([annotated])
    assert report.ok, "\n".join(report.problems())
    assert report.annotated == [annotated.name]
    rules = {r.name: r for r in contents.theory_rules(annotated.read_text(encoding="utf-8"))}
    assert set(RULE_ANNOTATIONS) <= set(rules)  # every annotated rule exists


def test_the_theory_as_committed_is_checked_strictly_and_passes() -> None:
    assert MAIN_THEORY.name in contents.REQUIRE_ANNOTATIONS
    report = check_theories([MAIN_THEORY])
    assert report.ok, "\n".join(report.problems())
    assert report.annotated == [MAIN_THEORY.name]


def test_the_theory_carries_exactly_the_documented_annotations() -> None:
    """The annotations in the theory are those of proofs/ANNOTATIONS.md (this module's tables),
    each right above its rule: stripping them and inserting the tables gives the theory back."""
    text = MAIN_THEORY.read_text(encoding="utf-8")
    assert annotate(strip_annotations(text)) == text
    documented = (proofs_dir() / "ANNOTATIONS.md").read_text(encoding="utf-8")
    lines = {line.strip() for line in text.splitlines() if _is_annotation(line)}
    assert lines and all(line in documented for line in lines), sorted(
        line for line in lines if line not in documented
    )


def test_losing_the_annotations_fails(tmp_path: Path) -> None:
    """Required by name: without its annotations the theory is not silently checked leniently."""
    bare = tmp_path / MAIN_THEORY.name
    bare.write_text(strip_annotations(MAIN_THEORY.read_text(encoding="utf-8")), encoding="utf-8")
    report = check_theories([bare])
    assert not report.ok
    problems = report.problems()
    assert any("no '// msg: SessionContext(...)' annotation" in p for p in problems), problems
    assert any("accepts only the fixed transcript of 8 messages" in p for p in problems), problems


def test_a_context_without_the_server_is_caught_in_the_committed_theory(annotated: Path) -> None:
    """A deliberate mismatch in the theory as committed: the device's SessionContext loses the
    server (spec §5.2 server_certificates) that the agent's still carries."""
    _edit(
        annotated,
        "ChanAD(A, D, <'SessionContext', rid, sid, ms, S>) ]\n  --[ DevGotContext",
        "ChanAD(A, D, <'SessionContext', rid, sid, ms>) ]\n  --[ DevGotContext",
    )
    problems = _problems(annotated)
    assert any(
        "rule Device_Recv_SessionContext" in p and "SessionContext tuple has 3 components" in p
        for p in problems
    ), problems


def test_a_session_context_with_another_field_is_caught(annotated: Path) -> None:
    """The agent's SessionContext gets a component its annotation does not describe."""
    _edit(
        annotated,
        "<'SessionContext', rid, sid, ms, S>),\n    St_A_HandingOver",
        "<'SessionContext', rid, sid, ms, S, 'lifetime'>),\n    St_A_HandingOver",
    )
    problems = _problems(annotated)
    assert any(
        "rule Agent_Recv_ServerFinished" in p and "SessionContext tuple has 5 components" in p
        for p in problems
    ), problems


def test_an_annotation_naming_no_spec_field_is_caught(annotated: Path) -> None:
    _edit(
        annotated,
        "// msg: Wiped(request_id)\nrule Agent_Wipe:",
        "// msg: Wiped(wipe_id)\nrule Agent_Wipe:",
    )
    problems = _problems(annotated)
    assert any("Wiped has no field 'wipe_id'" in p for p in problems), problems


def test_a_spec_field_neither_modelled_nor_omitted_is_caught(annotated: Path) -> None:
    _edit(annotated, "// omit: SessionContext.lifetime (time is not modelled)\n", "")
    problems = _problems(annotated)
    assert any("SessionContext.lifetime" in p and "neither modelled" in p for p in problems)


def test_a_delegation_message_without_annotation_is_caught(annotated: Path) -> None:
    _edit(
        annotated, "// msg: Wiped(request_id)\nrule Device_Recv_Wiped:", "rule Device_Recv_Wiped:"
    )
    problems = _problems(annotated)
    assert any(
        "rule Device_Recv_Wiped" in p and "no '// msg: Wiped(...)' annotation" in p
        for p in problems
    ), problems


def test_an_undeclared_fixed_transcript_is_caught(annotated: Path) -> None:
    """The issue's finding: the model checks an exact 8-message transcript, signer.py only the
    first and last message and counts. Undeclared, the difference is a problem."""
    text = annotated.read_text(encoding="utf-8")
    kept = [line for line in text.splitlines() if not line.startswith("// abstraction:")]
    annotated.write_text("\n".join(kept) + "\n", encoding="utf-8")
    problems = _problems(annotated)
    assert any(
        "accepts only the fixed transcript of 8 messages" in p
        and "CertificateRequest, ServerHelloDone" in p
        for p in problems
    ), problems


BOUND_LOG = (
    "  let log = <<'ClientHello', cr>, <'ServerHello', sr, sid>, <'Certificate', S>,\n"
    "             <'ServerKeyExchange', Y, ssig>,\n"
    "             'CertificateRequest', 'ServerHelloDone', <'Certificate', D>,\n"
    "             <'ClientKeyExchange', X>>\n"
)


@pytest.mark.parametrize(
    ("rule", "old", "new"),
    [
        (1, "<'SignRequest', rid, h(log), log>)", "<'SignRequest', rid, dgst, log>)"),
        (2, "<'ServerHello', sr, sid>, <'Certificate', S>,",
         "<'ServerHello', sr, sid>, <'ServerHello', sr, sid>, <'Certificate', S>,"),
        (3, "let log = <<'ClientHello', cr>,", "let log = <<'ClientHello', cr0>,"),
        (4, "'ServerHelloDone', <'Certificate', D>,", "'ServerHelloDone', <'Certificate', A>,"),
        (5, "<'ClientKeyExchange', X>>", "<'ClientKeyExchange', X>, 'Finished'>"),
        (6, "<'ServerHello', sr, sid>, <'Certificate', S>,",
         "<'ServerHello', sr, sid>, <'Certificate', S2>,"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("annotations", [True, False], ids=["as-committed", "stripped"])
def test_each_bound_signing_rule_of_the_spec_is_checked_on_the_theory(
    tmp_path: Path, rule: int, old: str, new: str, annotations: bool
) -> None:
    text = MAIN_THEORY.read_text(encoding="utf-8")
    assert text.count(BOUND_LOG) == 1  # the rule these edits are written for
    theory = tmp_path / MAIN_THEORY.name
    theory.write_text(text if annotations else strip_annotations(text), encoding="utf-8")
    start = theory.read_text(encoding="utf-8").index("rule Device_Sign_Bound:")
    body = theory.read_text(encoding="utf-8")[start:]
    edited = body.replace(old, new, 1)
    assert edited != body, old
    theory.write_text(theory.read_text(encoding="utf-8")[:start] + edited, encoding="utf-8")
    problems = _problems(theory)
    assert any(f"Device_Sign_Bound (bound signing, spec/delegation.md §6) rule {rule}:" in p
               for p in problems), problems  # fmt: skip


def _spec_copy(tmp_path: Path, old: str, new: str) -> Path:
    copy = tmp_path / "spec"
    shutil.copytree(spec_dir(), copy)
    md = copy / spec_text.DELEGATION_MD
    text = md.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    md.write_text(text.replace(old, new), encoding="utf-8")
    return copy


NEW_RULE = (
    "7. the transcript's ServerKeyExchange is signed by the key of the server's leaf certificate.\n"
)


def test_a_new_spec_signing_rule_without_checks_is_caught(tmp_path: Path) -> None:
    copy = _spec_copy(tmp_path, "   address; a DNS name", "   address; a DNS name")
    text = (copy / spec_text.DELEGATION_MD).read_text(encoding="utf-8")
    anchor = "\n\nIt then signs the transcript"
    assert text.count(anchor) == 1
    text = text.replace(anchor, "\n" + NEW_RULE.rstrip("\n") + anchor)
    (copy / spec_text.DELEGATION_MD).write_text(text, encoding="utf-8")
    rules = spec_text.bound_signing_rules(text)
    assert sorted(rules) == [1, 2, 3, 4, 5, 6, 7]
    report = contents.check_contents([MAIN_THEORY], spec_dir=copy)
    assert any("bound-mode rule 7" in p and "BOUND_RULE_CHECKS" in p for p in report.problems)
    roles = roles_check.check_signer_policy(rules)
    assert any("bound-mode rule 7" in p and "VIOLATIONS" in p for p in roles), roles


def test_a_new_spec_field_is_caught_in_the_codec_and_the_theory(
    tmp_path: Path, annotated: Path
) -> None:
    row = "| 18 | ocsp_status | SessionContext | uint | 0 not checked, 1 good |\n"
    copy = _spec_copy(tmp_path, row, row + "| 21 | ticket | SessionContext | bstr | 1..255 |\n")
    text = (copy / spec_text.DELEGATION_MD).read_text(encoding="utf-8")
    fields = spec_text.message_fields(text)
    assert [f.name for f in fields["SessionContext"]][-1] == "ticket"
    assert "SessionContext.ticket: in spec §5.2, not in the codec" in (
        roles_check.check_message_schema(fields)
    )
    report = contents.check_contents([annotated], spec_dir=copy)
    assert any("SessionContext.ticket" in p and "neither modelled" in p for p in report.problems)


def test_the_codec_and_the_spec_table_agree() -> None:
    fields = spec_text.message_fields(spec_text.delegation_md())
    assert set(fields) == {"DelegationRequest", "SignRequest", "SignResponse",
                           "SessionContext", "DelegationError", "Wiped"}  # fmt: skip
    assert [f.key for f in fields["SessionContext"]] == [1, *range(12, 19)]
    assert roles_check.check_message_schema(fields) == []


@pytest.mark.parametrize(
    ("target", "rule"),
    [
        ("check_server_certificate", 6),  # rule 6: the requested server
    ],
)
def test_a_signer_that_skips_a_spec_rule_is_caught(
    monkeypatch: pytest.MonkeyPatch, target: str, rule: int
) -> None:
    """The signer is run, not read: take a check out and the violation goes through."""
    from d2tls.core.roles import signer

    rules = spec_text.bound_signing_rules(spec_text.delegation_md())
    assert roles_check.check_signer_policy(rules) == []
    monkeypatch.setattr(signer, target, lambda *args: None)
    problems = roles_check.check_signer_policy(rules)
    assert problems and all(f"rule {rule} forbids" in p for p in problems), problems


def test_a_signer_that_ignores_the_digest_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    from d2tls.core.roles import signer

    real = signer.check_bound_transcript

    def lax(transcript: bytes, digest: bytes, *rest: object) -> None:
        import hashlib

        real(transcript, hashlib.sha256(transcript).digest(), *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(signer, "check_bound_transcript", lax)
    rules = spec_text.bound_signing_rules(spec_text.delegation_md())
    problems = roles_check.check_signer_policy(rules)
    assert problems == [
        "roles/signer.py check_bound_transcript signs a transcript with a digest of other "
        "bytes, which spec/delegation.md §6 bound-mode rule 1 forbids"
    ]


def test_every_violation_is_refused_for_its_own_rule() -> None:
    """Each made-up violation breaks the rule it is filed under (the signer's reason says so),
    so a pass is not an accident of another check."""
    import hashlib

    from d2tls.core.roles.signer import SigningRefused, check_bound_transcript

    reasons = {
        1: "hash to the digest", 2: "whole handshake messages|exactly one ClientHello",
        3: "random|start with a ClientHello", 4: "Certificate", 5: "end with the ClientKeyExchange",
        6: "not for 'server.example'",
    }  # fmt: skip
    good = roles_check.good_handshake()
    for number, cases in roles_check.VIOLATIONS.items():
        for what, make in cases:
            transcript, digest = make(good)
            with pytest.raises(SigningRefused) as refused:
                check_bound_transcript(
                    transcript, digest or hashlib.sha256(transcript).digest(),
                    good.client_random, good.chain, roles_check.SERVER_NAME,
                )  # fmt: skip
            assert any(r in str(refused.value) for r in reasons[number].split("|")), what


def test_term_parser_reads_tuples_and_lets() -> None:
    node = contents.parse_term("<'A', h(<x, ~y>), $S, !Ltk(D, k)>")
    assert node == contents.Tup(("'A'", contents.App("h", (contents.Tup(("x", "~y")),)), "$S",
                                 contents.App("!Ltk", ("D", "k"))))  # fmt: skip
    with pytest.raises(contents.TermError):
        contents.parse_term("<a, b")


def test_a_strict_device_that_drops_the_server_binding_is_caught(annotated: Path) -> None:
    """The strict signing rule gets the §6 checks too: its server Certificate no longer has to
    be the requested server's (rule 6), in the theory as committed."""
    text = annotated.read_text(encoding="utf-8")
    start = text.index("rule Device_Sign_Strict:")
    body = text[start:]
    edited = body.replace(
        "<'ServerHello', sr, sid>, <'Certificate', S>,",
        "<'ServerHello', sr, sid>, <'Certificate', S2>,",
        1,
    )
    assert edited != body
    annotated.write_text(text[:start] + edited, encoding="utf-8")
    problems = _problems(annotated)
    assert any(
        "Device_Sign_Strict (bound signing, spec/delegation.md §6) rule 6:" in p for p in problems
    ), problems
