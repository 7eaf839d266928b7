"""The TwinPeaks Tamarin theory (issue 21 item 6): its lemmas, their expected verdicts, the
documentation of each, and the certificateless separation in the model's rules.

The static tests always run; proving the theory needs tamarin-prover and maude and takes
minutes, so it runs only with D2TLS_PROVE_ALL=1 (like the D2TLS theory's full run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from d2tls.cli import main as d2tls_main
from d2tls.prove import runner
from d2tls.prove.consistency import check_theories, rule_tags, rule_text
from d2tls.prove.runner import EXIT_OK, FALSIFIED, VERIFIED
from d2tls.prove.syntax import check_file, top_level_items

ROOT = Path(__file__).resolve().parents[1]
PROOFS = ROOT / "proofs"
THEORY = PROOFS / "twinpeaks.spthy"
DOCS_PAGE = ROOT / "docs" / "twinpeaks-security.md"

#: The lemmas issue 21 asks for, with the verdict each must get. "falsified" for an
#: exists-trace lemma means Tamarin proved that no such trace exists.
ISSUE_LEMMAS = {
    "executable": VERIFIED,
    "key_response_authentic": VERIFIED,
    "lookup_authentication": VERIFIED,
    "impersonation_dns_alone": FALSIFIED,
    "impersonation_key_server_alone": FALSIFIED,
    "impersonation_both": VERIFIED,
}


def _lemmas() -> list[str]:
    return runner.lemma_names(THEORY.read_text(encoding="utf-8"))


def test_theory_is_proved_by_default_and_parses() -> None:
    assert THEORY in runner.default_theories() or THEORY.resolve() in {
        p.resolve() for p in runner.default_theories()
    }
    assert check_file(THEORY) == []
    source = THEORY.read_bytes()
    assert top_level_items(source)["lemma"] == _lemmas()


def test_expected_lists_exactly_the_theorys_lemmas_in_order() -> None:
    expected = runner.load_expected(PROOFS / runner.EXPECTED_FILE)[THEORY.name]
    names = _lemmas()
    assert len(names) == len(set(names))
    assert list(expected) == names


def test_expected_verdicts_are_the_issues() -> None:
    expected = runner.load_expected(PROOFS / runner.EXPECTED_FILE)[THEORY.name]
    for name, verdict in ISSUE_LEMMAS.items():
        assert expected[name].verdict == verdict, name
    for name, entry in expected.items():
        assert "\n" not in entry.why and 20 < len(entry.why) < 200, name


def _lemma_text(name: str) -> str:
    code = runner.strip_comments(THEORY.read_text(encoding="utf-8"))
    match = re.search(rf"^lemma {name}\b.*?(?=^lemma |^end\b)", code, re.MULTILINE | re.DOTALL)
    assert match is not None, name
    return match.group(0)


def test_impersonation_lemmas_differ_only_in_what_is_compromised() -> None:
    """The two falsifications and the attack are exists-trace claims of the same impersonation
    (a client accepts for N a key whose holder did not answer, N's own key not revealed);
    DNS alone forbids every key-server compromise, key server alone forbids a forged A
    record for N, both requires both."""
    for name in ("impersonation_dns_alone", "impersonation_key_server_alone", "impersonation_both"):
        text = _lemma_text(name)
        assert "exists-trace" in text, name
        assert "ClientAccepts(c, N, ip, IDN, XN, nc, R, T, Z)" in text, name
        assert "not (Ex #j. HonestConfirm(N, ip, IDN, XN, nc) @ #j)" in text, name
        assert "not (Ex #j. MemberCompromised(N) @ #j)" in text, name
    dns = _lemma_text("impersonation_dns_alone")
    assert "& DnsForged(N, a) @ #d" in dns and "not (Ex K #k. KsCompromised(K) @ #k)" in dns
    ks = _lemma_text("impersonation_key_server_alone")
    assert "& KsCompromised(Z) @ #k" in ks and "not (Ex a #d. DnsForged(N, a) @ #d)" in ks
    both = _lemma_text("impersonation_both")
    assert "& DnsForged(N, ip) @ #d" in both and "& KsCompromised(Z) @ #k" in both
    assert "& MemberRegistered(N) @ #r" in both


def test_every_rule_is_tagged_and_the_theory_is_consistent() -> None:
    tags = rule_tags(THEORY)
    assert len(tags) >= 20
    for entry in tags:
        assert len(entry.tags) == 1 and entry.tags[0].startswith("none ("), entry.rule
    report = check_theories([THEORY])
    assert report.ok, "\n".join(report.problems())


def test_kgc_never_sees_the_members_secret_value() -> None:
    """Certificateless: Partial-Private-Key-Extract gets the ID and X = pt(x) over the
    association, never x; only the member's own rule combines x with the partial key."""
    for rule in ("Root_Extract_TLK", "TLK_Extract_SLK", "SLK_Extract_Member"):
        text = rule_text(THEORY, rule)
        assert text is not None, rule
        assert "ppk(s," in text, rule
        assert "~x" not in text and "St_" not in text and "clsk" not in text, rule
    for rule in ("TLK_Set_Private_Key", "SLK_Set_Private_Key", "Member_Set_Private_Key"):
        text = rule_text(THEORY, rule)
        assert text is not None and "clsk(x, d)" in text, rule
    code = runner.strip_comments(THEORY.read_text(encoding="utf-8"))
    assert "clverify(clsign(m, clsk(x, ppk(s, id, pt(x)))), m, id, pt(x), pt(s)) = true" in code


def test_every_lemma_is_explained_and_the_chapter_includes_it() -> None:
    """LEMMAS.md's TwinPeaks section (between its markers) explains every lemma and has its
    measured result; the docs chapter includes exactly that section."""
    lemmas_md = (PROOFS / "LEMMAS.md").read_text(encoding="utf-8")
    start, end = "<!-- twinpeaks-start -->", "<!-- twinpeaks-end -->"
    assert lemmas_md.count(start) == 1 and lemmas_md.count(end) == 1
    section = lemmas_md[lemmas_md.index(start) : lemmas_md.index(end)]
    for name in _lemmas():
        assert f"- `{name}`" in section, f"{name} not explained"
        assert re.search(rf"^\| `{name}` \| (verified|falsified) \| ", section, re.M), name
    page = DOCS_PAGE.read_text(encoding="utf-8")
    assert f":start-after: {start}" in page and f":end-before: {end}" in page


TAMARIN = shutil.which("tamarin-prover")
MAUDE = shutil.which("maude")


@pytest.mark.skipif(
    TAMARIN is None or MAUDE is None or not os.environ.get("D2TLS_PROVE_ALL"),
    reason="TAMARIN PROOFS DID NOT RUN: "
    + (
        "tamarin-prover or maude not on PATH"
        if TAMARIN is None or MAUDE is None
        else "set D2TLS_PROVE_ALL=1 to prove the TwinPeaks lemmas (a few minutes)"
    ),
)
def test_real_prove_of_the_twinpeaks_theory(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    status = d2tls_main(["prove", "twinpeaks", "--json", str(report_file)])
    data = json.loads(report_file.read_text(encoding="utf-8"))
    assert status == EXIT_OK, [r for r in data["results"] if not r["ok"]]
    assert [r["lemma"] for r in data["results"]] == _lemmas()
